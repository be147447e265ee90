"""How one instance hears what every instance commits to a shared PostgreSQL database.

Every commit that adds a delivery or closes a callback sends a NOTIFY inside its transaction,
so only committed work wakes anyone. Each instance keeps one listening connection; a
notification (however many arrive at once) makes it read, in one query per kind, everything
committed after its own cursor, and announce it. The cursors are positions in commit order
(delivery ids, closing positions), gap-free by construction (see postgres.py), so a read after
the cursor never skips anything: a notification that is lost, or one sent while the listening
connection was down, costs nothing but latency, since the next read after reconnecting finds
everything since the cursor.

The instance's own commits are announced from memory, not read back (its notifications carry
its id, and it skips them). Two rules keep the
announcements in commit order without doubles: while one of its own batches is being
committed, the feed is *held* at the position that batch started from, so no read announces
past it; and the batch announces its own events only once everything before it was announced.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import AsyncContextManager, Awaitable, Callable

import asyncpg

from cbhub.domain.model import Event

log = logging.getLogger("cbhub.store")

CHANNEL = "cbhub_commits"
# Rows read per query when catching up.
PAGE = 500
# How often an idle listening connection is checked, so that a connection silently gone (a
# network partition, not a reset) is noticed and replaced within a few seconds.
CHECK_INTERVAL = 2.0
CHECK_TIMEOUT = 5.0
RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


# The kinds of event, each with its own position in commit order (the order of Position's
# fields, and of the store's queries of the last positions).
KINDS = ("creation", "delivery", "closing", "overdue", "settled")
# The order they are read in, the order one callback's events happen: it is created, may turn
# overdue while pending, receives deliveries, settles, and is closed.
READ_ORDER = ("creation", "overdue", "delivery", "settled", "closing")


@dataclass(frozen=True, slots=True)
class Position:
    """A point in commit order: the last position taken of each kind."""

    creation: int = 0
    delivery: int = 0
    closing: int = 0
    overdue: int = 0
    settled: int = 0

    def __le__(self, other: Position) -> bool:
        return all(getattr(self, kind) <= getattr(other, kind) for kind in KINDS)

    def max(self, other: Position) -> Position:
        return Position(*(max(getattr(self, kind), getattr(other, kind)) for kind in KINDS))


# read(conn, after, upto, limit) -> [(position, event)] of one kind, in commit order.
Read = Callable[[asyncpg.Connection, int, int, int], Awaitable[list[tuple[int, Event]]]]
# A connection reading one snapshot of the database, for as long as the context lasts.
Snapshot = Callable[[], AsyncContextManager[asyncpg.Connection]]
UNBOUNDED = 2**63 - 1


class EventFeed:
    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        snapshot: Snapshot,
        reads: dict[str, Read],
        publish: Callable[[Event], None],
    ) -> None:
        self._connect = connect
        self._snapshot = snapshot
        self._reads = reads
        self._publish = publish
        # Sent as the payload of our own notifications, which we need not read back.
        self.instance = secrets.token_hex(8)
        self.cursor = Position()
        # While one of our batches commits: where it started; nothing past it is announced.
        self._hold: Position | None = None
        # A read stopped at the hold: read again once the batch is announced.
        self._stopped = False
        self._mutex = asyncio.Lock()
        self._wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()

    async def start(self, cursor: Position) -> None:
        """Follow from `cursor`: everything committed after it will be announced."""
        self.cursor = cursor
        self._tasks = [
            asyncio.create_task(self._listen(), name="cbhub-listen"),
            asyncio.create_task(self._follow(), name="cbhub-follow"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass

    def catch_up_soon(self) -> None:
        self._wanted.set()

    # Our own batches

    def hold(self, start: Position) -> None:
        """A batch of ours took the ordering lock; everything at or before `start` is settled."""
        self._hold = start

    def release(self) -> None:
        """The batch failed: whatever it may have committed is read like anyone else's."""
        self._hold = None
        self.catch_up_soon()

    async def committed(self, events: list[Event], start: Position, end: Position) -> None:
        """Announce a batch of ours, committed between `start` and `end`, after what came before."""
        async with self._mutex:
            if not start <= self.cursor:
                try:
                    await self._catch_up(upto=start)
                except Exception as exc:
                    # What came before cannot be read now, and ours must not overtake it: ours
                    # is read back later, in its place, like anyone else's.
                    log.warning("reading the commits before ours failed (%s); reading them later", exc)
                    self.release()
                    return
            for event in events:
                self._publish(event)
            self.cursor = self.cursor.max(end)
            self._hold = None
            if self._stopped:
                self._stopped = False
                self.catch_up_soon()

    # Everyone's commits

    async def _catch_up(self, upto: Position | None = None) -> None:
        """Announce everything committed after the cursor (up to `upto`), page by page, from one
        snapshot, so that a callback's events come in the order they happened."""
        async with self._snapshot() as conn:
            reached = {kind: getattr(self.cursor, kind) for kind in KINDS}
            for kind in READ_ORDER:
                bound = getattr(upto, kind) if upto is not None else None
                reached[kind] = await self._read(conn, kind, reached[kind], bound)
                # Kept as it goes: after a failure, what was announced stays announced.
                self.cursor = Position(**reached)

    async def _read(self, conn: asyncpg.Connection, kind: str, cursor: int, upto: int | None) -> int:
        while True:
            page = await self._reads[kind](conn, cursor, UNBOUNDED if upto is None else upto, PAGE)
            # Looked at after the read: a batch of ours may have committed while it ran.
            limit = getattr(self._hold, kind) if self._hold is not None else UNBOUNDED
            for position, event in page:
                if position > limit:
                    self._stopped = True
                    return cursor
                self._publish(event)
                cursor = position
            if len(page) < PAGE:
                # Positions up to `upto` that were never committed (rolled back) are settled too.
                return cursor if upto is None else max(cursor, upto)

    async def _follow(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                async with self._mutex:
                    await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading other instances' commits failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                self.catch_up_soon()

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if payload != self.instance:
            self.catch_up_soon()

    async def _listen(self) -> None:
        """Keep one connection listening; after each (re)connection, read what may have been
        missed meanwhile."""
        failures = 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                if failures:
                    log.info("listening for other instances' commits again")
                failures = 0
                self.listening.set()
                self.catch_up_soon()
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), CHECK_INTERVAL)
                    except TimeoutError:
                        await conn.fetchval("SELECT 1", timeout=CHECK_TIMEOUT)
                raise ConnectionError("the listening connection was closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                # Loud once per outage; the retries in between at debug.
                (log.warning if failures == 0 else log.debug)(
                    "listening connection lost (%s); reconnecting", exc or type(exc).__name__
                )
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
            failures += 1
