"""The embedded default store: one SQLite file in WAL mode.

Writes go through one writer connection on its own thread. Every write that arrives while the
previous commit is running joins the next transaction (group commit), so a burst of callbacks
costs one fsync per batch, not one per request, and one thread hop per batch. Reads go through
aiosqlite on separate connections and never wait for the writer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import aiosqlite
import orjson

from cbhub.bodies import parse_form
from cbhub.model import (
    CANCELLED,
    EXPIRED,
    PENDING,
    RECEIVED,
    STATUSES,
    TERMINAL,
    Callback,
    Delivery,
    Incoming,
    MintSpec,
)
from cbhub.signatures import VerifySpec
from cbhub.store.base import (
    IDEMPOTENCY_WINDOW_MS,
    CallbackClosed,
    CallbackFilter,
    CallbackNotFound,
    CallbackPage,
    DeliveryFilter,
    Guard,
    IdempotencyConflict,
    IngestResult,
    SchemaTooNew,
    Store,
    StoreError,
    StoreUnavailable,
)
from cbhub.store.migrations import MIGRATIONS

log = logging.getLogger("cbhub.store")

WriteOp = Callable[[sqlite3.Connection], Any]

CALLBACK_COLUMNS = (
    "id, token, status, created_at, expires_at, label, group_name, metadata, deliveries, last_delivery_id,"
    " created_by, allow_ips, verify"
)
DELIVERY_COLUMNS = (
    "d.id, c.token, d.received_at, d.method, d.content_type, d.remote_addr, d.headers, d.query,"
    " d.body, d.correlation_id, d.group_name"
)
DELIVERY_FROM = "deliveries d JOIN callbacks c ON c.id = d.callback_id"
# Tokens per statement when looking many callbacks up (SQLite allows at least 999 parameters).
STATUS_CHUNK = 500


def _callback_from_row(row: tuple) -> Callback:
    return Callback(
        token=row[1],
        status=row[2],
        created_at=row[3],
        expires_at=row[4],
        label=row[5],
        group=row[6],
        metadata=orjson.loads(row[7]),
        deliveries=row[8],
        created_by=row[10],
        allow_ips=tuple(orjson.loads(row[11])) if row[11] is not None else (),
        verify=VerifySpec(**orjson.loads(row[12])) if row[12] is not None else None,
    )


def _delivery_from_row(row: tuple) -> Delivery:
    return Delivery(
        id=row[0],
        token=row[1],
        received_at=row[2],
        method=row[3],
        content_type=row[4],
        remote_addr=row[5],
        headers=orjson.loads(row[6]),
        query=parse_form(row[7]),
        raw=row[8],
        correlation_id=row[9],
        group=row[10],
    )


def new_token() -> str:
    """264 random bits, URL-safe; never starting with "-", which command lines take for an option."""
    while (token := secrets.token_urlsafe(33)).startswith("-"):
        pass
    return token


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _by_status(rows: list[tuple]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({status: count for status, count in rows})
    return counts


def _delivery_where(where: DeliveryFilter, after: int) -> tuple[str, list[Any]]:
    clauses = ["d.id > ?"]
    params: list[Any] = [after]
    if where.token is not None:
        clauses.append("c.token = ?")
        params.append(where.token)
    if where.tokens is not None:
        clauses.append(f"c.token IN ({', '.join('?' * len(where.tokens))})")
        params.extend(sorted(where.tokens))
    if where.group is not None:
        clauses.append("d.group_name = ?")
        params.append(where.group)
    if where.correlation_id is not None:
        clauses.append("d.correlation_id = ?")
        params.append(where.correlation_id)
    if where.owner is not None:
        clauses.append("c.created_by = ?")
        params.append(where.owner)
    return " AND ".join(clauses), params


def _callback_where(where: CallbackFilter, before: int | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if before is not None:
        clauses.append("id < ?")
        params.append(before)
    columns = ("group_name", where.group), ("label", where.label), ("status", where.status), ("created_by", where.owner)
    for column, value in columns:
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if where.correlation_id is not None:
        clauses.append("id IN (SELECT callback_id FROM deliveries WHERE correlation_id = ?)")
        params.append(where.correlation_id)
    return " AND ".join(clauses) or "1", params


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
        # Told (batch size, seconds) after each commit: metrics hook in here.
        self._on_commit = on_commit
        self._writer_conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbhub-writer")
        self._reader: aiosqlite.Connection | None = None
        self._pending: list[tuple[WriteOp, asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._writer_task: asyncio.Task | None = None
        self._closing = False
        self._writable = True

    # Lifecycle

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open_writer)
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA query_only = ON")
        self._writer_task = asyncio.create_task(self._write_loop(), name="cbhub-writer")

    def _open_writer(self) -> None:
        self._create_private_file()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 2000")
            self._migrate(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
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
        self._closing = True
        self._wakeup.set()
        if self._writer_task is not None:
            await self._writer_task
        if self._reader is not None:
            await self._reader.close()
        if self._writer_conn is not None:
            conn = self._writer_conn
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    @property
    def writable(self) -> bool:
        return self._writable

    # The writer: group commit

    async def _submit(self, op: WriteOp) -> Any:
        if self._closing:
            raise StoreUnavailable("the store is closing")
        future = asyncio.get_running_loop().create_future()
        # The submitter may be gone (its client hung up) when a failure is set: mark the
        # exception retrieved so it is not reported as lost.
        future.add_done_callback(_retrieve)
        self._pending.append((op, future))
        self._wakeup.set()
        # Shielded: a sender that hangs up must not cancel a write others share a commit with.
        return await asyncio.shield(future)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._commit(loop, batch)
            elif self._closing:
                return

    async def _commit(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[WriteOp, asyncio.Future]]) -> None:
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, [op for op, _ in batch])
        except Exception as exc:
            # Nothing of the batch was committed: every writer in it is told so, and the
            # loop goes on to the next batch.
            if isinstance(exc, sqlite3.Error):
                # Said loudly once per outage, not at every retry.
                (log.error if self._writable else log.debug)("commit of %d writes failed: %s", len(batch), exc)
                self._writable = False
                exc = StoreUnavailable(f"the store cannot commit: {exc}")
            else:
                log.error("a batch of %d writes failed", len(batch), exc_info=exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self._writable = True
        if self._on_commit is not None:
            self._on_commit(len(batch), time.perf_counter() - started)
        for (_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _run_batch(self, ops: list[WriteOp]) -> list[Any]:
        """One transaction for the whole batch. An op that fails on its own (a refusal, or a
        bug) is rolled back to its savepoint and fails alone; an SQLite error (disk full,
        I/O) fails the whole batch, of which nothing is then committed."""
        conn = self._writer_conn
        assert conn is not None
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            results: list[Any] = []
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    results.append(op(conn))
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    results.append(exc)
                conn.execute("RELEASE op")
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
                        spec.created_by,
                        orjson.dumps(spec.allow_ips).decode() if spec.allow_ips else None,
                        orjson.dumps(spec.verify.to_json()).decode() if spec.verify is not None else None,
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

        return await self._submit(op)

    async def ingest(self, incoming: Incoming, guard: Guard | None = None) -> IngestResult:
        def op(conn: sqlite3.Connection) -> IngestResult:
            row = conn.execute(f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE token = ?", (incoming.token,)).fetchone()
            if row is None:
                raise CallbackNotFound(incoming.token)
            callback = _callback_from_row(row)
            if guard is not None:
                # On the row this op loads anyway: guards cost no extra read. Before the closed
                # check, so a refused sender learns nothing of the callback's state; before the
                # duplicate check, so a forgery reusing a real message id is refused too.
                guard(callback)
            if callback.status in TERMINAL:
                raise CallbackClosed(callback.status)
            if callback.expires_at <= incoming.received_at:
                raise CallbackClosed(EXPIRED)
            callback_id = row[0]
            if incoming.dedupe_key is not None:
                first = conn.execute(
                    f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.callback_id = ? AND d.dedupe_key = ?",
                    (callback_id, incoming.dedupe_key),
                ).fetchone()
                if first is not None:
                    callback.result = self._load_delivery(conn, row[9])
                    return IngestResult(_delivery_from_row(first), callback, duplicate=True)
            cursor = conn.execute(
                "INSERT INTO deliveries (callback_id, group_name, received_at, method, content_type, remote_addr,"
                " headers, query, body, correlation_id, dedupe_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
            delivery = Delivery(
                id=cursor.lastrowid,
                token=incoming.token,
                received_at=incoming.received_at,
                method=incoming.method,
                content_type=incoming.content_type,
                remote_addr=incoming.remote_addr,
                headers=incoming.headers,
                query=parse_form(incoming.query_string),
                raw=incoming.raw,
                correlation_id=incoming.correlation_id,
                group=callback.group,
                _parsed=incoming.parsed,
            )
            if callback.status == PENDING:
                callback.status = RECEIVED
            callback.deliveries += 1
            callback.result = delivery
            conn.execute(
                "UPDATE callbacks SET status = ?, deliveries = ?, last_delivery_id = ? WHERE id = ?",
                (callback.status, callback.deliveries, delivery.id, callback_id),
            )
            return IngestResult(delivery, callback, duplicate=False)

        return await self._submit(op)

    async def cancel(self, token: str, now: int, owner: str | None = None) -> tuple[Callback, bool]:
        def op(conn: sqlite3.Connection) -> tuple[Callback, bool]:
            row = conn.execute(f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE token = ?", (token,)).fetchone()
            if row is None:
                raise CallbackNotFound(token)
            callback = _callback_from_row(row)
            if owner is not None and callback.created_by != owner:
                raise CallbackNotFound(token)
            callback.result = self._load_delivery(conn, row[9])
            if callback.status in TERMINAL:
                return callback, False
            conn.execute("UPDATE callbacks SET status = ? WHERE id = ?", (CANCELLED, row[0]))
            callback.status = CANCELLED
            return callback, True

        return await self._submit(op)

    async def expire_due(self, now: int, limit: int = 500) -> list[Callback]:
        def op(conn: sqlite3.Connection) -> list[Callback]:
            rows = conn.execute(
                f"UPDATE callbacks SET status = ? WHERE id IN"
                f" (SELECT id FROM callbacks WHERE status = ? AND expires_at <= ? ORDER BY expires_at LIMIT ?)"
                f" RETURNING {CALLBACK_COLUMNS}",
                (EXPIRED, PENDING, now, limit),
            ).fetchall()
            return [_callback_from_row(row) for row in rows]

        return await self._submit(op)

    async def probe_write(self, now: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO write_probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at", (now,)
            )

        await self._submit(op)

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

        return await self._submit(op)

    def _load_callback_by_id(self, conn: sqlite3.Connection, callback_id: int) -> Callback:
        row = conn.execute(f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE id = ?", (callback_id,)).fetchone()
        callback = _callback_from_row(row)
        callback.result = self._load_delivery(conn, row[9])
        return callback

    @staticmethod
    def _load_delivery(conn: sqlite3.Connection, delivery_id: int | None) -> Delivery | None:
        if delivery_id is None:
            return None
        row = conn.execute(f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.id = ?", (delivery_id,)).fetchone()
        return _delivery_from_row(row) if row is not None else None

    # Reads

    async def _fetchone(self, sql: str, params: tuple | list) -> tuple | None:
        assert self._reader is not None
        async with self._reader.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def _fetchall(self, sql: str, params: tuple | list) -> list[tuple]:
        assert self._reader is not None
        async with self._reader.execute(sql, params) as cursor:
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
        callback = _callback_from_row(row)
        if row[9] is not None:
            callback.result = await self.get_delivery(row[9])
        return callback

    async def list_callbacks(self, where: CallbackFilter, before: int | None, limit: int) -> CallbackPage:
        clause, params = _callback_where(where, before)
        # One row more than asked tells whether an older page exists.
        rows = await self._fetchall(
            f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE {clause} ORDER BY id DESC LIMIT ?", [*params, limit + 1]
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return CallbackPage([_callback_from_row(row) for row in rows], rows[-1][0] if more else None)

    async def find_deliveries(self, where: DeliveryFilter, after: int, limit: int) -> list[Delivery]:
        clause, params = _delivery_where(where, after)
        rows = await self._fetchall(
            f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE {clause} ORDER BY d.id LIMIT ?",
            [*params, limit],
        )
        return [_delivery_from_row(row) for row in rows]

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
        return _delivery_from_row(row) if row is not None else None

    async def group_counts(self, group: str, owner: str | None = None) -> dict[str, int]:
        if owner is None:
            sql, params = "SELECT status, COUNT(*) FROM callbacks WHERE group_name = ? GROUP BY status", (group,)
        else:
            sql = "SELECT status, COUNT(*) FROM callbacks WHERE group_name = ? AND created_by = ? GROUP BY status"
            params = (group, owner)
        return _by_status(await self._fetchall(sql, params))

    async def status_counts(self) -> dict[str, int]:
        return _by_status(await self._fetchall("SELECT status, COUNT(*) FROM callbacks GROUP BY status", ()))

    async def ping(self) -> None:
        await self._fetchone("SELECT 1", ())
