"""`gateway tail`: follow /api/v1/stream, reconnecting with Last-Event-ID after a drop; and the
one-line view of an event that `tail` and `gateway events` print."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from gateway.config import ClientConfig

if TYPE_CHECKING:
    import httpx

EVENT_HEADER = (f"{'ID':>8}  {'RECEIVED':<24}  {'SOURCE':<12} {'TYPE':<18} {'ENTITY':<20} "
                f"{'STATUS':<11} {'ACCOUNT':<10} SYMBOL")


def describe(event: dict[str, Any]) -> str:
    """One line for an event in its JSON shape (the API's, the stream's, `events --json`'s),
    in the columns of EVENT_HEADER."""
    return (f"{event['id']:>8}  {event['received_at']}  {event['source']:<12} {event['event_type'] or '-':<18} "
            f"{event['entity_id']:<20} {event['status']:<11} {event.get('account') or '-':<10} "
            f"{event.get('symbol') or '-'}")


def _token(client: httpx.Client, who: ClientConfig | None) -> dict[str, str]:
    if who is None:
        return {}
    r = client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": who.id,
                                          "client_secret": who.secret.reveal(), "scope": "events:read"})
    if r.status_code in (400, 401, 403):  # retrying cannot fix credentials: say why and stop
        raise PermissionError(f"the gateway refused client {who.id!r}: {r.read().decode()[:200]}")
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def follow_stream(
    url: str, who: ClientConfig | None, params: dict[str, str], since: int | None, count: int | None,
    out: Callable[[str], None], note: Callable[[str], None],
) -> None:
    """Print events until `count` are shown (or forever); reconnect after any drop. A gateway
    never reached raises ConnectionError at the first failure: that is a wrong URL or a gateway
    not running, which waiting does not fix."""
    import httpx  # here: `gateway events` imports this module for `describe` and needs no HTTP client

    last = since
    shown = 0
    delay = 0.5
    reached = False
    while count is None or shown < count:
        try:
            with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=60)) as client:
                headers = _token(client, who)
                if last is not None:
                    headers["Last-Event-ID"] = str(last)
                with client.stream("GET", "/api/v1/stream", params=params, headers=headers) as response:
                    if response.status_code in (401, 403):
                        raise PermissionError(f"the gateway refused the stream: {response.read().decode()[:200]}")
                    response.raise_for_status()
                    reached = True
                    delay = 0.5
                    fields: dict[str, str] = {}
                    for line in response.iter_lines():
                        if line:
                            key, _, value = line.partition(":")
                            fields[key] = value.lstrip()
                            continue
                        if fields.get("event") == "event":
                            event = orjson.loads(fields["data"])
                            last = int(fields["id"])
                            out(describe(event))
                            shown += 1
                            if count is not None and shown >= count:
                                return
                        elif fields.get("event") == "error":
                            note(f"stream ended by the gateway: {fields.get('data')}; resuming")
                        fields = {}
        except PermissionError:
            raise
        except (httpx.HTTPError, OSError) as exc:
            if not reached:
                raise ConnectionError(f"cannot reach the gateway at {url} ({type(exc).__name__}: {exc}): is it "
                                      "running? Give its base URL with --url") from exc
            note(f"connection lost ({type(exc).__name__}); reconnecting in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
