"""The in-memory registry of waiters: who is waiting for what, and waking them.

It knows no SQL and no HTTP. A subscriber registers under its keys (a long-poll waiter under
one, the most selective of its filters; a subscription over many tokens under one per token)
*before* its owner reads the store, so a delivery committed between the read and the wait still
reaches it; the owner removes it in `finally`, so nothing outlives a request.
"""

from __future__ import annotations

import asyncio
from typing import Iterator, Protocol

from cbhub.domain.filters import DeliveryFilter
from cbhub.domain.model import Event
from cbhub.errors import ShuttingDown

Key = tuple[str, str | None]
ALL: Key = ("all", None)


def key_for(where: DeliveryFilter) -> Key:
    """The registry key a subscription with these filters is filed under."""
    if where.token is not None:
        return ("token", where.token)
    if where.correlation_id is not None:
        return ("correlation", where.correlation_id)
    if where.group is not None:
        return ("group", where.group)
    return ALL


def keys_for(where: DeliveryFilter) -> tuple[Key, ...]:
    """Every key a subscription with these filters is filed under: one per token of a set of
    tokens, else the most selective filter's."""
    if where.tokens is not None and where.token is None:
        return tuple(("token", token) for token in where.tokens)
    return (key_for(where),)


def keys_of(event: Event) -> Iterator[Key]:
    """Every key under which a waiter may be interested in `event`."""
    yield ("token", event.token)
    if event.correlation_id is not None:
        yield ("correlation", event.correlation_id)
    if event.group is not None:
        yield ("group", event.group)
    yield ALL


class Subscriber(Protocol):
    @property
    def keys(self) -> tuple[Key, ...]:
        """Where it is filed; must not change while it is registered."""
        ...

    @property
    def kind(self) -> str:
        """For metrics: "long_poll", "websocket", "sse"."""
        ...

    def push(self, event: Event) -> None: ...

    def shut_down(self) -> None: ...


class Waiter:
    """A one-shot subscriber for a long-poll: collects matching events and wakes its owner."""

    __slots__ = ("_keys", "where", "events", "_woken", "_shut_down")
    kind = "long_poll"

    def __init__(self, where: DeliveryFilter) -> None:
        # One key, or one per token of a set of tokens (a wait on any or all of several).
        self._keys = keys_for(where)
        self.where = where
        self.events: list[Event] = []
        self._woken = asyncio.get_running_loop().create_future()
        self._shut_down = False

    @property
    def keys(self) -> tuple[Key, ...]:
        return self._keys

    def push(self, event: Event) -> None:
        if not self.where.accepts(event):
            return
        self.events.append(event)
        if not self._woken.done():
            self._woken.set_result(None)

    def shut_down(self) -> None:
        self._shut_down = True
        if not self._woken.done():
            self._woken.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """True once an event arrived (perhaps before this call), False on timeout; raises
        ShuttingDown when the server stops first."""
        if not self.events and timeout > 0 and not self._shut_down:
            loop = asyncio.get_running_loop()
            if self._woken.done():  # resolved by an earlier timeout
                self._woken = loop.create_future()
            # Awaited directly, not through wait_for and a shield: a wake-up is one step of the
            # loop, not three (and the waiter holds two futures and a frame fewer). The timeout
            # resolves the future too, rather than cancelling through asyncio.timeout, whose
            # context manager and its state would stay with every idle waiter.
            timer = loop.call_later(timeout, _resolve, self._woken)
            try:
                await self._woken
            finally:
                timer.cancel()
        if self._shut_down:
            raise ShuttingDown()
        return bool(self.events)

    def rearm(self) -> None:
        """Forget what was seen, to wait again."""
        self.events.clear()
        if self._woken.done():
            self._woken = asyncio.get_running_loop().create_future()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Registry:
    def __init__(self) -> None:
        # Under each key, its one subscriber itself, or a set of them once there are several:
        # most keys (a token) have one waiter, and a set for it would weigh 0.2 KB more.
        self._by_key: dict[Key, Subscriber | set[Subscriber]] = {}
        self._shut_down = False

    @property
    def shutting_down(self) -> bool:
        return self._shut_down

    def add(self, subscriber: Subscriber) -> None:
        if self._shut_down:
            subscriber.shut_down()  # told at once, and not filed: nothing will come
            return
        by_key = self._by_key
        for key in subscriber.keys:
            filed = by_key.get(key)
            if filed is None:
                by_key[key] = subscriber
            elif isinstance(filed, set):
                filed.add(subscriber)
            elif filed is not subscriber:
                by_key[key] = {filed, subscriber}

    def shut_down(self) -> None:
        """Tell every subscriber, present and future, that the server is stopping."""
        self._shut_down = True
        for subscriber in self._subscribers():
            subscriber.shut_down()

    def remove(self, subscriber: Subscriber) -> None:
        by_key = self._by_key
        for key in subscriber.keys:
            filed = by_key.get(key)
            if filed is None:
                continue
            if isinstance(filed, set):
                filed.discard(subscriber)
                if len(filed) == 1:
                    by_key[key] = next(iter(filed))
                elif not filed:
                    del by_key[key]
            elif filed is subscriber:
                del by_key[key]

    def listening(self) -> bool:
        """Whether any subscriber is registered (an empty key's set is dropped at once)."""
        return bool(self._by_key)

    def publish(self, event: Event) -> None:
        # A copy: a woken subscriber may remove itself while we iterate. A subscriber filed
        # under two of the event's keys is pushed the event once.
        found = [_filed(filed) for key in keys_of(event) if (filed := self._by_key.get(key)) is not None]
        if len(found) == 1:
            for subscriber in found[0]:
                subscriber.push(event)
            return
        pushed: set[Subscriber] = set()
        for subscribers in found:
            for subscriber in subscribers:
                if subscriber not in pushed:
                    pushed.add(subscriber)
                    subscriber.push(event)

    def _subscribers(self) -> set[Subscriber]:
        """Each registered subscriber once, however many keys it is filed under."""
        return {subscriber for filed in self._by_key.values() for subscriber in _filed(filed)}

    def __len__(self) -> int:
        """How many subscribers are registered (0 when nobody waits)."""
        return len(self._subscribers())

    def count_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for subscriber in self._subscribers():
            counts[subscriber.kind] = counts.get(subscriber.kind, 0) + 1
        return counts


def _filed(filed: Subscriber | set[Subscriber]) -> tuple[Subscriber, ...]:
    """The subscribers filed under one key, as a copy."""
    return tuple(filed) if isinstance(filed, set) else (filed,)
