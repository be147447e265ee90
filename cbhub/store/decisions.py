"""The decisions every backend takes the same way, written once.

Each write that decides something (ingest: guard, late, duplicate, insert; cancel; mint under an
idempotency key) is a generator of steps. A step asks the backend for one read or write, in the
backend's own SQL, and is sent back its answer; the generator returns the write's result or
raises its refusal. SQLite runs the steps on its writer thread (`run`), PostgreSQL awaits each
one (`run_async`): the order of the decisions is the same on both because it is this code.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Generator, NamedTuple, TypeVar

from cbhub.domain.expectations import MISSING_SHOWN, ContractCheck, Expected
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
from cbhub.domain.outcomes import INVALID_VERDICT, Verdict, classify
from cbhub.domain.responses import Answer, ResponseSpec, answer_for
from cbhub.domain.timing import settle_due
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
    is set, changes status; late, it only counts it in `late_deliveries`; invalid (with
    `problems`), stored with them and only counted in `deliveries`."""

    callback_id: int
    group: str | None
    incoming: Incoming
    late: bool
    new_status: str | None
    verdict: Verdict
    problems: tuple[str, ...] = ()
    answered: Answer | None = None
    # The verdict is the callback's outcome and error already: a backend may leave them be
    # (writing a column touches every index that holds it, even with the same value).
    same_outcome: bool = False


# An expected set's steps: each is one keyed statement on expected_ids, whatever the set's size.


class MarkArrived(NamedTuple):
    """-> True when this id of a named set was waiting and is now marked arrived; False when it
    is not in the set or arrived before."""

    callback_id: int
    correlation_id: str


class AddArrival(NamedTuple):
    """-> True when this id of a counted set is new and now recorded at `position`; False when
    it arrived before."""

    callback_id: int
    correlation_id: str
    position: int


class IsExpected(NamedTuple):
    """-> whether this id is in the callback's expected set (arrived or not)."""

    callback_id: int
    correlation_id: str


class CountExpected(NamedTuple):
    """-> None: adds to the callback's expect_arrived and expect_unexpected."""

    callback_id: int
    arrived: int
    unexpected: int


class InsertExpected(NamedTuple):
    """-> None: a named set's ids, waiting, positioned 1.. in the order given."""

    callback_id: int
    correlation_ids: tuple[str, ...]


class StartSettle(NamedTuple):
    """-> None: the callback's latest delivery settles at `due` unless a newer one comes, and
    it is not settled meanwhile (latest wins)."""

    callback_id: int
    due: int


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
    | LoadCallbacks | MarkArrived | AddArrival | IsExpected | CountExpected | InsertExpected | StartSettle
)
Steps = Generator[Step, Any, T]


def ingest(
    incoming: Incoming,
    guard: Guard | None,
    keep_late: bool,
    check: ContractCheck | None = None,
    default_response: ResponseSpec | None = None,
    builtin_outcomes: bool = True,
) -> Steps[IngestResult]:
    found = yield LoadCallback(incoming.token)
    if found is None:
        raise CallbackNotFound(incoming.token)
    callback = found.callback
    if guard is not None:
        # Before the closed check, so a refused sender learns nothing of the callback's state;
        # before the duplicate check, so a forgery reusing a real message id is refused too.
        guard(callback)
    late = arrives_late(callback, incoming.received_at, keep_late)
    # None without a spec: the receipt, at the cost of one attribute read.
    spec = callback.response or default_response
    answered = answer_for(spec, incoming) if spec is not None else None
    if incoming.dedupe_key is not None:
        first = yield FindDuplicate(found.id, incoming.dedupe_key)
        if first is not None:
            callback.result = yield LoadDelivery(found.last_delivery_id)
            return IngestResult(first, callback, duplicate=True, answered=answered)
    # Only a callback with a contract is checked: the others pay nothing.
    problems = check(callback.contract) if check is not None and callback.contract is not None else ()
    if late or problems:
        # Its result stays what it was: the waiters of a late or invalid delivery are shown it.
        callback.result = yield LoadDelivery(found.last_delivery_id)
    new_status = None
    if not late and not problems:
        complete = True
        if callback.expected is not None:
            complete = yield from _arrive(found.id, callback.expected, incoming.correlation_id)
        new_status = RECEIVED if complete and callback.status == PENDING else None
    # Decided once, here, where the callback's own rule is known; a duplicate (above) keeps
    # the first one's. A delivery that does not fit the contract is invalid, whatever it says.
    verdict = (
        INVALID_VERDICT
        if problems
        else classify(
            incoming.raw, incoming.content_type, incoming.parsed, callback.outcome_rule, builtin_outcomes, incoming.scanned
        )
    )
    same_outcome = verdict.outcome == callback.outcome and verdict.error == callback.error
    delivery_id = yield InsertDelivery(
        found.id, callback.group, incoming, late, new_status, verdict, problems, answered, same_outcome
    )
    if not late and not problems and callback.settle_ms is not None:
        # Latest wins: a newer result starts its settle window again.
        yield StartSettle(found.id, settle_due(incoming.received_at, callback.settle_ms))
        callback.settled_at = None
    delivery = new_delivery(incoming, delivery_id, callback, late, problems, new_status, answered, verdict)
    return IngestResult(delivery, callback, duplicate=False, answered=answered)


def _arrive(callback_id: int, expected: Expected, correlation_id: str | None) -> Steps[bool]:
    """Count a valid, on-time delivery against the callback's expected set (updating
    `expected`); returns whether the set is complete. An id outside the set (or none) counts as
    unexpected; a repeat of an arrived id counts nothing."""
    arrived = False
    if correlation_id is not None:
        if expected.named:
            arrived = yield MarkArrived(callback_id, correlation_id)
        elif expected.arrived < expected.total:
            arrived = yield AddArrival(callback_id, correlation_id, expected.arrived + 1)
    if arrived:
        expected.arrived += 1
        yield CountExpected(callback_id, 1, 0)
    elif correlation_id is None or not (yield IsExpected(callback_id, correlation_id)):
        expected.unexpected += 1
        yield CountExpected(callback_id, 0, 1)
    return expected.complete


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
    for spec, found in zip(specs, minted):
        if spec.expect is not None and spec.expect.named:
            yield InsertExpected(found.id, spec.expect.correlation_ids)
            if found.callback.expected is not None:
                found.callback.expected.missing = list(spec.expect.correlation_ids[:MISSING_SHOWN])
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
