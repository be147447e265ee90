"""What every backend does the same way: the columns it reads, the records it builds from a
row, and the rules a delivery is checked and counted by. The SQL dialects differ; this does not.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Sequence

import orjson

from cbhub.domain.bodies import parse_form
from cbhub.domain.expectations import Expected, contract_from_text
from cbhub.domain.filters import CallbackFilter, DeliveryFilter
from cbhub.domain.model import (
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
from cbhub.domain.outcomes import RESULT_OUTCOMES, Verdict, parse_rule
from cbhub.domain.responses import Answer, parse_response
from cbhub.domain.signatures import VerifySpec
from cbhub.domain.timing import overdue_due
from cbhub.errors import CallbackClosed
from cbhub.store.base import IDEMPOTENCY_WINDOW_MS, CallbackPage, GroupError

# Both schemas name their columns alike; the row mappers below read them in this order.
CALLBACK_COLUMNS = (
    "id, token, status, created_at, expires_at, label, group_name, metadata, deliveries, last_delivery_id,"
    " created_by, allow_ips, verify, late_deliveries, expect_total, expect_named, expect_arrived, expect_unexpected,"
    " contract, response, settle_ms, settled_at, expect_within, overdue, outcome, outcome_rule, error,"
    " invalid_deliveries"
)
DELIVERY_COLUMNS = (
    "d.id, c.token, d.received_at, d.method, d.content_type, d.remote_addr, d.headers, d.query,"
    " d.body, d.correlation_id, d.group_name, d.late, d.problems, d.answer, d.outcome, d.error"
)
DELIVERY_FROM = "deliveries d JOIN callbacks c ON c.id = d.callback_id"
# Indexes into a CALLBACK_COLUMNS row, and its width.
CALLBACK_ID, LAST_DELIVERY_ID = 0, 9
CALLBACK_WIDTH = len(CALLBACK_COLUMNS.split(","))
DELIVERY_WIDTH = len(DELIVERY_COLUMNS.split(","))

Text = Callable[[Any], str | None]


class Params(list[Any]):
    """A statement's parameters, each bound as it is named: `bind(value)` records it and gives
    its placeholder ("?" for SQLite, "$n" for PostgreSQL)."""

    def __init__(self, numbered: bool = False) -> None:
        super().__init__()
        self._numbered = numbered

    def bind(self, value: Any) -> str:
        self.append(value)
        return f"${len(self)}" if self._numbered else "?"


def _same(value: Any) -> Any:
    return value


def callback_from_row(row: Sequence[Any], text: Text = _same) -> Callback:
    """`text` turns a stored name (label, group) back into a string, for a backend that keeps
    names as bytes."""
    return Callback(
        token=row[1],
        status=row[2],
        created_at=row[3],
        expires_at=row[4],
        label=text(row[5]),
        group=text(row[6]),
        metadata=orjson.loads(row[7]),
        deliveries=row[8],
        created_by=row[10],
        allow_ips=tuple(orjson.loads(row[11])) if row[11] is not None else (),
        verify=VerifySpec(**orjson.loads(row[12])) if row[12] is not None else None,
        late_deliveries=row[13],
        expected=Expected(row[14], bool(row[15]), row[16], row[17]) if row[14] is not None else None,
        contract=contract_from_text(row[18]) if row[18] is not None else None,
        response=parse_response(orjson.loads(row[19])) if row[19] is not None else None,
        settle_ms=row[20],
        settled_at=row[21],
        expect_within=row[22],
        overdue=bool(row[23]),
        outcome=row[24],
        outcome_rule=parse_rule(orjson.loads(row[25])) if row[25] is not None else None,
        error=orjson.loads(row[26]) if row[26] is not None else None,
        invalid_deliveries=row[27],
    )


def delivery_from_row(row: Sequence[Any], text: Text = _same) -> Delivery:
    return Delivery(
        id=row[0],
        token=row[1],
        received_at=row[2],
        method=row[3],
        content_type=row[4],
        remote_addr=row[5],
        headers=orjson.loads(row[6]),
        query=parse_form(text(row[7]) or ""),
        raw=bytes(row[8]),
        correlation_id=text(row[9]),
        group=text(row[10]),
        late=bool(row[11]),
        problems=tuple(orjson.loads(row[12])) if row[12] is not None else (),
        answered=Answer.from_json(orjson.loads(row[13])) if row[13] is not None else None,
        outcome=row[14],
        error=orjson.loads(row[15]) if row[15] is not None else None,
    )


def listing_page(rows: Sequence[Sequence[Any]], limit: int, text: Text = _same) -> CallbackPage:
    """A listing's page from a query that asked for one row more than `limit`: that row, if it
    came, tells that an older page exists."""
    kept = rows[:limit]
    next_before = kept[-1][CALLBACK_ID] if len(rows) > limit else None
    return CallbackPage([callback_from_row(row, text) for row in kept], next_before)


def new_token() -> str:
    """264 random bits, URL-safe; never starting with "-", which command lines take for an option."""
    while (token := secrets.token_urlsafe(33)).startswith("-"):
        pass
    return token


def by_status(rows: Sequence[Sequence[Any]]) -> dict[str, int]:
    """(status, count) rows as counts of every status, zero included."""
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({status: count for status, count in rows})
    return counts


def by_status_and_outcome(rows: Sequence[Sequence[Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """(status, outcome, count) rows as counts of every status and of every result outcome,
    zero included; a NULL outcome (no result yet) counts only by status."""
    counts = dict.fromkeys(STATUSES, 0)
    outcomes = dict.fromkeys(RESULT_OUTCOMES, 0)
    for status, outcome, count in rows:
        counts[status] = counts.get(status, 0) + count
        if outcome is not None:
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    return counts, outcomes


def group_error(row: Sequence[Any], text: Text = _same) -> GroupError:
    """A (token, label, correlation_id, error, delivery id) row."""
    return GroupError(row[0], text(row[1]), text(row[2]), orjson.loads(row[3]) if row[3] is not None else None, row[4])


def arrives_late(callback: Callback, at: int, keep_late: bool) -> bool:
    """Whether a delivery received at `at` comes after `callback` stopped taking deliveries
    (expired, cancelled, or received and past its expiry). Such a delivery is kept as late when
    `keep_late`; otherwise this raises CallbackClosed."""
    if not callback.closed(at):
        return False
    if keep_late:
        return True
    raise CallbackClosed(callback.status if callback.status in TERMINAL else EXPIRED)


def new_delivery(
    incoming: Incoming,
    delivery_id: int,
    callback: Callback,
    late: bool = False,
    problems: tuple[str, ...] = (),
    new_status: str | None = RECEIVED,
    answered: Answer | None = None,
    verdict: Verdict | None = None,
) -> Delivery:
    """The stored delivery, counted on its callback: an on-time one takes `new_status` (if
    any; from pending), with the delivery as its result (and its outcome); a late one is only
    counted, in `late_deliveries`; an invalid one (with `problems`) only in `deliveries`."""
    delivery = Delivery(
        id=delivery_id,
        token=incoming.token,
        received_at=incoming.received_at,
        method=incoming.method,
        content_type=incoming.content_type,
        remote_addr=incoming.remote_addr,
        headers=incoming.headers,
        query=parse_form(incoming.query_string) if incoming.query_string else {},
        raw=incoming.raw,
        correlation_id=incoming.correlation_id,
        group=callback.group,
        late=late,
        problems=problems,
        answered=answered,
        _parsed=incoming.parsed,
    )
    if verdict is not None:
        delivery.outcome, delivery.error = verdict.outcome, verdict.error
    if late:
        callback.late_deliveries += 1
        return delivery
    callback.deliveries += 1
    if problems:
        callback.invalid_deliveries += 1
        return delivery
    if callback.status == PENDING and new_status is not None:
        callback.status = new_status
    callback.result = delivery
    callback.outcome, callback.error = delivery.outcome, delivery.error
    return delivery


def delivery_where(
    where: DeliveryFilter, after: int, bind: Callable[[Any], str], name: Callable[[str], Any] = _same
) -> str:
    """The WHERE clause of a delivery query over DELIVERY_FROM. `bind(value)` records a
    parameter and returns its placeholder; `name` turns a group or correlation id into what
    the backend stores."""
    clauses = [f"d.id > {bind(after)}"]
    if where.token is not None:
        clauses.append(f"c.token = {bind(where.token)}")
    if where.tokens is not None:
        clauses.append(f"c.token IN ({', '.join(bind(token) for token in sorted(where.tokens))})")
    if where.group is not None:
        clauses.append(f"d.group_name = {bind(name(where.group))}")
    if where.correlation_id is not None:
        clauses.append(f"d.correlation_id = {bind(name(where.correlation_id))}")
    if where.owner is not None:
        clauses.append(f"c.created_by = {bind(where.owner)}")
    if where.late is not None:
        clauses.append(f"d.late = {bind(where.late)}")
    if where.outcome is not None:
        clauses.append(f"d.outcome = {bind(where.outcome)}")
    return " AND ".join(clauses)


def callback_where(
    where: CallbackFilter, before: int | None, bind: Callable[[Any], str], name: Callable[[str], Any] = _same
) -> str:
    """The WHERE clause of a callback listing (`bind` and `name` as for delivery_where)."""
    clauses: list[str] = []
    if before is not None:
        clauses.append(f"id < {bind(before)}")
    for column, value in (("group_name", where.group), ("label", where.label)):
        if value is not None:
            clauses.append(f"{column} = {bind(name(value))}")
    for column, value in (("status", where.status), ("created_by", where.owner), ("outcome", where.outcome)):
        if value is not None:
            clauses.append(f"{column} = {bind(value)}")
    if where.overdue is not None:
        # A literal, as the partial index on overdue callbacks states it.
        clauses.append("overdue = TRUE" if where.overdue else "overdue = FALSE")
    if where.correlation_id is not None:
        clauses.append(f"id IN (SELECT callback_id FROM deliveries WHERE correlation_id = {bind(name(where.correlation_id))})")
    return " AND ".join(clauses) or "TRUE"


def delivery_values(
    incoming: Incoming, verdict: Verdict, name: Callable[[str | None], Any] = _same, answered: Answer | None = None
) -> tuple[Any, ...]:
    """A delivery's stored columns from received_at to error, in the order both schemas
    insert them (after callback_id and group_name): ..., dedupe_key, answer, outcome, error."""
    return (
        incoming.received_at,
        incoming.method,
        incoming.content_type,
        incoming.remote_addr,
        orjson.dumps(incoming.headers),
        name(incoming.query_string),
        incoming.raw,
        name(incoming.correlation_id),
        name(incoming.dedupe_key),
        orjson.dumps(answered.to_json()).decode() if answered is not None else None,
        verdict.outcome,
        verdict.error_json(),
    )


def callback_values(spec: MintSpec, now: int, name: Callable[[str | None], Any] = _same) -> tuple[Any, ...]:
    """A new callback's columns: token, expires_at, label, group_name, metadata, created_by,
    allow_ips, verify, expect_total, expect_named, contract, response, settle_ms, expect_within,
    overdue_due, outcome_rule."""
    return (
        new_token(),
        now + spec.ttl * 1000,
        name(spec.label),
        name(spec.group),
        orjson.dumps(spec.metadata).decode(),
        *guard_columns(spec),
        spec.expect.total if spec.expect is not None else None,
        spec.expect is not None and spec.expect.named,
        spec.contract.text() if spec.contract is not None else None,
        orjson.dumps(spec.response.to_json()).decode() if spec.response is not None else None,
        *timing_columns(spec, now),
        orjson.dumps(spec.outcome_rule.to_json()).decode() if spec.outcome_rule is not None else None,
    )


def timing_columns(spec: MintSpec, now: int) -> tuple[int | None, int | None, int | None]:
    """A mint's timers as stored: settle_ms, expect_within and overdue_due."""
    return spec.settle_ms, spec.expect_within, overdue_due(now, spec.expect_within)


def problems_value(problems: tuple[str, ...]) -> str | None:
    """A delivery's problems as stored: a JSON list, NULL when it fits."""
    return orjson.dumps(problems).decode() if problems else None


def purge_order(
    deliveries: str, callbacks: str, keys: str, expired_before: int, now: int, expected_ids: str | None = None
) -> list[tuple[str, int]]:
    """Retention's statements in the order every backend runs them, each with its cutoff:
    deliveries of callbacks that expired before the cutoff first (a bounded number at a time),
    and their expected ids, then those callbacks once they have none, then idempotency keys past
    their window."""
    first = [(deliveries, expired_before)]
    if expected_ids is not None:
        first.append((expected_ids, expired_before))
    return [*first, (callbacks, expired_before), (keys, now - IDEMPOTENCY_WINDOW_MS)]


def guard_columns(spec: MintSpec) -> tuple[str | None, str | None, str | None]:
    """A mint's owner and guards as stored: created_by, allow_ips and verify (JSON or NULL)."""
    return (
        spec.created_by,
        orjson.dumps(spec.allow_ips).decode() if spec.allow_ips else None,
        orjson.dumps(spec.verify.to_json()).decode() if spec.verify is not None else None,
    )
