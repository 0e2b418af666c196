"""`POST /hooks/{source}`: read the body within limits, verify, store, answer.

This is the hot path, so it is a plain ASGI callable: no Request objects, the body read
once, headers decoded once, one future awaited for the group commit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from gateway import logs
from gateway._asgi import BODY_COMPLETE, Receive, Scope, Send, new_request_id, send_response
from gateway._secret import SecretScanner
from gateway.budget import ByteBudget
from gateway.config import Config, SourceConfig
from gateway.errors import GatewayError, Rejected, send_problem
from gateway.limits import SharedTokenBucket, TokenBucket, client_address
from gateway.metrics import UNKNOWN_SOURCE, Metrics
from gateway.model import Outcome, Verified
from gateway.routing import Router
from gateway.schemes import all_schemes, get_scheme
from gateway.schemes.spec import Headers
from gateway.store import Receipt, Rejection, Store

log = logging.getLogger("gateway.ingest")

PREFIX = "/hooks/"
# Credentials are never stored: HTTP's own, and each scheme's (TradrAPI's static key hash).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
# Bodies between parsing and commit (see gateway/budget.py): 2 MiB is about 27 TradrAPI batches
# of 500 events (75 KB each) in flight, several full groups, or 2,000 single events. Measured
# under 128 concurrent batches: peak RSS 107 MB with it, 331 MB without.
BODY_BUDGET_BYTES = 2 * 1024 * 1024
# Log lines for rejected requests: at most 20 a second after a burst of 100 (docs/security.md).
REJECTION_LINES_PER_SECOND = 20.0
REJECTION_LINES_BURST = 100
# What a verifier run on an empty body can only have read from the headers.
HEADER_CODES = frozenset({"missing_signature", "malformed_signature"})


class ClientGone(Exception):
    """The client disconnected before its body arrived; there is no one to answer."""


class _Seen:
    """What a request showed before it failed, for the rejection log."""

    __slots__ = ("body", "declared", "remote")

    def __init__(self, remote: str | None) -> None:
        self.body: bytes | None = None
        self.declared: int | None = None
        self.remote = remote  # the client's address (behind trusted proxies: from X-Forwarded-For)


def check_declared(scope: Scope, limit: int, seen: _Seen | None = None) -> None:
    """Refuse a body whose Content-Length exceeds `limit` bytes, before it is read."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                break  # the server rejects malformed lengths itself
            if seen is not None:
                seen.declared = int(value)
            if int(value) > limit:
                raise GatewayError(
                    "payload_too_large", f"body is {int(value)} bytes; the limit is {limit} bytes"
                )
            break


async def read_body(scope: Scope, receive: Receive, limit: int, seen: _Seen | None = None) -> bytes:
    """The whole body, refused as soon as it is known to exceed `limit` bytes."""
    check_declared(scope, limit, seen)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise GatewayError("payload_too_large", f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def answer(request_id: str, outcomes: list[Outcome]) -> bytes:
    """The 200 body: what happened to each event of the request."""
    return orjson.dumps({
        "request_id": request_id,
        "events": [{"id": o.id, "status": o.status, "dedup_key": o.dedup_key, "conflicts_with": o.conflicts_with}
                   for o in outcomes],
    })


def _declared(scope: Scope) -> int | None:
    """The Content-Length a refused request announced (its body was never read)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and len(value) < 16:
            return int(value)
    return None


class IngestApp:
    """The ASGI app behind `/hooks/`. `clock` is injectable for tests."""

    def __init__(self, config: Config, store: Store, clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, shared_dir: Path | None = None) -> None:
        """`shared_dir`: where the workers of one supervisor share sources' rate limits."""
        self.sources = config.sources
        # Resolved once: the hot path calls the verifier, never the registry.
        self.verifiers = {name: get_scheme(s.scheme).verify for name, s in config.sources.items()}
        # The credential shape check runs the verifier with no secret: it reads the headers as
        # for real, and no HMAC is computed that could only fail on an empty body.
        self._unkeyed = {name: dataclasses.replace(s, secrets=()) for name, s in config.sources.items()}
        self.credential_headers = CREDENTIAL_HEADERS.union(*(s.credential_headers for s in all_schemes()))
        self.max_body = config.server.max_body_bytes
        self.store = store
        self.clock = clock
        self.router = Router(config.plugins, {name: s.scheme for name, s in config.sources.items()})
        self.secrets = SecretScanner(config.all_secrets())  # misplaced secrets: never echoed nor kept
        self.metrics = metrics if metrics is not None else Metrics()
        self.budget = ByteBudget(BODY_BUDGET_BYTES)
        # Log lines of rejected requests, bounded: an unauthenticated flood must not fill the
        # disk through the log. Each line says how many were held back since the one before.
        self._log_budget = TokenBucket(REJECTION_LINES_PER_SECOND, REJECTION_LINES_BURST, time.monotonic())
        self._log_suppressed = 0
        # Abuse limits (gateway/limits.py says where each applies and why).
        self.trusted_proxies = config.server.trusted_proxies
        self.max_in_flight = config.server.max_in_flight
        self.client_share = max(1, self.max_in_flight // 2)  # what one client address may hold of it
        self.in_flight = 0
        self.in_flight_by_client: dict[str | None, int] = {}
        now = clock()
        self.buckets: dict[str, TokenBucket | SharedTokenBucket] = {
            name: TokenBucket(s.rate_limit, s.rate_burst, now) if shared_dir is None
            else SharedTokenBucket(shared_dir / f"rate-{name}", s.rate_limit, s.rate_burst)
            for name, s in config.sources.items() if s.rate_limit}
        # Series exist from the start, at zero; the hot path increments children, not labels().
        self._requests = {name: self.metrics.requests.labels(name) for name in (*self.sources, UNKNOWN_SOURCE)}
        self._latency = {name: self.metrics.ingest_latency.labels(name) for name in self.sources}
        self._attempt = {name: self.metrics.sender_attempt.labels(name) for name in self.sources}
        self._skew = {name: self.metrics.sender_clock_skew.labels(name) for name in self.sources}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(scope, receive, send)

    def _admit(self, remote: str | None) -> None:
        """A place in flight while the body is read and stored (`_leave` gives it back), or 503
        `overloaded` (gateway/limits.py). Plain calls, not a context manager: this is per request."""
        if self.in_flight >= self.max_in_flight:  # 503, not 429: every sender retries a 5xx
            raise GatewayError("overloaded", f"more than {self.max_in_flight} requests in flight; retry shortly",
                               retry_after=1)
        held = self.in_flight_by_client.get(remote, 0)
        if held >= self.client_share:
            raise GatewayError("overloaded", f"{held} requests from this client are in flight, its share of "
                               f"max_in_flight; retry shortly", retry_after=1)
        self.in_flight += 1
        self.in_flight_by_client[remote] = held + 1

    def _leave(self, remote: str | None) -> None:
        self.in_flight -= 1
        if (left := self.in_flight_by_client[remote] - 1) > 0:
            self.in_flight_by_client[remote] = left
        else:
            del self.in_flight_by_client[remote]

    def _check_credential_shape(self, name: str, headers: Headers, now: float) -> None:
        """Refuse a request whose credential header is missing or malformed, before its body.

        The verifier is pure and reads its headers before the body, so run on an empty body it
        raises `missing_signature` or `malformed_signature` only for what the headers alone show;
        any other outcome (most often `bad_signature`: the body is not there) waits for the body."""
        try:
            self.verifiers[name](b"", headers, now, self._unkeyed[name])
        except Rejected as exc:
            if exc.code in HEADER_CODES:
                raise
        except Exception:  # a verifier that needs the body to say anything: it is asked again with it
            return

    def _remote(self, scope: Scope) -> str | None:
        client = scope.get("client")
        peer = client[0] if client else None
        if not self.trusted_proxies:
            return peer
        return client_address(peer, (v for k, v in scope["headers"] if k == b"x-forwarded-for"), self.trusted_proxies)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        logs.request_id.set(request_id)  # every log line of this request carries it
        name = scope["path"][len(PREFIX):]
        label = name if name in self.sources else UNKNOWN_SOURCE
        if label is UNKNOWN_SOURCE:
            name = self.secrets.redact(name)
        self._requests[label].inc()
        seen = _Seen(self._remote(scope))
        try:
            body = await self._handle(name, scope, receive, request_id, seen)
        except ClientGone:
            return
        except Exception as exc:
            if not isinstance(exc, GatewayError):
                # A bug, not bad input: log it with its traceback, answer in our own format.
                log.exception("internal error", extra={"source": name[:64]})
                exc = GatewayError("internal_error", "the gateway failed unexpectedly; see its log")
            self.metrics.rejections.labels(label, exc.code).inc()
            if self._log_budget.take(time.monotonic()) == 0.0:
                log.warning("request rejected", extra={
                    "source": name[:64], "code": exc.code, "status": exc.status,
                    "remote": seen.remote, "detail": exc.detail, "suppressed": self._log_suppressed,
                })
                self._log_suppressed = 0
            else:  # a flood: counted in gateway_rejections_total and the rejection log, not in lines
                self._log_suppressed += 1
            self.store.record_rejection(Rejection(
                received_at=self.clock(), request_id=request_id, source=name[:64], code=exc.code,
                detail=exc.detail, remote_addr=seen.remote,
                header_names=tuple(self.secrets.redact(k.decode("latin-1")) for k, _ in scope["headers"]),
                body_size=len(seen.body) if seen.body is not None else seen.declared or _declared(scope),
                body_sha256=hashlib.sha256(seen.body).hexdigest() if seen.body is not None else None,
                known_source=name in self.sources,
            ))
            await send_problem(send, exc, request_id)
            return
        await send_response(send, 200, body, b"application/json", request_id)

    def _kept_headers(self, headers: dict[str, str]) -> list[tuple[str, str]]:
        """The headers stored with a receipt: no credential header, and no value holding a
        configured secret (e.g. a proxy's copy). One scan of all values; per value only on a find."""
        kept = [(k, v) for k, v in headers.items() if k not in self.credential_headers]
        if self.secrets.found_in("\n".join([v for _, v in kept])):
            kept = [(k, v) for k, v in kept if not self.secrets.found_in(v)]
        return kept

    def _observe(self, source: str, received_at: float, verified: Verified, outcomes: list[Outcome]) -> None:
        self._latency[source].observe(max(0.0, self.clock() - received_at))
        if len(outcomes) == 1:
            self.metrics.count_events(source, verified.events[0].event_type, outcomes[0].status)
        else:  # a batch: one increment per (type, outcome), not one per event
            counts = Counter((e.event_type, o.status) for e, o in zip(verified.events, outcomes, strict=True))
            for (event_type, status), count in counts.items():
                self.metrics.count_events(source, event_type, status, count)
        if verified.attempt is not None:
            self._attempt[source].observe(verified.attempt)
        if verified.sent_at is not None:
            self._skew[source].observe(verified.sent_at - received_at)

    def _count_filtered(self, filtered: list[list[tuple[str, str]]], outcomes: list[Outcome]) -> None:
        """Events a plugin's `where` kept from it, counted once per stored event (not for repeats)."""
        for kept, outcome in zip(filtered, outcomes, strict=True):
            if outcome.status != "duplicate":
                for plugin, why in kept:
                    self.metrics.plugin_filtered.labels(plugin, why).inc()

    async def _handle(self, name: str, scope: Scope, receive: Receive, request_id: str, seen: _Seen) -> bytes:
        # Everything the head alone shows is answered at once, before the request takes a place
        # in flight: only requests that may be authentic wait for their bodies there.
        source = self.sources.get(name)
        if source is None:
            raise GatewayError("unknown_source", f"no source named {name[:64]!r} is configured")
        if scope["method"] != "POST":
            raise GatewayError("method_not_allowed", "webhooks are accepted with POST only", allow="POST")
        remote = seen.remote
        if not source.allows(remote):
            raise GatewayError("ip_denied", f"{remote} is not in allow_ips for source {name!r}")
        check_declared(scope, self.max_body, seen)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if not scope.get(BODY_COMPLETE):  # a body still to wait for: only with a credential
            self._check_credential_shape(name, headers, self.clock())
        self._admit(remote)
        try:
            try:
                body = await read_body(scope, receive, self.max_body, seen)
            except GatewayError:  # too large: the same answer whether or not it came with its head
                if scope.get(BODY_COMPLETE):
                    self._check_credential_shape(name, headers, self.clock())
                raise
            seen.body = body
            taken = await self.budget.acquire(len(body))
            try:
                return await self._store(name, source, headers, body, remote, request_id)
            finally:
                self.budget.release(taken)
        finally:
            self._leave(remote)

    async def _store(self, name: str, source: SourceConfig, headers: dict[str, str], body: bytes,
                     remote: str | None, request_id: str) -> bytes:
        received_at, arrived = self.clock(), time.monotonic()
        verified = self.verifiers[name](body, headers, received_at, source)
        bucket = self.buckets.get(name)
        if bucket is not None and (wait := bucket.take(received_at)):  # charged only once authentic
            raise GatewayError("rate_limited", f"source {name!r} is limited to {source.rate_limit:g} requests/s "
                               f"(burst {source.rate_burst}); retry later", retry_after=math.ceil(wait))
        if not verified.events:
            return answer(request_id, [])
        receipt = Receipt(
            request_id=request_id,
            source=name,
            scheme=source.scheme,
            received_at=received_at,
            remote_addr=remote,
            attempt=verified.attempt,
            headers=self._kept_headers(headers),
            body=body,
            sent_at=verified.sent_at,
            arrived=arrived,
        )
        routes, filtered = self.router.routes(name, verified.events)
        outcomes = await self.store.ingest(receipt, verified.events, routes)
        self._observe(name, received_at, verified, outcomes)
        if filtered is not None:
            self._count_filtered(filtered, outcomes)
        return answer(request_id, outcomes)
