"""The hub: the one door into the domain. It stores what arrives, wakes who waits, expires
what is due, and answers every read.

This is where the store and the registry meet; HTTP handlers parse, call it and render its
answers, and never touch the store. Two rules are kept here, once:
- Race-free waiting: register the waiter, *then* read the store.
- Ownership: with an `owner` (an API key's name), a callback minted by another key is not
  found. Reads over many callbacks carry the owner in their filter, down to the SQL; a read of
  one callback goes through `_find`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from cbhub.config import Config
from cbhub.domain.expectations import Contract, ContractCheck
from cbhub.domain.filters import CallbackFilter, DeliveryFilter
from cbhub.domain.guards import check_address, delivery_guard
from cbhub.domain.model import (
    OVERDUE,
    PENDING,
    RECEIVED,
    SETTLED,
    Callback,
    Delivery,
    Incoming,
    MintSpec,
    now_ms,
    short_token,
)
from cbhub.domain.outcomes import ERROR
from cbhub.domain.responses import Answer, answer_for
from cbhub.domain.timing import has_settled, quiet_until
from cbhub.errors import (
    CallbackNotFound,
    DeliveryNotFound,
    DeliveryRefused,
    ExpectedIdNotFound,
    GroupNotFound,
    HandshakeNotAllowed,
    SignatureInvalid,
    StoreUnavailable,
)
from cbhub.store import CallbackPage, IngestResult, Store
from cbhub.store.base import GroupSummary
from cbhub.store.rows import arrives_late
from cbhub.waiting.registry import Registry, Waiter

log = logging.getLogger("cbhub.waiting.hub")

# How often the expiry sweep looks for callbacks past their expiry ("within a second"); an
# unwritable store is probed as often, so it is seen healthy again as soon as it is.
EXPIRY_INTERVAL = 0.25
# How often retention looks for what it may delete.
RETENTION_INTERVAL = 60.0
DAY_MS = 86_400_000
# The most deliveries one long-poll answer on a callback carries.
WAIT_BATCH = 100
# Callbacks whose contract (or lack of one) the hub remembers, so a delivery is checked on the
# event loop before the store call, not on SQLite's one writer thread (see Hub.ingest).
CONTRACTS_REMEMBERED = 10_000
# No token is longer (the public route refuses longer ones unread, as unknown).
MAX_TOKEN = 128
# What a group's wait waits for: no callback pending, or that or a first error result.
UNTIL_ALL = "all"
UNTIL_FIRST_ERROR = "first_error"
UNTILS = (UNTIL_ALL, UNTIL_FIRST_ERROR)
# A callback whose contract the hub does not remember (beside None: remembered, without one).
_UNKNOWN: Any = object()


@dataclass(frozen=True, slots=True)
class CallbackUpdate:
    callback: Callback
    deliveries: list[Delivery]
    # For a wait with a settle window: whether the answer is final (None: no window).
    settled: bool | None = None


class Hub:
    def __init__(self, config: Config, store: Store, registry: Registry | None = None) -> None:
        self.config = config
        self.store = store
        self.registry = registry if registry is not None else Registry()
        # The store tells every committed delivery and closing, ours and (over a shared
        # database) other instances', in commit order: the registry wakes whoever waits.
        store.announce_to(self.registry.publish, self.registry.listening)
        self._expiry_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._default_verify = config.ingest.verify.spec()
        self._default_response = config.ingest.response.spec()
        # Deliveries refused by a guard since the start, by kind ("address", "signature").
        self.refused: Counter[str] = Counter()
        # Each recently seen callback's contract (None: it has none), by token. A contract never
        # changes after the mint, so a remembered one is never stale.
        self._contracts: OrderedDict[str, Contract | None] = OrderedDict()
        # Callbacks this instance's sweep found overdue since the start.
        self.overdue_total = 0

    async def start(self) -> None:
        self._expiry_task = asyncio.create_task(self._expire_forever(), name="cbhub-expiry")
        if self.config.retention.days > 0:
            self._retention_task = asyncio.create_task(self._retain_forever(), name="cbhub-retention")

    async def stop(self) -> None:
        """Answer every waiter (they get ShuttingDown) and stop the expiry sweep."""
        self.registry.shut_down()
        for task in (self._expiry_task, self._retention_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    # Writes

    async def mint(
        self, spec: MintSpec, count: int = 1, *, batch: bool = False, idempotency: tuple[str, str] | None = None
    ) -> tuple[list[Callback], bool]:
        """Mint `count` callbacks alike; returns them and whether they are new. `idempotency`
        is (scope, key): a repeat of the same request under the same key within 24 hours gets
        the callbacks minted the first time; another request under it, IdempotencyConflict."""
        keyed = None
        if idempotency is not None:
            scope, key = idempotency
            keyed = (scope, key, _fingerprint(spec, count, batch))
        # The store announces new callbacks (to streams that ask for creations: the inspector).
        callbacks, created = await self.store.mint([spec] * count, now_ms(), keyed)
        for callback in callbacks:
            self._remember_contract(callback.token, callback.contract)
        return callbacks, created

    def _remember_contract(self, token: str, contract: Contract | None) -> None:
        self._contracts[token] = contract
        self._contracts.move_to_end(token)
        if len(self._contracts) > CONTRACTS_REMEMBERED:
            self._contracts.popitem(last=False)

    def _contract_check(self, incoming: Incoming) -> ContractCheck | None:
        """The check the store runs on the delivery's callback, asked only when it has a
        contract. When the hub knows the contract (minted here, or a delivery seen before), the
        delivery is checked here, on the event loop; else the store's writer checks it (once
        per callback: the hub remembers the contract from the answer). None when the hub
        knows the callback has none: nothing to check, nothing to build."""
        known = self._contracts.get(incoming.token, _UNKNOWN)
        if known is None:
            return None
        if known is not _UNKNOWN:
            problems = known.problems(incoming.raw, incoming.content_type, incoming.parsed)
            return lambda contract: problems if contract == known else contract.problems(
                incoming.raw, incoming.content_type, incoming.parsed
            )
        return lambda contract: contract.problems(incoming.raw, incoming.content_type, incoming.parsed)

    def admit(self, token: str, remote_addr: str | None) -> None:
        """Raise AddressNotAllowed unless the server-wide allowlist admits the sender. Cheap:
        callers may ask before reading a body."""
        try:
            check_address(self.config.ingest.allow_ips, remote_addr, "the server's")
        except DeliveryRefused as exc:
            self._count_refusal(token, remote_addr, exc)
            raise

    async def ingest(self, incoming: Incoming) -> IngestResult:
        """Store a delivery (the store announces it, waking its waiters); raises DeliveryRefused when a guard (the
        server's allowlist here, the callback's allowlist and signature in the store) refuses it."""
        self.admit(incoming.token, incoming.remote_addr)
        guard = delivery_guard(incoming, self._default_verify, self.config.ingest.verify_tolerance)
        try:
            keep_late = self.config.callbacks.keep_late
            result = await self.store.ingest(
                incoming,
                guard,
                keep_late,
                self._contract_check(incoming),
                self._default_response,
                self.config.outcomes.builtin,
            )
        except DeliveryRefused as exc:
            self._count_refusal(incoming.token, incoming.remote_addr, exc)
            raise
        self._remember_contract(incoming.token, result.callback.contract)
        return result

    async def handshake(self, incoming: Incoming) -> Answer:
        """The answer to a GET on a callback URL (a verification handshake): its echo, never
        stored. Refused as a delivery would be for its token (CallbackNotFound), its address
        (both allowlists) and, without keep_late, its closing; without an echo spec,
        HandshakeNotAllowed. No signature is checked: these GETs carry none."""
        self.admit(incoming.token, incoming.remote_addr)
        callback = await self.store.get_callback(incoming.token) if len(incoming.token) <= MAX_TOKEN else None
        if callback is None:
            raise CallbackNotFound(incoming.token)
        try:
            check_address(callback.allow_ips, incoming.remote_addr, "this callback's")
        except DeliveryRefused as exc:
            self._count_refusal(incoming.token, incoming.remote_addr, exc)
            raise
        arrives_late(callback, incoming.received_at, self.config.callbacks.keep_late)
        if callback.response is None or callback.response.echo is None:
            raise HandshakeNotAllowed()
        return answer_for(callback.response, incoming)

    def _count_refusal(self, token: str, remote_addr: str | None, exc: DeliveryRefused) -> None:
        kind = "signature" if isinstance(exc, SignatureInvalid) else "address"
        self.refused[kind] += 1
        # A forged or misconfigured sender is worth an operator's eye; an address outside an
        # allowlist is routine internet noise.
        level = logging.WARNING if isinstance(exc, SignatureInvalid) else logging.INFO
        log.log(
            level,
            "refused a delivery to %s from %s: %s (%d %s refusals so far)",
            short_token(token),
            remote_addr,
            exc.reason,
            self.refused[kind],
            kind,
        )

    async def cancel(self, token: str, owner: str | None = None) -> Callback:
        await self._find(token, owner)  # who minted a callback never changes: checked once
        callback, _ = await self.store.cancel(token, now_ms())
        return callback

    # Reads

    async def _find(self, token: str, owner: str | None) -> Callback:
        callback = await self.store.get_callback(token)
        if callback is None or (owner is not None and callback.created_by != owner):
            # Another key's callback is answered exactly like a missing one: no probing.
            raise CallbackNotFound(token)
        return callback

    async def get_callback(self, token: str, owner: str | None = None) -> Callback:
        """The callback with its latest on-time delivery as `result`."""
        return await self._find(token, owner)

    async def list_callbacks(self, where: CallbackFilter, before: int | None, limit: int) -> CallbackPage:
        return await self.store.list_callbacks(where, before, limit)

    async def get_delivery(self, delivery_id: int, owner: str | None = None) -> Delivery:
        delivery = await self.store.get_delivery(delivery_id)
        if delivery is None:
            raise DeliveryNotFound()
        if owner is not None:
            try:
                await self._find(delivery.token, owner)
            except CallbackNotFound:
                raise DeliveryNotFound() from None
        return delivery

    async def missing(self, token: str, after: str | None, limit: int, owner: str | None = None) -> list[str]:
        """Ids of the callback's named expected set that have not arrived, in mint order,
        after `after` (none for a callback without named ids); raises ExpectedIdNotFound when
        `after` is not in the set."""
        callback = await self._find(token, owner)
        if callback.expected is None or not callback.expected.named:
            return []
        found = await self.store.missing(token, after, limit)
        if found is None:
            raise ExpectedIdNotFound()
        return found

    async def status_counts(self) -> dict[str, int]:
        return await self.store.status_counts()

    async def ping(self) -> None:
        """Raise unless the store answers a query."""
        await self.store.ping()

    @property
    def writable(self) -> bool:
        """False from a failed commit until the write probe commits again."""
        return self.store.writable

    # Waiting

    async def wait_for_callback(
        self,
        token: str,
        after: int,
        timeout: float,
        owner: str | None = None,
        settle: float | None = None,
        until: str = UNTIL_ALL,
    ) -> CallbackUpdate | None:
        """The callback's deliveries with id > after as soon as there are some, or the callback
        once it can receive no more, or once it turns overdue; None when `timeout` passes
        first. With an `owner`, another key's callback is not found. A callback with an
        expected set answers only once it is complete (received), closed or overdue, or
        (`until` first_error) at its first delivery with an error outcome. With a settle window (`settle` seconds, else the callback's own), see _wait_settled. Invalid
        deliveries (see Delivery.problems) wake nobody."""
        # Late deliveries are left out: they come once the callback has nothing more to say.
        waiter = Waiter(DeliveryFilter(token=token, owner=owner, late=False))
        self.registry.add(waiter)
        try:
            callback = await self._find(token, owner)
            settle_ms = max(1, round(settle * 1000)) if settle is not None else callback.settle_ms
            if callback.expected is not None:
                deadline = time.monotonic() + timeout
                first_error = until == UNTIL_FIRST_ERROR
                update = await self._wait_for_set(waiter, callback, after, timeout, owner, first_error)
                if update is None or settle_ms is None or update.callback.status != RECEIVED:
                    return update
                # Complete: from here on, the latest delivery must also stay the latest.
                callback, timeout = update.callback, max(0.0, deadline - time.monotonic())
            if settle_ms is not None:
                return await self._wait_settled(waiter, callback, after, timeout, settle_ms)
            if callback.result is not None and callback.result.id > after:
                deliveries = await self.store.find_deliveries(waiter.where, after, WAIT_BATCH)
                if deliveries:
                    return CallbackUpdate(callback, deliveries)
            now = now_ms()
            if callback.closed(now):
                return CallbackUpdate(callback, [])
            if callback.status != PENDING:
                # A received callback gets no "expired" event (it stays received): wake at its
                # expiry to tell the waiter that nothing more will come.
                timeout = min(timeout, (callback.expires_at - now) / 1000)
            # Not the callback as read, while the wait lasts (0.5 KB a waiter): what it needs.
            expires_at = callback.expires_at
            del callback
            deadline = time.monotonic() + timeout
            while True:
                if not await waiter.wait(deadline - time.monotonic()):
                    if now_ms() < expires_at:
                        return None
                    # Closed by its expiry meanwhile (a status change would have woken it).
                    return CallbackUpdate(await self._find(token, owner), [])
                # A settling answers only a wait with a settle window.
                events = [e for e in waiter.events if e.kind != SETTLED]
                fresh = [e.delivery for e in events if e.delivery is not None and e.delivery.id > after]
                valid = [delivery for delivery in fresh if not delivery.problems]
                if valid or any(e.delivery is None for e in events):
                    return CallbackUpdate(events[-1].callback, valid[:WAIT_BATCH])
                waiter.rearm()  # only invalid deliveries or a settling: still waiting
        finally:
            self.registry.remove(waiter)

    async def _wait_for_set(
        self, waiter: Waiter, callback: Callback, after: int, timeout: float, owner: str | None, first_error: bool
    ) -> CallbackUpdate | None:
        """Until the callback's expected set is complete (it turns received), it closes, or it
        turns overdue; then the callback as read now (with its missing ids) and its deliveries
        after `after`. With `first_error`, also as soon as a delivery after `after` is an error:
        then those errors are the deliveries answered."""
        deadline = time.monotonic() + timeout
        overdue_before = callback.overdue  # a wait begun after it turned overdue is not told again
        if first_error and (failures := await self._errors_after(waiter.where, after)):
            return CallbackUpdate(callback, failures)
        while callback.status == PENDING and not callback.closed(now_ms()):
            if callback.overdue and not overdue_before:
                return CallbackUpdate(callback, [])
            # A pending callback gets an event when it expires: no need to wake at its expiry.
            if not await waiter.wait(deadline - time.monotonic()):
                return None
            events = waiter.events
            done = any(event.callback.status != PENDING or event.kind == OVERDUE for event in events)
            failed = first_error and any(e.delivery is not None and e.delivery.outcome == ERROR for e in events)
            waiter.rearm()  # no await since the events were read: none is missed
            if done or failed:
                callback = await self._find(token=callback.token, owner=owner)
            if failed:
                return CallbackUpdate(callback, await self._errors_after(waiter.where, after))
        deliveries = await self.store.find_deliveries(waiter.where, after, WAIT_BATCH)
        return CallbackUpdate(callback, deliveries)

    async def _errors_after(self, where: DeliveryFilter, after: int) -> list[Delivery]:
        """The deliveries after `after` with an error outcome: what a first-error wait answers."""
        errors = DeliveryFilter(token=where.token, owner=where.owner, late=False, outcome=ERROR)
        return await self.store.find_deliveries(errors, after, WAIT_BATCH)

    async def _wait_settled(
        self, waiter: Waiter, callback: Callback, after: int, timeout: float, settle_ms: int
    ) -> CallbackUpdate | None:
        """Answer once the callback's latest delivery stayed the latest for `settle_ms` (or it
        can receive no more): settled, with the deliveries after `after`. At the timeout: not
        settled, with those deliveries, or None when there are none. A callback turning
        overdue meanwhile answers too (not settled, no deliveries). Each round re-reads the
        callback after re-arming the waiter (registered by the caller): nothing slips between."""
        deadline = time.monotonic() + timeout
        overdue_before = callback.overdue  # a wait begun after it turned overdue is not told again
        while True:
            now = now_ms()
            if has_settled(callback, settle_ms, now):
                return CallbackUpdate(callback, await self._deliveries_after(waiter, callback, after), settled=True)
            if callback.overdue and not overdue_before:
                return CallbackUpdate(callback, [], settled=False)
            left = deadline - time.monotonic()
            if left <= 0:
                deliveries = await self._deliveries_after(waiter, callback, after)
                return CallbackUpdate(callback, deliveries, settled=False) if deliveries else None
            until = quiet_until(callback, settle_ms)
            wake = min(left, (callback.expires_at - now) / 1000)
            if until is not None:
                wake = min(wake, (until - now) / 1000)
            await waiter.wait(max(wake, 0.0))
            waiter.rearm()
            callback = await self._find(callback.token, waiter.where.owner)

    async def _deliveries_after(self, waiter: Waiter, callback: Callback, after: int) -> list[Delivery]:
        if callback.result is None or callback.result.id <= after:
            return []
        return await self.store.find_deliveries(waiter.where, after, WAIT_BATCH)

    async def follow(self, token: str, after: int, owner: str | None = None) -> Callback | None:
        """Where a stream of one callback's deliveries starts: the callback, or None when it is
        closed and has no on-time delivery past `after`, so that such a stream has nothing left
        to say. With an `owner`, another key's callback is not found."""
        callback = await self._find(token, owner)
        if callback.closed(now_ms()) and (callback.result is None or callback.result.id <= after):
            return None
        return callback

    async def wait_for_deliveries(self, where: DeliveryFilter, after: int, limit: int, wait: float) -> list[Delivery]:
        """Deliveries matching `where` with id > after, oldest first; if there are none yet,
        wait up to `wait` seconds for one (an empty list when none came)."""
        if wait <= 0:
            return await self.store.find_deliveries(where, after, limit)
        waiter = Waiter(where)
        self.registry.add(waiter)
        try:
            found = await self.store.find_deliveries(where, after, limit)
            deadline = time.monotonic() + wait
            while not found:
                if not await waiter.wait(deadline - time.monotonic()):
                    return []
                found = [e.delivery for e in waiter.events if e.delivery is not None and e.delivery.id > after]
                waiter.rearm()
            return found[:limit]
        finally:
            self.registry.remove(waiter)

    async def group_summary(self, group: str, owner: str | None = None) -> GroupSummary:
        """The group's counts, outcomes, first errors and pending tokens."""
        summary = await self.store.group_summary(group, owner)
        if not any(summary.counts.values()):
            raise GroupNotFound()
        return dataclasses.replace(summary, overdue=await self.store.overdue_count(group, owner))

    async def wait_for_group(
        self, group: str, timeout: float, owner: str | None = None, until: str = UNTIL_ALL
    ) -> GroupSummary | None:
        """The group's summary as soon as none of its callbacks is pending or, `until`
        first_error, as soon as one has an error result; None on timeout."""
        waiter = Waiter(DeliveryFilter(group=group, owner=owner))
        self.registry.add(waiter)
        try:
            deadline = time.monotonic() + timeout
            while True:
                # Re-armed before the read: an event during the read triggers one more read.
                waiter.rearm()
                # The counts alone while waiting: the lists are read once, for the answer.
                summary = await self.store.group_summary(group, owner, details=False)
                if not any(summary.counts.values()):
                    raise GroupNotFound()
                if summary.counts[PENDING] == 0 or (until == UNTIL_FIRST_ERROR and summary.outcomes[ERROR]):
                    return await self.group_summary(group, owner)
                if not await waiter.wait(deadline - time.monotonic()):
                    return None
        finally:
            self.registry.remove(waiter)

    async def wait_for_many(
        self, tokens: list[str], every: bool, timeout: float, owner: str | None = None
    ) -> list[Callback] | None:
        """The callbacks of `tokens` that have a result or are closed (in the order given), as
        soon as one is (`every` False: "any") or none is pending any more (`every`: "all");
        None when `timeout` passes first. Raises CallbackNotFound naming the first unknown token
        (with an `owner`, another key's token is unknown)."""
        waiter = Waiter(DeliveryFilter(tokens=frozenset(tokens), owner=owner))
        self.registry.add(waiter)
        try:
            statuses = await self.store.callback_statuses(tokens, owner)
            for token in tokens:
                if token not in statuses:
                    raise CallbackNotFound(token, f"no callback has the token {token}")
            # Only ever grows: a callback that is not pending never becomes pending again, so
            # an event older than the read adds nothing wrong.
            ready = {token for token, status in statuses.items() if status != PENDING}
            deadline = time.monotonic() + timeout
            while len(ready) < (len(tokens) if every else 1):
                if not await waiter.wait(deadline - time.monotonic()):
                    return None
                ready.update(event.token for event in waiter.events if event.callback.status != PENDING)
                waiter.rearm()
            return [await self._find(token, owner) for token in tokens if token in ready]
        finally:
            self.registry.remove(waiter)

    # Expiry

    async def expire_due(self) -> int:
        """Expire every pending callback past its expiry (the store announces each, waking its
        waiters)."""
        now = now_ms()
        if not await self.store.has_due(now):
            return 0
        total = 0
        while True:
            expired = await self.store.expire_due(now)
            total += len(expired)
            if not expired:
                return total

    async def mark_timers_due(self) -> int:
        """Mark overdue the pending callbacks past their expected time, and settled those whose
        latest delivery stayed the latest for their settle window (the store announces each)."""
        now = now_ms()
        if not await self.store.has_timers_due(now):
            return 0
        total = 0
        while looked := await self.store.mark_overdue(now):
            turned = sum(1 for callback in looked if callback.overdue)
            self.overdue_total += turned
            total += turned
        while marked := await self.store.mark_settled(now):
            total += len(marked)
        return total

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL)
            try:
                if not self.store.writable:
                    await self.store.probe_write(now_ms())
                    log.info("the store accepts writes again")
                # Timers first: a callback overdue and expired in the same round is told in
                # the order it happened.
                await self.mark_timers_due()
                await self.expire_due()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                pass  # already logged by the store; the next round tries again
            except Exception:
                log.warning("expiry sweep failed", exc_info=True)

    # Retention

    async def apply_retention(self, now: int | None = None) -> int:
        """Delete what expired more than retention.days ago, one short transaction at a time
        (ingests queued meanwhile commit between them). Returns how many rows went."""
        if self.config.retention.days <= 0:
            return 0
        now = now_ms() if now is None else now
        cutoff = now - self.config.retention.days * DAY_MS
        total = 0
        while gone := await self.store.purge(cutoff, now):
            total += gone
        if total:
            log.info("retention deleted %d rows", total)
        return total

    async def _retain_forever(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_INTERVAL)
            try:
                await self.apply_retention()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("retention failed; trying again later", exc_info=True)


def _fingerprint(spec: MintSpec, count: int, batch: bool) -> str:
    """What a mint request asked for, so that a key reused for another request is told apart."""
    verify = spec.verify.to_json() if spec.verify is not None else None
    shape: list[Any] = ["batch" if batch else "one", count, spec.ttl, spec.label, spec.group, spec.metadata]
    shape += [spec.allow_ips, verify]
    expect = spec.expect
    optional = {
        "expect": [expect.correlation_ids, expect.count] if expect is not None else None,
        "contract": spec.contract.text() if spec.contract is not None else None,
        "response": spec.response.to_json() if spec.response is not None else None,
        "settle_ms": spec.settle_ms,
        "expect_within": spec.expect_within,
        "outcome": spec.outcome_rule.to_json() if spec.outcome_rule is not None else None,
    }
    given = {name: value for name, value in optional.items() if value is not None}
    if given:
        shape.append(given)  # only then: a key used before these fields existed keeps its fingerprint
    return hashlib.sha256(orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)).hexdigest()
