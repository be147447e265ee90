"""Group commit, shared by the backends: writes that arrive while a commit runs share the next.

A backend hands `GroupCommit` a function that runs a list of write ops in one transaction and
returns their results (an op's own failure is its result, the others still commit), and a
function that announces a committed batch's events. Each submitter awaits its op's result,
which is there only once the batch is committed and its events announced: durable before it is
answered, and announced before the answer, so a waiter woken by it can already read it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Iterable, TypeVar

from cbhub.domain.model import CREATED, OVERDUE, SETTLED, Callback, Event
from cbhub.errors import StoreUnavailable
from cbhub.store.base import IngestResult

log = logging.getLogger("cbhub.store")

Op = TypeVar("Op")
# What an op's result tells the waiters once it is committed.
Announce = Callable[[Any], Iterable[Event]]


def no_events(result: Any) -> Iterable[Event]:
    return ()


def minted(result: tuple[list[Callback], bool]) -> Iterable[Event]:
    callbacks, created = result
    if created:
        for callback in callbacks:
            yield Event(CREATED, callback)


def ingested(result: IngestResult) -> Iterable[Event]:
    if not result.duplicate:
        yield Event("delivery", result.callback, result.delivery)


def cancelled(result: tuple[Callback, bool]) -> Iterable[Event]:
    callback, changed = result
    if changed:
        yield Event("status", callback)


def expired(result: list[Callback]) -> Iterable[Event]:
    return (Event("status", callback) for callback in result)


def settled(result: list[Callback]) -> Iterable[Event]:
    return (Event(SETTLED, callback) for callback in result)


def overdue(result: list[Callback]) -> Iterable[Event]:
    # Those looked at that had already received a delivery did not turn overdue.
    return (Event(OVERDUE, callback) for callback in result if callback.overdue)


class OpFailed(Exception):
    """One op of a batch failed other than by refusing (a CbhubError, raised before the op
    writes): the backend rolls the batch back, and group commit runs it again without that op,
    which fails alone. `index` is the op's place in the list the backend was given."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


@dataclass(slots=True)
class _Write(Generic[Op]):
    op: Op
    future: asyncio.Future[Any]
    announce: Announce
    probe: bool


class GroupCommit(Generic[Op]):
    """One writer loop: each batch is every op submitted since the previous batch began.

    `run_batch(ops)` commits them in one transaction and returns one result per op (the
    CbhubError of an op that refused); it raises OpFailed, after rolling back, when one op
    failed otherwise (a bug: the batch is run again without it), and StoreUnavailable when
    nothing could be committed. `announce(events)` is awaited after each commit with the events of the
    batch, in op order.

    `writable` turns False when a batch cannot be committed, and True again only when a batch
    holding a write probe commits: a batch whose ops all wrote nothing (refusals, unknown
    tokens, a sender's retry of a stored message) commits even on a full disk, and proves
    nothing."""

    def __init__(
        self,
        run_batch: Callable[[list[Op]], Awaitable[list[Any]]],
        announce: Callable[[list[Event]], Awaitable[None]],
        on_commit: Callable[[int, float], None] | None = None,
        listening: Callable[[], bool] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._announce = announce
        # None: every batch is announced. Otherwise a batch committed while nobody listens makes
        # no events (asked after the commit, in the same step of the loop as the announcing:
        # a waiter that registers later reads what was committed).
        self._listening = listening
        # Told (batch size, seconds) after each commit: metrics hook in here.
        self._on_commit = on_commit
        self._pending: list[_Write[Op]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.writable = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="cbhub-writer")

    async def close(self) -> None:
        """Commit what was already submitted, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, op: Op, announce: Announce = no_events, probe: bool = False) -> Any:
        """Commit `op` with the next batch; its result once committed. `probe`: the op always
        writes, so its commit shows the store writable again."""
        if self._closing:
            raise StoreUnavailable("the store is closing")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(op, future, announce, probe))
        self._wakeup.set()
        # Not shielded: a sender that hangs up cancels this future alone; its op stays in the
        # batch and commits with the others, and the writer skips answering it. (A shield
        # per write cost more than the rest of this method.)
        return await future

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._commit(batch)
            elif self._closing:
                return

    async def _commit(self, batch: list[_Write[Op]]) -> None:
        started = time.perf_counter()
        try:
            results = await self._run_without_failures([write.op for write in batch])
        except Exception as exc:
            # Nothing of the batch was committed: every writer in it is told so, and the
            # loop goes on to the next batch.
            if isinstance(exc, StoreUnavailable):
                # Said loudly once per outage, not at every retry.
                (log.error if self.writable else log.debug)("commit of %d writes failed: %s", len(batch), exc)
                self.writable = False
            else:
                log.error("a batch of %d writes failed", len(batch), exc_info=exc)
            for write in batch:
                if not write.future.done():
                    write.future.set_exception(exc)
            return
        if not self.writable and any(write.probe for write in batch):
            self.writable = True
        if self._on_commit is not None:
            self._on_commit(len(batch), time.perf_counter() - started)
        if self._listening is None or self._listening():
            await self._announce_batch(batch, results)
        for write, result in zip(batch, results):
            if write.future.done():
                continue
            if isinstance(result, Exception):
                write.future.set_exception(result)
            else:
                write.future.set_result(result)

    async def _announce_batch(self, batch: list[_Write[Op]], results: list[Any]) -> None:
        events = [
            event
            for write, result in zip(batch, results)
            if not isinstance(result, Exception)
            for event in write.announce(result)
        ]
        try:
            await self._announce(events)
        except Exception:
            # Committed all the same: the writers are answered; waiters find it by reading.
            log.exception("announcing %d committed events failed", len(events))

    async def _run_without_failures(self, ops: list[Op]) -> list[Any]:
        """One result per op: an op that fails other than by refusing rolls its batch back, and
        the batch runs again without it (a savepoint per op would cost every write, for a bug
        that may never happen)."""
        failed: dict[int, Exception] = {}
        while True:
            live = [index for index in range(len(ops)) if index not in failed]
            try:
                results = await self._run_batch([ops[index] for index in live]) if live else []
            except OpFailed as exc:
                failed[live[exc.index]] = exc.error
                continue
            merged: list[Any] = [failed.get(index) for index in range(len(ops))]
            for index, result in zip(live, results):
                merged[index] = result
            return merged
