"""Concurrent senders that behave like the real ones, and the checks of what a run left behind.

Sender threads post MetaCopier and PipSync events and TradrAPI batches (and resend some of
them on purpose). Like real senders, they retry every request that got no answer (connection
error) or a 503 until it is acknowledged; `Ledger` keeps what they were told. `check_store`
then proves, from the store and the plugins' own records, that every event is stored exactly
once under the id its answers gave, and reached every matching plugin in order per entity.
Used by the crash test (tests/test_crash.py) and the supervisor's (tests/test_supervisor.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from gateway.config import load_config
from gateway.model import dedup_key
from tests import store_reads
from tests.conftest import MC_SECRET, PS_SECRET, TR_KEY, mc_sign, ps_sign, tr_sign

# Which events each plugin wants; the checks below model routing independently of gateway/routing.py.
SLOW_TYPES = frozenset({"position.opened", "position.closed", "trade.opened", "trade.closed",
                        "open_position", "close_position"})
PICKY_SOURCES = frozenset({"pipsync", "tradrapi"})
PICKY_TYPES = frozenset({"trade.closed", "close_position"})


def wants(plugin: str, source: str, event_type: str) -> bool:
    if plugin == "slow":
        return event_type in SLOW_TYPES
    if plugin == "picky":
        return source in PICKY_SOURCES and event_type in PICKY_TYPES
    return True  # journal (and any plugin a test adds) takes everything


CONFIG = """
[server]
shutdown_timeout_seconds = 20
{server}

[store]
{store}

[[sources]]
name = "metacopier"
scheme = "metacopier"
secret = "{mc}"

[[sources]]
name = "pipsync"
scheme = "pipsync"
secret = "{ps}"

[[sources]]
name = "tradrapi"
scheme = "tradrapi"
secret = "{tr}"

[[plugins]]
name = "journal"
use = "jsonl"
[plugins.options]
path = "journal.jsonl"

# Slow and flaky: deliveries fall behind ingest, so kills land with the outbox full.
[[plugins]]
name = "slow"
use = "tests.fanout_plugins:recorder"
events = {slow_types}
concurrency = 4
retry_backoff_seconds = 0.05
retry_backoff_max_seconds = 0.2
[plugins.options]
delay = 0.02
fail_rate = 0.05
log = "{dir}/slow.log"

[[plugins]]
name = "picky"
use = "tests.fanout_plugins:recorder"
sources = {picky_sources}
events = {picky_types}
[plugins.options]
log = "{dir}/picky.log"
"""


# --- senders --------------------------------------------------------------------------------


@dataclass
class Message:
    """One request a sender must get acknowledged: its body and the dedup keys it carries."""

    source: str
    body: bytes
    keys: tuple[str, ...]
    attempts: int = 0
    unanswered: bool = False  # an attempt got no answer: it may have been stored meanwhile


@dataclass
class Ledger:
    """What the senders know, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    generated: set[str] = field(default_factory=set)
    acked: dict[str, int] = field(default_factory=dict)  # dedup key -> the id its first 2xx gave
    errors: list[str] = field(default_factory=list)
    in_flight: int = 0
    answers: int = 0  # 2xx answers
    unknown: int = 0  # connection errors and 503s: retried
    stored_unanswered: int = 0  # first answer "duplicate": an unanswered attempt had committed
    aborted: bool = False  # the run failed: stop retrying at once
    # A balancer retries a request on another instance when the first died before answering:
    # the sender then never saw the unanswered attempt, and its first answer may be `duplicate`.
    proxied: bool = False

    def record(self, msg: Message, outcomes: list[dict[str, object]], resend: bool) -> None:
        with self.lock:
            self.answers += 1
            if [o.get("dedup_key") for o in outcomes] != list(msg.keys):
                self.errors.append(f"{msg.source}: answered keys {outcomes} for {msg.keys}")
                return
            statuses = {o["status"] for o in outcomes}
            if len(statuses) != 1:  # nobody else sends these keys: a batch is all new or all known
                self.errors.append(f"{msg.source}: batch stored in part: {outcomes}")
            for outcome in outcomes:
                key, event_id, status = str(outcome["dedup_key"]), outcome["id"], outcome["status"]
                assert isinstance(event_id, int)
                known = self.acked.get(key)
                if known is not None:
                    if (known, status) != (event_id, "duplicate"):
                        self.errors.append(f"{key}: acknowledged as {known}, now {status} {event_id}")
                    continue
                self.acked[key] = event_id
                if status == "duplicate":
                    if resend or not (msg.unanswered or self.proxied):
                        self.errors.append(f"{key}: duplicate ({event_id}) on its first answer, never sent before")
                    self.stored_unanswered += 1
                elif status != "stored":
                    self.errors.append(f"{key}: unexpected status {status}")


class Sender(threading.Thread):
    """One sender: sends its messages one at a time, each retried until acknowledged."""

    def __init__(self, index: int, port: int, seed: int, ledger: Ledger, stop: threading.Event,
                 budget: int, think: float) -> None:
        super().__init__(name=f"sender-{index}", daemon=True)
        self.index, self.port, self.ledger, self.stop = index, port, ledger, stop
        self.budget, self.think = budget, think
        self.rng = random.Random(seed * 1000 + index)
        self.n = 0
        self.open: dict[str, list[str]] = defaultdict(list)  # source -> positions opened, not closed

    def run(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10) as http:
            for _ in range(self.budget):
                if self.stop.is_set():
                    return
                msg = self.next_message()
                with self.ledger.lock:
                    self.ledger.generated.update(msg.keys)
                if not self.deliver(http, msg, resend=False):
                    return
                if self.rng.random() < 0.08 and not self.deliver(http, msg, resend=True):  # a sender's retry
                    return
                time.sleep(self.rng.uniform(0, self.think))

    def deliver(self, http: httpx.Client, msg: Message, resend: bool) -> bool:
        """POST until a 2xx (False: the test is giving up on this sender)."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.ledger.aborted:
                return False
            msg.attempts += 1
            headers = self.sign(msg)
            with self.ledger.lock:
                self.ledger.in_flight += 1
            try:
                reply = http.post(f"/hooks/{msg.source}", content=msg.body, headers=headers)
            except httpx.TransportError:
                msg.unanswered = True
                reply = None
            finally:
                with self.ledger.lock:
                    self.ledger.in_flight -= 1
            if reply is not None and reply.status_code == 200:
                self.ledger.record(msg, reply.json()["events"], resend)
                return True
            if reply is not None and reply.status_code != 503:
                with self.ledger.lock:
                    self.ledger.errors.append(f"{msg.source}: {reply.status_code} {reply.text[:300]}")
                return False
            with self.ledger.lock:
                self.ledger.unknown += 1
            time.sleep(self.rng.uniform(0.02, 0.08))  # the gateway is down or restarting
        with self.ledger.lock:
            self.ledger.errors.append(f"{msg.source}: never acknowledged after {msg.attempts} attempts: {msg.keys}")
        return False

    def sign(self, msg: Message) -> dict[str, str]:
        if msg.source == "metacopier":
            return {**mc_sign(msg.body), "X-MetaCopier-Delivery-Attempt": str(msg.attempts)}
        if msg.source == "pipsync":
            return ps_sign(msg.body)
        return tr_sign()

    def number(self) -> int:
        """A number no other sender uses (every id of this sender comes from it)."""
        self.n += 1
        return (self.index + 1) * 10**7 + self.n

    def lifecycle(self, source: str, new_id: str) -> tuple[str, str]:
        """Open a new position or close one this sender opened: ("opened" | "closed", id)."""
        positions = self.open[source]
        if positions and self.rng.random() < 0.45:
            return "closed", positions.pop(self.rng.randrange(len(positions)))
        positions.append(new_id)
        return "opened", new_id

    def next_message(self) -> Message:
        roll = self.rng.random()
        if roll < 0.4:
            return self.metacopier()
        if roll < 0.8:
            return self.pipsync()
        return self.tradrapi()

    def metacopier(self) -> Message:
        if self.rng.random() < 0.15:
            doc = {"type": "history.updated", "accountId": f"acc-{self.index}", "n": self.number()}
            # no position: named by its content, the digest of its JSON written canonically
            digest = hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).digest()
            return Message("metacopier", orjson.dumps(doc), (dedup_key("metacopier", "history.updated", digest),))
        state, position = self.lifecycle("metacopier", f"p:{self.number()}")  # ':' is escaped in keys
        event_type = f"position.{state}"
        body = orjson.dumps({"type": event_type, "accountId": f"acc-{self.index}",
                             "position": {"id": position, "symbol": "EURUSD", "volume": 0.5}})
        # no openTime nor closeTime: the position id alone names the occurrence
        return Message("metacopier", body, (dedup_key("metacopier", event_type, (position,)),))

    def pipsync(self) -> Message:
        if self.rng.random() < 0.2:
            event_id = f"evt-{self.number()}"  # PipSync's event id names the occurrence
            body = orjson.dumps({"id": event_id, "type": "signal.received",
                                 "data": {"signal_id": f"sig-{self.number()}", "symbol": "EURUSD"}})
            return Message("pipsync", body, (dedup_key("pipsync", "signal.received", (event_id,)),))
        state, position = self.lifecycle("pipsync", str(self.number()))
        event_type = f"trade.{state}"
        event_id = f"evt-{self.number()}"
        body = orjson.dumps({"id": event_id, "type": event_type,
                             "data": {"position_id": position, "symbol": "EURUSD", "lots": 0.5}})
        return Message("pipsync", body, (dedup_key("pipsync", event_type, (event_id,)),))

    def tradrapi(self) -> Message:
        """A batch of 5 to 20 events: opens and closes, balance operations, account updates."""
        members, keys = [], []
        for _ in range(self.rng.randint(5, 20)):
            roll = self.rng.random()
            payload: dict[str, object]
            identity: tuple[str, ...]  # payload.id, plus what tells two occurrences apart
            if roll < 0.6:
                state, entity = self.lifecycle("tradrapi", str(self.number()))
                event_type = "open_position" if state == "opened" else "close_position"
                identity, payload = (entity,), {"id": int(entity), "symbol": "EURUSD", "lots": 1}
            elif roll < 0.85:
                event_type, number = "balance_operation", self.number()
                identity, payload = (str(number),), {"id": number, "amount": 500, "currency": "USD"}
            else:  # an account is updated many times: updatedAt tells the updates apart
                account, updated = (self.index + 1) * 1000 + self.rng.randrange(3), self.number()
                event_type, identity = "account_updated", (str(account), str(updated))
                payload = {"id": account, "updatedAt": updated, "currency": "USD"}
            members.append({"brandId": 12, "serverId": 3, "eventType": event_type, "platform": "MT5",
                            "payload": payload})
            keys.append(dedup_key("tradrapi", event_type, identity))
        body = orjson.dumps({"payload": members, "count": len(members), "attempts": 1})
        return Message("tradrapi", body, tuple(keys))


def toml_list(values: frozenset[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in sorted(values)) + "]"


def read_only(db: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True))


def pending_deliveries(folder: Path) -> int:
    return len(store_reads.deliveries(load_config(folder / "gateway.toml"), status="pending"))

def config_text(folder: Path, server: str = "", store: str = 'path = "gateway.db"') -> str:
    """CONFIG for a run in `folder`, with `server` lines added to its [server] table and `store`
    as its [store] table (default: a SQLite file in `folder`)."""
    return CONFIG.format(mc=MC_SECRET, ps=PS_SECRET, tr=TR_KEY, dir=folder, slow_types=toml_list(SLOW_TYPES),
                         picky_sources=toml_list(PICKY_SOURCES), picky_types=toml_list(PICKY_TYPES),
                         server=server, store=store)


def check_store(folder: Path, ledger: Ledger, received: dict[str, list[int]] | None = None) -> tuple[int, int]:
    """Everything the run must have left behind; returns (events, redeliveries). `received`:
    what plugins the test added (each takes every event) got, event ids in arrival order."""
    if (folder / "gateway.db").exists():  # a SQLite store: the file itself is sound
        with read_only(folder / "gateway.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    config = load_config(folder / "gateway.toml")
    kept = store_reads.events(config)
    rows = [(e.id, e.source, e.event_type, e.entity_id, e.dedup_key) for e in kept]
    twice = [(key, count) for key, count in Counter(e.dedup_key for e in kept).items() if count > 1]
    statuses = {e.status for e in kept}
    deliveries = [(d.plugin, d.event_id, d.status) for d in store_reads.deliveries(config)]
    # Stored exactly once: every event the senders made (all were acknowledged in the end),
    # under the id every answer gave, and nothing else.
    assert not twice, f"stored more than once: {twice[:10]}"
    assert statuses <= {"stored"}, statuses  # retries are byte for byte: never a conflict
    assert ledger.generated == set(ledger.acked), f"never acknowledged: {sorted(ledger.generated - set(ledger.acked))}"
    stored = {key: event_id for event_id, _, _, _, key in rows}
    lost = {key: event_id for key, event_id in ledger.acked.items() if stored.get(key) != event_id}
    assert not lost, f"acknowledged (key: id) but not stored under that id: {list(lost.items())[:10]}"
    assert set(stored) == set(ledger.acked), f"stored, never sent: {sorted(set(stored) - set(ledger.acked))[:10]}"
    events = {event_id: (source, event_type, entity) for event_id, source, event_type, entity, _ in rows}

    # The outbox holds exactly one row per matching (plugin, event), all delivered.
    plugins = ("journal", "slow", "picky", *(received or {}))
    expected = {(p, i) for i, (source, event_type, _) in events.items()
                for p in plugins if wants(p, source, event_type)}
    assert {(plugin, event_id) for plugin, event_id, _ in deliveries} == expected
    assert {status for _, _, status in deliveries} == {"delivered"}

    # Each plugin got every event it wants, at least once, none it does not, and the first
    # delivery of each (source, entity) in event-id order.
    seen = {
        "journal": [orjson.loads(line)["id"] for line in (folder / "journal.jsonl").read_bytes().splitlines()],
        "slow": [int(line.split()[0]) for line in (folder / "slow.log").read_text().splitlines()],
        "picky": [int(line.split()[0]) for line in (folder / "picky.log").read_text().splitlines()],
        **(received or {}),
    }
    redelivered = 0
    for plugin, ids in seen.items():
        wanted = {i for p, i in expected if p == plugin}
        assert wanted <= set(ids), f"{plugin} never got {sorted(wanted - set(ids))[:20]}"
        assert set(ids) <= wanted, f"{plugin} got events it does not match: {sorted(set(ids) - wanted)[:20]}"
        redelivered += len(ids) - len(set(ids))
        lines: dict[tuple[str, str], list[int]] = defaultdict(list)
        for event_id in dict.fromkeys(ids):  # first deliveries, in the order they happened
            source, _, entity = events[event_id]
            lines[(source, entity)].append(event_id)
        disorder = {line: order for line, order in lines.items() if order != sorted(order)}
        assert not disorder, f"{plugin} got events of one entity out of order: {disorder}"
    return len(events), redelivered
