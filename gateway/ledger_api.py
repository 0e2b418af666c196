"""The position ledger's part of the API (/api/v1/positions, /api/v1/anomalies), on the same
authentication, paging and errors as the rest of gateway.api. docs/ledger.md has the shapes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.api import MAX_LIMIT, Api, _choice, _int, _json_body, _path_id, json_response
from gateway.errors import GatewayError
from gateway.ledger import ANOMALY_KINDS
from gateway.store.ledger_records import AnomalyQuery, PositionKey, PositionQuery

STATES = ("open", "partially_closed", "closed")
NO_ACCOUNT = "-"  # the account segment of a position's URL when its sender names none
MAX_NOTE = 2000


def _bool(request: Request, name: str) -> bool | None:
    value = _choice(request, name, ("true", "false"))
    return None if value is None else value == "true"


class LedgerApi:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.store = api.store

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/positions", self.positions),
            Route("/api/v1/positions/{source}/{account}/{position_id:path}", self.position),
            Route("/api/v1/anomalies", self.anomalies),
            Route("/api/v1/anomalies/{anomaly_id:id}/ack", self.acknowledge, methods=["POST"]),
        ]

    def _after(self, request: Request, listing: str) -> int | None:
        if "cursor" not in request.query_params:
            return None
        cursor = self.api.tokens.read_cursor(request.query_params["cursor"])
        if cursor.get("l") != listing or not isinstance(cursor.get("a"), int):
            raise GatewayError("invalid_cursor", f"the cursor does not belong to the {listing} listing")
        return int(cursor["a"])

    def _next(self, listing: str, rows: list[Any], limit: int) -> str | None:
        return self.api.tokens.cursor({"l": listing, "a": rows[-1].id}) if len(rows) == limit else None

    async def positions(self, request: Request) -> Response:
        self.api.principal(request, "events:read")
        p = request.query_params
        limit = _int(request, "limit", 100, 1, MAX_LIMIT)
        found = await self.store.list_positions(PositionQuery(
            source=p.get("source"), account=p.get("account"), symbol=p.get("symbol"),
            state=_choice(request, "state", STATES), anomalous=_bool(request, "anomalous"),
            after=self._after(request, "positions"), limit=limit))
        status = await self.store.ledger_status()
        lag = 0.0 if status.pending_since is None else max(0.0, self.api.clock() - status.pending_since)
        return json_response({
            "positions": [x.to_json() for x in found], "next_cursor": self._next("positions", found, limit),
            "ledger": {"checkpoint": status.checkpoint, "latest_event_id": status.latest,
                       "lag_seconds": round(lag, 3)},
        })

    async def position(self, request: Request) -> Response:
        self.api.principal(request, "events:read")
        params = request.path_params
        account = "" if params["account"] == NO_ACCOUNT else params["account"]
        key: PositionKey = (params["source"], account, params["position_id"])
        found = await self.store.get_position(key)
        if found is None:
            raise GatewayError("not_found", f"no position {key[2]} of account {params['account']} at {key[0]}")
        loaded = (await self.store.ledger_load([key]))[key]
        events = sorted((e.record.to_json() | {"conflict": e.conflict} for e in loaded.entries),
                        key=lambda e: e["event_id"] or 0)
        anomalies = await self.store.list_anomalies(AnomalyQuery(
            source=key[0], account=key[1], position_id=key[2], limit=MAX_LIMIT))
        return json_response({**found.to_json(), "events": events,
                              "anomaly_records": [a.to_json() for a in anomalies]})

    async def anomalies(self, request: Request) -> Response:
        self.api.principal(request, "events:read")
        p = request.query_params
        limit = _int(request, "limit", 100, 1, MAX_LIMIT)
        found = await self.store.list_anomalies(AnomalyQuery(
            source=p.get("source"), account=p.get("account"), position_id=p.get("position_id"),
            kind=_choice(request, "kind", ANOMALY_KINDS), open=_bool(request, "open"),
            after=self._after(request, "anomalies"), limit=limit))
        return json_response({"anomalies": [a.to_json() for a in found],
                              "next_cursor": self._next("anomalies", found, limit)})

    async def acknowledge(self, request: Request) -> Response:
        """Body: {"note": "why this is fine"}. Acknowledging again replaces the note."""
        self.api.principal(request, "deliveries:write")
        anomaly_id = _path_id(request, "anomaly_id")
        note = (await _json_body(request)).get("note")
        if not isinstance(note, str) or not note.strip() or len(note) > MAX_NOTE:
            raise GatewayError("invalid_request", f'"note" must be text of 1 to {MAX_NOTE} characters')
        acked = await self.store.acknowledge_anomaly(anomaly_id, note.strip(), self.api.clock())
        if acked is None:
            raise GatewayError("not_found", f"no anomaly {anomaly_id}")
        return json_response(acked.to_json())
