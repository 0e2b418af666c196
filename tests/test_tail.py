"""gateway/tail.py's one-line view of an event, shared by `gateway tail` and `gateway events`."""

from __future__ import annotations

from typing import Any

from gateway.tail import EVENT_HEADER, describe

STORED = {"id": 42, "received_at": "2026-11-20T10:15:02.331Z", "source": "copier", "event_type": "position.opened",
          "entity_id": "88412231", "status": "stored", "account": "acc-7", "symbol": "EURUSD", "payload": {}}


def columns(line: str) -> list[int]:
    """Where each column starts: the first character after a run of spaces (or the line's start)."""
    return [i for i, ch in enumerate(line) if ch != " " and (i == 0 or line[i - 1] == " ")]


def test_a_line_sits_under_the_header() -> None:
    line = describe(STORED)
    assert line.split() == ["42", "2026-11-20T10:15:02.331Z", "copier", "position.opened", "88412231", "stored",
                            "acc-7", "EURUSD"]
    # left-aligned columns start where their heading starts; the id is right-aligned under ID
    assert columns(line)[1:] == columns(EVENT_HEADER)[1:]
    assert line.index("42") == EVENT_HEADER.index("ID")


def test_absent_fields_show_a_dash() -> None:
    quarantined: dict[str, Any] = {**STORED, "event_type": None, "status": "quarantined", "account": None}
    del quarantined["symbol"]  # the stream's events always have it; a minimal JSON shape need not
    fields = describe(quarantined).split()
    assert [fields[3], fields[6], fields[7]] == ["-", "-", "-"]
