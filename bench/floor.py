"""What storing alone costs: SQLite's own statements for one delivery, with no HTTP and no
Python logic between them, in batches as the server's group commit makes them.

Added to the baseline's CPU per request, it gives the best any durable aiohttp service storing
these rows in SQLite could do on this machine: the ceiling for the ingest ratio.

And what one commit alone takes (one delivery, its own fsync), on the disk the server's
database is on: the part of a wake's latency that no software can remove.
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


# The server's checkpointer runs on a connection of its own, never inside a waiter's commit;
# here, a checkpoint between commits (untimed) every so many, about as often.
CHECKPOINT_EVERY = 250


def sqlite_commit_latencies(path: Path, body: bytes, commits: int, warm_up: int = 50) -> list[float]:
    """Seconds each of `commits` transactions takes, sorted: one delivery stored (the writer's
    statements for it) and committed alone, with synchronous = FULL in WAL mode as the server
    runs, on a fresh database made by cbhub's store: the fsync a lone wake waits for."""
    asyncio.run(create_schema(path))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        names = [f"commit-{n:037d}" for n in range(warm_up + commits)]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO callbacks (token, status, created_at, expires_at, metadata) VALUES (?, 'pending', 0, ?, '{}')",
            [(name, 2**62) for name in names],
        )
        conn.execute("COMMIT")
        headers = orjson.dumps(HEADERS)
        latencies = []
        for n, name in enumerate(names):
            if n % CHECKPOINT_EVERY == 0:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            (callback_id,) = conn.execute("SELECT id FROM callbacks WHERE token = ?", (name,)).fetchone()
            delivery_id = conn.execute(
                "INSERT INTO deliveries (callback_id, group_name, received_at, method, content_type,"
                " remote_addr, headers, query, body, correlation_id, dedupe_key)"
                " VALUES (?, NULL, ?, 'POST', ?, '127.0.0.1', ?, '', ?, ?, NULL)",
                (callback_id, n, HEADERS["Content-Type"], headers, body, f"commit-{n}"),
            ).lastrowid
            conn.execute(
                "UPDATE callbacks SET deliveries = 1, last_delivery_id = ?, status = 'received' WHERE id = ?",
                (delivery_id, callback_id),
            )
            conn.execute("COMMIT")
            if n >= warm_up:
                latencies.append(time.perf_counter() - started)
        return sorted(latencies)
    finally:
        conn.close()
