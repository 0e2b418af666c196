"""The example third-party plugin (examples/gateway-plugin-example): found as an installed entry
point, configured like any plugin, idempotent, and correct end to end through the real gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import orjson
import pytest
from gateway_plugin_example import PositionLedger, factory

from gateway.config import Config, ConfigError, parse_config
from gateway.plugins import ENTRY_POINT_GROUP, Event, PermanentFailure, PluginContext
from gateway.plugins.loader import load_plugins, resolve_factory
from tests import store_reads
from tests.conftest import RunningGateway, mc_sign, source_table, wait_for


def make_event(event_id: int, event_type: str = "position.opened", position: str = "88412231",
               **changes: Any) -> Event:
    """An event as the gateway hands it to a plugin (a MetaCopier one unless changed): its
    entity is the position, `position:<id>`."""
    payload = {"type": event_type, "accountId": "acc-1", "position": {"id": position, "symbol": "EURUSD"}}
    fields: dict[str, Any] = {
        "id": event_id, "source": "metacopier", "scheme": "metacopier", "event_type": event_type,
        "entity_id": f"position:{position}", "dedup_key": f"metacopier:{event_type}:{position}",
        "status": "stored", "conflicts_with": None, "account": "acc-1", "symbol": "EURUSD",
        "received_at": 1763633702.5, "payload": payload,
        "body": orjson.dumps(payload),
    }
    return Event(**{**fields, **changes})


def read_ledger(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


@pytest.fixture
async def ledger(tmp_path: Path, anyio_backend: str) -> AsyncIterator[PositionLedger]:
    """The plugin as the gateway runs it: built by its factory, started, stopped at the end."""
    plugin = factory({"path": "ledger.json"}, PluginContext("ledger", tmp_path))
    await plugin.start()
    yield plugin
    await plugin.stop()


# --- found and configured like any plugin ---------------------------------------------------


def test_resolves_as_an_installed_entry_point() -> None:
    (found,) = entry_points(group=ENTRY_POINT_GROUP, name="position-ledger")
    assert found.value == "gateway_plugin_example:factory"
    assert resolve_factory("position-ledger") is factory


def plugin_config(tmp_path: Path, **plugin: Any) -> Config:
    data = {
        "sources": [source_table("metacopier", "metacopier")],
        "store": {"path": str(tmp_path / "gateway.db")},
        "plugins": [{"name": "ledger", "use": "position-ledger", **plugin}],
    }
    return parse_config(data, origin="test.toml", base_dir=tmp_path)


def test_load_plugins_builds_it_from_the_config(tmp_path: Path) -> None:
    plugins = load_plugins(plugin_config(tmp_path, options={"path": "var/open.json"}))
    built = plugins["ledger"]
    assert isinstance(built, PositionLedger)
    assert built.path == tmp_path / "var/open.json"  # relative to the config file's folder
    assert not (tmp_path / "var").exists()  # building it (check-config does) touches no file


@pytest.mark.parametrize(("options", "problem"), [
    ({}, "option 'path' is required"),
    ({"path": ""}, "option 'path' is required"),
    ({"path": 7}, "option 'path' is required"),
    ({"path": "open.json", "colour": "red"}, "unknown option(s) colour; position-ledger takes only: path"),
])
def test_bad_options_are_a_config_error_naming_the_plugin(tmp_path: Path, options: dict[str, Any],
                                                          problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_plugins(plugin_config(tmp_path, options=options))
    (message,) = caught.value.errors
    assert message.startswith("test.toml: plugins[0] (ledger): ")
    assert problem in message


# --- the ledger itself ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_open_adds_and_close_removes(ledger: PositionLedger) -> None:
    await ledger.deliver(make_event(1, position="A"))
    await ledger.deliver(make_event(2, position="B", symbol="GBPUSD"))
    await ledger.deliver(make_event(3, "position.closed", position="A"))
    assert read_ledger(ledger.path) == {
        "open": {"metacopier:position:B": {"symbol": "GBPUSD", "account": "acc-1", "opened_event_id": 2,
                                           "event_type": "position.opened"}},
        "applied": {"metacopier:position:A": 3, "metacopier:position:B": 2},
    }


@pytest.mark.anyio
@pytest.mark.parametrize(("source", "opened", "closed"), [
    ("pipsync", "trade.opened", "trade.closed"),
    ("pipsync", "trade.opened", "trade.tp_hit"),
    ("pipsync", "trade.opened", "trade.sl_hit"),
    ("tradrapi", "open_position", "close_position"),
])
async def test_every_sender_vocabulary(ledger: PositionLedger, source: str, opened: str, closed: str) -> None:
    await ledger.deliver(make_event(1, opened, source=source))
    assert list(read_ledger(ledger.path)["open"]) == [f"{source}:position:88412231"]
    await ledger.deliver(make_event(2, closed, source=source))
    assert read_ledger(ledger.path)["open"] == {}


@pytest.mark.anyio
async def test_the_same_entity_id_from_two_sources_is_two_positions(ledger: PositionLedger) -> None:
    await ledger.deliver(make_event(1, source="metacopier"))
    await ledger.deliver(make_event(2, "trade.opened", source="pipsync"))
    await ledger.deliver(make_event(3, "position.closed", source="metacopier"))
    assert list(read_ledger(ledger.path)["open"]) == ["pipsync:position:88412231"]


@pytest.mark.anyio
async def test_a_redelivery_is_a_no_op(ledger: PositionLedger) -> None:
    """At least once: the gateway may hand over an event again (e.g. after a crash between the
    plugin's return and the outcome being recorded). The file is not even rewritten."""
    await ledger.deliver(make_event(5))
    before = ledger.path.stat().st_ino, ledger.path.read_bytes()
    await ledger.deliver(make_event(5, attempt=2))
    assert (ledger.path.stat().st_ino, ledger.path.read_bytes()) == before


@pytest.mark.anyio
async def test_an_older_event_replayed_after_the_close_does_not_reopen(ledger: PositionLedger) -> None:
    """`gateway replay --event` of the open after its close was applied: a lower id than the last
    applied one is an event already seen. Per-position ordering is what makes that inference safe:
    without it, the open could be a new event that merely arrived late."""
    await ledger.deliver(make_event(1))
    await ledger.deliver(make_event(2, "position.closed"))
    await ledger.deliver(make_event(1))
    assert read_ledger(ledger.path) == {"open": {}, "applied": {"metacopier:position:88412231": 2}}


@pytest.mark.anyio
@pytest.mark.parametrize("event", [
    make_event(1, "history.updated"),
    make_event(1, "signal.received", source="pipsync"),
    make_event(1, "balance_operation", source="tradrapi"),
    make_event(1, "", status="quarantined", payload=None, account=None, symbol=None),
])
async def test_other_events_are_acknowledged_and_ignored(ledger: PositionLedger, event: Event) -> None:
    await ledger.deliver(event)
    assert not ledger.path.exists()


@pytest.mark.anyio
@pytest.mark.parametrize("payload", [None, [1, 2], "opened", 42])
async def test_a_payload_that_is_not_an_object_is_dead_lettered(ledger: PositionLedger, payload: Any) -> None:
    with pytest.raises(PermanentFailure, match="not an object"):
        await ledger.deliver(make_event(1, payload=payload))
    assert not ledger.path.exists()


@pytest.mark.anyio
async def test_concurrent_deliveries_of_different_positions_all_land(ledger: PositionLedger) -> None:
    """The gateway runs up to `concurrency` deliveries at once, for different positions."""
    await asyncio.gather(*(ledger.deliver(make_event(i, position=f"P{i}")) for i in range(1, 51)))
    data = read_ledger(ledger.path)
    assert sorted(data["open"]) == sorted(f"metacopier:position:P{i}" for i in range(1, 51))
    assert [p.name for p in ledger.path.parent.iterdir()] == ["ledger.json"]  # no temporary file left


@pytest.mark.anyio
async def test_a_failed_write_is_retried_not_acknowledged(tmp_path: Path) -> None:
    """If the file cannot be written, deliver() raises (the gateway retries) and nothing counts
    as applied: the retry writes it."""
    plugin = factory({"path": "var/ledger.json"}, PluginContext("ledger", tmp_path))
    await plugin.start()
    blocker = tmp_path / "var"
    blocker.write_text("a file where the ledger's folder should be")
    try:
        with pytest.raises(OSError):
            await plugin.deliver(make_event(1))
        assert plugin.applied == {}
        blocker.unlink()
        await plugin.deliver(make_event(1, attempt=2))
        assert list(read_ledger(plugin.path)["open"]) == ["metacopier:position:88412231"]
    finally:
        await plugin.stop()


@pytest.mark.anyio
async def test_the_ledger_survives_a_restart(tmp_path: Path) -> None:
    context = PluginContext("ledger", tmp_path)
    first = factory({"path": "ledger.json"}, context)
    await first.start()
    await first.deliver(make_event(4))
    await first.stop()

    second = factory({"path": "ledger.json"}, context)
    await second.start()
    try:
        inode = second.path.stat().st_ino
        await second.deliver(make_event(4, attempt=2))  # redelivered after the restart: still a no-op
        assert second.path.stat().st_ino == inode
        await second.deliver(make_event(6, "position.closed"))
        assert read_ledger(second.path)["open"] == {}
    finally:
        await second.stop()


# --- end to end through the real gateway -------------------------------------------------------


def mc_body(event_type: str, position: str, symbol: str) -> bytes:
    return orjson.dumps({"type": event_type, "timestamp": "2026-11-20T10:15:02.331Z", "accountId": "acc-1",
                         "position": {"id": position, "symbol": symbol, "orderType": "Buy", "volume": 0.5}})


def test_end_to_end_through_the_gateway(tmp_path: Path, serve: Callable[..., RunningGateway]) -> None:
    """Signed MetaCopier webhooks over HTTP: open A, open B, close A. The ledger ends with only B
    open and the gateway delivered each event to it exactly once, on the first attempt."""
    config = plugin_config(tmp_path, events=["position.*"], options={"path": "var/open-positions.json"})
    gw = serve(config)
    ledger_file = tmp_path / "var/open-positions.json"

    ids: list[int] = []
    for event_type, position, symbol in [("position.opened", "A", "EURUSD"), ("position.opened", "B", "GBPUSD"),
                                         ("position.closed", "A", "EURUSD")]:
        body = mc_body(event_type, position, symbol)
        response = gw.post("/hooks/metacopier", body, mc_sign(body))
        assert response.status_code == 200, response.text
        (outcome,) = response.json()["events"]
        assert outcome["status"] == "stored"
        ids.append(outcome["id"])

    def deliveries() -> list[tuple[Any, ...]]:
        return [(d.event_id, d.plugin, d.status, d.attempts) for d in store_reads.deliveries(config)]

    wait_for(lambda: all(row[2] == "delivered" for row in deliveries()), what="every delivery recorded",
             seen=deliveries)
    assert deliveries() == [(event_id, "ledger", "delivered", 1) for event_id in ids]
    assert read_ledger(ledger_file) == {
        "open": {"metacopier:position:B": {"symbol": "GBPUSD", "account": "acc-1", "opened_event_id": ids[1],
                                           "event_type": "position.opened"}},
        "applied": {"metacopier:position:A": ids[2], "metacopier:position:B": ids[1]},
    }

    # MetaCopier retrying the open of A: a duplicate for the gateway, never routed to plugins again.
    body = mc_body("position.opened", "A", "EURUSD")
    response = gw.post("/hooks/metacopier", body, mc_sign(body))
    assert response.json()["events"][0] == {"id": ids[0], "status": "duplicate",
                                            "dedup_key": "metacopier:position.opened:A", "conflicts_with": None}
    assert len(deliveries()) == 3  # answered after the commit that would have queued a delivery
    assert list(read_ledger(ledger_file)["open"]) == ["metacopier:position:B"]
