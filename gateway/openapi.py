"""The OpenAPI 3.1 description of the read API, served at /api/v1/openapi.json.

tests/test_openapi.py checks it against the running app with schemathesis: every response
the app gives must be one this document declares, with a body that matches its schema.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.model import STORED_STATUSES
from gateway.schemes import scheme_names

NULLABLE_STRING = {"type": ["string", "null"]}
TIME = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


PROBLEM = {"description": "A problem (RFC 9457) with a stable code",
           "content": {"application/problem+json": {"schema": _ref("Problem")}}}
AUTH_ERRORS = {"401": PROBLEM, "403": PROBLEM}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _scheme() -> dict[str, Any]:
    """Every registered scheme (registered before the document is asked for)."""
    return {"type": "string", "enum": list(scheme_names())}


def _event_filters() -> list[dict[str, Any]]:
    return [
        _query("source", "Only this source."),
        _query("scheme", "Only this scheme.", _scheme()),
        _query("type", "Event types matching this glob, e.g. position.*"),
        _query("account", "Only this account id."),
        _query("symbol", "Only this symbol."),
        _query("entity", "Only this business entity, exactly: position:<id>, account:<id>, order:<id>, ..."),
        _query("status", "Only this status.", {"type": "string", "enum": list(STORED_STATUSES)}),
        _query("since", "Received at or after (ISO 8601).", TIME),
        _query("until", "Received before (ISO 8601).", TIME),
    ]


def _event() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "source", "scheme", "event_type", "entity_id", "dedup_key", "status", "conflicts_with",
                     "received_at", "payload"],
        "properties": {
            "id": {"type": "integer"},
            "source": {"type": "string"},
            "scheme": _scheme(),
            "event_type": NULLABLE_STRING,
            "entity_id": {"type": "string", "description": "The business entity the event is about (position:<id>, "
                          "account:<id>, order:<id>, ...): delivery to plugins is ordered per entity"},
            "dedup_key": {"type": "string", "description": "The identity of this one occurrence"},
            "status": {"type": "string", "enum": list(STORED_STATUSES)},
            "conflicts_with": {"type": ["integer", "null"], "description": "For a conflict (the identity was stored "
                               "already with other content), the id of the first stored version; else null"},
            "account": NULLABLE_STRING,
            "symbol": NULLABLE_STRING,
            "received_at": TIME,
            "request_id": {"type": "string"},
            "attempt": {"type": ["integer", "null"]},
            "remote_addr": NULLABLE_STRING,
            "quarantine_reason": NULLABLE_STRING,
            "payload": {"description": "The parsed event; null when it could not be parsed"},
            "normalized": {"type": ["object", "null"], "description": "Its trading meaning in one shape for "
                           "every sender (kind, account, position_id, side, volume, price, profit, ...; "
                           "docs/ledger.md); null for an event without one"},
        },
    }


DELIVERY = {
    "type": "object",
    "required": ["id", "event_id", "plugin", "status", "attempts"],
    "properties": {
        "id": {"type": "integer"},
        "event_id": {"type": "integer"},
        "plugin": {"type": "string"},
        "source": {"type": "string"},
        "entity_id": {"type": "string"},
        "event_type": NULLABLE_STRING,
        "status": {"type": "string", "enum": ["pending", "delivered", "dead"]},
        "attempts": {"type": "integer"},
        "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        "created_at": TIME,
        "updated_at": TIME,
        "last_error": NULLABLE_STRING,
    },
}

REJECTION = {
    "type": "object",
    "required": ["id", "received_at", "request_id", "source", "code", "detail"],
    "properties": {
        "id": {"type": "integer"},
        "received_at": TIME,
        "request_id": {"type": "string"},
        "source": {"type": "string"},
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "remote_addr": NULLABLE_STRING,
        "header_names": {"type": "array", "items": {"type": "string"}},
        "body_size": {"type": ["integer", "null"]},
        "body_sha256": NULLABLE_STRING,
    },
}

NUMBER_OR_NULL = {"type": ["number", "null"]}
ANOMALY_KIND = {"type": "string", "enum": ["close_without_open", "overclosed", "stale_open", "conflict", "reopened",
                                           "side_or_symbol_mismatch"]}
STATE = {"type": "string", "enum": ["open", "partially_closed", "closed"]}
POSITION = {
    "type": "object",
    "required": ["id", "source", "account", "position_id", "state", "event_ids", "anomalies", "updated_at"],
    "properties": {
        "id": {"type": "integer", "description": "The ledger's id of the position (the listing's order)"},
        "source": {"type": "string"}, "account": {"type": "string", "description": '"" when the sender gives none'},
        "position_id": {"type": "string"}, "state": STATE,
        "side": {"type": ["string", "null"], "enum": ["buy", "sell", None]}, "symbol": NULLABLE_STRING,
        "opened_volume": NUMBER_OR_NULL, "closed_volume": {"type": "number"}, "open_volume": NUMBER_OR_NULL,
        "open_price": NUMBER_OR_NULL, "close_prices": {"type": "array", "items": {"type": "number"}},
        "profit": NUMBER_OR_NULL, "opened_at": NULLABLE_STRING, "closed_at": NULLABLE_STRING,
        "last_event_at": NULLABLE_STRING, "event_ids": {"type": "array", "items": {"type": "integer"}},
        "anomalies": {"type": "array", "description": "What its events show now (the records: /api/v1/anomalies)",
                      "items": {"type": "object", "properties": {
                          "kind": ANOMALY_KIND, "event_ids": {"type": "array", "items": {"type": "integer"}},
                          "detail": {"type": "string"}}}},
        "updated_at": TIME,
    },
}
ANOMALY = {
    "type": "object",
    "required": ["id", "kind", "source", "account", "position_id", "event_ids", "detail", "raised_at", "resolved_at",
                 "acknowledged_at", "note", "open"],
    "properties": {
        "id": {"type": "integer"}, "kind": ANOMALY_KIND, "source": {"type": "string"},
        "account": {"type": "string"}, "position_id": {"type": "string"},
        "event_ids": {"type": "array", "items": {"type": "integer"}}, "detail": {"type": "string"},
        "raised_at": TIME, "resolved_at": {"type": ["string", "null"], "format": "date-time"},
        "acknowledged_at": {"type": ["string", "null"], "format": "date-time"}, "note": NULLABLE_STRING,
        "open": {"type": "boolean", "description": "Neither resolved nor acknowledged"},
    },
}
NORMALIZED = {"type": "object", "description": "A normalized event (docs/ledger.md)",
              "required": ["kind", "event_id"], "properties": {"kind": {"type": "string"},
                                                               "event_id": {"type": ["integer", "null"]},
                                                               "conflict": {"type": "boolean"}}}


def _path(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


def _ledger_paths() -> dict[str, Any]:
    page = {"type": "string", "description": "next_cursor of the previous page"}
    truth = {"type": "string", "enum": ["true", "false"]}
    return {
        "/api/v1/positions": {"get": {
            "operationId": "listPositions", "summary": "The position ledger, newest positions first",
            "security": SECURED,
            "parameters": [_query("source", "Only this source."), _query("account", "Only this account."),
                           _query("symbol", "Only this symbol."), _query("state", "Only this state.", STATE),
                           _query("anomalous", "true: only positions with an open anomaly; false: none", truth),
                           LIMIT, _query("cursor", "next_cursor of the previous page", page)],
            "responses": {
                "200": _json({"type": "object", "required": ["positions", "next_cursor", "ledger"], "properties": {
                    "positions": {"type": "array", "items": _ref("Position")}, "next_cursor": NULLABLE_STRING,
                    "ledger": {"type": "object", "properties": {
                        "checkpoint": {"type": "integer", "description": "The last event id in the ledger"},
                        "latest_event_id": {"type": "integer"}, "lag_seconds": {"type": "number"}}}}},
                    "A page of positions"),
                "400": PROBLEM, **AUTH_ERRORS},
        }},
        "/api/v1/positions/{source}/{account}/{position_id}": {"get": {
            "operationId": "getPosition", "summary": "One position with its normalized events and anomalies",
            "security": SECURED,
            "parameters": [_path("source"), {**_path("account"), "description": '"-" when the sender names none'},
                           _path("position_id")],
            "responses": {
                "200": _json({"allOf": [_ref("Position"), {"type": "object",
                              "required": ["events", "anomaly_records"],
                              "properties": {"events": {"type": "array", "items": NORMALIZED},
                                             "anomaly_records": {"type": "array", "items": _ref("Anomaly")}}}]},
                             "The position"),
                "404": PROBLEM, **AUTH_ERRORS},
        }},
        "/api/v1/anomalies": {"get": {
            "operationId": "listAnomalies", "summary": "Anomalies the ledger raised, newest first",
            "security": SECURED,
            "parameters": [_query("source", "Only this source."), _query("account", "Only this account."),
                           _query("position_id", "Only this position."),
                           _query("kind", "Only this kind.", ANOMALY_KIND),
                           _query("open", "true: neither resolved nor acknowledged; false: the others", truth),
                           LIMIT, _query("cursor", "next_cursor of the previous page", page)],
            "responses": {
                "200": _json({"type": "object", "required": ["anomalies", "next_cursor"], "properties": {
                    "anomalies": {"type": "array", "items": _ref("Anomaly")}, "next_cursor": NULLABLE_STRING}},
                    "A page of anomalies"),
                "400": PROBLEM, **AUTH_ERRORS},
        }},
        "/api/v1/anomalies/{anomaly_id}/ack": {"post": {
            "operationId": "acknowledgeAnomaly",
            "summary": "Acknowledge an anomaly with a note (scope deliveries:write); again replaces the note",
            "security": [{"oauth2": ["deliveries:write"]}, {"bearer": []}],
            "parameters": [_path("anomaly_id", {"type": "integer"})],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["note"],
                "properties": {"note": {"type": "string", "minLength": 1, "maxLength": 2000}}}}}},
            "responses": {"200": _json(_ref("Anomaly"), "Acknowledged"), "400": PROBLEM, "404": PROBLEM,
                          "413": PROBLEM, **AUTH_ERRORS},
        }},
    }


PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "request_id": {"type": "string"},
        "error": {"type": "string", "description": "RFC 6749 error name, on /oauth/token"},
    },
}

LIMIT = _query("limit", "Page size.", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100})
SECURED = [{"oauth2": ["events:read"]}, {"bearer": []}]
TOKEN_FORM = {"type": "object", "required": ["grant_type"],
              "properties": {"grant_type": {"type": "string", "enum": ["client_credentials"]},
                             "client_id": {"type": "string"}, "client_secret": {"type": "string"},
                             "scope": {"type": "string"}}}
SESSION = _json({"type": "object", "required": ["client_id", "scope", "expires_in"],
                 "properties": {"client_id": {"type": "string"}, "scope": {"type": "string"},
                                "expires_in": {"type": "integer"}}}, "The signed-in client and its time left")


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Trading webhook gateway read API", "version": __version__,
                 "description": "Events, deliveries, rejections, statistics and the position ledger of the "
                                "gateway's store."},
        "paths": {
            "/oauth/token": {"post": {
                "operationId": "token",
                "summary": "Exchange client credentials for a bearer token (RFC 6749 section 4.4)",
                "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
                    "schema": TOKEN_FORM}}},
                "responses": {
                    "200": _json({"type": "object", "required": ["access_token", "token_type", "expires_in", "scope"],
                                  "properties": {"access_token": {"type": "string"},
                                                 "token_type": {"type": "string", "enum": ["Bearer"]},
                                                 "expires_in": {"type": "integer"}, "scope": {"type": "string"}}},
                                 "A token"),
                    "400": PROBLEM, "401": PROBLEM,
                    "429": PROBLEM},  # too many failed authentications from this client id or address
            }},
            "/api/v1/events": {"get": {
                "operationId": "listEvents", "summary": "Stored events, filtered and paginated",
                "security": SECURED,
                "parameters": [*_event_filters(), LIMIT,
                               _query("order", "newest (default) or oldest first",
                                      {"type": "string", "enum": ["newest", "oldest"]}),
                               _query("cursor", "next_cursor of the previous page")],
                "responses": {
                    "200": _json({"type": "object", "required": ["events", "next_cursor"],
                                  "properties": {"events": {"type": "array", "items": _ref("Event")},
                                                 "next_cursor": NULLABLE_STRING}}, "A page of events"),
                    "400": PROBLEM, **AUTH_ERRORS},
            }},
            "/api/v1/events/{event_id}": {"get": {
                "operationId": "getEvent", "summary": "One event with its raw body, headers and deliveries",
                "security": SECURED,
                "parameters": [{"name": "event_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "responses": {
                    "200": _json({"allOf": [_ref("Event"), {"type": "object",
                                  "required": ["body_base64", "headers", "deliveries"],
                                  "properties": {"body_base64": {"type": "string"},
                                                 "headers": {"type": "array", "items": {
                                                     "type": "array", "items": {"type": "string"}}},
                                                 "deliveries": {"type": "array", "items": _ref("Delivery")}}}]},
                                 "The event"),
                    "404": PROBLEM, **AUTH_ERRORS},
            }},
            "/api/v1/deliveries": {"get": {
                "operationId": "listDeliveries", "summary": "Deliveries to plugins, newest first",
                "security": SECURED,
                "parameters": [_query("plugin", "Only this plugin."),
                               _query("status", "Only this status.",
                                      {"type": "string", "enum": ["pending", "delivered", "dead"]}),
                               _query("event_id", "Only this event's.", {"type": "integer", "minimum": 1}),
                               _query("source", "Only this source's."), _query("event_type", "Only this event type."),
                               LIMIT],
                "responses": {
                    "200": _json({"type": "object", "required": ["deliveries"],
                                  "properties": {"deliveries": {"type": "array", "items": _ref("Delivery")}}},
                                 "Deliveries"),
                    "400": PROBLEM, **AUTH_ERRORS},
            }},
            "/api/v1/deliveries/summary": {"get": {
                "operationId": "deliverySummary",
                "summary": "Deliveries per plugin and status, counted by the store, and the oldest pending",
                "security": SECURED,
                "responses": {
                    "200": _json({"type": "object", "required": ["plugins"], "properties": {"plugins": {
                        "type": "array", "items": {"type": "object", "required": [
                            "plugin", "pending", "delivered", "dead", "configured", "oldest_pending_at"],
                            "properties": {"plugin": {"type": "string"}, "pending": {"type": "integer"},
                                           "delivered": {"type": "integer"}, "dead": {"type": "integer"},
                                           "configured": {"type": "boolean"},
                                           "oldest_pending_at": {"type": ["string", "null"], "format": "date-time"}},
                        }}}}, "Counts per plugin"),
                    **AUTH_ERRORS},
            }},
            "/api/v1/deliveries/retry": {"post": {
                "operationId": "retryDeadDeliveries",
                "summary": "Deliver every dead delivery of a plugin again, now (scope deliveries:write)",
                "security": [{"oauth2": ["deliveries:write"]}, {"bearer": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["plugin", "status"],
                    "properties": {"plugin": {"type": "string", "minLength": 1},
                                   "status": {"type": "string", "enum": ["dead"]}}}}}},
                "responses": {"202": _json({"type": "object", "required": ["plugin", "retried"], "properties": {
                    "plugin": {"type": "string"}, "retried": {"type": "integer"}}}, "Queued again"),
                    "400": PROBLEM, "404": PROBLEM, "413": PROBLEM, **AUTH_ERRORS},
            }},
            "/api/v1/deliveries/{delivery_id}/retry": {"post": {
                "operationId": "retryDelivery", "summary": "Deliver again, now (scope deliveries:write)",
                "security": [{"oauth2": ["deliveries:write"]}, {"bearer": []}],
                "parameters": [{"name": "delivery_id", "in": "path", "required": True,
                                "schema": {"type": "integer"}}],
                "responses": {"202": _json(_ref("Delivery"), "Queued again"), "404": PROBLEM, **AUTH_ERRORS},
            }},
            "/api/v1/rejections": {"get": {
                "operationId": "listRejections", "summary": "Rejected requests (bounded forensics log)",
                "security": SECURED,
                "parameters": [_query("source", "Only this source."), _query("code", "Only this code."), LIMIT],
                "responses": {
                    "200": _json({"type": "object", "required": ["rejections"],
                                  "properties": {"rejections": {"type": "array", "items": _ref("Rejection")}}},
                                 "Rejections"),
                    "400": PROBLEM, **AUTH_ERRORS},
            }},
            "/api/v1/stats": {"get": {
                "operationId": "stats", "summary": "Event counts per source, type and status in a window",
                "security": SECURED,
                "parameters": [_query("since", "Window start (default: until - 24 h)", TIME),
                               _query("until", "Window end (default: now)", TIME)],
                "responses": {
                    "200": _json({"type": "object", "required": ["since", "until", "counts", "total"], "properties": {
                        "since": TIME, "until": TIME, "total": {"type": "integer"},
                        "counts": {"type": "array", "items": {"type": "object", "properties": {
                            "source": {"type": "string"}, "event_type": NULLABLE_STRING,
                            "status": {"type": "string"}, "count": {"type": "integer"}}}}}}, "Counts"),
                    "400": PROBLEM, **AUTH_ERRORS},
            }},
            "/api/v1/stream": {"get": {
                "operationId": "stream",
                "summary": "Live events as Server-Sent Events; resume with Last-Event-ID (also /api/v1/ws)",
                "security": SECURED,
                "description": "The token goes in the Authorization header, or (browsers) in the session cookie "
                               "from POST /api/v1/session; a token in the URL is refused (400). The stream ends "
                               "with `event: error` when its token expires or its client is removed; at most "
                               "`[api] max_streams_per_client` and `[api] max_streams` are open at once.",
                "parameters": _event_filters(),
                "responses": {"200": {"description": "text/event-stream of `event` messages with `id:` lines",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              "400": PROBLEM, **AUTH_ERRORS, "429": PROBLEM, "503": PROBLEM},
            }},
            "/api/v1/overview": {"get": {
                "operationId": "overview",
                "summary": "The feed's health over a window, from the store: events per bucket by source and "
                           "status, rejections by code, delivery backlogs, ingest latency p99, senders' clock skew",
                "description": "Cost: the window's events, rejections and receipts are read through their "
                               "receive-time indexes (docs/dashboard.md has the figures on 1,000,000 events).",
                "security": SECURED,
                "parameters": [_query("window", "The window (default 1h); buckets of 1 min, 1 min, 15 min, 1 h",
                                      {"type": "string", "enum": ["15m", "1h", "24h", "7d"]})],
                "responses": {
                    "200": _json({"type": "object", "required": [
                        "window", "since", "until", "bucket_seconds", "sources", "buckets", "events", "rejections",
                        "deliveries",
                        "latency_p99_ms", "clock_skew_seconds"], "properties": {
                        "window": {"type": "string"}, "since": TIME, "until": TIME,
                        "sources": {"type": "array", "items": {"type": "string"}, "description": "The configured "
                                    "sources and any other with events in the window (rejections also name what "
                                    "is no source: unknown names, /oauth/token)"},
                        "bucket_seconds": {"type": "integer"},
                        "buckets": {"type": "array", "items": TIME},
                        "events": {"type": "object", "description": "source -> status -> count per bucket",
                                   "additionalProperties": {"type": "object", "additionalProperties": {
                                       "type": "array", "items": {"type": "integer"}}}},
                        "rejections": {"type": "object", "description": "source -> code -> count per bucket",
                                       "additionalProperties": {"type": "object", "additionalProperties": {
                                           "type": "array", "items": {"type": "integer"}}}},
                        "deliveries": {"type": "array", "items": {"type": "object", "properties": {
                            "plugin": {"type": "string"}, "pending": {"type": "integer"}, "dead": {"type": "integer"},
                            "oldest_pending_age_seconds": {"type": "number"}}}},
                        "latency_p99_ms": {"type": "object", "additionalProperties": NUMBER_OR_NULL},
                        "clock_skew_seconds": {"type": "object", "additionalProperties": {
                            "type": ["object", "null"], "properties": {"p50": {"type": "number"},
                                                                      "max_abs": {"type": "number"}}}},
                    }}, "The overview"),
                    "400": PROBLEM, **AUTH_ERRORS},
            }},
            "/api/v1/login-options": {"get": {
                "operationId": "loginOptions", "summary": "Before signing in: is the read API public, is any "
                "client configured (no token needed)", "security": [],
                "responses": {"200": _json({"type": "object", "required": ["public", "clients_configured"],
                                            "properties": {"public": {"type": "boolean"},
                                                           "clients_configured": {"type": "boolean"}}},
                                           "The sign-in options")},
            }},
            "/api/v1/session": {
                "get": {"operationId": "session", "summary": "Who is signed in (the session cookie, or the token)",
                        "responses": {"200": SESSION, "400": PROBLEM, "401": PROBLEM}},
                "post": {"operationId": "signIn",
                         "summary": "Sign a browser in: the token endpoint's form; the token comes back as an "
                                    "HttpOnly, SameSite=Strict cookie (Secure over TLS), never in the body",
                         "security": [],
                         "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
                             "schema": TOKEN_FORM}}},
                         "responses": {"200": SESSION, "400": PROBLEM, "401": PROBLEM, "429": PROBLEM}},
                "delete": {"operationId": "signOut", "summary": "Sign out: clears the session cookie",
                           "security": [], "responses": {"204": {"description": "The cookie is cleared"}}},
            },
            **_ledger_paths(),
        },
        "components": {
            "schemas": {"Event": _event(), "Delivery": DELIVERY, "Rejection": REJECTION, "Problem": PROBLEM_SCHEMA,
                        "Position": POSITION, "Anomaly": ANOMALY},
            "securitySchemes": {
                "oauth2": {"type": "oauth2", "flows": {"clientCredentials": {
                    "tokenUrl": "/oauth/token",
                    "scopes": {"events:read": "Read events, deliveries, rejections, stats, positions, anomalies, "
                                              "the stream",
                               "deliveries:write": "Retry deliveries, acknowledge anomalies"}}}},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
