"""The decisions every backend takes the same way, written once.

Each write that decides something (ingest: guard, late, duplicate, insert; cancel; mint under an
idempotency key) is a generator of steps. A step asks the backend for one read or write, in the
backend's own SQL, and is sent back its answer; the generator returns the write's result or
raises its refusal. SQLite runs the steps on its writer thread (`run`), PostgreSQL awaits each
one (`run_async`): the order of the decisions is the same on both because it is this code.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Generator, NamedTuple, TypeVar

from cbhub.domain.guards import Guard
from cbhub.domain.model import (
    CANCELLED,
    PENDING,
    RECEIVED,
    TERMINAL,
    Callback,
    Incoming,
    MintSpec,
)
from cbhub.domain.outcomes import Verdict, classify
from cbhub.errors import CallbackNotFound, IdempotencyConflict, SchemaTooNew
from cbhub.store.base import IngestResult
from cbhub.store.rows import arrives_late, new_delivery

T = TypeVar("T")


class Found(NamedTuple):
    """A callback row as a write reads it: its row id, the record, its latest on-time delivery's id."""

    id: int
    callback: Callback
    last_delivery_id: int | None


# The steps a backend answers. Named tuples, not dataclasses: several are made for every
# write, and a tuple is the cheapest record Python builds.


class LoadCallback(NamedTuple):
    """-> Found | None, locked against other writers of the same callback until the commit."""

    token: str


class LoadDelivery(NamedTuple):
    """-> Delivery | None (None for a None id)."""

    delivery_id: int | None


class FindDuplicate(NamedTuple):
    """-> Delivery | None: the delivery of this callback stored under this sender's message id."""

    callback_id: int
    dedupe_key: str


class InsertDelivery(NamedTuple):
    """-> the new delivery's id. On time, the callback counts it in `deliveries`, takes it as
    its latest (`last_delivery_id`) and its verdict's outcome as its own and, when `new_status`
    is set, changes status; late, it only counts it in `late_deliveries`."""

    callback_id: int
    group: str | None
    incoming: Incoming
    late: bool
    new_status: str | None
    verdict: Verdict


class MarkCancelled(NamedTuple):
    """-> None."""

    callback_id: int


class ClaimKey(NamedTuple):
    """-> None when the idempotency key is now this request's (new, or its old use is past its
    window), else (fingerprint, callback row ids) of its live use."""

    scope: str
    key: str
    fingerprint: str
    now: int


class InsertCallbacks(NamedTuple):
    """-> [Found], the new callbacks in the order of `specs`."""

    specs: list[MintSpec]
    now: int


class RecordKey(NamedTuple):
    """-> None: the callbacks a claimed key minted."""

    scope: str
    key: str
    callback_ids: list[int]


class LoadCallbacks(NamedTuple):
    """-> [Callback] by row id, each with its result, in the order given."""

    callback_ids: list[int]


Step = (
    LoadCallback | LoadDelivery | FindDuplicate | InsertDelivery | MarkCancelled | ClaimKey | InsertCallbacks | RecordKey
    | LoadCallbacks
)
Steps = Generator[Step, Any, T]


def ingest(incoming: Incoming, guard: Guard | None, keep_late: bool, builtin_outcomes: bool = True) -> Steps[IngestResult]:
    found = yield LoadCallback(incoming.token)
    if found is None:
        raise CallbackNotFound(incoming.token)
    callback = found.callback
    if guard is not None:
        # Before the closed check, so a refused sender learns nothing of the callback's state;
        # before the duplicate check, so a forgery reusing a real message id is refused too.
        guard(callback)
    late = arrives_late(callback, incoming.received_at, keep_late)
    if incoming.dedupe_key is not None:
        first = yield FindDuplicate(found.id, incoming.dedupe_key)
        if first is not None:
            callback.result = yield LoadDelivery(found.last_delivery_id)
            return IngestResult(first, callback, duplicate=True)
    if late:
        # Its result stays what it was: the waiters of a late delivery are shown it.
        callback.result = yield LoadDelivery(found.last_delivery_id)
    new_status = RECEIVED if not late and callback.status == PENDING else None
    # Decided once, here, where the callback's own rule is known; a duplicate (above) keeps
    # the first one's.
    verdict = classify(incoming.raw, incoming.content_type, incoming.parsed, callback.outcome_rule, builtin_outcomes)
    delivery_id = yield InsertDelivery(found.id, callback.group, incoming, late, new_status, verdict)
    return IngestResult(new_delivery(incoming, delivery_id, callback, late, verdict), callback, duplicate=False)


def cancel(token: str) -> Steps[tuple[Callback, bool]]:
    found = yield LoadCallback(token)
    if found is None:
        raise CallbackNotFound(token)
    callback = found.callback
    callback.result = yield LoadDelivery(found.last_delivery_id)
    if callback.status in TERMINAL:
        return callback, False
    yield MarkCancelled(found.id)
    callback.status = CANCELLED
    return callback, True


def mint(specs: list[MintSpec], now: int, idempotency: tuple[str, str, str] | None) -> Steps[tuple[list[Callback], bool]]:
    if idempotency is not None:
        scope, key, fingerprint = idempotency
        live = yield ClaimKey(scope, key, fingerprint, now)
        if live is not None:
            first_fingerprint, callback_ids = live
            if first_fingerprint != fingerprint:
                raise IdempotencyConflict()
            return (yield LoadCallbacks(callback_ids)), False
    minted = yield InsertCallbacks(specs, now)
    if idempotency is not None:
        yield RecordKey(idempotency[0], idempotency[1], [found.id for found in minted])
    return [found.callback for found in minted], True


def migrations_due(version: int, latest: int, where: str) -> range:
    """Which schema steps a database at `version` needs, by index; none when it is current.
    A database written by a newer cbhub is refused (SchemaTooNew) and left untouched."""
    if version > latest:
        raise SchemaTooNew(
            f"{where} has schema version {version}, newer than this cbhub knows ({latest}); "
            "upgrade cbhub or use another database"
        )
    return range(version, latest)


def run(steps: Steps[T], answer: Callable[[Step], Any]) -> T:
    """Drive `steps` with a backend's blocking `answer(step)`."""
    reply = None
    try:
        while True:
            reply = answer(steps.send(reply))
    except StopIteration as done:
        result: T = done.value
        return result


async def run_async(steps: Steps[T], answer: Callable[[Step], Awaitable[Any]]) -> T:
    """Drive `steps` with a backend's `await answer(step)`."""
    reply = None
    try:
        while True:
            reply = await answer(steps.send(reply))
    except StopIteration as done:
        result: T = done.value
        return result
