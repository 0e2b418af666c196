"""SQL for the bounded rejection log."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
import orjson

from gateway.store.records import Rejection

US = 1_000_000
UNKNOWN_BUCKET = "?"

_INSERT = (
    "INSERT INTO rejections (received_at, request_id, bucket, source, code, detail, remote_addr, header_names,"
    " body_size, body_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Keep the newest `keep` rows of a bucket: everything at or below the keep-th newest id goes.
_PRUNE = (
    "DELETE FROM rejections WHERE bucket = ?1 AND id <= ("
    " SELECT id FROM rejections WHERE bucket = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)"
)


def insert(db: sqlite3.Connection, rejections: Sequence[Rejection], keep: int) -> None:
    rows = [
        (round(r.received_at * US), r.request_id, r.source if r.known_source else UNKNOWN_BUCKET, r.source[:64],
         r.code, r.detail[:1000], r.remote_addr, orjson.dumps(list(r.header_names[:100])).decode(), r.body_size,
         r.body_sha256)
        for r in rejections
    ]
    db.executemany(_INSERT, rows)
    for bucket in {row[2] for row in rows}:
        db.execute(_PRUNE, (bucket, keep))


async def listing(db: aiosqlite.Connection, source: str | None, code: str | None, limit: int) -> list[Rejection]:
    where: list[str] = []
    args: list[Any] = []
    if source is not None:
        where.append("source = ?")
        args.append(source)
    if code is not None:
        where.append("code = ?")
        args.append(code)
    sql = ("SELECT id, received_at, request_id, source, code, detail, remote_addr, header_names, body_size,"
           " body_sha256, bucket FROM rejections")
    sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
    rows = await db.execute_fetchall(sql, (*args, limit))
    return [
        Rejection(id=r[0], received_at=r[1] / US, request_id=r[2], source=r[3], code=r[4], detail=r[5],
                  remote_addr=r[6], header_names=tuple(orjson.loads(r[7])), body_size=r[8], body_sha256=r[9],
                  known_source=r[10] != UNKNOWN_BUCKET)
        for r in rows
    ]
