"""gateway.plugins.options: the checks every built-in factory uses, open to third-party factories;
each failure reaches the user as a config error naming the plugin and the option."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from gateway.config import Config, ConfigError
from gateway.plugins import Event, PluginContext
from gateway.plugins.loader import load_plugins
from gateway.plugins.options import check_keys, optional_string, required_string, string_table


class Archive:
    def __init__(self, options: Mapping[str, Any]) -> None:
        check_keys(options, "archive", ("folder", "label", "tags"))
        self.folder = required_string(options, "folder", " (where to archive)")
        self.label = optional_string(options, "label")
        self.tags = string_table(options, "tags")

    async def deliver(self, event: Event) -> None: ...


def archive(options: Mapping[str, Any], context: PluginContext) -> Archive:
    return Archive(options)


def load(make_config: Callable[..., Config], options: dict[str, Any]) -> Archive:
    plugins = load_plugins(make_config(plugins=[{"name": "arch", "use": "tests.plugins.test_options:archive",
                                                 "options": options}]))
    plugin = plugins["arch"]
    built: Archive = getattr(plugin, "plugin", plugin)  # completed with start/stop by the loader
    return built


def test_values_come_back_typed(make_config: Callable[..., Config]) -> None:
    plugin = load(make_config, {"folder": "out", "tags": {"desk": "fx"}})
    assert (plugin.folder, plugin.label, plugin.tags) == ("out", None, {"desk": "fx"})
    assert load(make_config, {"folder": "out", "label": "eu"}).label == "eu"


@pytest.mark.parametrize(("options", "message"), [
    ({"folder": "out", "colour": "red", "age": 3}, "unknown option(s) age, colour; archive takes: folder, label, tags"),
    ({}, "option 'folder' is required and must be a non-empty string (where to archive)"),
    ({"folder": ""}, "option 'folder' is required and must be a non-empty string (where to archive)"),
    ({"folder": 7}, "option 'folder' is required and must be a non-empty string (where to archive)"),
    ({"folder": "out", "label": ""}, "option 'label' must be a non-empty string"),
    ({"folder": "out", "label": ["eu"]}, "option 'label' must be a non-empty string"),
    ({"folder": "out", "tags": ["fx"]}, "option 'tags' must be a table of string values"),
    ({"folder": "out", "tags": {"desk": 1}}, "option 'tags' must be a table of string values"),
])
def test_a_bad_option_is_a_config_error_naming_plugin_and_option(make_config: Callable[..., Config],
                                                                 options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(make_config, options)
    assert info.value.errors == [f"test.toml: plugins[0] (arch): {message}"]
