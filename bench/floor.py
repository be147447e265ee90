"""What storing alone costs: SQLite's own statements for one delivery, with no HTTP and no
Python logic between them, in batches as the server's group commit makes them.

Added to the baseline's CPU per request, it gives the best any durable aiohttp service storing
these rows in SQLite could do on this machine: the ceiling for the ingest ratio.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import orjson

from bench.growth import HEADERS, create_schema

BATCH = 32  # about what the group commit gathers under the ingest load


def sqlite_cpu_per_delivery(path: Path, body: bytes, tokens: int, deliveries: int) -> float:
    """Microseconds of CPU per delivery stored (synchronous = FULL, one fsync per batch): look
    the callback up, insert the delivery, update the callback, as the server's writer does."""
    asyncio.run(create_schema(path))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = FULL")
        names = [f"floor-{n:038d}" for n in range(tokens)]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO callbacks (token, status, created_at, expires_at, metadata) VALUES (?, 'pending', 0, ?, '{}')",
            [(name, 2**62) for name in names],
        )
        conn.execute("COMMIT")
        headers = orjson.dumps(HEADERS)
        started = time.process_time()
        for first in range(0, deliveries, BATCH):
            conn.execute("BEGIN IMMEDIATE")
            for n in range(first, min(first + BATCH, deliveries)):
                callback_id, count = conn.execute(
                    "SELECT id, deliveries FROM callbacks WHERE token = ?", (names[n % tokens],)
                ).fetchone()
                delivery_id = conn.execute(
                    "INSERT INTO deliveries (callback_id, group_name, received_at, method, content_type,"
                    " remote_addr, headers, query, body, correlation_id, dedupe_key)"
                    " VALUES (?, NULL, ?, 'POST', ?, '127.0.0.1', ?, '', ?, ?, NULL)",
                    (callback_id, n, HEADERS["Content-Type"], headers, body, f"floor-{n}"),
                ).lastrowid
                conn.execute(
                    "UPDATE callbacks SET deliveries = ?, last_delivery_id = ? WHERE id = ?",
                    (count + 1, delivery_id, callback_id),
                )
            conn.execute("COMMIT")
        return (time.process_time() - started) / deliveries * 1e6
    finally:
        conn.close()
