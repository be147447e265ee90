"""Checkpoints of the SQLite write-ahead log, off the writer's path.

Left to itself, SQLite copies the WAL back into the database inside whichever commit pushes
the WAL past 1,000 pages: that commit, and every callback waiting on it, then waits for the
copy and its fsync (the slowest commits by far). Here the writer's connection only does so as
a safety net, far later, and a connection of its own, on a thread of its own, runs a PASSIVE
checkpoint (which never blocks the writer or the readers) when enough commits have gone by.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("cbhub.store")

# A checkpoint is due after some number of commits, or this long after the last one with
# commits since. The number adapts so that each checkpoint finds about TARGET_PAGES in the WAL:
# enough to copy many pages per fsync of the database file, few enough that the WAL stays a few
# megabytes (busy commits carry tens of pages, lone ones a few).
TARGET_PAGES = 1000
MIN_COMMITS, MAX_COMMITS = 8, 1024
EVERY_SECONDS = 1.0
# The writer's own automatic checkpoint, should the background ones fall behind (in pages).
WRITER_SAFETY_NET_PAGES = 2_000


class Checkpointer:
    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbhub-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._running: asyncio.Future[int] | None = None
        self._commits = 0
        self._every = MIN_COMMITS
        self._last = time.monotonic()

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)

    def _connect(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 2000")
        # The database file is fsynced by the checkpoint as the writer's setting says.
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        self._conn = conn

    def committed(self) -> None:
        """Told after each commit, on the event loop: starts a checkpoint when one is due and
        none is running."""
        self._commits += 1
        if self._running is not None or self._conn is None:
            return
        if self._commits < self._every and time.monotonic() - self._last < EVERY_SECONDS:
            return
        self._commits = 0
        self._last = time.monotonic()
        self._running = asyncio.get_running_loop().run_in_executor(self._executor, self._checkpoint)
        self._running.add_done_callback(self._finished)

    def _checkpoint(self) -> int:
        """Copies what the WAL holds into the database; how many pages the WAL held."""
        assert self._conn is not None
        _busy, wal_pages, _copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(wal_pages)

    def _finished(self, future: asyncio.Future[int]) -> None:
        self._running = None
        if future.cancelled():
            return
        if future.exception() is not None:
            # Not fatal: the next one, or the writer's safety net, copies the pages.
            log.warning("checkpoint of the write-ahead log failed: %s", future.exception())
            return
        wal_pages = future.result()
        if wal_pages < TARGET_PAGES // 2:
            self._every = min(self._every * 2, MAX_COMMITS)
        elif wal_pages > TARGET_PAGES:
            self._every = max(self._every // 2, MIN_COMMITS)

    async def close(self) -> None:
        if self._running is not None:
            await asyncio.wait([self._running])
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)
