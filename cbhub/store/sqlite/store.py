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

from cbhub.domain.expectations import MISSING_SHOWN, ContractCheck
from cbhub.domain.filters import CallbackFilter, DeliveryFilter
from cbhub.domain.guards import Guard
from cbhub.domain.model import (
    CANCELLED,
    EXPIRED,
    PENDING,
    Callback,
    Delivery,
    Event,
    Incoming,
    MintSpec,
)
from cbhub.domain.outcomes import ERROR
from cbhub.domain.responses import ResponseSpec
from cbhub.errors import (
    CbhubError,
    StoreError,
    StoreUnavailable,
)
from cbhub.store import decisions
from cbhub.store.base import (
    GROUP_LIST_LIMIT,
    IDEMPOTENCY_WINDOW_MS,
    CallbackPage,
    GroupSummary,
    IngestResult,
    Store,
)
from cbhub.store.group_commit import (
    GroupCommit,
    OpFailed,
    cancelled,
    expired,
    ingested,
    minted,
    overdue,
    settled,
)
from cbhub.store.rows import (
    CALLBACK_COLUMNS,
    CALLBACK_ID,
    DELIVERY_COLUMNS,
    DELIVERY_FROM,
    LAST_DELIVERY_ID,
    Params,
    by_status,
    by_status_and_outcome,
    callback_from_row,
    callback_values,
    callback_where,
    delivery_from_row,
    delivery_values,
    delivery_where,
    group_error,
    listing_page,
    problems_value,
    purge_order,
)
from cbhub.store.sqlite.checkpoint import WRITER_SAFETY_NET_PAGES, Checkpointer
from cbhub.store.sqlite.migrations import MIGRATIONS

log = logging.getLogger("cbhub.store")

WriteOp = Callable[[sqlite3.Connection], Any]
# A row as sqlite3 returns it (a tuple: no row factory is set).
Row = Any

# Tokens per statement when looking many callbacks up (SQLite allows at least 999 parameters).
STATUS_CHUNK = 500

# Every statement, by what it does. A write's decisions are in store/decisions.py; these are
# SQLite's answers to their steps, and its reads.
SELECT_CALLBACK_BY_TOKEN = f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE token = ?"
SELECT_CALLBACK_BY_ID = f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE id = ?"
SELECT_DELIVERY_BY_ID = f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.id = ?"
SELECT_DUPLICATE = f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.callback_id = ? AND d.dedupe_key = ?"
INSERT_DELIVERY = (
    "INSERT INTO deliveries (callback_id, group_name, received_at, method, content_type, remote_addr,"
    " headers, query, body, correlation_id, dedupe_key, answer, outcome, error, late, problems)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
COUNT_ON_TIME_WITH_STATUS = (
    "UPDATE callbacks SET status = ?, deliveries = deliveries + 1, last_delivery_id = ?, outcome = ?, error = ?"
    " WHERE id = ?"
)
# Without the status, SQLite leaves the three indexes that hold it alone.
COUNT_ON_TIME = (
    "UPDATE callbacks SET deliveries = deliveries + 1, last_delivery_id = ?, outcome = ?, error = ? WHERE id = ?"
)
# The same, when the delivery's outcome and error are the callback's already: the callbacks'
# outcome indexes are left untouched.
COUNT_ON_TIME_SAME_OUTCOME = "UPDATE callbacks SET deliveries = deliveries + 1, last_delivery_id = ? WHERE id = ?"
COUNT_LATE = "UPDATE callbacks SET late_deliveries = late_deliveries + 1 WHERE id = ?"
# An invalid delivery (it does not fit the contract) is counted, never the result.
COUNT_INVALID = (
    "UPDATE callbacks SET deliveries = deliveries + 1, invalid_deliveries = invalid_deliveries + 1 WHERE id = ?"
)
# Expected sets: each step one keyed statement (see store/decisions.py).
MARK_ARRIVED = "UPDATE expected_ids SET arrived = 1 WHERE callback_id = ? AND correlation_id = ? AND arrived = 0"
ADD_ARRIVAL = (
    "INSERT INTO expected_ids (callback_id, correlation_id, position, arrived) VALUES (?, ?, ?, 1)"
    " ON CONFLICT DO NOTHING"
)
IS_EXPECTED = "SELECT 1 FROM expected_ids WHERE callback_id = ? AND correlation_id = ?"
COUNT_EXPECTED = (
    "UPDATE callbacks SET expect_arrived = expect_arrived + ?, expect_unexpected = expect_unexpected + ? WHERE id = ?"
)
INSERT_EXPECTED = "INSERT INTO expected_ids (callback_id, correlation_id, position) VALUES (?, ?, ?)"
SELECT_CALLBACK_ID = "SELECT id FROM callbacks WHERE token = ?"
SELECT_POSITION = "SELECT position FROM expected_ids WHERE callback_id = ? AND correlation_id = ?"
SELECT_MISSING = (
    "SELECT correlation_id FROM expected_ids WHERE callback_id = ? AND arrived = 0 AND position > ?"
    " ORDER BY position LIMIT ?"
)
MARK_CANCELLED = f"UPDATE callbacks SET status = '{CANCELLED}' WHERE id = ?"
SELECT_KEY = "SELECT fingerprint, created_at, callback_ids FROM idempotency_keys WHERE scope = ? AND key = ?"
CLAIM_KEY = (
    "INSERT OR REPLACE INTO idempotency_keys (scope, key, fingerprint, created_at, callback_ids)"
    " VALUES (?, ?, ?, ?, '[]')"
)
RECORD_KEY = "UPDATE idempotency_keys SET callback_ids = ? WHERE scope = ? AND key = ?"
INSERT_CALLBACK = (
    "INSERT INTO callbacks (token, expires_at, label, group_name, metadata, created_by, allow_ips, verify,"
    " expect_total, expect_named, contract, response, settle_ms, expect_within, overdue_due, outcome_rule,"
    f" created_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{PENDING}')"
    f" RETURNING {CALLBACK_COLUMNS}"
)
# Timers (domain/timing.py): a delivery restarts its callback's settle window; the sweep marks
# what is due, each once, through the partial indexes on the due times.
START_SETTLE = "UPDATE callbacks SET settle_due = ?, settled_at = NULL WHERE id = ?"
MARK_SETTLED = (
    "UPDATE callbacks SET settled_at = settle_due, settle_due = NULL WHERE id IN"
    " (SELECT id FROM callbacks WHERE settle_due <= ? ORDER BY settle_due LIMIT ?)"
    f" RETURNING {CALLBACK_COLUMNS}"
)
MARK_OVERDUE = (
    f"UPDATE callbacks SET overdue = (status = '{PENDING}'), overdue_due = NULL WHERE id IN"
    " (SELECT id FROM callbacks WHERE overdue_due <= ? ORDER BY overdue_due LIMIT ?)"
    f" RETURNING {CALLBACK_COLUMNS}"
)
HAS_TIMERS_DUE = (
    "SELECT EXISTS (SELECT 1 FROM callbacks WHERE settle_due <= ?)"
    " OR EXISTS (SELECT 1 FROM callbacks WHERE overdue_due <= ?)"
)
OVERDUE_COUNT = "SELECT COUNT(*) FROM callbacks WHERE group_name = ? AND overdue = TRUE"
OWNED_OVERDUE_COUNT = "SELECT COUNT(*) FROM callbacks WHERE group_name = ? AND overdue = TRUE AND created_by = ?"
EXPIRE_DUE = (
    f"UPDATE callbacks SET status = '{EXPIRED}' WHERE id IN"
    f" (SELECT id FROM callbacks WHERE status = '{PENDING}' AND expires_at <= ? ORDER BY expires_at LIMIT ?)"
    f" RETURNING {CALLBACK_COLUMNS}"
)
WRITE_PROBE = "INSERT INTO write_probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at"
# Retention: deliveries first, a bounded number at a time, so no transaction grows long however
# many deliveries one old callback has; then the callbacks left without any; then stale keys.
PURGE_DELIVERIES = (
    "DELETE FROM deliveries WHERE id IN (SELECT d.id FROM deliveries d WHERE d.callback_id IN"
    " (SELECT id FROM callbacks WHERE expires_at < ? ORDER BY expires_at LIMIT 50) LIMIT ?)"
)
PURGE_EXPECTED_IDS = (
    "DELETE FROM expected_ids WHERE (callback_id, correlation_id) IN (SELECT callback_id, correlation_id"
    " FROM expected_ids WHERE callback_id IN (SELECT id FROM callbacks WHERE expires_at < ? ORDER BY expires_at"
    " LIMIT 50) LIMIT ?)"
)
PURGE_CALLBACKS = (
    "DELETE FROM callbacks WHERE id IN (SELECT c.id FROM callbacks c WHERE c.expires_at < ?"
    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.callback_id = c.id)"
    " AND NOT EXISTS (SELECT 1 FROM expected_ids e WHERE e.callback_id = c.id) ORDER BY c.expires_at LIMIT ?)"
)
PURGE_KEYS = (
    "DELETE FROM idempotency_keys WHERE (scope, key) IN"
    " (SELECT scope, key FROM idempotency_keys WHERE created_at < ? LIMIT ?)"
)
GIVE_PAGES_BACK = "PRAGMA incremental_vacuum(2000)"
HAS_DUE = f"SELECT 1 FROM callbacks WHERE status = '{PENDING}' AND expires_at <= ? LIMIT 1"
GROUP_COUNTS = "SELECT status, COUNT(*) FROM callbacks WHERE group_name = ? GROUP BY status"
OWNED_GROUP_COUNTS = "SELECT status, COUNT(*) FROM callbacks WHERE group_name = ? AND created_by = ? GROUP BY status"
STATUS_COUNTS = "SELECT status, COUNT(*) FROM callbacks GROUP BY status"
_OWNED = "(? IS NULL OR created_by = ?)"
GROUP_OUTCOME_COUNTS = (
    f"SELECT status, outcome, COUNT(*) FROM callbacks WHERE group_name = ? AND {_OWNED} GROUP BY status, outcome"
)
GROUP_ERRORS = (
    "SELECT c.token, c.label, d.correlation_id, d.error, d.id FROM callbacks c JOIN deliveries d"
    f" ON d.id = c.last_delivery_id WHERE c.group_name = ? AND c.outcome = 'error' AND {_OWNED.replace('created_by', 'c.created_by')}"
    " ORDER BY d.id LIMIT ?"
)
GROUP_PENDING = f"SELECT token FROM callbacks WHERE group_name = ? AND status = '{PENDING}' AND {_OWNED} ORDER BY id LIMIT ?"


def backup_database(source: str | os.PathLike[str], dest: str | os.PathLike[str], pages_per_step: int = 1024) -> int:
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
    return int(pages)


class SQLiteStore(Store):
    def __init__(
        self,
        path: str | os.PathLike[str],
        synchronous: str = "FULL",
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._writer_conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbhub-writer")
        self._reader: aiosqlite.Connection | None = None
        # One process owns the file: when nobody listens here, nobody is told of a commit.
        self._writes: GroupCommit[WriteOp] = GroupCommit(
            self._commit, self._announce, on_commit, listening=lambda: self._listening()
        )
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
        due = decisions.migrations_due(version, latest, str(self.path))
        if not due:
            return
        if version == 0:
            # Only possible before the first table exists: lets retention give pages back.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for index in due:
                MIGRATIONS[index](conn)
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

    # Writes (each op runs on the writer thread). The decisions are store.decisions'; the
    # answers to their steps, in SQLite's SQL, are here.

    async def mint(
        self,
        specs: list[MintSpec],
        now: int,
        idempotency: tuple[str, str, str] | None = None,
    ) -> tuple[list[Callback], bool]:
        result: tuple[list[Callback], bool] = await self._writes.submit(self._deciding(lambda: decisions.mint(specs, now, idempotency)), minted)
        return result

    async def ingest(
        self,
        incoming: Incoming,
        guard: Guard | None = None,
        keep_late: bool = True,
        check: ContractCheck | None = None,
        default_response: ResponseSpec | None = None,
        builtin_outcomes: bool = True,
    ) -> IngestResult:
        result: IngestResult = await self._writes.submit(
            self._deciding(
                lambda: decisions.ingest(incoming, guard, keep_late, check, default_response, builtin_outcomes)
            ),
            ingested,
        )
        return result

    async def cancel(self, token: str, now: int) -> tuple[Callback, bool]:
        result: tuple[Callback, bool] = await self._writes.submit(self._deciding(lambda: decisions.cancel(token)), cancelled)
        return result

    def _deciding(self, steps: Callable[[], decisions.Steps[Any]]) -> WriteOp:
        """A write op that runs a decision, answering its steps on the writer's connection."""
        return lambda conn: decisions.run(steps(), lambda step: _answer(conn, step))

    async def expire_due(self, now: int, limit: int = 500) -> list[Callback]:
        def op(conn: sqlite3.Connection) -> list[Callback]:
            return [callback_from_row(row) for row in conn.execute(EXPIRE_DUE, (now, limit)).fetchall()]

        result: list[Callback] = await self._writes.submit(op, expired)
        return result

    async def mark_settled(self, now: int, limit: int = 500) -> list[Callback]:
        def op(conn: sqlite3.Connection) -> list[Callback]:
            return [_with_result(conn, row) for row in conn.execute(MARK_SETTLED, (now, limit)).fetchall()]

        result: list[Callback] = await self._writes.submit(op, settled)
        return result

    async def mark_overdue(self, now: int, limit: int = 500) -> list[Callback]:
        def op(conn: sqlite3.Connection) -> list[Callback]:
            return [callback_from_row(row) for row in conn.execute(MARK_OVERDUE, (now, limit)).fetchall()]

        result: list[Callback] = await self._writes.submit(op, overdue)
        return result

    async def probe_write(self, now: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(WRITE_PROBE, (now,))

        await self._writes.submit(op, probe=True)

    async def purge(self, expired_before: int, now: int, batch: int = 500) -> int:
        def op(conn: sqlite3.Connection) -> int:
            for sql, since in purge_order(
                PURGE_DELIVERIES, PURGE_CALLBACKS, PURGE_KEYS, expired_before, now, PURGE_EXPECTED_IDS
            ):
                gone = conn.execute(sql, (since, batch)).rowcount
                if gone:
                    return gone
            conn.execute(GIVE_PAGES_BACK).fetchall()  # nothing left to delete: free pages go back
            return 0

        result: int = await self._writes.submit(op)
        return result

    # Reads

    def _open_reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        return self._reader

    async def _fetchone(self, sql: str, params: Sequence[Any]) -> Row | None:
        # Every query read this way finds at most one row (a unique key, a count, LIMIT 1).
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Row]:
        # Executed, read and its cursor let go in one trip to the reader's thread, not three
        # (execute, fetch, close): reads that arrive together (thousands of long-polls opened
        # at once) then use the cached statement one after another. With a cursor open
        # between trips, each of them made SQLite prepare a statement of its own, and the
        # freed statements left the heap full of holes (17 KB per waiter kept after a storm).
        return list(await self._open_reader().execute_fetchall(sql, params))

    async def has_due(self, now: int) -> bool:
        row = await self._fetchone(HAS_DUE, (now,))
        return row is not None

    async def has_timers_due(self, now: int) -> bool:
        row = await self._fetchone(HAS_TIMERS_DUE, (now, now))
        return bool(row and row[0])

    async def overdue_count(self, group: str, owner: str | None = None) -> int:
        if owner is None:
            row = await self._fetchone(OVERDUE_COUNT, (group,))
        else:
            row = await self._fetchone(OWNED_OVERDUE_COUNT, (group, owner))
        return int(row[0]) if row is not None else 0

    async def get_callback(self, token: str) -> Callback | None:
        row = await self._fetchone(SELECT_CALLBACK_BY_TOKEN, (token,))
        if row is None:
            return None
        callback = callback_from_row(row)
        if row[LAST_DELIVERY_ID] is not None:
            callback.result = await self.get_delivery(row[LAST_DELIVERY_ID])
        if callback.expected is not None and callback.expected.named:
            callback.expected.missing = await self._missing_after(row[CALLBACK_ID], 0, MISSING_SHOWN)
        return callback

    async def missing(self, token: str, after: str | None, limit: int) -> list[str] | None:
        row = await self._fetchone(SELECT_CALLBACK_ID, (token,))
        if row is None:
            return []
        position = 0
        if after is not None:
            found = await self._fetchone(SELECT_POSITION, (row[0], after))
            if found is None:
                return None
            position = found[0]
        return await self._missing_after(row[0], position, limit)

    async def _missing_after(self, callback_id: int, position: int, limit: int) -> list[str]:
        return [r[0] for r in await self._fetchall(SELECT_MISSING, (callback_id, position, limit))]

    async def list_callbacks(self, where: CallbackFilter, before: int | None, limit: int) -> CallbackPage:
        params = Params()
        clause = callback_where(where, before, params.bind)
        rows = await self._fetchall(
            f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE {clause} ORDER BY id DESC LIMIT ?", [*params, limit + 1]
        )
        return listing_page(rows, limit)

    async def find_deliveries(self, where: DeliveryFilter, after: int, limit: int) -> list[Delivery]:
        params = Params()
        clause = delivery_where(where, after, params.bind)
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
        row = await self._fetchone(SELECT_DELIVERY_BY_ID, (delivery_id,))
        return delivery_from_row(row) if row is not None else None

    async def group_counts(self, group: str, owner: str | None = None) -> dict[str, int]:
        if owner is None:
            return by_status(await self._fetchall(GROUP_COUNTS, (group,)))
        return by_status(await self._fetchall(OWNED_GROUP_COUNTS, (group, owner)))

    async def group_summary(
        self, group: str, owner: str | None = None, details: bool = True, limit: int = GROUP_LIST_LIMIT
    ) -> GroupSummary:
        counts, outcomes = by_status_and_outcome(await self._fetchall(GROUP_OUTCOME_COUNTS, (group, owner, owner)))
        if not details:
            return GroupSummary(counts, outcomes, [], [])
        errors = await self._fetchall(GROUP_ERRORS, (group, owner, owner, limit)) if outcomes[ERROR] else []
        pending = await self._fetchall(GROUP_PENDING, (group, owner, owner, limit)) if counts[PENDING] else []
        return GroupSummary(counts, outcomes, [group_error(row) for row in errors], [row[0] for row in pending])

    async def status_counts(self) -> dict[str, int]:
        return by_status(await self._fetchall(STATUS_COUNTS, ()))

    async def ping(self) -> None:
        await self._fetchone("SELECT 1", ())


def _answer(conn: sqlite3.Connection, step: decisions.Step) -> Any:
    """A decision's step, answered in SQLite's SQL on the writer's connection. The writer is
    alone, so a callback read here is locked against other writes until the commit. The two
    steps of every ingest come first."""
    match step:
        case decisions.LoadCallback(token):
            return _found(conn.execute(SELECT_CALLBACK_BY_TOKEN, (token,)).fetchone())
        case decisions.InsertDelivery(callback_id, group, incoming, late, new_status, verdict, problems, answered, same_outcome):
            values = (
                callback_id,
                group,
                *delivery_values(incoming, verdict, answered=answered),
                late,
                problems_value(problems),
            )
            delivery_id = conn.execute(INSERT_DELIVERY, values).lastrowid
            stored_verdict = (verdict.outcome, verdict.error_json())  # as the delivery's row has them
            if late:
                conn.execute(COUNT_LATE, (callback_id,))
            elif problems:
                conn.execute(COUNT_INVALID, (callback_id,))
            elif new_status is not None:
                conn.execute(COUNT_ON_TIME_WITH_STATUS, (new_status, delivery_id, *stored_verdict, callback_id))
            elif same_outcome:
                conn.execute(COUNT_ON_TIME_SAME_OUTCOME, (delivery_id, callback_id))
            else:
                conn.execute(COUNT_ON_TIME, (delivery_id, *stored_verdict, callback_id))
            return delivery_id
        case decisions.LoadDelivery(delivery_id):
            return _delivery(conn, delivery_id)
        case decisions.FindDuplicate(callback_id, dedupe_key):
            row = conn.execute(SELECT_DUPLICATE, (callback_id, dedupe_key)).fetchone()
            return delivery_from_row(row) if row is not None else None
        case decisions.MarkCancelled(callback_id):
            conn.execute(MARK_CANCELLED, (callback_id,))
            return None
        case decisions.StartSettle(callback_id, due):
            conn.execute(START_SETTLE, (due, callback_id))
            return None
        case decisions.ClaimKey(scope, key, fingerprint, now):
            row = conn.execute(SELECT_KEY, (scope, key)).fetchone()
            if row is not None and row[1] > now - IDEMPOTENCY_WINDOW_MS:
                return row[0], orjson.loads(row[2])
            conn.execute(CLAIM_KEY, (scope, key, fingerprint, now))
            return None
        case decisions.InsertCallbacks(specs, now):
            return [_found(conn.execute(INSERT_CALLBACK, (*callback_values(spec, now), now)).fetchone()) for spec in specs]
        case decisions.RecordKey(scope, key, callback_ids):
            conn.execute(RECORD_KEY, (orjson.dumps(callback_ids).decode(), scope, key))
            return None
        case decisions.LoadCallbacks(callback_ids):
            return [_with_result(conn, conn.execute(SELECT_CALLBACK_BY_ID, (i,)).fetchone()) for i in callback_ids]
        case decisions.MarkArrived(callback_id, correlation_id):
            return conn.execute(MARK_ARRIVED, (callback_id, correlation_id)).rowcount == 1
        case decisions.AddArrival(callback_id, correlation_id, position):
            return conn.execute(ADD_ARRIVAL, (callback_id, correlation_id, position)).rowcount == 1
        case decisions.IsExpected(callback_id, correlation_id):
            return conn.execute(IS_EXPECTED, (callback_id, correlation_id)).fetchone() is not None
        case decisions.CountExpected(callback_id, arrived, unexpected):
            conn.execute(COUNT_EXPECTED, (arrived, unexpected, callback_id))
            return None
        case decisions.InsertExpected(callback_id, correlation_ids):
            conn.executemany(INSERT_EXPECTED, ((callback_id, cid, n) for n, cid in enumerate(correlation_ids, 1)))
            return None
    raise AssertionError(f"no answer to {step!r}")


def _found(row: Sequence[Any] | None) -> decisions.Found | None:
    return None if row is None else decisions.Found(row[CALLBACK_ID], callback_from_row(row), row[LAST_DELIVERY_ID])


def _delivery(conn: sqlite3.Connection, delivery_id: int | None) -> Delivery | None:
    if delivery_id is None:
        return None
    row = conn.execute(SELECT_DELIVERY_BY_ID, (delivery_id,)).fetchone()
    return delivery_from_row(row) if row is not None else None


def _with_result(conn: sqlite3.Connection, row: Sequence[Any]) -> Callback:
    callback = callback_from_row(row)
    callback.result = _delivery(conn, row[LAST_DELIVERY_ID])
    return callback
