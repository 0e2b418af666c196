"""Fan-out through the real app over HTTP: ordering, retries, dead letters, isolation, metrics."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Config
from gateway.store import open_store
from tests.conftest import PS_BODY, RunningGateway, mc_sign, ps_sign, send, wait_for
from tests.fanout_plugins import Recorder
from tests.store_reads import deliveries, events

Serve = Callable[..., RunningGateway]
FAST_RETRY = {"retry_backoff_seconds": 0.01, "retry_backoff_max_seconds": 0.05}
SLOW_RETRY = {"retry_backoff_seconds": 60.0, "retry_backoff_max_seconds": 60.0}


def plugin(name: str, **extra: Any) -> dict[str, Any]:
    options = extra.pop("options", {})
    return {"name": name, "use": "tests.fanout_plugins:recorder", **FAST_RETRY, **extra, "options": options}


def opened(position: str, event: str = "position.opened", symbol: str = "EURUSD") -> bytes:
    return orjson.dumps({"type": event, "accountId": "acc-1", "position": {"id": position, "symbol": symbol}})


def statuses(gw: RunningGateway, **filters: Any) -> list[str]:
    """The status of each delivery row (filtered), oldest first."""
    return [d.status for d in deliveries(gw.app.config, **filters)]


def claimable(gw: RunningGateway, plugin: str) -> list[int]:
    """What another runner on the same store could claim now (claimed at once, then released)."""

    async def claim() -> list[int]:
        store = open_store(gw.app.config.store)
        await store.open()
        try:
            claims = await store.claim_due(plugin, time.time(), 100, 60)
            await store.release(claims)
            return [c.event.id for c in claims]
        finally:
            await store.close()

    return asyncio.run(claim())


def metric(gw: RunningGateway, name: str, **labels: str) -> float:
    text = gw.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels} in /metrics")


def recorder(gw: RunningGateway, name: str) -> Recorder:
    found = gw.app.plugins[name]
    assert isinstance(found, Recorder)
    return found


def test_order_per_position_under_concurrent_ingest(make_config: Callable[..., Config], serve: Serve) -> None:
    """Opens and closes of 40 positions sent concurrently, to a slow, flaky plugin working 8 at a
    time: each position's events reach it in store order, and positions proceed in parallel."""
    gw = serve(make_config(plugins=[plugin("journal", concurrency=8, options={"delay": 0.01, "fail_rate": 0.3})]))
    positions = [f"pos-{i}" for i in range(40)]

    async def drive() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            async def lifecycle(position: str) -> None:
                for event in ("position.opened", "position.closed"):
                    body = opened(position, event)
                    r = await client.post("/hooks/metacopier", content=body, headers=mc_sign(body))
                    assert r.status_code == 200

            await asyncio.gather(*(lifecycle(p) for p in positions))

    asyncio.run(drive())
    rec = recorder(gw, "journal")
    # once every outcome is recorded, nothing is left to deliver: no later call can come
    wait_for(lambda: statuses(gw) == ["delivered"] * 80, 30, "80 deliveries recorded")
    assert len(rec.delivered) == 80  # without a crash, each event reaches the plugin exactly once
    by_position: dict[str, list[Any]] = defaultdict(list)
    for event in rec.delivered:
        by_position[event.entity_id].append(event)
    assert set(by_position) == {f"position:{p}" for p in positions}  # the entity is the position
    for position in positions:
        seen = by_position[f"position:{position}"]
        ids = [e.id for e in seen]
        assert ids == sorted(ids), (position, ids)
        types = [e.event_type for e in seen]
        assert types[0] == "position.opened" and types[-1] == "position.closed", (position, types)
    assert rec.max_in_flight > 1  # different positions were delivered in parallel
    assert any(attempt > 1 for _, attempt in rec.calls)  # the flaky failures were retried


def test_failing_n_times_then_succeeding_is_delivered_once_with_n_retries(
    make_config: Callable[..., Config], serve: Serve
) -> None:
    gw = serve(make_config(plugins=[plugin("crm", options={"fail_first": 3})]))
    event_id = send(gw, opened("retry-1"))
    rec = recorder(gw, "crm")
    wait_for(lambda: len(rec.delivered) == 1, what="delivery")
    assert rec.calls == [(event_id, 1), (event_id, 2), (event_id, 3), (event_id, 4)]
    wait_for(lambda: [(d.status, d.attempts) for d in deliveries(gw.app.config)] == [("delivered", 4)],
             what="ack")
    assert metric(gw, "gateway_deliveries_total", plugin="crm", outcome="retried") == 3
    assert metric(gw, "gateway_deliveries_total", plugin="crm", outcome="delivered") == 1
    assert metric(gw, "gateway_deliveries_total", plugin="crm", outcome="dead") == 0
    assert metric(gw, "gateway_delivery_latency_seconds_count", plugin="crm") == 1
    assert metric(gw, "gateway_delivery_attempt_duration_seconds_count", plugin="crm") == 4


def test_exhausted_attempts_dead_letter_with_the_last_error(make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config(plugins=[plugin("risk", max_attempts=3, options={"always_fail": True})]))
    send(gw, opened("dead-1"))
    wait_for(lambda: statuses(gw) == ["dead"], what="dead letter")
    [row] = deliveries(gw.app.config)
    attempts, error = row.attempts, row.last_error or ""
    assert attempts == 3
    assert "simulated outage on attempt 3" in error and "attempt 3 of 3" in error
    assert metric(gw, "gateway_deliveries_total", plugin="risk", outcome="retried") == 2
    assert metric(gw, "gateway_deliveries_total", plugin="risk", outcome="dead") == 1


def write_cli_config(tmp_path: Path, config: Config, plugin_names: list[str]) -> Path:
    path = tmp_path / "cli.toml"
    plugins = "".join(f'[[plugins]]\nname = "{n}"\nuse = "jsonl"\n[plugins.options]\npath = "x.jsonl"\n'
                      for n in plugin_names)
    path.write_text(f'[store]\npath = "{config.store.path}"\n[[sources]]\nname = "metacopier"\n'
                    f'scheme = "metacopier"\nsecret = "{"x" * 40}"\n{plugins}')
    return path


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "gateway"), *args], capture_output=True, text=True,
                          timeout=60)


def test_permanent_failure_dead_letters_at_once_and_replay_redelivers(
    tmp_path: Path, make_config: Callable[..., Config], serve: Serve
) -> None:
    config = make_config(plugins=[plugin("desk", options={"permanent": True}), plugin("audit")])
    gw = serve(config)
    first = send(gw, opened("perm-1"))
    second = send(gw, opened("perm-2"))
    wait_for(lambda: statuses(gw, plugin="desk") == ["dead", "dead"], what="dead letters")
    desk = recorder(gw, "desk")
    assert sorted(desk.calls) == [(first, 1), (second, 1)]  # no retries for a permanent failure
    wait_for(lambda: metric(gw, "gateway_delivery_dead_letters", plugin="desk") == 2, what="dead gauge")
    assert len(recorder(gw, "audit").delivered) == 2  # the other plugin is unaffected

    cli_config = write_cli_config(tmp_path, config, ["desk", "audit"])
    listed = gateway_cli("deliveries", "--config", str(cli_config), "--plugin", "desk", "--status", "dead", "--json")
    assert listed.returncode == 0, listed.stderr
    dead = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert {d["event_id"] for d in dead} == {first, second}
    assert all("permanent failure" in d["last_error"] for d in dead)

    desk.permanent = False  # the plugin is fixed; redeliver one event, then every dead letter
    replayed = gateway_cli("replay", "--config", str(cli_config), "--plugin", "desk", "--event", str(first))
    assert replayed.returncode == 0 and "1 delivery(ies) to desk queued again" in replayed.stdout, replayed
    wait_for(lambda: [e.id for e in desk.delivered] == [first], what="replayed event")
    replayed = gateway_cli("replay", "--config", str(cli_config), "--plugin", "desk", "--dead")
    assert replayed.returncode == 0 and "1 delivery(ies)" in replayed.stdout, replayed
    wait_for(lambda: sorted(e.id for e in desk.delivered) == [first, second], what="replayed dead letters")
    assert len(events(gw.app.config)) == 2  # replay never copies an event
    assert len(deliveries(gw.app.config)) == 4
    wait_for(lambda: metric(gw, "gateway_delivery_dead_letters", plugin="desk") == 0, what="gauge back to 0")

    usage = gateway_cli("replay", "--config", str(cli_config), "--plugin", "desk")
    assert usage.returncode != 0 and "exactly one of --event ID or --dead" in usage.stderr
    unknown = gateway_cli("replay", "--config", str(cli_config), "--plugin", "nope", "--dead")
    assert unknown.returncode != 0 and "no plugin 'nope'" in unknown.stderr
    missing = gateway_cli("replay", "--config", str(cli_config), "--plugin", "desk", "--event", "999")
    assert missing.returncode == 1 and "no event 999" in missing.stderr


def test_a_replay_from_another_process_is_delivered_at_once(
    tmp_path: Path, make_config: Callable[..., Config], serve: Serve
) -> None:
    """The running gateway hears of the CLI's commit within tens of milliseconds (the writer
    watches `PRAGMA data_version`), not at its runners' 1 s poll."""
    config = make_config(plugins=[plugin("desk")])
    gw = serve(config)
    first = send(gw, opened("replayed-fast"))
    desk = recorder(gw, "desk")
    wait_for(lambda: len(desk.delivered) == 1, what="the first delivery")
    cli_config = write_cli_config(tmp_path, config, ["desk"])
    delays = []
    for n in range(5):
        replayed = gateway_cli("replay", "--config", str(cli_config), "--plugin", "desk", "--event", str(first))
        assert replayed.returncode == 0, replayed.stderr
        exited = time.monotonic()
        wait_for(lambda: len(desk.delivered) == n + 2, what=f"replay {n + 1}", interval=0.002)  # noqa: B023
        delays.append(time.monotonic() - exited)
    assert max(delays) < 0.25, delays  # each at the 1 s poll: 5 under 0.25 s by chance is 1 in 1,000


def test_hanging_plugin_does_not_delay_another(make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config(plugins=[plugin("stuck", timeout_seconds=60, options={"hang": True}),
                                    plugin("fast")]), shutdown_grace=0.2)
    started = time.monotonic()
    for i in range(20):
        send(gw, opened(f"hang-{i}"))
    fast = recorder(gw, "fast")
    wait_for(lambda: len(fast.delivered) == 20, 5, "the fast plugin's deliveries")
    assert time.monotonic() - started < 5
    stuck = recorder(gw, "stuck")
    assert stuck.in_flight == 4  # its concurrency, all hanging
    assert statuses(gw, plugin="stuck") == ["pending"] * 20
    stopping = time.monotonic()
    gw.__exit__()  # shutdown cancels the hanging deliveries after the grace period
    assert not gw.thread.is_alive()
    assert time.monotonic() - stopping < 5
    assert stuck.in_flight == 0


def test_slow_plugin_is_timed_out_and_retried(make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config(plugins=[plugin("slow", timeout_seconds=0.1, options={"hang": True})]),
               shutdown_grace=0.2)
    send(gw, opened("slow-1"))
    wait_for(lambda: len(recorder(gw, "slow").calls) >= 2, what="a retry after the timeout")
    wait_for(lambda: "timed out after 0.1 s" in str([d.last_error for d in deliveries(gw.app.config)]),
             what="error")
    assert recorder(gw, "slow").in_flight <= 1  # the timed-out attempt was cancelled


def test_one_stuck_position_does_not_hold_up_others(make_config: Callable[..., Config], serve: Serve) -> None:
    """A position whose delivery keeps failing blocks only its own later events."""
    gw = serve(make_config(plugins=[plugin("ledger", **SLOW_RETRY)]))
    rec = recorder(gw, "ledger")
    rec.always_fail = True
    stuck_open = send(gw, opened("stuck"))
    wait_for(lambda: len(rec.calls) == 1, what="first attempt")
    rec.always_fail = False
    stuck_close = send(gw, opened("stuck", "position.closed"))
    others = [send(gw, opened(f"free-{i}")) for i in range(5)]
    wait_for(lambda: statuses(gw) == ["pending", "pending", *["delivered"] * 5],
             what="other positions recorded, each exactly once")
    assert sorted(e.id for e in rec.delivered) == others
    assert stuck_close not in [e.id for e in rec.delivered]  # waits behind its open, in retry
    assert [d.event_id for d in deliveries(gw.app.config, status="pending")] == [stuck_open, stuck_close]
    assert claimable(gw, "ledger") == []  # nothing of "stuck" is due: its open waits for its retry


def test_routing_by_source_event_type_and_quarantine(make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config(plugins=[
        plugin("positions", sources=["meta*"], events=["position.*"]),
        plugin("trades", sources=["pipsync"], events=["trade.opened"]),
        plugin("odd", quarantined=True, events=["nothing"]),
    ]))
    position = send(gw, opened("route-1"))
    history = send(gw, orjson.dumps({"type": "history.updated", "accountId": "acc-1"}))
    assert gw.post("/hooks/pipsync", PS_BODY, ps_sign(PS_BODY)).status_code == 200
    junk = b"not json at all"
    quarantined = gw.post("/hooks/metacopier", junk, mc_sign(junk)).json()["events"][0]
    assert quarantined["status"] == "quarantined"
    wait_for(lambda: statuses(gw, status="delivered") == ["delivered"] * 3, what="acks")
    assert [e.id for e in recorder(gw, "positions").delivered] == [position]
    assert [e.event_type for e in recorder(gw, "trades").delivered] == ["trade.opened"]
    odd = recorder(gw, "odd").delivered
    assert [e.id for e in odd] == [quarantined["id"]] and odd[0].status == "quarantined"
    assert odd[0].body == junk and odd[0].payload is None
    assert history not in {d.event_id for d in deliveries(gw.app.config)}
    # a duplicate is not routed again: no delivery row, so nothing can ever deliver it
    r = gw.post("/hooks/metacopier", opened("route-1"), mc_sign(opened("route-1")))
    assert r.json()["events"][0]["status"] == "duplicate"
    assert [d.event_id for d in deliveries(gw.app.config, plugin="positions")] == [position]
    assert len(recorder(gw, "positions").delivered) == 1


def test_event_object_carries_the_stored_event(make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config(plugins=[plugin("p")]))
    body = opened("evt-1", symbol="XAUUSD")
    event_id = send(gw, body)
    rec = recorder(gw, "p")
    wait_for(lambda: len(rec.delivered) == 1, what="delivery")
    event = rec.delivered[0]
    assert (event.id, event.source, event.scheme, event.event_type, event.entity_id, event.account, event.symbol) \
        == (event_id, "metacopier", "metacopier", "position.opened", "position:evt-1", "acc-1", "XAUUSD")
    assert event.dedup_key == "metacopier:position.opened:evt-1" and event.status == "stored"
    assert event.conflicts_with is None and event.to_json()["conflicts_with"] is None
    assert event.body == body and event.payload == orjson.loads(body) and event.attempt == 1
    assert abs(event.received_at - time.time()) < 10
    assert event.to_json()["received_at"].endswith("Z")


def test_pending_deliveries_resume_after_a_restart(make_config: Callable[..., Config], serve: Serve) -> None:
    config = make_config(plugins=[plugin("sink", **SLOW_RETRY)])
    gw = serve(config, shutdown_grace=0.2)
    recorder(gw, "sink").always_fail = True
    ids = [send(gw, opened(f"resume-{i}")) for i in range(3)]
    wait_for(lambda: len(recorder(gw, "sink").calls) == 3, what="failed first attempts")
    gw.__exit__()
    # a later start, two minutes on: the rows are still pending, and their retry is due
    assert statuses(gw) == ["pending"] * 3
    gw2 = serve(config, clock=lambda: time.time() + 120)
    wait_for(lambda: sorted(e.id for e in recorder(gw2, "sink").delivered) == ids, what="resumed deliveries")
    assert [e.attempt for e in recorder(gw2, "sink").delivered] == [2, 2, 2]


def test_metrics_backlog_and_oldest_pending_age(make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config(plugins=[plugin("lagging", **SLOW_RETRY,
                                           options={"always_fail": True})]), shutdown_grace=0.2)
    for i in range(3):
        send(gw, opened(f"lag-{i}"))
    wait_for(lambda: metric(gw, "gateway_delivery_backlog", plugin="lagging") == 3, what="backlog gauge")
    wait_for(lambda: metric(gw, "gateway_delivery_oldest_pending_age_seconds", plugin="lagging") > 0.5,
             what="age gauge")
    assert metric(gw, "gateway_delivery_dead_letters", plugin="lagging") == 0


def test_where_filters_keep_events_from_a_plugin_and_are_counted(make_config: Callable[..., Config],
                                                                 serve: Serve) -> None:
    """`where` over the raw event (one symbol) and over the normalized one (a volume above a
    size, across two senders); an event a filter refuses gets no delivery row, and is counted."""
    gw = serve(make_config(plugins=[
        plugin("gold", where="position.symbol == 'XAUUSD'"),
        plugin("big", shape="normalized", where="volume > `1`"),
        plugin("typed", where="abs(position.symbol) > `0`"),  # abs() of a string: an error on every event
        plugin("overflow", where="ceil(to_number(position.big)) > `1`"),  # ceil(inf) raises OverflowError
    ]))
    gold = send(gw, opened("w-1", symbol="XAUUSD"))
    huge = send(gw, orjson.dumps({"type": "position.opened", "accountId": "a",
                                  "position": {"id": "w-0", "big": "1e999"}}))
    small = send(gw, orjson.dumps({"type": "position.opened", "accountId": "a",
                                   "position": {"id": "w-2", "symbol": "EURUSD", "orderType": "Buy", "volume": 0.5}}))
    large = send(gw, orjson.dumps({"type": "position.opened", "accountId": "a",
                                   "position": {"id": "w-3", "symbol": "EURUSD", "orderType": "Sell", "volume": 3}}))
    trade = orjson.dumps({"id": "evt_w4", "type": "trade.opened", "created": int(time.time()),
                          "data": {"position_id": "w-4", "account_id": "a", "symbol": "EURUSD", "side": "buy",
                                   "lots": 2.5}})
    assert gw.post("/hooks/pipsync", trade, ps_sign(trade)).status_code == 200
    wait_for(lambda: len(recorder(gw, "big").delivered) == 2 and len(recorder(gw, "gold").delivered) == 1,
             what="deliveries")
    assert [e.id for e in recorder(gw, "gold").delivered] == [gold]
    big = recorder(gw, "big").delivered
    assert big[0].id == large and big[1].event_type == "trade.opened"
    assert [e.normalized.volume for e in big] == [3.0, 2.5] and big[1].normalized.position_id == "w-4"
    assert recorder(gw, "typed").delivered == []
    assert {d.plugin for d in deliveries(gw.app.config)} == {"gold", "big"}  # no rows for what was filtered
    assert small not in {d.event_id for d in deliveries(gw.app.config)}
    assert metric(gw, "gateway_plugin_filtered_total", plugin="gold", reason="no_match") == 4
    assert metric(gw, "gateway_plugin_filtered_total", plugin="big", reason="no_match") == 3
    assert metric(gw, "gateway_plugin_filtered_total", plugin="typed", reason="error") == 5
    assert metric(gw, "gateway_plugin_filtered_total", plugin="overflow", reason="error") == 5
    # ...and w-0, whose ceil(inf) overflowed, was stored all the same
    assert huge in {e.id for e in events(gw.app.config)}
    send(gw, opened("w-1", symbol="XAUUSD"))  # a repeat: answered duplicate, not counted again
    assert metric(gw, "gateway_plugin_filtered_total", plugin="big", reason="no_match") == 3


def test_the_normalized_shape_serves_every_sender_and_keeps_events_without_meaning(
        make_config: Callable[..., Config], serve: Serve, tmp_path: Path) -> None:
    """A jsonl plugin with shape = "normalized" writes the stored event with `normalized` beside
    it; `history.updated` (no trading meaning) still arrives, with `normalized: null`."""
    out = tmp_path / "normalized.jsonl"
    gw = serve(make_config(plugins=[{"name": "desk", "use": "jsonl", "shape": "normalized",
                                     "options": {"path": str(out)}}]))
    position = send(gw, orjson.dumps({"type": "position.opened", "accountId": "a",
                                      "position": {"id": "n-1", "orderType": "Buy", "volume": 0.5}}))
    history = send(gw, orjson.dumps({"type": "history.updated", "accountId": "a"}))
    wait_for(lambda: out.exists() and len(out.read_bytes().splitlines()) == 2, what="two lines")
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [line["id"] for line in lines] == [position, history]
    assert lines[0]["normalized"]["kind"] == "position.opened" and lines[0]["normalized"]["event_id"] == position
    assert lines[0]["normalized"]["side"] == "buy" and lines[0]["payload"]["position"]["id"] == "n-1"
    assert lines[1]["normalized"] is None and lines[1]["event_type"] == "history.updated"
