"""The loader: `use` resolved with uvicorn's import_from_string, config errors that name the plugin,
and every plugin given the whole `Plugin` protocol, so that the gateway calls `start` and `stop`
without asking whether they exist (a plugin author may leave them out)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, ConfigError
from gateway.plugins import Event, PluginContext
from gateway.plugins.exec import ExecPlugin
from gateway.plugins.http import HttpPlugin
from gateway.plugins.jsonl import JsonlPlugin
from gateway.plugins.loader import load_plugins
from tests.conftest import MC_BODY, RunningGateway, mc_sign

Serve = Callable[[Config], RunningGateway]


class DeliverOnly:
    """A plugin with no hooks but `deliver`, as the plugin contract allows."""

    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.arrived = threading.Event()

    async def deliver(self, event: Event) -> None:
        self.delivered.append(event.id)
        self.arrived.set()


class StopOnly(DeliverOnly):
    """A plugin with `stop` but no `start`."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = 0

    async def stop(self) -> None:
        self.stopped += 1


built: dict[str, DeliverOnly] = {}  # what the factories below returned, by plugin name


def deliver_only(options: Mapping[str, Any], context: PluginContext) -> DeliverOnly:
    built[context.name] = DeliverOnly()
    return built[context.name]


def stop_only(options: Mapping[str, Any], context: PluginContext) -> StopOnly:
    built[context.name] = plugin = StopOnly()
    return plugin


def test_plugins_without_start_or_stop_deliver_and_shut_down(make_config: Callable[..., Config],
                                                             serve: Serve) -> None:
    gw = serve(make_config(plugins=[
        {"name": "bare", "use": "tests.plugins.test_loader:deliver_only"},
        {"name": "closer", "use": "tests.plugins.test_loader:stop_only"},
    ]))
    assert gw.post("/hooks/metacopier", MC_BODY, mc_sign(MC_BODY)).status_code == 200
    bare, closer = built["bare"], built["closer"]
    assert isinstance(closer, StopOnly)
    assert bare.arrived.wait(10) and closer.arrived.wait(10)
    assert bare.delivered == closer.delivered == [1]
    gw.__exit__()
    assert closer.stopped == 1  # its own stop() ran once at shutdown


def test_every_plugin_has_the_whole_protocol(make_config: Callable[..., Config], tmp_path: Path) -> None:
    plugins = load_plugins(make_config(plugins=[
        {"name": "file", "use": "jsonl", "options": {"path": "events.jsonl"}},
        {"name": "hook", "use": "http", "options": {"url": "https://example.com/in", "secret": "s" * 24}},
        {"name": "run", "use": "exec", "options": {"command": ["true"]}},
        {"name": "bare", "use": "tests.plugins.test_loader:deliver_only"},
    ]))
    # the built-ins have every hook themselves: the loader hands them over as they are
    assert [type(plugins[name]) for name in ("file", "hook", "run")] == [JsonlPlugin, HttpPlugin, ExecPlugin]
    bare = plugins["bare"]
    assert bare is not built["bare"] and repr(bare) == repr(built["bare"])  # completed, named as the original
    for plugin in plugins.values():
        assert all(callable(getattr(plugin, hook)) for hook in ("deliver", "start", "stop"))


@pytest.mark.parametrize(("use", "message"), [
    ("tests.no_such_module:factory", 'cannot import \'tests.no_such_module:factory\': Could not import module '
                                     '"tests.no_such_module".'),
    ("tests.plugins.test_loader:nothing_here", "cannot import 'tests.plugins.test_loader:nothing_here': "
                                               'Attribute "nothing_here" not found'),
    ("tests.plugins.test_loader:", "cannot import 'tests.plugins.test_loader:': Import string"),
    ("tests.plugins.test_loader:DeliverOnly.deliver.nope", "cannot import"),
    ("no-such-entry-point", "'no-such-entry-point' is not a built-in, an import string"),
])
def test_a_plugin_that_cannot_be_found_is_a_config_error_naming_it(make_config: Callable[..., Config],
                                                                    use: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_plugins(make_config(plugins=[{"name": "broken", "use": use}]))
    (error,) = info.value.errors
    assert error.startswith("test.toml: plugins[0] (broken): ") and message in error, error


def test_an_object_without_deliver_is_refused(make_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match=r"plugins\[0\] \(odd\): the factory returned PluginContext, which has no "
                                          r"deliver\(event\) method"):
        load_plugins(make_config(plugins=[{"name": "odd", "use": "gateway.plugins:PluginContext"}]))
