"""The `jsonl` plugin against real files: whole lines, in order, fsync'ed in groups."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.plugins import Event, PluginContext
from gateway.plugins.jsonl import JsonlPlugin, factory

pytestmark = pytest.mark.anyio


def make_event(event_id: int = 1, **changes: Any) -> Event:
    fields: dict[str, Any] = {
        "id": event_id, "source": "metacopier", "scheme": "metacopier", "event_type": "position.opened",
        "entity_id": f"position:pos-{event_id}", "dedup_key": f"metacopier:position.opened:pos-{event_id}",
        "status": "stored", "conflicts_with": None, "account": "acc-1", "symbol": "EURUSD",
        "received_at": 1763633702.123,
        "payload": {"position": {"id": f"pos-{event_id}", "volume": 0.5, "note": "line\nbreak é"}},
        "body": b"{}",
    }
    return Event(**{**fields, **changes})


def read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [orjson.loads(line) for line in data.split(b"\n")[:-1]]


@pytest.fixture
async def make_plugin(tmp_path: Path) -> AsyncIterator[Callable[..., JsonlPlugin]]:
    """Build a jsonl plugin from options (relative to tmp_path); every plugin is stopped afterwards."""
    made: list[JsonlPlugin] = []

    def make(**options: Any) -> JsonlPlugin:
        plugin = factory({"path": "events.jsonl", **options}, PluginContext("archive", tmp_path))
        made.append(plugin)
        return plugin

    yield make
    for plugin in made:
        await plugin.stop()


async def test_sequential_deliveries_append_whole_lines_in_call_order(
        make_plugin: Callable[..., JsonlPlugin], tmp_path: Path) -> None:
    plugin = make_plugin()
    await plugin.start()
    events = [make_event(i, symbol=None if i % 2 else "XAUUSD") for i in range(1, 21)]
    for event in events:
        await plugin.deliver(event)
    assert read_lines(tmp_path / "events.jsonl") == [e.to_json() for e in events]
    assert plugin.fsyncs == len(events)  # nothing to share when every call waits for the previous one


async def test_concurrent_deliveries_share_fsyncs(make_plugin: Callable[..., JsonlPlugin], tmp_path: Path) -> None:
    plugin = make_plugin()
    await plugin.start()
    events = [make_event(i) for i in range(1, 201)]
    await asyncio.gather(*(plugin.deliver(e) for e in events))
    lines = read_lines(tmp_path / "events.jsonl")
    assert lines == [e.to_json() for e in events]  # 200 complete lines, in the order the calls began
    assert 1 <= plugin.fsyncs < 10


async def test_lines_arriving_during_a_flush_wait_for_the_next_one(
        make_plugin: Callable[..., JsonlPlugin], tmp_path: Path) -> None:
    plugin = make_plugin()
    await plugin.start()
    first = [asyncio.ensure_future(plugin.deliver(make_event(i))) for i in range(1, 51)]
    await asyncio.sleep(0)  # the deliveries queue their lines; the first one starts the flush task
    await asyncio.sleep(0)  # the flush task takes those 50 lines to its thread
    second = [asyncio.ensure_future(plugin.deliver(make_event(i))) for i in range(51, 101)]
    await asyncio.gather(*first, *second)
    assert [line["id"] for line in read_lines(tmp_path / "events.jsonl")] == list(range(1, 101))
    assert plugin.fsyncs == 2


async def test_deliver_returns_only_after_its_line_is_fsynced(
        make_plugin: Callable[..., JsonlPlugin], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []  # file size at each fsync; the real fsync still runs
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fsync", spy)
    plugin = make_plugin()
    path = tmp_path / "events.jsonl"

    async def deliver_and_check(event: Event) -> None:
        await plugin.deliver(event)
        end = path.read_bytes().index(orjson.dumps(event.to_json()) + b"\n") + len(orjson.dumps(event.to_json())) + 1
        assert synced and max(synced) >= end

    await asyncio.gather(*(deliver_and_check(make_event(i)) for i in range(1, 31)))
    await deliver_and_check(make_event(31))


async def test_relative_path_resolves_against_base_dir_and_parents_are_created(tmp_path: Path) -> None:
    plugin = factory({"path": "out/deep/events.jsonl"}, PluginContext("archive", tmp_path))
    await plugin.start()
    try:
        assert (tmp_path / "out" / "deep" / "events.jsonl").exists()  # created at start, still empty
        await plugin.deliver(make_event(7))
    finally:
        await plugin.stop()
    assert read_lines(tmp_path / "out/deep/events.jsonl") == [make_event(7).to_json()]


async def test_appends_to_an_existing_file_and_works_without_start(
        make_plugin: Callable[..., JsonlPlugin], tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":0}\n')
    plugin = make_plugin()
    await plugin.deliver(make_event(1))  # opened lazily
    assert [line["id"] for line in read_lines(path)] == [0, 1]


@pytest.mark.parametrize("tail", [b'{"id":1,"sou', b"x" * 70000])
async def test_a_line_torn_by_a_crash_is_cut_off_before_appending(
        make_plugin: Callable[..., JsonlPlugin], tmp_path: Path, tail: bytes) -> None:
    # A SIGKILL inside write() can leave part of a batch (Linux stops a write between pages);
    # that batch was never acknowledged and comes again, so the fragment must go.
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":0}\n' + tail)
    plugin = make_plugin()
    await plugin.deliver(make_event(1))
    assert [line["id"] for line in read_lines(path)] == [0, 1]
    path.write_bytes(tail)  # nothing whole at all: the file starts over
    await plugin.stop()
    plugin = make_plugin()
    await plugin.deliver(make_event(2))
    assert [line["id"] for line in read_lines(path)] == [2]


async def test_stop_waits_for_queued_lines_then_closes(make_plugin: Callable[..., JsonlPlugin], tmp_path: Path) -> None:
    plugin = make_plugin()
    await plugin.start()
    pending = [asyncio.ensure_future(plugin.deliver(make_event(i))) for i in range(1, 11)]
    await asyncio.sleep(0)  # the deliveries queue their lines
    await plugin.stop()
    assert all(task.done() and task.exception() is None for task in pending)
    assert len(read_lines(tmp_path / "events.jsonl")) == 10
    assert plugin._fd is None


async def test_an_os_error_reaches_every_waiting_delivery_and_the_next_flush_recovers(
        make_plugin: Callable[..., JsonlPlugin], tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").mkdir()  # the "file" cannot be opened for writing
    plugin = make_plugin()
    results = await asyncio.gather(*(plugin.deliver(make_event(i)) for i in range(1, 6)), return_exceptions=True)
    assert all(isinstance(r, IsADirectoryError) for r in results)
    (tmp_path / "events.jsonl").rmdir()
    await plugin.deliver(make_event(6))
    assert [line["id"] for line in read_lines(tmp_path / "events.jsonl")] == [6]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_a_failing_write_raises_os_error() -> None:
    plugin = factory({"path": "/dev/full"}, PluginContext("archive", Path("/")))
    await plugin.start()
    try:
        results = await asyncio.gather(*(plugin.deliver(make_event(i)) for i in range(1, 4)), return_exceptions=True)
    finally:
        await plugin.stop()
    assert all(isinstance(r, OSError) and r.errno == errno.ENOSPC for r in results)
    assert plugin.fsyncs == 0


@pytest.mark.parametrize(("options", "message"), [
    ({}, "option 'path' is required"),
    ({"path": ""}, "option 'path' is required"),
    ({"path": 42}, "must be a non-empty string"),
    ({"path": "a.jsonl", "fsync": False}, "unknown option(s) fsync"),
])
def test_bad_options_are_config_errors(options: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        factory(options, PluginContext("archive", tmp_path))
