"""The embedded default store: one SQLite file in WAL mode.

Writes go through one writer connection on its own thread. Every write that arrives while the
previous commit is running joins the next transaction (group commit), so a burst of callbacks
costs one fsync per batch, not one per request, and one thread hop per batch. Reads go through
aiosqlite on separate connections and never wait for the writer; the WAL is copied back into
the database by a checkpointer of its own (checkpoint.py), never inside a commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import aiosqlite
import orjson

from cbhub.domain.model import (
    CANCELLED,
    EXPIRED,
    PENDING,
    TERMINAL,
    Callback,
    Delivery,
    Event,
    Incoming,
    MintSpec,
)
from cbhub.errors import (
    CallbackNotFound,
    CbhubError,
    IdempotencyConflict,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
)
from cbhub.domain.filters import CallbackFilter, DeliveryFilter
from cbhub.domain.guards import Guard
from cbhub.store.base import IDEMPOTENCY_WINDOW_MS, CallbackPage, IngestResult, Store
from cbhub.store.group_commit import GroupCommit, OpFailed, cancelled, expired, ingested, minted
from cbhub.store.sqlite.migrations import MIGRATIONS
from cbhub.store.sqlite.checkpoint import WRITER_SAFETY_NET_PAGES, Checkpointer
from cbhub.store.rows import (
    CALLBACK_COLUMNS,
    DELIVERY_COLUMNS,
    DELIVERY_FROM,
    LAST_DELIVERY_ID,
    by_status,
    callback_from_row,
    callback_where,
    arrives_late,
    delivery_from_row,
    delivery_where,
    guard_columns,
    new_delivery,
    new_token,
)

log = logging.getLogger("cbhub.store")

WriteOp = Callable[[sqlite3.Connection], Any]

# Tokens per statement when looking many callbacks up (SQLite allows at least 999 parameters).
STATUS_CHUNK = 500


def backup_database(source: str | os.PathLike, dest: str | os.PathLike, pages_per_step: int = 1024) -> int:
    """Copy a live database with SQLite's online backup API; returns the pages copied.

    Steps of `pages_per_step` pages let the server's writer commit between them; a step that
    sees the database changed restarts the copy, so the result is one consistent snapshot."""
    source_path, dest_path = Path(source), Path(dest)
    if not source_path.exists():
        raise StoreError(f"no database at {source_path}")
    partial = dest_path.with_name(dest_path.name + ".partial")
    partial.unlink(missing_ok=True)
    os.close(os.open(partial, os.O_CREAT | os.O_WRONLY, 0o600))  # private, like the original
    src = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst, pages=pages_per_step, sleep=0.005)
            (pages,) = dst.execute("PRAGMA page_count").fetchone()
            (check,) = dst.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise StoreError(f"the copy failed its check: {check}")
        finally:
            dst.close()
    finally:
        src.close()
    partial.replace(dest_path)  # the backup appears whole or not at all
    return pages


class SQLiteStore(Store):
    def __init__(
        self,
        path: str | os.PathLike,
        synchronous: str = "FULL",
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._writer_conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbhub-writer")
        self._reader: aiosqlite.Connection | None = None
        self._writes: GroupCommit[WriteOp] = GroupCommit(self._commit, self._announce, on_commit)
        self._checkpointer = Checkpointer(self.path, synchronous)

    # Lifecycle

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open_writer)
        await self._checkpointer.open()
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA query_only = ON")
        self._writes.start()

    def _open_writer(self) -> None:
        self._create_private_file()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 2000")
            self._migrate(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_SAFETY_NET_PAGES}")
        except BaseException:
            conn.close()
            raise
        self._writer_conn = conn

    def _create_private_file(self) -> None:
        # The file holds every token and payload: owner-only from the first byte. SQLite gives
        # the -wal and -shm files the database file's mode.
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            return
        # A file made elsewhere keeps its mode (changing it is the owner's call), but it is said.
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning(
                "database %s can be read by other users (mode %04o): it holds every token and payload;"
                " `chmod 600` it (its -wal and -shm files follow)",
                self.path,
                mode,
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        latest = len(MIGRATIONS)
        if version > latest:
            raise SchemaTooNew(
                f"{self.path} has schema version {version}, newer than this cbhub knows ({latest}); "
                "upgrade cbhub or use another database file"
            )
        if version == latest:
            return
        if version == 0:
            # Only possible before the first table exists: lets retention give pages back.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for step in MIGRATIONS[version:]:
                step(conn)
            conn.execute(f"PRAGMA user_version = {latest}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("database %s migrated from schema version %d to %d", self.path, version, latest)

    async def close(self) -> None:
        """Idempotent: a second call finds nothing left to close."""
        await self._writes.close()
        await self._checkpointer.close()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()
        if self._writer_conn is not None:
            conn, self._writer_conn = self._writer_conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    @property
    def writable(self) -> bool:
        return self._writes.writable

    # The writer: group commit

    async def _commit(self, ops: list[WriteOp]) -> list[Any]:
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, ops)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the store cannot commit: {exc}") from exc
        self._checkpointer.committed()
        return results

    async def _announce(self, events: list[Event]) -> None:
        # One process owns the file: its own commits are all there is to announce.
        for event in events:
            self._publish(event)

    def _run_batch(self, ops: list[WriteOp]) -> list[Any]:
        """One transaction for the whole batch, without a savepoint per op (they cost a fifth
        of an ingest's writer time). An op refuses (a CbhubError) only before it writes, so a
        refusal leaves the transaction as it was; any other failure of one op (a bug) rolls the
        batch back (OpFailed: group commit runs it again without that op). An SQLite error
        (disk full, I/O) fails the whole batch, of which nothing is then committed."""
        conn = self._writer_conn
        if conn is None:
            raise StoreUnavailable("the store is not open")
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            results: list[Any] = []
            for index, op in enumerate(ops):
                try:
                    results.append(op(conn))
                except CbhubError as exc:
                    results.append(exc)
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    raise OpFailed(index, exc) from exc
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if log.isEnabledFor(logging.DEBUG):
            log.debug("committed %d writes in %.2f ms", len(ops), (time.perf_counter() - started) * 1000)
        return results

    # Writes (each op runs on the writer thread)

    async def mint(
        self,
        specs: list[MintSpec],
        now: int,
        idempotency: tuple[str, str, str] | None = None,
    ) -> tuple[list[Callback], bool]:
        def op(conn: sqlite3.Connection) -> tuple[list[Callback], bool]:
            if idempotency is not None:
                scope, key, fingerprint = idempotency
                row = conn.execute(
                    "SELECT fingerprint, created_at, callback_ids FROM idempotency_keys WHERE scope = ? AND key = ?",
                    (scope, key),
                ).fetchone()
                if row is not None and row[1] > now - IDEMPOTENCY_WINDOW_MS:
                    if row[0] != fingerprint:
                        raise IdempotencyConflict(key)
                    return [self._load_callback_by_id(conn, cid) for cid in orjson.loads(row[2])], False
            ids = []
            for spec in specs:
                cursor = conn.execute(
                    "INSERT INTO callbacks (token, status, created_at, expires_at, label, group_name, metadata,"
                    " created_by, allow_ips, verify) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new_token(),
                        PENDING,
                        now,
                        now + spec.ttl * 1000,
                        spec.label,
                        spec.group,
                        orjson.dumps(spec.metadata).decode(),
                        *guard_columns(spec),
                    ),
                )
                ids.append(cursor.lastrowid)
            if idempotency is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency_keys (scope, key, fingerprint, created_at, callback_ids)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (*idempotency, now, orjson.dumps(ids).decode()),
                )
            return [self._load_callback_by_id(conn, cid) for cid in ids], True

        return await self._writes.submit(op, minted)

    async def ingest(self, incoming: Incoming, guard: Guard | None = None, keep_late: bool = True) -> IngestResult:
        def op(conn: sqlite3.Connection) -> IngestResult:
            row = conn.execute(f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE token = ?", (incoming.token,)).fetchone()
            if row is None:
                raise CallbackNotFound(incoming.token)
            callback = callback_from_row(row)
            if guard is not None:
                # On the row this op loads anyway: guards cost no extra read. Before the closed
                # check, so a refused sender learns nothing of the callback's state; before the
                # duplicate check, so a forgery reusing a real message id is refused too.
                guard(callback)
            late = arrives_late(callback, incoming.received_at, keep_late)
            callback_id = row[0]
            if incoming.dedupe_key is not None:
                first = conn.execute(
                    f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.callback_id = ? AND d.dedupe_key = ?",
                    (callback_id, incoming.dedupe_key),
                ).fetchone()
                if first is not None:
                    callback.result = self._load_delivery(conn, row[LAST_DELIVERY_ID])
                    return IngestResult(delivery_from_row(first), callback, duplicate=True)
            cursor = conn.execute(
                "INSERT INTO deliveries (callback_id, group_name, received_at, method, content_type, remote_addr,"
                " headers, query, body, correlation_id, dedupe_key, late) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    callback_id,
                    callback.group,
                    incoming.received_at,
                    incoming.method,
                    incoming.content_type,
                    incoming.remote_addr,
                    orjson.dumps(incoming.headers),
                    incoming.query_string,
                    incoming.raw,
                    incoming.correlation_id,
                    incoming.dedupe_key,
                    late,
                ),
            )
            if late:
                # Its result stays what it was: the waiters of a late delivery are shown it.
                callback.result = self._load_delivery(conn, row[LAST_DELIVERY_ID])
                delivery = new_delivery(incoming, cursor.lastrowid, callback, late=True)
                conn.execute(
                    "UPDATE callbacks SET late_deliveries = ? WHERE id = ?", (callback.late_deliveries, callback_id)
                )
                return IngestResult(delivery, callback, duplicate=False)
            status_before = callback.status
            delivery = new_delivery(incoming, cursor.lastrowid, callback)
            if callback.status != status_before:
                conn.execute(
                    "UPDATE callbacks SET status = ?, deliveries = ?, last_delivery_id = ? WHERE id = ?",
                    (callback.status, callback.deliveries, delivery.id, callback_id),
                )
            else:
                # Without the status, SQLite leaves the three indexes that hold it alone.
                conn.execute(
                    "UPDATE callbacks SET deliveries = ?, last_delivery_id = ? WHERE id = ?",
                    (callback.deliveries, delivery.id, callback_id),
                )
            return IngestResult(delivery, callback, duplicate=False)

        return await self._writes.submit(op, ingested)

    async def cancel(self, token: str, now: int) -> tuple[Callback, bool]:
        def op(conn: sqlite3.Connection) -> tuple[Callback, bool]:
            row = conn.execute(f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE token = ?", (token,)).fetchone()
            if row is None:
                raise CallbackNotFound(token)
            callback = callback_from_row(row)
            callback.result = self._load_delivery(conn, row[LAST_DELIVERY_ID])
            if callback.status in TERMINAL:
                return callback, False
            conn.execute("UPDATE callbacks SET status = ? WHERE id = ?", (CANCELLED, row[0]))
            callback.status = CANCELLED
            return callback, True

        return await self._writes.submit(op, cancelled)

    async def expire_due(self, now: int, limit: int = 500) -> list[Callback]:
        def op(conn: sqlite3.Connection) -> list[Callback]:
            rows = conn.execute(
                f"UPDATE callbacks SET status = ? WHERE id IN"
                f" (SELECT id FROM callbacks WHERE status = ? AND expires_at <= ? ORDER BY expires_at LIMIT ?)"
                f" RETURNING {CALLBACK_COLUMNS}",
                (EXPIRED, PENDING, now, limit),
            ).fetchall()
            return [callback_from_row(row) for row in rows]

        return await self._writes.submit(op, expired)

    async def probe_write(self, now: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO write_probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at", (now,)
            )

        await self._writes.submit(op, probe=True)

    async def purge(self, expired_before: int, now: int, batch: int = 500) -> int:
        def op(conn: sqlite3.Connection) -> int:
            # Deliveries first, a bounded number at a time, so no transaction grows long
            # however many deliveries one old callback has.
            gone = conn.execute(
                "DELETE FROM deliveries WHERE id IN (SELECT d.id FROM deliveries d WHERE d.callback_id IN"
                " (SELECT id FROM callbacks WHERE expires_at < ? ORDER BY expires_at LIMIT 50) LIMIT ?)",
                (expired_before, batch),
            ).rowcount
            if gone == 0:
                gone = conn.execute(
                    "DELETE FROM callbacks WHERE id IN (SELECT c.id FROM callbacks c WHERE c.expires_at < ?"
                    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.callback_id = c.id)"
                    " ORDER BY c.expires_at LIMIT ?)",
                    (expired_before, batch),
                ).rowcount
            if gone == 0:
                gone = conn.execute(
                    "DELETE FROM idempotency_keys WHERE (scope, key) IN"
                    " (SELECT scope, key FROM idempotency_keys WHERE created_at < ? LIMIT ?)",
                    (now - IDEMPOTENCY_WINDOW_MS, batch),
                ).rowcount
            if gone == 0:
                conn.execute("PRAGMA incremental_vacuum(2000)").fetchall()
            return gone

        return await self._writes.submit(op)

    def _load_callback_by_id(self, conn: sqlite3.Connection, callback_id: int) -> Callback:
        row = conn.execute(f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE id = ?", (callback_id,)).fetchone()
        callback = callback_from_row(row)
        callback.result = self._load_delivery(conn, row[LAST_DELIVERY_ID])
        return callback

    @staticmethod
    def _load_delivery(conn: sqlite3.Connection, delivery_id: int | None) -> Delivery | None:
        if delivery_id is None:
            return None
        row = conn.execute(f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.id = ?", (delivery_id,)).fetchone()
        return delivery_from_row(row) if row is not None else None

    # Reads

    def _open_reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        return self._reader

    async def _fetchone(self, sql: str, params: tuple | list) -> tuple | None:
        async with self._open_reader().execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def _fetchall(self, sql: str, params: tuple | list) -> list[tuple]:
        async with self._open_reader().execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def has_due(self, now: int) -> bool:
        row = await self._fetchone(
            "SELECT 1 FROM callbacks WHERE status = ? AND expires_at <= ? LIMIT 1", (PENDING, now)
        )
        return row is not None

    async def get_callback(self, token: str) -> Callback | None:
        row = await self._fetchone(f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE token = ?", (token,))
        if row is None:
            return None
        callback = callback_from_row(row)
        if row[LAST_DELIVERY_ID] is not None:
            callback.result = await self.get_delivery(row[LAST_DELIVERY_ID])
        return callback

    async def list_callbacks(self, where: CallbackFilter, before: int | None, limit: int) -> CallbackPage:
        params: list[Any] = []
        clause = callback_where(where, before, lambda value: params.append(value) or "?")
        # One row more than asked tells whether an older page exists.
        rows = await self._fetchall(
            f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE {clause} ORDER BY id DESC LIMIT ?", [*params, limit + 1]
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return CallbackPage([callback_from_row(row) for row in rows], rows[-1][0] if more else None)

    async def find_deliveries(self, where: DeliveryFilter, after: int, limit: int) -> list[Delivery]:
        params: list[Any] = []
        clause = delivery_where(where, after, lambda value: params.append(value) or "?")
        rows = await self._fetchall(
            f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE {clause} ORDER BY d.id LIMIT ?",
            [*params, limit],
        )
        return [delivery_from_row(row) for row in rows]

    async def callback_statuses(self, tokens: Sequence[str], owner: str | None = None) -> dict[str, str]:
        statuses: dict[str, str] = {}
        mine = "" if owner is None else " AND created_by = ?"
        # In chunks: SQLite caps the number of parameters of one statement.
        for start in range(0, len(tokens), STATUS_CHUNK):
            chunk = list(tokens[start : start + STATUS_CHUNK])
            rows = await self._fetchall(
                f"SELECT token, status FROM callbacks WHERE token IN ({', '.join('?' * len(chunk))}){mine}",
                chunk if owner is None else [*chunk, owner],
            )
            statuses.update(rows)
        return statuses

    async def get_delivery(self, delivery_id: int) -> Delivery | None:
        row = await self._fetchone(f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.id = ?", (delivery_id,))
        return delivery_from_row(row) if row is not None else None

    async def group_counts(self, group: str, owner: str | None = None) -> dict[str, int]:
        if owner is None:
            sql, params = "SELECT status, COUNT(*) FROM callbacks WHERE group_name = ? GROUP BY status", (group,)
        else:
            sql = "SELECT status, COUNT(*) FROM callbacks WHERE group_name = ? AND created_by = ? GROUP BY status"
            params = (group, owner)
        return by_status(await self._fetchall(sql, params))

    async def status_counts(self) -> dict[str, int]:
        return by_status(await self._fetchall("SELECT status, COUNT(*) FROM callbacks GROUP BY status", ()))

    async def ping(self) -> None:
        await self._fetchone("SELECT 1", ())
