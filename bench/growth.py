"""The cost of growth: a database holding a million deliveries, built fast.

The schema comes from cbhub itself (its store opened once on an empty file, so the tables,
indexes and pragmas are exactly the server's); the rows are then bulk-inserted with plain
sqlite3 by two INSERT ... SELECT statements over a recursive counter, all inside SQLite, in
chunks of 100,000. Each callback has one delivery with the benchmark's 1 KB body, a distinct
correlation id (so that index is as full as in real use) and typical headers; tokens are 42
random hex characters (real ones are 43 URL-safe base64 characters: the same index cost).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path

import orjson

from cbhub.store.sqlite.store import SQLiteStore

CHUNK = 100_000
DAY_MS = 86_400_000
HEADERS = {
    "Host": "hooks.example.com",
    "User-Agent": "ExactTarget",
    "Content-Type": "application/x-www-form-urlencoded",
    "Content-Length": "1024",
}


async def create_schema(path: Path) -> None:
    """An empty database made by cbhub's own store: its tables, indexes and pragmas."""
    store = SQLiteStore(path)
    await store.open()
    await store.close()


def build_database(path: Path, deliveries: int, body: bytes) -> float:
    """A cbhub database holding `deliveries` deliveries (one per callback); seconds it took."""
    started = time.perf_counter()
    asyncio.run(create_schema(path))
    now = int(time.time() * 1000)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a crash while building only loses the build
        conn.execute("PRAGMA cache_size = -262144")
        for first in range(1, deliveries + 1, CHUNK):
            last = min(first + CHUNK - 1, deliveries)
            conn.execute("BEGIN")
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                " INSERT INTO callbacks (id, token, status, created_at, expires_at, metadata, deliveries,"
                " last_delivery_id) SELECT i, lower(hex(randomblob(21))), 'received', ?, ?, '{}', 1, i FROM n",
                (first, last, now - DAY_MS, now + 20 * DAY_MS),
            )
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                " INSERT INTO deliveries (id, callback_id, received_at, method, content_type, remote_addr,"
                " headers, query, body, correlation_id)"
                " SELECT i, i, ?, 'POST', 'application/x-www-form-urlencoded', '127.0.0.1', ?, '', ?,"
                " 'req-' || i FROM n",
                (first, last, now - DAY_MS, orjson.dumps(HEADERS), body),
            )
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - started


def sample_tokens(path: Path, count: int, seed: int = 7) -> list[str]:
    """`count` tokens of callbacks that have a delivery, spread at random over the database."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (highest,) = conn.execute("SELECT max(id) FROM callbacks WHERE last_delivery_id IS NOT NULL").fetchone()
        ids = random.Random(seed).sample(range(1, highest + 1), min(count, highest))
        tokens: list[str] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = conn.execute(
                f"SELECT token FROM callbacks WHERE last_delivery_id IS NOT NULL AND id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            tokens.extend(row[0] for row in rows)
        return tokens
    finally:
        conn.close()
