"""The shared store: one PostgreSQL database behind any number of cbhub instances.

Writes go through one writer connection per instance with group commit, as on SQLite: every
write that arrives while a commit runs joins the next transaction. Reads go through a pool.

Cursors stay gap-free across instances. A sequence alone would not do it: a transaction that
took id 7 may commit after one that took id 8, and a reader that saw 8 would never see 7. So
every transaction that takes delivery ids, or creation or closing positions (what the other
instances follow, see feed.py), first takes one transaction-scoped advisory lock
(ORDER_LOCK) and holds it until it commits: numbers are handed out in commit order, and a reader
at any moment sees every number up to the highest it sees. Group commit takes the lock once per
batch, so its cost is shared by the batch. Retention and the write probe never take it, and a
transaction that takes it does so before anything else, so it cannot be part of a deadlock.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import asyncpg
import orjson

from cbhub.domain.expectations import MISSING_SHOWN, ContractCheck
from cbhub.domain.filters import CallbackFilter, DeliveryFilter
from cbhub.domain.guards import Guard
from cbhub.domain.model import (
    CANCELLED,
    CREATED,
    EXPIRED,
    OVERDUE,
    PENDING,
    SETTLED,
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
    Announce,
    GroupCommit,
    OpFailed,
    cancelled,
    expired,
    ingested,
    minted,
    no_events,
    overdue,
    settled,
)
from cbhub.store.postgres.feed import CHANNEL, KINDS, EventFeed, Position
from cbhub.store.postgres.schema import MIGRATIONS
from cbhub.store.rows import (
    CALLBACK_COLUMNS,
    CALLBACK_ID,
    CALLBACK_WIDTH,
    DELIVERY_COLUMNS,
    DELIVERY_FROM,
    DELIVERY_WIDTH,
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

log = logging.getLogger("cbhub.store")
T = TypeVar("T")

# Arbitrary, fixed keys of cbhub's advisory locks (one keyspace per database).
ORDER_LOCK = 0x6362_6875_625F_6F72  # "cbhub_or"
MIGRATION_LOCK = 0x6362_6875_625F_6D69  # "cbhub_mi"

# Held from here to the commit by every transaction that takes delivery ids or closing positions.
TAKE_ORDER_LOCK = "SELECT pg_advisory_xact_lock($1)"
# Held by the instance that migrates the schema, while it does.
TAKE_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock($1)"
C_CALLBACK_COLUMNS = ", ".join(f"c.{column}" for column in CALLBACK_COLUMNS.split(", "))
# The last number each sequence handed out (a Position: creation, delivery, closing).
_LAST_VALUES = ", ".join(
    f"(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence})"
    for sequence in ("creation_seq", "delivery_ids", "closing_seq", "overdue_positions", "settled_positions")
)
LAST_POSITION = f"SELECT {_LAST_VALUES}"
NOTIFY_AND_LAST_POSITION = f"SELECT {_LAST_VALUES}, pg_notify($1, $2)"
COMMITTED_POSITION = (
    "SELECT (SELECT coalesce(max(created_seq), 0) FROM callbacks), (SELECT coalesce(max(id), 0) FROM deliveries),"
    " (SELECT coalesce(max(closed_seq), 0) FROM callbacks), (SELECT coalesce(max(overdue_seq), 0) FROM callbacks),"
    " (SELECT coalesce(max(settled_seq), 0) FROM callbacks)"
)
CREATIONS_AFTER = (
    f"SELECT created_seq, {CALLBACK_COLUMNS} FROM callbacks"
    " WHERE created_seq > $1 AND created_seq <= $2 ORDER BY created_seq LIMIT $3"
)
DELIVERIES_AFTER = (
    f"SELECT {DELIVERY_COLUMNS}, {C_CALLBACK_COLUMNS} FROM {DELIVERY_FROM}"
    " WHERE d.id > $1 AND d.id <= $2 ORDER BY d.id LIMIT $3"
)
CLOSINGS_AFTER = (
    f"SELECT c.closed_seq, {C_CALLBACK_COLUMNS}, {DELIVERY_COLUMNS}"
    " FROM callbacks c LEFT JOIN deliveries d ON d.id = c.last_delivery_id"
    " WHERE c.closed_seq > $1 AND c.closed_seq <= $2 ORDER BY c.closed_seq LIMIT $3"
)
INSERT_CALLBACKS = (
    "INSERT INTO callbacks (token, status, created_at, expires_at, label, group_name, metadata, created_by,"
    " allow_ips, verify, expect_total, expect_named, contract, response, settle_ms, expect_within, overdue_due,"
    " outcome_rule, created_seq)"
    " SELECT t.token, 'pending', $2, t.expires_at, t.label, t.group_name, t.metadata, t.created_by, t.allow_ips,"
    " t.verify, t.expect_total, t.expect_named, t.contract, t.response, t.settle_ms, t.expect_within,"
    " t.overdue_due, t.outcome_rule, nextval('creation_seq')"
    " FROM unnest($1::text[], $3::bigint[], $4::bytea[], $5::bytea[], $6::text[], $7::text[], $8::text[],"
    " $9::text[], $10::integer[], $11::boolean[], $12::text[], $13::text[], $14::bigint[], $15::bigint[],"
    " $16::bigint[], $17::text[])"
    " AS t (token, expires_at, label, group_name, metadata, created_by, allow_ips, verify, expect_total,"
    " expect_named, contract, response, settle_ms, expect_within, overdue_due, outcome_rule)"
    f" RETURNING {CALLBACK_COLUMNS}"
)
# Timers (domain/timing.py), as on SQLite; each marking takes a place in commit order, so that
# the other instances announce it too (feed.py). A settling undone by a newer delivery is
# not told.
START_SETTLE = "UPDATE callbacks SET settle_due = $1, settled_at = NULL WHERE id = $2"
MARK_SETTLED = (
    "UPDATE callbacks SET settled_at = settle_due, settle_due = NULL, settled_seq = nextval('settled_positions')"
    " WHERE id IN (SELECT id FROM callbacks WHERE settle_due <= $1 ORDER BY settle_due LIMIT $2"
    f" FOR UPDATE SKIP LOCKED) RETURNING {CALLBACK_COLUMNS}"
)
MARK_OVERDUE = (
    f"UPDATE callbacks SET overdue = (status = '{PENDING}'), overdue_due = NULL,"
    f" overdue_seq = CASE WHEN status = '{PENDING}' THEN nextval('overdue_positions') END"
    " WHERE id IN (SELECT id FROM callbacks WHERE overdue_due <= $1 ORDER BY overdue_due LIMIT $2"
    f" FOR UPDATE SKIP LOCKED) RETURNING {CALLBACK_COLUMNS}"
)
HAS_TIMERS_DUE = (
    "SELECT EXISTS (SELECT 1 FROM callbacks WHERE settle_due <= $1)"
    " OR EXISTS (SELECT 1 FROM callbacks WHERE overdue_due <= $1)"
)
OVERDUE_COUNT = (
    "SELECT COUNT(*) FROM callbacks WHERE group_name = $1 AND overdue = TRUE AND ($2::text IS NULL OR created_by = $2)"
)
OVERDUES_AFTER = (
    f"SELECT overdue_seq, {CALLBACK_COLUMNS} FROM callbacks"
    " WHERE overdue_seq > $1 AND overdue_seq <= $2 ORDER BY overdue_seq LIMIT $3"
)
SETTLINGS_AFTER = (
    f"SELECT c.settled_seq, {C_CALLBACK_COLUMNS}, {DELIVERY_COLUMNS}"
    " FROM callbacks c LEFT JOIN deliveries d ON d.id = c.last_delivery_id"
    " WHERE c.settled_seq > $1 AND c.settled_seq <= $2 AND c.settled_at IS NOT NULL ORDER BY c.settled_seq LIMIT $3"
)
# Claims an idempotency key: a new key, or one past its window. No row back: the key is live.
CLAIM_KEY = (
    "INSERT INTO idempotency_keys (scope, key, fingerprint, created_at, callback_ids) VALUES ($1, $2, $3, $4, '[]')"
    " ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,"
    " created_at = EXCLUDED.created_at, callback_ids = '[]' WHERE idempotency_keys.created_at <= $5 RETURNING 1"
)
# The delivery and its callback's new state in one round trip.
_INSERT_DELIVERY = (
    "WITH d AS (INSERT INTO deliveries (callback_id, group_name, received_at, method, content_type, remote_addr,"
    " headers, query, body, correlation_id, dedupe_key, answer, outcome, error, late, problems)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, {late}, {problems}) RETURNING id)"
)
INSERT_DELIVERY = _INSERT_DELIVERY.format(late="false", problems="NULL") + (
    " UPDATE callbacks SET status = COALESCE($15, status), deliveries = deliveries + 1,"
    " last_delivery_id = (SELECT id FROM d), outcome = $13, error = $14 WHERE id = $1 RETURNING last_delivery_id"
)
# A late one only counts on its callback: status and result stay as they were.
INSERT_LATE_DELIVERY = _INSERT_DELIVERY.format(late="true", problems="$15") + (
    " UPDATE callbacks SET late_deliveries = late_deliveries + 1 WHERE id = $1 RETURNING (SELECT id FROM d)"
)
# An invalid one (it does not fit the contract) is counted, never the result.
INSERT_INVALID_DELIVERY = _INSERT_DELIVERY.format(late="false", problems="$15") + (
    " UPDATE callbacks SET deliveries = deliveries + 1, invalid_deliveries = invalid_deliveries + 1 WHERE id = $1"
    " RETURNING (SELECT id FROM d)"
)
# Expected sets: each step one keyed statement (see store/decisions.py).
MARK_ARRIVED = (
    "UPDATE expected_ids SET arrived = true WHERE callback_id = $1 AND correlation_id = $2 AND NOT arrived"
    " RETURNING 1"
)
ADD_ARRIVAL = (
    "INSERT INTO expected_ids (callback_id, correlation_id, position, arrived) VALUES ($1, $2, $3, true)"
    " ON CONFLICT DO NOTHING RETURNING 1"
)
IS_EXPECTED = "SELECT 1 FROM expected_ids WHERE callback_id = $1 AND correlation_id = $2"
COUNT_EXPECTED = (
    "UPDATE callbacks SET expect_arrived = expect_arrived + $2, expect_unexpected = expect_unexpected + $3"
    " WHERE id = $1"
)
INSERT_EXPECTED = (
    "INSERT INTO expected_ids (callback_id, correlation_id, position)"
    " SELECT $1, t.id, t.n FROM unnest($2::bytea[]) WITH ORDINALITY AS t (id, n)"
)
SELECT_CALLBACK_ID = "SELECT id FROM callbacks WHERE token = $1"
SELECT_POSITION = "SELECT position FROM expected_ids WHERE callback_id = $1 AND correlation_id = $2"
SELECT_MISSING = (
    "SELECT correlation_id FROM expected_ids WHERE callback_id = $1 AND NOT arrived AND position > $2"
    " ORDER BY position LIMIT $3"
)
SELECT_CALLBACK_FOR_UPDATE = f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE token = $1 FOR UPDATE"
SELECT_CALLBACK_BY_TOKEN = f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE token = $1"
SELECT_CALLBACK_BY_ID = f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE id = $1"
SELECT_DELIVERY_BY_ID = f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.id = $1"
SELECT_DUPLICATE = f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.callback_id = $1 AND d.dedupe_key = $2"
MARK_CANCELLED = f"UPDATE callbacks SET status = '{CANCELLED}', closed_seq = nextval('closing_seq') WHERE id = $1"
SELECT_KEY = "SELECT fingerprint, callback_ids FROM idempotency_keys WHERE scope = $1 AND key = $2"
RECORD_KEY = "UPDATE idempotency_keys SET callback_ids = $3 WHERE scope = $1 AND key = $2"
WRITE_PROBE = "INSERT INTO write_probe (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at"
HAS_DUE = f"SELECT 1 FROM callbacks WHERE status = '{PENDING}' AND expires_at <= $1 LIMIT 1"
CALLBACK_STATUSES = (
    "SELECT token, status FROM callbacks WHERE token = ANY($1::text[]) AND ($2::text IS NULL OR created_by = $2)"
)
GROUP_COUNTS = (
    "SELECT status, COUNT(*) FROM callbacks WHERE group_name = $1 AND ($2::text IS NULL OR created_by = $2)"
    " GROUP BY status"
)
STATUS_COUNTS = "SELECT status, COUNT(*) FROM callbacks GROUP BY status"
GROUP_OUTCOME_COUNTS = (
    "SELECT status, outcome, COUNT(*) FROM callbacks WHERE group_name = $1 AND ($2::text IS NULL OR created_by = $2)"
    " GROUP BY status, outcome"
)
GROUP_ERRORS = (
    "SELECT c.token, c.label, d.correlation_id, d.error, d.id FROM callbacks c JOIN deliveries d"
    " ON d.id = c.last_delivery_id WHERE c.group_name = $1 AND c.outcome = 'error'"
    " AND ($2::text IS NULL OR c.created_by = $2) ORDER BY d.id LIMIT $3"
)
GROUP_PENDING = (
    f"SELECT token FROM callbacks WHERE group_name = $1 AND status = '{PENDING}'"
    " AND ($2::text IS NULL OR created_by = $2) ORDER BY id LIMIT $3"
)
PING = "SELECT 1"
HAS_SCHEMA_TABLE = "SELECT to_regclass('cbhub_schema') IS NOT NULL"
SCHEMA_VERSION = "SELECT version FROM cbhub_schema"
CREATE_SCHEMA_TABLE = "CREATE TABLE cbhub_schema (version INTEGER NOT NULL)"
INSERT_SCHEMA_VERSION = "INSERT INTO cbhub_schema (version) VALUES ($1)"
SET_SCHEMA_VERSION = "UPDATE cbhub_schema SET version = $1"
EXPIRE_DUE = (
    "UPDATE callbacks SET status = $1, closed_seq = nextval('closing_seq') WHERE id IN"
    " (SELECT id FROM callbacks WHERE status = $2 AND expires_at <= $3 ORDER BY expires_at LIMIT $4"
    " FOR UPDATE SKIP LOCKED)"
    f" RETURNING {CALLBACK_COLUMNS}"
)
PURGE_DELIVERIES = (
    "DELETE FROM deliveries WHERE id IN (SELECT d.id FROM deliveries d WHERE d.callback_id IN"
    " (SELECT id FROM callbacks WHERE expires_at < $1 ORDER BY expires_at LIMIT 50) LIMIT $2)"
)
PURGE_EXPECTED_IDS = (
    "DELETE FROM expected_ids WHERE (callback_id, correlation_id) IN (SELECT callback_id, correlation_id"
    " FROM expected_ids WHERE callback_id IN (SELECT id FROM callbacks WHERE expires_at < $1 ORDER BY expires_at"
    " LIMIT 50) LIMIT $2)"
)
PURGE_CALLBACKS = (
    "DELETE FROM callbacks WHERE id IN (SELECT c.id FROM callbacks c WHERE c.expires_at < $1"
    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.callback_id = c.id)"
    " AND NOT EXISTS (SELECT 1 FROM expected_ids e WHERE e.callback_id = c.id) ORDER BY c.expires_at LIMIT $2)"
)
PURGE_KEYS = (
    "DELETE FROM idempotency_keys WHERE (scope, key) IN"
    " (SELECT scope, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)"
)


def _name(text: str | None) -> bytes | None:
    # surrogatepass: whatever Python holds goes in, and comes back out the same.
    return None if text is None else text.encode("utf-8", "surrogatepass")


def _text(stored: bytes | None) -> str | None:
    return None if stored is None else bytes(stored).decode("utf-8", "surrogatepass")


def _callback(row: Sequence[Any]) -> Callback:
    return callback_from_row(row, _text)


def _delivery(row: Sequence[Any]) -> Delivery:
    return delivery_from_row(row, _text)


def _no_such_token(token: str) -> bool:
    # PostgreSQL text holds no NUL: such a token names no callback, and must not reach SQL.
    return "\x00" in token


def _fails_alone(exc: Exception) -> bool:
    """Whether an op's error is its own (a refusal, a bug, a value the database refuses) and
    not the connection's or the server's, which fails the whole batch."""
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in ("22", "23")  # data exception, integrity violation
    return not isinstance(exc, (OSError, asyncpg.InterfaceError))


# Errors that mean "the connection or the server", not "this statement".
CONNECTION_ERRORS = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # terminated, shutting down, starting up
    asyncpg.InternalClientError,
)


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"PostgreSQL is unavailable: {exc or type(exc).__name__}")


class _LostBeforeCommit(Exception):
    """The writer's connection was lost before the batch's COMMIT was sent."""

    def __init__(self, unavailable: StoreUnavailable) -> None:
        super().__init__(str(unavailable))
        self.unavailable = unavailable


@dataclass(frozen=True, slots=True)
class _Write:
    run: Callable[[asyncpg.Connection], Awaitable[Any]]
    # Takes delivery ids or closing positions: needs the ordering lock.
    ordered: bool


class PostgresStore(Store):
    def __init__(self, dsn: str, pool_size: int = 10, on_commit: Callable[[int, float], None] | None = None) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._writer: asyncpg.Connection | None = None
        self._writes: GroupCommit[_Write] = GroupCommit(self._commit, self._announce, on_commit)
        self._feed = EventFeed(
            lambda: self._connect("listener"),
            self._snapshot,
            {
                "creation": self._creations_after,
                "delivery": self._deliveries_after,
                "closing": self._closings_after,
                "overdue": self._overdues_after,
                "settled": self._settlings_after,
            },
            self._tell,
        )
        # Where the batch being announced started and ended in commit order.
        self._span: tuple[Position, Position] | None = None

    def _tell(self, event: Event) -> None:
        self._publish(event)

    # Lifecycle

    async def _connect(self, role: str = "writer") -> asyncpg.Connection:
        # Named, so that an operator (or a test) can tell cbhub's connections apart.
        return await asyncpg.connect(self.dsn, server_settings={"application_name": f"cbhub {role}"})

    async def open(self) -> None:
        try:
            self._writer = await self._connect()
            await self._migrate(self._writer)
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.pool_size, server_settings={"application_name": "cbhub reader"}
            )
            start = Position(*await self._writer.fetchrow(COMMITTED_POSITION))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self._close_connections()
            raise StoreUnavailable(f"cannot use PostgreSQL: {exc}") from exc
        except BaseException:
            await self._close_connections()
            raise
        await self._feed.start(start)
        self._writes.start()

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        latest = len(MIGRATIONS)
        async with conn.transaction():
            # Instances starting together migrate one at a time; the others then find it done.
            await conn.execute(TAKE_MIGRATION_LOCK, MIGRATION_LOCK)
            exists = await conn.fetchval(HAS_SCHEMA_TABLE)
            version = await conn.fetchval(SCHEMA_VERSION) if exists else 0
            due = decisions.migrations_due(version, latest, "the database")
            if not due:
                return
            for index in due:
                for statement in MIGRATIONS[index]:
                    await conn.execute(statement)
            if not exists:
                await conn.execute(CREATE_SCHEMA_TABLE)
                await conn.execute(INSERT_SCHEMA_VERSION, latest)
            else:
                await conn.execute(SET_SCHEMA_VERSION, latest)
        log.info("database migrated from schema version %d to %d", version, latest)

    async def close(self) -> None:
        await self._writes.close()
        await self._feed.stop()
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    @property
    def writable(self) -> bool:
        return self._writes.writable

    # The writer: group commit under the ordering lock

    async def _writer_connection(self) -> asyncpg.Connection:
        if self._writer is None or self._writer.is_closed():
            self._writer = await self._connect()
        return self._writer

    async def _commit(self, ops: list[_Write]) -> list[Any]:
        """One transaction for the batch, without a savepoint per op (two round trips each).
        An op refuses (a CbhubError) only before it writes, so a refusal leaves the transaction
        as it was; any other failure of one op rolls the batch back (OpFailed: group commit runs
        it again without that op). A failure of the connection or the server fails the
        batch: nothing of it was committed, unless the connection was lost during the COMMIT
        itself, which no client can tell apart (the writers are answered 503; a sender's retry
        with a message id is then deduplicated)."""
        retried = False
        while True:
            try:
                return await self._run_batch(ops)
            except _LostBeforeCommit as exc:
                # The writer's connection had died while idle (a database restart, a failover,
                # a terminated backend): nothing was committed, so once more on a new one.
                if retried:
                    raise exc.unavailable from exc.__cause__
                retried = True

    async def _run_batch(self, ops: list[_Write]) -> list[Any]:
        ordered = any(op.ordered for op in ops)
        held = committing = False
        start = end = Position()
        try:
            conn = await self._writer_connection()
            async with conn.transaction():
                if ordered:
                    await conn.execute(TAKE_ORDER_LOCK, ORDER_LOCK)
                    start = Position(*await conn.fetchrow(LAST_POSITION))
                    self._feed.hold(start)
                    held = True
                results: list[Any] = []
                for index, op in enumerate(ops):
                    try:
                        results.append(await op.run(conn))
                    except CbhubError as exc:
                        results.append(exc)
                    except Exception as exc:
                        if not _fails_alone(exc):
                            raise
                        raise OpFailed(index, exc) from exc
                if ordered:
                    # The notification is delivered by the server only if, and once, this
                    # transaction commits.
                    end = Position(
                        *tuple(await conn.fetchrow(NOTIFY_AND_LAST_POSITION, CHANNEL, self._feed.instance))[
                            : len(KINDS)
                        ]
                    )
                committing = True
        except Exception as exc:
            if held:
                self._feed.release()
            if isinstance(exc, (*CONNECTION_ERRORS, asyncpg.PostgresError)):
                # InternalClientError: the driver lost track of a connection the server closed
                # under it; it is of no more use than a closed one.
                confused = isinstance(exc, asyncpg.InternalClientError)
                lost = confused or self._writer is None or self._writer.is_closed()
                if lost:
                    if self._writer is not None:
                        self._writer.terminate()
                    self._writer = None
                if lost and not committing:
                    raise _LostBeforeCommit(_unavailable(exc)) from exc
                raise _unavailable(exc) from exc
            raise
        self._span = (start, end) if ordered else None
        return results

    async def _announce(self, events: list[Event]) -> None:
        span, self._span = self._span, None
        if span is not None:
            await self._feed.committed(events, *span)

    async def _submit(
        self,
        run: Callable[[asyncpg.Connection], Awaitable[Any]],
        ordered: bool,
        announce: Announce = no_events,
        probe: bool = False,
    ) -> Any:
        return await self._writes.submit(_Write(run, ordered), announce, probe)

    # Writes. The decisions are store.decisions'; the answers to their steps, in PostgreSQL's
    # SQL, are _answer's.

    async def mint(
        self,
        specs: list[MintSpec],
        now: int,
        idempotency: tuple[str, str, str] | None = None,
    ) -> tuple[list[Callback], bool]:
        # Ordered: creations take positions too, for the other instances' inspectors.
        return await self._decide(lambda: decisions.mint(specs, now, idempotency), minted)

    async def ingest(
        self,
        incoming: Incoming,
        guard: Guard | None = None,
        keep_late: bool = True,
        check: ContractCheck | None = None,
        default_response: ResponseSpec | None = None,
        builtin_outcomes: bool = True,
    ) -> IngestResult:
        return await self._decide(
            lambda: decisions.ingest(incoming, guard, keep_late, check, default_response, builtin_outcomes), ingested
        )

    async def cancel(self, token: str, now: int) -> tuple[Callback, bool]:
        return await self._decide(lambda: decisions.cancel(token), cancelled)

    async def _decide(self, steps: Callable[[], decisions.Steps[T]], announce: Announce) -> T:
        """Submit a decision as an ordered write, answering its steps on the writer's connection."""

        async def run(conn: asyncpg.Connection) -> T:
            return await decisions.run_async(steps(), lambda step: _answer(conn, step))

        result: T = await self._submit(run, ordered=True, announce=announce)
        return result

    async def expire_due(self, now: int, limit: int = 500) -> list[Callback]:
        async def op(conn: asyncpg.Connection) -> list[Callback]:
            rows = await conn.fetch(EXPIRE_DUE, EXPIRED, PENDING, now, limit)
            return [_callback(row) for row in rows]

        result: list[Callback] = await self._submit(op, ordered=True, announce=expired)
        return result

    async def mark_settled(self, now: int, limit: int = 500) -> list[Callback]:
        async def op(conn: asyncpg.Connection) -> list[Callback]:
            callbacks = []
            for row in await conn.fetch(MARK_SETTLED, now, limit):
                callback = _callback(row)
                callback.result = await _load_delivery(conn, row[LAST_DELIVERY_ID])
                callbacks.append(callback)
            return callbacks

        result: list[Callback] = await self._submit(op, ordered=True, announce=settled)
        return result

    async def mark_overdue(self, now: int, limit: int = 500) -> list[Callback]:
        async def op(conn: asyncpg.Connection) -> list[Callback]:
            return [_callback(row) for row in await conn.fetch(MARK_OVERDUE, now, limit)]

        result: list[Callback] = await self._submit(op, ordered=True, announce=overdue)
        return result

    async def probe_write(self, now: int) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(WRITE_PROBE, now)

        await self._submit(op, ordered=False, probe=True)

    async def purge(self, expired_before: int, now: int, batch: int = 500) -> int:
        async def op(conn: asyncpg.Connection) -> int:
            # Autovacuum gives the space back.
            for sql, since in purge_order(
                PURGE_DELIVERIES, PURGE_CALLBACKS, PURGE_KEYS, expired_before, now, PURGE_EXPECTED_IDS
            ):
                status = await conn.execute(sql, since, batch)
                gone = int(status.split()[-1])
                if gone:
                    return gone
            return 0

        result: int = await self._submit(op, ordered=False)
        return result

    # What the other instances committed, for the feed

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        async with self._pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                yield conn

    @staticmethod
    async def _creations_after(conn: asyncpg.Connection, after: int, upto: int, limit: int) -> list[tuple[int, Event]]:
        rows = await conn.fetch(CREATIONS_AFTER, after, upto, limit)
        return [(row[0], Event(CREATED, _callback(tuple(row)[1:]))) for row in rows]

    @staticmethod
    async def _deliveries_after(conn: asyncpg.Connection, after: int, upto: int, limit: int) -> list[tuple[int, Event]]:
        events = []
        for row in map(tuple, await conn.fetch(DELIVERIES_AFTER, after, upto, limit)):
            delivery = _delivery(row[:DELIVERY_WIDTH])
            callback = _callback(row[DELIVERY_WIDTH:])
            # A late or invalid delivery is not its callback's result (rare: one more read for it).
            result_id = row[DELIVERY_WIDTH + LAST_DELIVERY_ID]
            not_result = delivery.late or delivery.problems
            callback.result = await _load_delivery(conn, result_id) if not_result else delivery
            events.append((delivery.id, Event("delivery", callback, delivery)))
        return events

    @staticmethod
    async def _closings_after(conn: asyncpg.Connection, after: int, upto: int, limit: int) -> list[tuple[int, Event]]:
        events = []
        for row in map(tuple, await conn.fetch(CLOSINGS_AFTER, after, upto, limit)):
            callback = _callback(row[1 : 1 + CALLBACK_WIDTH])
            if row[1 + CALLBACK_WIDTH] is not None:
                callback.result = _delivery(row[1 + CALLBACK_WIDTH :])
            events.append((row[0], Event("status", callback)))
        return events

    @staticmethod
    async def _overdues_after(conn: asyncpg.Connection, after: int, upto: int, limit: int) -> list[tuple[int, Event]]:
        rows = await conn.fetch(OVERDUES_AFTER, after, upto, limit)
        return [(row[0], Event(OVERDUE, _callback(tuple(row)[1:]))) for row in rows]

    @staticmethod
    async def _settlings_after(conn: asyncpg.Connection, after: int, upto: int, limit: int) -> list[tuple[int, Event]]:
        events = []
        for row in map(tuple, await conn.fetch(SETTLINGS_AFTER, after, upto, limit)):
            callback = _callback(row[1 : 1 + CALLBACK_WIDTH])
            if row[1 + CALLBACK_WIDTH] is not None:
                callback.result = _delivery(row[1 + CALLBACK_WIDTH :])
            events.append((row[0], Event(SETTLED, callback)))
        return events

    # Reads

    async def _fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        try:
            return [tuple(row) for row in await self._pool.fetch(sql, *args)]
        except CONNECTION_ERRORS:
            pass  # a pooled connection that died while idle: a read is safe to repeat on another
        try:
            return [tuple(row) for row in await self._pool.fetch(sql, *args)]
        except CONNECTION_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def _fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        rows = await self._fetch(sql, *args)
        return rows[0] if rows else None

    async def has_due(self, now: int) -> bool:
        row = await self._fetchone(
            HAS_DUE, now
        )
        return row is not None

    async def has_timers_due(self, now: int) -> bool:
        row = await self._fetchone(HAS_TIMERS_DUE, now)
        return row is not None and bool(row[0])

    async def overdue_count(self, group: str, owner: str | None = None) -> int:
        row = await self._fetchone(OVERDUE_COUNT, _name(group), owner)
        return int(row[0]) if row is not None else 0

    async def get_callback(self, token: str) -> Callback | None:
        if _no_such_token(token):
            return None
        row = await self._fetchone(SELECT_CALLBACK_BY_TOKEN, token)
        if row is None:
            return None
        callback = _callback(row)
        if row[LAST_DELIVERY_ID] is not None:
            callback.result = await self.get_delivery(row[LAST_DELIVERY_ID])
        if callback.expected is not None and callback.expected.named:
            callback.expected.missing = await self._missing_after(row[CALLBACK_ID], 0, MISSING_SHOWN)
        return callback

    async def missing(self, token: str, after: str | None, limit: int) -> list[str] | None:
        row = None if _no_such_token(token) else await self._fetchone(SELECT_CALLBACK_ID, token)
        if row is None:
            return []
        position = 0
        if after is not None:
            found = await self._fetchone(SELECT_POSITION, row[0], _name(after))
            if found is None:
                return None
            position = found[0]
        return await self._missing_after(row[0], position, limit)

    async def _missing_after(self, callback_id: int, position: int, limit: int) -> list[str]:
        return [str(_text(r[0])) for r in await self._fetch(SELECT_MISSING, callback_id, position, limit)]

    async def find_deliveries(self, where: DeliveryFilter, after: int, limit: int) -> list[Delivery]:
        if where.token is not None and _no_such_token(where.token):
            return []
        if where.tokens is not None:
            # replace(), not a new filter: every other filter (the owner too) is kept.
            where = replace(where, tokens=frozenset(token for token in where.tokens if not _no_such_token(token)))
            if not where.tokens:
                return []
        params = Params(numbered=True)
        clause = delivery_where(where, after, params.bind, _name)
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE {clause} ORDER BY d.id LIMIT {params.bind(limit)}",
            *params,
        )
        return [_delivery(row) for row in rows]

    async def list_callbacks(self, where: CallbackFilter, before: int | None, limit: int) -> CallbackPage:
        params = Params(numbered=True)
        clause = callback_where(where, before, params.bind, _name)
        rows = await self._fetch(
            f"SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE {clause} ORDER BY id DESC LIMIT {params.bind(limit + 1)}",
            *params,
        )
        return listing_page(rows, limit, _text)

    async def callback_statuses(self, tokens: Sequence[str], owner: str | None = None) -> dict[str, str]:
        wanted = [token for token in tokens if not _no_such_token(token)]
        rows = await self._fetch(
            CALLBACK_STATUSES,
            wanted,
            owner,
        )
        return dict(rows)

    async def get_delivery(self, delivery_id: int) -> Delivery | None:
        row = await self._fetchone(SELECT_DELIVERY_BY_ID, delivery_id)
        return _delivery(row) if row is not None else None

    async def group_counts(self, group: str, owner: str | None = None) -> dict[str, int]:
        return by_status(
            await self._fetch(
                GROUP_COUNTS,
                _name(group),
                owner,
            )
        )

    async def group_summary(
        self, group: str, owner: str | None = None, details: bool = True, limit: int = GROUP_LIST_LIMIT
    ) -> GroupSummary:
        counts, outcomes = by_status_and_outcome(await self._fetch(GROUP_OUTCOME_COUNTS, _name(group), owner))
        if not details:
            return GroupSummary(counts, outcomes, [], [])
        errors = await self._fetch(GROUP_ERRORS, _name(group), owner, limit) if outcomes[ERROR] else []
        pending = await self._fetch(GROUP_PENDING, _name(group), owner, limit) if counts[PENDING] else []
        return GroupSummary(counts, outcomes, [group_error(row, _text) for row in errors], [row[0] for row in pending])

    async def status_counts(self) -> dict[str, int]:
        return by_status(await self._fetch(STATUS_COUNTS))

    async def ping(self) -> None:
        await self._fetch(PING)


async def _answer(conn: asyncpg.Connection, step: decisions.Step) -> Any:
    """A decision's step, answered in PostgreSQL's SQL on the writer's connection. A callback is
    read FOR UPDATE: writes to one callback from any instance are counted one after the other."""
    match step:
        case decisions.LoadCallback(token):
            if _no_such_token(token):
                return None
            return _found(await conn.fetchrow(SELECT_CALLBACK_FOR_UPDATE, token))
        case decisions.LoadDelivery(delivery_id):
            return await _load_delivery(conn, delivery_id)
        case decisions.FindDuplicate(callback_id, dedupe_key):
            row = await conn.fetchrow(SELECT_DUPLICATE, callback_id, _name(dedupe_key))
            return _delivery(row) if row is not None else None
        case decisions.InsertDelivery(callback_id, group, incoming, late, new_status, verdict, problems, answered):
            values = (callback_id, _name(group), *delivery_values(incoming, verdict, _name, answered))
            if late:
                return await conn.fetchval(INSERT_LATE_DELIVERY, *values, problems_value(problems))
            if problems:
                return await conn.fetchval(INSERT_INVALID_DELIVERY, *values, problems_value(problems))
            return await conn.fetchval(INSERT_DELIVERY, *values, new_status)
        case decisions.MarkCancelled(callback_id):
            await conn.execute(MARK_CANCELLED, callback_id)
            return None
        case decisions.StartSettle(callback_id, due):
            await conn.execute(START_SETTLE, due, callback_id)
            return None
        case decisions.ClaimKey(scope, key, fingerprint, now):
            claimed = await conn.fetchval(CLAIM_KEY, scope, key, fingerprint, now, now - IDEMPOTENCY_WINDOW_MS)
            if claimed is not None:
                return None
            # Live, perhaps claimed by another instance a moment ago: the unique key made this
            # insert wait for that one's commit.
            row = await conn.fetchrow(SELECT_KEY, scope, key)
            return row[0], orjson.loads(row[1])
        case decisions.InsertCallbacks(specs, now):
            rows = [callback_values(spec, now, _name) for spec in specs]
            created = await conn.fetch(INSERT_CALLBACKS, [r[0] for r in rows], now, *(list(c) for c in list(zip(*rows))[1:]))
            by_token = {row[1]: row for row in created}
            return [_found(by_token[row[0]]) for row in rows]
        case decisions.RecordKey(scope, key, callback_ids):
            await conn.execute(RECORD_KEY, scope, key, orjson.dumps(callback_ids).decode())
            return None
        case decisions.LoadCallbacks(callback_ids):
            return [await _load_callback(conn, callback_id) for callback_id in callback_ids]
        case decisions.MarkArrived(callback_id, correlation_id):
            return await conn.fetchval(MARK_ARRIVED, callback_id, _name(correlation_id)) is not None
        case decisions.AddArrival(callback_id, correlation_id, position):
            return await conn.fetchval(ADD_ARRIVAL, callback_id, _name(correlation_id), position) is not None
        case decisions.IsExpected(callback_id, correlation_id):
            return await conn.fetchval(IS_EXPECTED, callback_id, _name(correlation_id)) is not None
        case decisions.CountExpected(callback_id, arrived, unexpected):
            await conn.execute(COUNT_EXPECTED, callback_id, arrived, unexpected)
            return None
        case decisions.InsertExpected(callback_id, correlation_ids):
            await conn.execute(INSERT_EXPECTED, callback_id, [_name(cid) for cid in correlation_ids])
            return None
    raise AssertionError(f"no answer to {step!r}")


def _found(row: Sequence[Any] | None) -> decisions.Found | None:
    return None if row is None else decisions.Found(row[CALLBACK_ID], _callback(row), row[LAST_DELIVERY_ID])


async def _load_callback(conn: asyncpg.Connection, callback_id: int) -> Callback:
    row = await conn.fetchrow(SELECT_CALLBACK_BY_ID, callback_id)
    callback = _callback(row)
    callback.result = await _load_delivery(conn, row[LAST_DELIVERY_ID])
    return callback


async def _load_delivery(conn: asyncpg.Connection, delivery_id: int | None) -> Delivery | None:
    if delivery_id is None:
        return None
    row = await conn.fetchrow(SELECT_DELIVERY_BY_ID, delivery_id)
    return _delivery(row) if row is not None else None
