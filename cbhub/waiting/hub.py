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
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass

import orjson

from cbhub.config import Config
from cbhub.domain.filters import CallbackFilter, DeliveryFilter
from cbhub.domain.guards import check_address, delivery_guard
from cbhub.domain.model import (
    PENDING,
    Callback,
    Delivery,
    Incoming,
    MintSpec,
    now_ms,
    short_token,
)
from cbhub.domain.outcomes import ERROR
from cbhub.errors import (
    CallbackNotFound,
    DeliveryNotFound,
    DeliveryRefused,
    GroupNotFound,
    SignatureInvalid,
    StoreUnavailable,
)
from cbhub.store import CallbackPage, IngestResult, Store
from cbhub.store.base import GroupSummary
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
# What a group's wait waits for: no callback pending, or that or a first error result.
UNTIL_ALL = "all"
UNTIL_FIRST_ERROR = "first_error"
UNTILS = (UNTIL_ALL, UNTIL_FIRST_ERROR)


@dataclass(frozen=True, slots=True)
class CallbackUpdate:
    callback: Callback
    deliveries: list[Delivery]


class Hub:
    def __init__(self, config: Config, store: Store, registry: Registry | None = None) -> None:
        self.config = config
        self.store = store
        self.registry = registry if registry is not None else Registry()
        # The store tells every committed delivery and closing, ours and (over a shared
        # database) other instances', in commit order: the registry wakes whoever waits.
        store.announce_to(self.registry.publish)
        self._expiry_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._default_verify = config.ingest.verify.spec()
        # Deliveries refused by a guard since the start, by kind ("address", "signature").
        self.refused: Counter[str] = Counter()

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
        return await self.store.mint([spec] * count, now_ms(), keyed)

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
            result = await self.store.ingest(
                incoming, guard, self.config.callbacks.keep_late, self.config.outcomes.builtin
            )
        except DeliveryRefused as exc:
            self._count_refusal(incoming.token, incoming.remote_addr, exc)
            raise
        return result

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
        self, token: str, after: int, timeout: float, owner: str | None = None
    ) -> CallbackUpdate | None:
        """The callback's deliveries with id > after as soon as there are some, or the callback
        once it can receive no more; None when `timeout` passes first. With an `owner`, another
        key's callback is not found."""
        # Late deliveries are left out: they come once the callback has nothing more to say.
        waiter = Waiter(DeliveryFilter(token=token, owner=owner, late=False))
        self.registry.add(waiter)
        try:
            callback = await self._find(token, owner)
            deliveries: list[Delivery] = []
            if callback.result is not None and callback.result.id > after:
                deliveries = await self.store.find_deliveries(waiter.where, after, WAIT_BATCH)
            now = now_ms()
            if deliveries or callback.closed(now):
                return CallbackUpdate(callback, deliveries)
            if callback.status != PENDING:
                # A received callback gets no "expired" event (it stays received): wake at its
                # expiry to tell the waiter that nothing more will come.
                timeout = min(timeout, (callback.expires_at - now) / 1000)
            if not await waiter.wait(timeout):
                return CallbackUpdate(callback, []) if callback.closed(now_ms()) else None
            events = waiter.events
            fresh = [e.delivery for e in events if e.delivery is not None and e.delivery.id > after]
            return CallbackUpdate(events[-1].callback, fresh[:WAIT_BATCH])
        finally:
            self.registry.remove(waiter)

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

    async def group_counts(self, group: str, owner: str | None = None) -> dict[str, int]:
        counts = await self.store.group_counts(group, owner)
        if not any(counts.values()):
            raise GroupNotFound()
        return counts

    async def group_summary(self, group: str, owner: str | None = None) -> GroupSummary:
        """The group's counts, outcomes, first errors and pending tokens."""
        summary = await self.store.group_summary(group, owner)
        if not any(summary.counts.values()):
            raise GroupNotFound()
        return summary

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

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL)
            try:
                if not self.store.writable:
                    await self.store.probe_write(now_ms())
                    log.info("the store accepts writes again")
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
    rule = spec.outcome_rule.to_json() if spec.outcome_rule is not None else None
    shape = ["batch" if batch else "one", count, spec.ttl, spec.label, spec.group, spec.metadata, spec.allow_ips, verify]
    if rule is not None:
        shape.append(rule)  # only then: keys used before rules existed keep their fingerprint
    return hashlib.sha256(orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)).hexdigest()
