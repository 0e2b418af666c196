"""Deduplication through the real app over HTTP: one stored copy per real occurrence, retries
answered `duplicate`, conflicting repeats kept as `conflict`, ids never reused, delivery in
order per business entity (issue 12; the rules are in docs/architecture.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.config import Config, parse_config
from gateway.store import open_store
from tests.conftest import RunningGateway, mc_sign, ps_sign, source_table, tr_sign

Serve = Callable[..., RunningGateway]


def recorder(name: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "use": "tests.fanout_plugins:recorder", "retry_backoff_seconds": 0.01,
            "retry_backoff_max_seconds": 0.05, "options": options}


@pytest.fixture
def config(tmp_path: Path) -> Callable[..., Config]:
    """A config with one source per scheme, the read API open (public) and optional plugins."""

    def make(*, plugins: list[dict[str, Any]] | None = None, **metacopier: Any) -> Config:
        data = {"sources": [source_table("metacopier", "metacopier", **metacopier),
                            source_table("pipsync", "pipsync"), source_table("tradrapi", "tradrapi")],
                "store": {"path": str(tmp_path / "gateway.db")}, "plugins": plugins or [],
                "api": {"public": True}}
        return parse_config(data, origin="test.toml", base_dir=tmp_path)

    return make


def post(gw: RunningGateway, source: str, body: bytes, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """POST a signed webhook; returns the response's event entries."""
    if headers is None:
        headers = {"metacopier": lambda: mc_sign(body), "pipsync": lambda: ps_sign(body), "tradrapi": tr_sign}[source]()
    r = gw.post(f"/hooks/{source}", body, headers)
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def one(gw: RunningGateway, source: str, body: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    (entry,) = post(gw, source, body, headers)
    return entry


def served(gw: RunningGateway, event_id: int) -> dict[str, Any]:
    r = gw.client.get(f"/api/v1/events/{event_id}")
    assert r.status_code == 200, r.text
    event: dict[str, Any] = r.json()
    return event


def mc_position(event_type: str, position: str, **fields: Any) -> bytes:
    base: dict[str, Any] = {"id": position, "symbol": "EURUSD", "orderType": "Buy", "volume": 0.5,
                            "openTime": "2026-11-20T10:15:01Z"}
    return orjson.dumps({"type": event_type, "timestamp": "2026-11-20T10:15:02.331Z", "accountId": "acc-1",
                         "position": base | fields})


def tr_body(*members: dict[str, Any], attempts: int = 1) -> bytes:
    return orjson.dumps({"payload": list(members), "count": len(members), "attempts": attempts})


def tr_account(event_type: str, account: Any, **payload: Any) -> dict[str, Any]:
    return {"brandId": 12, "serverId": 3, "accountId": account, "eventType": event_type, "platform": "MT5",
            "payload": {"id": account, "currency": "USD", "createdAt": 1763633702000} | payload}


def test_two_partial_closes_of_one_position_are_both_stored(config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(config())
    opened = one(gw, "metacopier", mc_position("position.opened", "555"))
    first = one(gw, "metacopier", mc_position("position.closed", "555", volume=0.2,
                                               closeTime="2026-11-20T11:00:00Z"))
    second = one(gw, "metacopier", mc_position("position.closed", "555", volume=0.3,
                                                closeTime="2026-11-20T12:00:00Z"))
    assert [e["status"] for e in (opened, first, second)] == ["stored", "stored", "stored"]
    assert len({opened["id"], first["id"], second["id"]}) == 3
    assert first["dedup_key"] == "metacopier:position.closed:555@2026-11-20T11:00:00Z"
    # one position: the business entity is the same for all three
    assert {served(gw, e["id"])["entity_id"] for e in (opened, first, second)} == {"position:555"}


def test_changed_volume_is_kept_as_a_conflict_and_its_retry_is_its_duplicate(
        config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(config())
    original = one(gw, "metacopier", mc_position("position.opened", "555", volume=0.5))
    changed_body = mc_position("position.opened", "555", volume=5.0)
    changed = one(gw, "metacopier", changed_body)
    assert changed["status"] == "conflict"
    assert changed["conflicts_with"] == original["id"]
    assert changed["id"] != original["id"]
    assert changed["dedup_key"] == original["dedup_key"]
    assert original["conflicts_with"] is None
    # each version's retry is a duplicate of that version, not a new conflict
    again = one(gw, "metacopier", changed_body)
    assert (again["status"], again["id"]) == ("duplicate", changed["id"])
    first_again = one(gw, "metacopier", mc_position("position.opened", "555", volume=0.5))
    assert (first_again["status"], first_again["id"]) == ("duplicate", original["id"])
    # both versions are kept and served, the conflict pointing at the first
    kept = served(gw, changed["id"])
    assert (kept["status"], kept["conflicts_with"], kept["payload"]["position"]["volume"]) == ("conflict",
                                                                                               original["id"], 5.0)
    assert served(gw, original["id"])["payload"]["position"]["volume"] == 0.5
    listed = gw.client.get("/api/v1/events", params={"status": "conflict"}).json()["events"]
    assert [(e["id"], e["conflicts_with"]) for e in listed] == [(changed["id"], original["id"])]
    metrics = gw.client.get("/metrics").text
    assert 'gateway_dedup_conflicts_total{event_type="position.opened",source="metacopier"} 1.0' in metrics


def test_retry_with_a_fresh_timestamp_header_and_the_same_body_is_a_duplicate(
        config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(config())
    body = mc_position("position.opened", "777")
    first = one(gw, "metacopier", body, mc_sign(body, ts_ms=int(time.time() * 1000) - 4000))
    retry = one(gw, "metacopier", body, mc_sign(body) | {"X-MetaCopier-Delivery-Attempt": "2"})
    assert (retry["status"], retry["id"]) == ("duplicate", first["id"])


def test_root_timestamp_is_ignored_by_default_and_compared_when_configured(
        config: Callable[..., Config], serve: Serve, tmp_path: Path) -> None:
    gw = serve(config())
    first = one(gw, "metacopier", mc_position("position.opened", "888"))
    restamped = orjson.loads(mc_position("position.opened", "888"))
    restamped["timestamp"] = "2026-11-20T10:15:09.000Z"
    again = one(gw, "metacopier", orjson.dumps(restamped))
    assert (again["status"], again["id"]) == ("duplicate", first["id"])

    strict = serve(_strict_config(tmp_path))
    first = one(strict, "metacopier", mc_position("position.opened", "888"))
    again = one(strict, "metacopier", orjson.dumps(restamped))
    assert (again["status"], again["conflicts_with"]) == ("conflict", first["id"])


def _strict_config(tmp_path: Path) -> Config:
    folder = tmp_path / "strict"
    folder.mkdir()
    data = {"sources": [source_table("metacopier", "metacopier", dedup_ignore_fields=[])],
            "store": {"path": str(folder / "gateway.db")}, "api": {"public": True}}
    return parse_config(data, origin="strict.toml", base_dir=folder)


def test_pipsync_retry_with_the_same_id_is_a_duplicate_and_new_content_a_conflict(
        config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(config())
    doc = {"id": "evt_01JD3W8K2M", "type": "trade.closed", "created": 1763633702,
           "data": {"trade_id": "tr_9f2c", "position_id": "771203", "account_id": "acc_12", "lots": 0.5}}
    first = one(gw, "pipsync", orjson.dumps(doc))
    # a retry, re-signed with a new t, whitespace and key order differing: the same event
    spaced = orjson.dumps(dict(reversed(list(doc.items()))), option=orjson.OPT_INDENT_2)
    retry = one(gw, "pipsync", spaced)
    assert (retry["status"], retry["id"]) == ("duplicate", first["id"])
    # another close of the same position with its own event id: a new occurrence
    other = one(gw, "pipsync", orjson.dumps(doc | {"id": "evt_01JD3W8K2N"}))
    assert other["status"] == "stored"
    changed = one(gw, "pipsync", orjson.dumps(doc | {"data": doc["data"] | {"lots": 0.7}}))
    assert (changed["status"], changed["conflicts_with"]) == ("conflict", first["id"])


def test_tradrapi_id_holding_at_sign_never_meets_an_update_time(config: Callable[..., Config],
                                                                 serve: Serve) -> None:
    gw = serve(config())
    at = tr_account("account_updated", 1)
    at["payload"] = {"id": "X@5", "currency": "USD"}
    timed = tr_account("account_updated", 1)
    timed["payload"] = {"id": "X", "updatedAt": 5, "currency": "USD"}
    a, b = post(gw, "tradrapi", tr_body(at, timed))
    assert (a["status"], b["status"]) == ("stored", "stored")
    assert a["dedup_key"] != b["dedup_key"]


def test_identical_and_conflicting_members_of_one_batch(config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(config())
    member = tr_account("account_updated", 42, updatedAt=1763633800000, leverage=100)
    changed = tr_account("account_updated", 42, updatedAt=1763633800000, leverage=500)
    entries = post(gw, "tradrapi", tr_body(member, member, changed))
    assert [e["status"] for e in entries] == ["stored", "duplicate", "conflict"]
    assert entries[1]["id"] == entries[0]["id"]
    assert entries[2]["conflicts_with"] == entries[0]["id"]
    # the batch retried with a higher attempt counter: all duplicates of what was stored
    retry = post(gw, "tradrapi", tr_body(member, member, changed, attempts=2))
    assert [(e["status"], e["id"]) for e in retry] == [("duplicate", entries[0]["id"]), ("duplicate", entries[0]["id"]),
                                                       ("duplicate", entries[2]["id"])]


@pytest.mark.parametrize("position_id", ["555", 555, 555.0, 5.5, 18446744073709551617, None, {"n": 1}, True, ""])
def test_ids_of_every_json_type_never_merge_and_never_split(config: Callable[..., Config], serve: Serve,
                                                             position_id: Any) -> None:
    gw = serve(config())
    raw = (b'{"type":"position.opened","accountId":"a","position":{"id":%s,"openTime":"2026-11-20T10:15:01Z",'
           b'"volume":%s}}')
    ident = b"18446744073709551617" if position_id == 18446744073709551617 else orjson.dumps(position_id)
    first = one(gw, "metacopier", raw % (ident, b"0.5"))
    retry = one(gw, "metacopier", raw % (ident, b"0.5"))
    other = one(gw, "metacopier", raw % (ident, b"0.7"))
    assert first["status"] == "stored"
    assert (retry["status"], retry["id"]) == ("duplicate", first["id"])
    assert other["status"] in ("stored", "conflict")
    assert other["id"] != first["id"]


def test_integers_beyond_64_bits_are_compared_exactly(config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(config())
    raw = b'{"type":"position.opened","position":{"id":"9","openTime":"t","magic":%s}}'
    first = one(gw, "metacopier", raw % b"18446744073709551617")
    other = one(gw, "metacopier", raw % b"18446744073709551618")  # reads as the same float
    assert other["status"] == "conflict"
    assert other["id"] != first["id"]


@pytest.mark.parametrize("open_time", ["2026-11-20T10:15:01Z", "2026-11-20T10:15:01.000+00:00", 1763633701000, None])
def test_time_fields_in_any_format_or_missing(config: Callable[..., Config], serve: Serve, open_time: Any) -> None:
    gw = serve(config())
    fields = {} if open_time is None else {"openTime": open_time}
    body = orjson.dumps({"type": "position.opened", "position": {"id": "31", "volume": 1} | fields})
    first = one(gw, "metacopier", body)
    assert first["status"] == "stored"
    assert one(gw, "metacopier", body)["status"] == "duplicate"


def test_ids_keep_growing_after_everything_is_pruned(config: Callable[..., Config], serve: Serve) -> None:
    cfg = config()
    gw = serve(cfg)
    ids = [one(gw, "metacopier", mc_position("position.opened", str(n)))["id"] for n in range(3)]
    gw.__exit__()

    async def prune_everything() -> int:
        store = open_store(cfg.store)
        await store.open()
        try:
            pruned = 0
            while batch := await store.prune(time.time() + 60):
                pruned += batch
            return pruned
        finally:
            await store.close()

    assert asyncio.run(prune_everything()) == 3
    gw = serve(cfg)
    assert gw.client.get("/api/v1/events").json()["events"] == []
    fresh = one(gw, "metacopier", mc_position("position.opened", "new"))
    assert fresh["status"] == "stored"
    assert fresh["id"] > max(ids)


def test_account_update_is_never_delivered_before_its_create(config: Callable[..., Config], serve: Serve) -> None:
    # the create's first delivery fails: the update, sent after, must wait for it
    gw = serve(config(plugins=[recorder("ops", fail_first=1)]))
    created = post(gw, "tradrapi", tr_body(tr_account("account_created", 99121)))[0]
    balance = {"brandId": 12, "serverId": 3, "accountId": 99121, "eventType": "balance_operation",
               "platform": "MT5", "payload": {"id": 7, "platformOperationId": "op-9", "amount": 500,
                                              "createdAt": 1763633705000}}
    updated_entries = post(gw, "tradrapi", tr_body(balance, tr_account("account_updated", 99121,
                                                                       updatedAt=1763633709000)))
    plugin = gw.app.plugins["ops"]
    deadline = time.monotonic() + 10
    while len(plugin.delivered) < 3:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, plugin.calls  # type: ignore[attr-defined]
        time.sleep(0.02)
    delivered = [e.id for e in plugin.delivered]  # type: ignore[attr-defined]
    assert delivered == [created["id"], *(e["id"] for e in updated_entries)]
    assert (created["id"], 1) in plugin.calls  # type: ignore[attr-defined]  # the failed first attempt
    assert {e.entity_id for e in plugin.delivered} == {"account:99121"}  # type: ignore[attr-defined]


def test_plugins_get_conflicts_with_their_status_and_first_version(config: Callable[..., Config],
                                                                   serve: Serve) -> None:
    gw = serve(config(plugins=[recorder("all")]))
    original = one(gw, "metacopier", mc_position("position.opened", "600", volume=1.0))
    changed = one(gw, "metacopier", mc_position("position.opened", "600", volume=2.0))
    plugin = gw.app.plugins["all"]
    deadline = time.monotonic() + 10
    while len(plugin.delivered) < 2:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    got = {e.id: (e.status, e.conflicts_with) for e in plugin.delivered}  # type: ignore[attr-defined]
    assert got == {original["id"]: ("stored", None), changed["id"]: ("conflict", original["id"])}


def test_responses_always_carry_conflicts_with(config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(config())
    entry = one(gw, "pipsync", orjson.dumps({"id": "e1", "type": "trade.opened", "data": {"position_id": "1"}}))
    assert entry == {"id": entry["id"], "status": "stored", "dedup_key": "pipsync:trade.opened:e1",
                     "conflicts_with": None}
