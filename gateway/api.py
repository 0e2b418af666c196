"""The read API under /api/v1 and the token endpoint, for dashboards and integrations.

Every call needs a bearer token from `POST /oauth/token` (client credentials) in the
Authorization header, or the dashboard's session cookie from `POST /api/v1/session` (the same
token, HttpOnly, never in reach of scripts), unless `[api] public = true` opens the read scope.
A token is never taken from the URL: URLs end up in access logs. Handlers raise GatewayError;
the app renders it as problem+json with a `code` (gateway/error_handlers.py).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import orjson
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import session
from gateway._secret import SecretScanner
from gateway.auth import FailureThrottle, Principal, Tokens
from gateway.config import SCOPES, IPNetwork
from gateway.errors import GatewayError
from gateway.limits import client_address
from gateway.metrics import Metrics
from gateway.model import STORED_STATUSES, iso_utc
from gateway.schemes import scheme_names
from gateway.store import EventQuery, Rejection, Store

MAX_LIMIT = 1000


class IdConvertor(Convertor[int]):
    """A path's id: digits, at most 30 of them (Starlette's `int` converts any number of digits,
    and int() refuses more than 4,300: a 500). A longer one matches no route: 404."""

    regex = "[0-9]{1,30}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())
TOKEN_ENDPOINT = "/oauth/token"  # the rejection log's source for refused token requests (no source has a '/')
log = logging.getLogger("gateway")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _int(request: HTTPConnection, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # '²'.isdigit() is True; past 4,300 digits int() raises: a length bound first
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 30 or not low <= int(raw) <= high:
        raise GatewayError("invalid_parameter", f"{name} must be a whole number from {low} to {high}")
    return int(raw)


# Every time parameter lies within these bounds (UTC): later, a time cannot be converted to UTC
# nor shifted by a day (stats' default window); earlier, it means nothing to a gateway.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)


def _time(request: HTTPConnection, name: str) -> float | None:
    """The one parser of every time parameter (`since`, `until`, on every endpoint and stream)."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        stamp = datetime.fromisoformat(raw)
        stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    except ValueError:
        raise GatewayError("invalid_parameter", f"{name} must be an ISO 8601 time, e.g. 2026-11-20T10:15:00Z") from None
    except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59 is in the year 10000 in UTC
        stamp = LATEST + timedelta(days=1)
    if not EARLIEST <= stamp <= LATEST:
        raise GatewayError("invalid_parameter", f"{name} must lie from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (UTC)")
    return stamp.timestamp()


def _choice(request: HTTPConnection, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query_params.get(name)
    if raw is not None and raw not in choices:
        raise GatewayError("invalid_parameter", f"{name} must be one of {', '.join(choices)}")
    return raw


class Api:
    def __init__(self, store: Store, tokens: Tokens, public: bool, clock: Callable[[], float] = time.time, *,
                 metrics: Metrics | None = None, trusted_proxies: tuple[IPNetwork, ...] = (),
                 plugins: Sequence[str] = ()) -> None:
        """`plugins`: the configured plugins' names (the deliveries' summary lists each)."""
        self.store = store
        self.plugins = tuple(plugins)
        self.tokens = tokens
        self.public = public
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.trusted_proxies = trusted_proxies
        self.throttle = FailureThrottle(tokens.api.token_failures_per_minute)
        self._secrets = SecretScanner([c.secret for c in tokens.api.clients.values()], forms=())

    def routes(self) -> list[BaseRoute]:
        return [
            Route(TOKEN_ENDPOINT, self.token, methods=["POST"]),
            Route("/api/v1/events", self.events),
            Route("/api/v1/events/{event_id:id}", self.event),
            Route("/api/v1/deliveries", self.deliveries),
            Route("/api/v1/deliveries/summary", self.delivery_summary),
            Route("/api/v1/deliveries/retry", self.retry_all, methods=["POST"]),
            Route("/api/v1/deliveries/{delivery_id:id}/retry", self.retry, methods=["POST"]),
            Route("/api/v1/rejections", self.rejections),
            Route("/api/v1/stats", self.stats),
            Route("/api/v1/openapi.json", self.openapi),
            Route("/api/v1/session", self.session, methods=["GET", "POST", "DELETE"]),
            Route("/api/v1/login-options", self.login_options),
        ]

    async def login_options(self, request: Request) -> Response:
        """What a sign-in page needs before anyone signs in (no token): whether the read API is
        open to all (`[api] public`) and whether any client is configured to sign in with."""
        self.credential(request)  # a token in the URL is refused here too
        return json_response({"public": self.public, "clients_configured": bool(self.tokens.api.clients)})

    async def openapi(self, request: Request) -> Response:
        from gateway.openapi import document

        return json_response(document())

    def credential(self, request: HTTPConnection) -> str | None:
        """The bearer token a request carries: the Authorization header's, else the session
        cookie's. A token in the URL is refused, without echoing it."""
        if "access_token" in request.query_params:
            raise GatewayError("invalid_parameter", "access_token in the URL is not accepted (URLs end up in "
                               "logs): send Authorization: Bearer <token>, or sign in at /api/v1/session")
        header = request.headers.get("authorization")
        if header is None:
            cookie = request.cookies.get(session.COOKIE) or None
            if cookie is not None:
                _same_origin(request)
            return cookie
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise GatewayError("invalid_token", "the Authorization header must be 'Bearer <token>'")
        return token.strip()

    def principal(self, request: HTTPConnection, scope: str) -> Principal:
        """Who is calling, checked for `scope`; raises 400/401/403 problems."""
        token = self.credential(request)
        if token is None:
            if self.public and scope == "events:read":
                return Principal(None, frozenset({"events:read"}))
            raise GatewayError("unauthorized", "send Authorization: Bearer <token> from POST /oauth/token")
        principal = self.tokens.verify(token)
        if scope not in principal.scopes:
            raise GatewayError("insufficient_scope", f"this call needs the scope {scope}")
        return principal

    def tokens_expire_at(self, token: str) -> float:
        """When a token that verified stops being accepted (the API clock's seconds)."""
        return self.tokens.expires_at(token)

    def address(self, request: HTTPConnection) -> str | None:
        """The caller's address, through `[server] trusted_proxies` only."""
        return client_address(request.client.host if request.client else None,
                              [v for k, v in request.scope["headers"] if k == b"x-forwarded-for"],
                              self.trusted_proxies)

    async def session(self, request: Request) -> Response:
        """The dashboard's sign-in: POST the token endpoint's form, get the token as an HttpOnly
        cookie (the body says who and for how long, never the token); GET says who is signed
        in (401 if nobody); DELETE signs out."""
        if request.method == "DELETE":
            response = Response(status_code=204)
            session.clear(response, session.over_tls(request, self.trusted_proxies))
            return response
        if request.method == "GET":
            token = self.credential(request)
            if token is None:
                raise GatewayError("unauthorized", "not signed in: POST client_id and client_secret here")
            who = self.tokens.verify(token)
            return json_response({"client_id": who.client_id, "scope": " ".join(sorted(who.scopes)),
                                  "expires_in": max(0, int(self.tokens_expire_at(token) - 1 - self.clock()))})
        granted = orjson.loads((await self.token(request)).body)  # the token endpoint's checks, all of them
        who = self.tokens.verify(granted["access_token"])
        response = json_response({"client_id": who.client_id, "scope": granted["scope"],
                                  "expires_in": granted["expires_in"]})
        response.headers["Cache-Control"] = "no-store"
        session.issue(response, granted["access_token"], granted["expires_in"],
                      session.over_tls(request, self.trusted_proxies))
        return response

    async def token(self, request: Request) -> Response:
        body = b""
        async for chunk in request.stream():  # refused as it grows: never buffered beyond the limit
            body += chunk
            if len(body) > 8192:
                raise GatewayError("invalid_request", "the token request is too large")
        try:
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
        except UnicodeDecodeError:
            raise GatewayError("invalid_request", "the form body is not UTF-8") from None
        if form.get("grant_type") != "client_credentials":
            raise GatewayError("unsupported_grant_type", "grant_type must be client_credentials")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        header = request.headers.get("authorization", "")
        used_basic = header[:6].lower() == "basic "
        if used_basic:
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise GatewayError("invalid_client", "the Basic credentials cannot be decoded") from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise GatewayError("invalid_client", "the Basic credentials need id:secret")
            client_id, secret = unquote_plus(user), unquote_plus(password)  # RFC 6749 2.3.1 form-encodes them
        if not client_id or secret is None:
            raise GatewayError("invalid_client", "send client_id and client_secret (form body or HTTP Basic)", 400)
        now = self.clock()
        address = client_address(request.client.host if request.client else None,
                                 [v for k, v in request.scope["headers"] if k == b"x-forwarded-for"],
                                 self.trusted_proxies)
        keys = (("client", client_id), ("address", address or "?"))
        wait = self.throttle.wait(keys, now)
        if wait > 0:  # refused unchecked: a right secret answered now would tell a guesser it is right
            error = GatewayError("rate_limited", "too many failed client authentications; try again later",
                                 retry_after=math.ceil(wait))
            self._refused(request, error, "throttled", client_id, address, len(body), now)
            raise error
        try:
            client = self.tokens.authenticate(client_id, secret)
        except GatewayError as exc:
            self.throttle.failed(keys, now)
            self._refused(request, exc, "invalid_client", client_id, address, len(body), now)
            # RFC 6749 5.2: 401 with a Basic challenge only when the client used Basic; a form
            # failure is a 400, so that browsers do not pop up a credentials dialog.
            raise GatewayError(exc.code, exc.detail, None if used_basic else 400) from None
        wanted = tuple(form["scope"].split()) if form.get("scope") else client.scopes
        if not wanted or any(s not in client.scopes for s in wanted):
            raise GatewayError("invalid_scope", f"this client may ask for: {' '.join(client.scopes)}")
        ttl = self.tokens.api.token_ttl_seconds
        token = self.tokens.issue(client, wanted)
        response = json_response({"access_token": token, "token_type": "Bearer", "expires_in": ttl,
                                  "scope": " ".join(wanted)})
        response.headers["Cache-Control"] = "no-store"
        return response

    def _refused(self, request: Request, error: GatewayError, reason: str, client_id: str, address: str | None,
                 body_size: int, now: float) -> None:
        """A failed or throttled client authentication: counted, logged and kept in the rejection
        log (in a bucket of its own, TOKEN_ENDPOINT). Names the client id only if it is configured:
        a mistyped secret may have been sent in its place."""
        who = client_id if client_id in self.tokens.api.clients else "an unknown client id"
        detail = f"{error.detail} ({who})"
        self.metrics.token_failures.labels(reason).inc()
        log.warning("token request refused", extra={"code": error.code, "remote": address, "detail": detail})
        self.store.record_rejection(Rejection(
            received_at=now, request_id=request.scope.get("state", {}).get("request_id", ""),
            source=TOKEN_ENDPOINT, code=error.code, detail=detail, remote_addr=address,
            header_names=tuple(self._secrets.redact(k.decode("latin-1")) for k, _ in request.scope["headers"]),
            body_size=body_size, body_sha256=None,  # the body holds a guessed secret: not even its hash
        ))

    def query(self, request: HTTPConnection, since_may_be_id: bool = False) -> EventQuery:
        """The /events filters, shared with the live streams (where a numeric `since` is the
        event id to resume after, not a time)."""
        order = _choice(request, "order", ("newest", "oldest")) or "newest"
        status = _choice(request, "status", STORED_STATUSES)
        scheme = _choice(request, "scheme", scheme_names())
        p = request.query_params
        return EventQuery(
            source=p.get("source"), scheme=scheme, event_type=p.get("type"), account=p.get("account"),
            symbol=p.get("symbol"), entity=p.get("entity"), status=status,
            since=None if since_may_be_id and p.get("since", "").isdigit() else _time(request, "since"),
            until=_time(request, "until"),
            newest_first=order == "newest", limit=_int(request, "limit", 100, 1, MAX_LIMIT),
        )

    async def events(self, request: Request) -> Response:
        self.principal(request, "events:read")
        query = self.query(request)
        after = None
        if "cursor" in request.query_params:
            cursor = self.tokens.read_cursor(request.query_params["cursor"])
            order = "newest" if query.newest_first else "oldest"
            if cursor.get("o") != order or not isinstance(cursor.get("a"), int):
                raise GatewayError("invalid_cursor", "the cursor belongs to a listing in another order")
            after = cursor["a"]
        found = await self.store.list_events(EventQuery(**{**_fields(query), "after": after}))
        next_cursor = None
        if len(found) == query.limit:
            next_cursor = self.tokens.cursor({"a": found[-1].id, "o": "newest" if query.newest_first else "oldest"})
        return json_response({"events": [e.to_json() for e in found], "next_cursor": next_cursor})

    async def event(self, request: Request) -> Response:
        self.principal(request, "events:read")
        event_id = _path_id(request, "event_id")
        detail = await self.store.get_event(event_id)
        if detail is None:
            raise GatewayError("not_found", f"no event {event_id}")
        deliveries = await self.store.list_deliveries(event_id=event_id, limit=1000)
        return json_response({
            **detail.event.to_json(),
            "body_base64": base64.b64encode(detail.body).decode(),
            "headers": [list(h) for h in detail.headers],
            "deliveries": [d.to_json() for d in deliveries],
        })

    async def deliveries(self, request: Request) -> Response:
        self.principal(request, "events:read")
        found = await self.store.list_deliveries(
            plugin=request.query_params.get("plugin"),
            status=_choice(request, "status", ("pending", "delivered", "dead")),
            event_id=_int(request, "event_id", 0, 1, 2**62) or None,
            limit=_int(request, "limit", 100, 1, MAX_LIMIT),
            source=request.query_params.get("source"), event_type=request.query_params.get("event_type"),
        )
        return json_response({"deliveries": [d.to_json() for d in found]})

    async def delivery_summary(self, request: Request) -> Response:
        """Deliveries per plugin and status, counted by the store (a browser counting the rows it
        was sent would count only those), with each plugin's oldest pending delivery."""
        self.principal(request, "events:read")
        counts: dict[str, dict[str, int]] = {name: {} for name in self.plugins}
        for plugin, status, n in await self.store.delivery_counts():
            counts.setdefault(plugin, {})[status] = n
        summary = []
        for plugin, by_status in counts.items():
            oldest = (await self.store.delivery_stats(plugin)).oldest_pending_at if by_status.get("pending") else None
            summary.append({"plugin": plugin, **{s: by_status.get(s, 0) for s in ("pending", "delivered", "dead")},
                            "configured": plugin in self.plugins,
                            "oldest_pending_at": None if oldest is None else iso_utc(oldest)})
        return json_response({"plugins": summary})

    async def retry_all(self, request: Request) -> Response:
        """Body {"plugin": "crm", "status": "dead"}: every dead delivery of the plugin is due again
        now (as `gateway replay --plugin crm --dead`)."""
        self.principal(request, "deliveries:write")
        data = await _json_body(request)
        plugin, status = data.get("plugin"), data.get("status")
        if not isinstance(plugin, str) or not plugin or status != "dead":
            raise GatewayError("invalid_request", 'send {"plugin": "<name>", "status": "dead"}')
        if plugin not in self.plugins:
            raise GatewayError("not_found", f"no plugin {plugin!r} is configured")
        retried = await self.store.replay(plugin, dead=True)
        return json_response({"plugin": plugin, "retried": retried}, status=202)

    async def retry(self, request: Request) -> Response:
        self.principal(request, "deliveries:write")
        delivery_id = _path_id(request, "delivery_id")
        if not await self.store.retry_delivery(delivery_id):
            raise GatewayError("not_found", f"no delivery {delivery_id}")
        (record,) = [d for d in await self.store.list_deliveries(limit=1, delivery_id=delivery_id)]
        return json_response(record.to_json(), status=202)

    async def rejections(self, request: Request) -> Response:
        self.principal(request, "events:read")
        found = await self.store.list_rejections(
            source=request.query_params.get("source"), code=request.query_params.get("code"),
            limit=_int(request, "limit", 100, 1, MAX_LIMIT),
        )
        return json_response({"rejections": [r.to_json() for r in found]})

    async def stats(self, request: Request) -> Response:
        self.principal(request, "events:read")
        until = _time(request, "until")
        until = self.clock() if until is None else until
        since = _time(request, "since")
        since = until - timedelta(days=1).total_seconds() if since is None else since
        rows = await self.store.event_stats(since, until)
        return json_response({
            "since": iso_utc(since), "until": iso_utc(until),
            "counts": [{"source": s, "event_type": t or None, "status": st, "count": n} for s, t, st, n in rows],
            "total": sum(r[3] for r in rows),
        })


MAX_JSON_BODY = 8192


def _same_origin(request: HTTPConnection) -> None:
    """A request that the session cookie authenticates must come from this gateway's own pages.
    SameSite=Strict keeps other sites' pages from sending it, but not a page on another port of
    the same host, or on a sibling subdomain: their `Origin` names them, and they are refused
    (writes with a plain-text body and WebSockets need no preflight). Requests without an Origin
    (a same-origin GET, curl with the cookie) are not from another page's script."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("host", "")
    if origin == "null" or origin.partition("://")[2] != host:
        raise GatewayError("cross_origin", f"the session cookie is not accepted from the page at {origin[:100]!r}: "
                           "sign in on this gateway's own console, or send Authorization: Bearer <token>")


async def _json_body(request: Request) -> dict[str, Any]:
    """A small JSON object body (the API's few writes); 400 or 413 otherwise."""
    body = b""
    async for chunk in request.stream():  # refused as it grows: never buffered beyond the limit
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise GatewayError("payload_too_large", f"the body may hold {MAX_JSON_BODY} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GatewayError("invalid_request", "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise GatewayError("invalid_request", "the body must be a JSON object")
    return data


def _path_id(request: Request, name: str) -> int:
    value: int = request.path_params[name]
    if value > 2**63 - 1:  # SQLite integers are 64-bit: no such row can exist
        raise GatewayError("not_found", f"no such id {value}")
    return value


def _fields(query: EventQuery) -> dict[str, Any]:
    return {name: getattr(query, name) for name in EventQuery.__dataclass_fields__}


__all__ = ["SCOPES", "Api"]
