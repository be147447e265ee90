"""Subscriptions: the deliveries of many callbacks streamed over one connection, without a gap.

It knows no HTTP. A `Feed` is one connection's outgoing stream (a websocket, an SSE response)
and holds its subscriptions; each `Subscription` is a registry subscriber over a
`DeliveryFilter`. The connection's writer asks `Feed.next()` for one thing to send at a time, so
a replay of stored deliveries goes at the pace the consumer reads, while live events are queued
and count towards `max_backlog`: a consumer that falls further behind is cut off, to resume
with `after`, since the store has everything.

The seam between replay and live: a subscription is registered (its live events held back)
*before* the store is read; it replays the stored deliveries with id > after, page by page,
oldest first; once a read comes back short everything stored has been read, and the held-back
events with an id above the last one sent follow, in id order; from then on it is live. A
delivery committed before the registration is found by the reads, one published after it is held
back or live, and one that is both is sent once: ids at or below the last replayed are dropped.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Final

from cbhub.config import RealtimeConfig
from cbhub.domain.filters import DeliveryFilter
from cbhub.domain.model import (
    CREATED,
    OVERDUE,
    SETTLED,
    TERMINAL,
    Callback,
    Delivery,
    Event,
)
from cbhub.errors import CallbackNotFound, ShuttingDown, SubscribeRefused
from cbhub.store import Store
from cbhub.waiting.registry import Key, Registry, keys_for

# Stored deliveries read per query while replaying.
REPLAY_PAGE = 200
# The most tokens one subscription may name.
MAX_TOKENS = 1000
# The kinds of event a callback's timers raise (domain/timing.py).
TIMERS = (SETTLED, OVERDUE)


class End(enum.Enum):
    """Why a feed stopped."""

    CLOSED = "closed"  # its connection went away
    DONE = "done"  # it said all it had to say (a one-shot subscription)
    GOING_AWAY = "going_away"  # the server is stopping
    OVERFLOW = "overflow"  # the consumer read too slowly: more than max_backlog unsent


class Idle(enum.Enum):
    IDLE = "idle"
    NOTHING = "nothing"


# `Feed.next(idle=...)` returns this when nothing was sent for `idle` seconds.
IDLE: Final = Idle.IDLE
# What `Feed.take()` answers when there is nothing to send yet.
NOTHING: Final = Idle.NOTHING


@dataclass(frozen=True, slots=True)
class Notice:
    """What a subscription tells its consumer: a delivery, a callback's final status, or (to a
    subscription that asked for them) a new callback."""

    subscription: Subscription
    delivery: Delivery | None = None
    token: str | None = None
    status: str | None = None
    created: Callback | None = None
    # A timer's event (SETTLED or OVERDUE) and the callback as it then was.
    timer: str | None = None
    callback: Callback | None = None

    @property
    def name(self) -> str | int:
        return self.subscription.name


# Anything else a connection queues for its peer (an acknowledgement, a pong), sent in order.
Reply = Any


class Subscription:
    """One filter's deliveries and status changes, replayed from `after`, then live."""

    __slots__ = (
        "name",
        "where",
        "created",
        "keys",
        "active",
        "_feed",
        "_seam",
        "_held",
        "_page",
        "_read_all",
        "_closed",
    )

    def __init__(
        self, feed: Feed, name: str | int, where: DeliveryFilter, after: int | None, created: bool = False
    ) -> None:
        self.name = name
        self.where = where
        # Whether it is told of callbacks minted within its filters (never replayed: creations
        # have no id to resume from).
        self.created = created
        self.keys: tuple[Key, ...] = keys_for(where)
        self.active = True
        self._feed = feed
        # The highest delivery id replayed: a live delivery at or below it was already sent.
        self._seam = after or 0
        # Live events held back until the replay is done; None once live.
        self._held: list[Event] | None = []
        # Stored deliveries read and not yet sent; made only when replaying (an empty deque
        # weighs more than the rest of an idle subscription).
        self._page: deque[Delivery] | None = None
        self._read_all = False
        # Final statuses its callbacks already had when it subscribed: token -> status.
        self._closed: dict[str, str] | None = None

    # The registry side: never blocks, never awaits.

    def push(self, event: Event) -> None:
        if not self.active or not self.where.accepts(event, self.created):
            return
        if event.delivery is not None and event.delivery.id <= self._seam:
            return
        if self._held is not None:
            self._held.append(event)
            self._feed._count_one()
        else:
            self._feed._enqueue(self._notice(event))

    def shut_down(self) -> None:
        self._feed.end(End.GOING_AWAY)

    @property
    def kind(self) -> str:
        """What kind of connection holds it ("websocket", "sse"), for counting."""
        return self._feed.kind

    # The feed side.

    def _notice(self, event: Event) -> Notice:
        if event.delivery is not None:
            return Notice(self, delivery=event.delivery)
        if event.kind == CREATED:
            return Notice(self, token=event.token, created=event.callback)
        if event.kind in TIMERS:
            return Notice(self, token=event.token, timer=event.kind, callback=event.callback)
        return Notice(self, token=event.token, status=event.callback.status)

    def _go_live(self) -> None:
        """Queue what was held back, in id order and without what the replay sent; then live."""
        held, self._held = self._held or [], None
        self._feed._uncount(len(held))
        deliveries: dict[int, Delivery] = {}
        statuses = self._closed or {}
        timers: list[Event] = []
        for event in held:
            if event.kind == CREATED:
                # First: a callback's creation comes before anything else about it.
                self._feed._enqueue(self._notice(event))
            elif event.kind in TIMERS:
                timers.append(event)
            elif event.delivery is None:
                statuses[event.token] = event.callback.status
            elif event.delivery.id > self._seam:
                deliveries[event.delivery.id] = event.delivery
        # A callback turns overdue before its first delivery, and settles after its latest.
        for event in timers:
            if event.kind == OVERDUE:
                self._feed._enqueue(self._notice(event))
        for delivery_id in sorted(deliveries):
            self._feed._enqueue(Notice(self, delivery=deliveries[delivery_id]))
        for event in timers:
            if event.kind == SETTLED:
                self._feed._enqueue(self._notice(event))
        for token, status in statuses.items():
            self._feed._enqueue(Notice(self, token=token, status=status))
        self._closed = None
        self._page = None

    async def _replay_one(self, store: Store) -> Notice | None:
        """The next stored delivery to send, or None when a read was done instead (or the
        replay is over, and the subscription went live)."""
        if self._page is None:
            self._page = deque()
        if self._page:
            delivery = self._page.popleft()
            self._seam = delivery.id
            return Notice(self, delivery=delivery)
        if self._read_all:
            self._go_live()
            return None
        page = await store.find_deliveries(self.where, self._seam, REPLAY_PAGE)
        if self._page is not None:  # else it was unsubscribed meanwhile
            self._read_all = len(page) < REPLAY_PAGE
            self._page.extend(page)
        return None

    @property
    def replaying(self) -> bool:
        return self._held is not None


class Feed:
    """One connection's outgoing stream and its subscriptions."""

    # Slots: one feed per open websocket or event stream, most of them idle.
    __slots__ = (
        "_max_subscriptions",
        "_queue",
        "_registry",
        "_replaying",
        "_store",
        "_subscriptions",
        "_unsent",
        "_wake",
        "ended",
        "kind",
        "max_backlog",
        "on_ready",
    )

    def __init__(self, registry: Registry, store: Store, limits: RealtimeConfig, kind: str) -> None:
        self.kind = kind
        self._registry = registry
        self._store = store
        self._max_subscriptions = limits.max_subscriptions
        self.max_backlog = limits.max_backlog
        self._subscriptions: dict[str | int, Subscription] = {}
        # Both made when first needed and dropped once drained: an empty deque weighs about
        # 600 bytes, and most feeds are idle most of the time.
        self._queue: deque[Notice | Reply] | None = None
        self._replaying: deque[Subscription] | None = None
        # Messages queued or held back at a seam, not yet sent: the backlog.
        self._unsent = 0
        self._wake: asyncio.Future[None] | None = None
        # Called whenever there may be something new to send: a connection that sends only
        # when there is something (see `ready`) need not wait in `next()`.
        self.on_ready: Callable[[], None] | None = None
        self.ended: End | None = None

    def __len__(self) -> int:
        return len(self._subscriptions)

    async def subscribe(
        self,
        name: str | int,
        where: DeliveryFilter,
        after: int | None = None,
        confirm: Reply = None,
        created: bool = False,
    ) -> Subscription:
        """Start a subscription; with `after`, it first replays what is stored past it.

        `confirm` is queued before anything the subscription sends; with `created`, it is also
        told of callbacks minted within its filters. Refuses a name in use, one
        subscription too many, too many tokens (SubscribeRefused) and tokens no callback has
        (CallbackNotFound).
        """
        if self.ended is not None:
            raise ShuttingDown() if self.ended is End.GOING_AWAY else SubscribeRefused("the feed is closed", code="closed")
        if where.tokens is not None and len(where.tokens) > MAX_TOKENS:
            raise SubscribeRefused(f"at most {MAX_TOKENS} tokens per subscription", code="too_many_tokens")
        if name in self._subscriptions:
            raise SubscribeRefused(f"a subscription named {name!r} is already open", code="subscription_exists")
        if len(self._subscriptions) >= self._max_subscriptions:
            raise SubscribeRefused(
                f"at most {self._max_subscriptions} subscriptions per connection", code="too_many_subscriptions"
            )
        subscription = Subscription(self, name, where, after, created)
        self._subscriptions[name] = subscription
        # Registered before the store is read: nothing published from now on is missed.
        self._registry.add(subscription)
        try:
            tokens = sorted(where.tokens or ()) or ([where.token] if where.token is not None else [])
            if tokens:
                statuses = await self._store.callback_statuses(tokens, where.owner)
                missing = [token for token in tokens if token not in statuses]
                if missing:
                    raise CallbackNotFound(missing[0], f"no callback has the token {missing[0][:64]!r}")
                subscription._closed = {t: s for t, s in statuses.items() if s in TERMINAL} or None
        except BaseException:
            self.unsubscribe(name)
            self._registry.remove(subscription)
            raise
        if self.ended is not None:
            # Ended meanwhile (the server is stopping, or the consumer fell behind).
            self._registry.remove(subscription)
            raise ShuttingDown() if self.ended is End.GOING_AWAY else SubscribeRefused("the feed is closed", code="closed")
        if confirm is not None:
            self._append(confirm)
            self._count_one()
        if after is None:
            subscription._go_live()
        else:
            if self._replaying is None:
                self._replaying = deque()
            self._replaying.append(subscription)
        self._wake_up()
        return subscription

    def unsubscribe(self, name: str | int) -> bool:
        """Stop a subscription; False when there is none of that name. What it queued is dropped."""
        subscription = self._subscriptions.pop(name, None)
        if subscription is None:
            return False
        subscription.active = False
        self._registry.remove(subscription)
        if subscription._held:
            self._uncount(len(subscription._held))
        subscription._held = None
        subscription._page = None
        return True

    def reply(self, message: Reply) -> None:
        """Queue a message of the connection's own, after what is already queued."""
        self._enqueue(message)

    def end(self, why: End) -> None:
        """Stop: `next()` answers None from now on, and nothing more is taken in."""
        if self.ended is not None:
            return
        self.ended = why
        for name in list(self._subscriptions):
            self.unsubscribe(name)
        self._queue = None
        self._unsent = 0
        self._wake_up()

    def close(self) -> None:
        """The connection is gone: let go of everything."""
        self.end(End.CLOSED)

    async def take(self) -> Notice | Reply | Idle | None:
        """What there is to send now, without waiting for news: NOTHING when there is none
        (a replay may still read the store); None once the feed ended."""
        while self.ended is None:
            if self._queue:
                item = self._queue.popleft()
                if not self._queue:
                    self._queue = None
                self._unsent -= 1
                if isinstance(item, Notice) and not item.subscription.active:
                    continue
                return item
            if self._replaying:
                subscription = self._replaying[0]
                if not subscription.active or not subscription.replaying:
                    self._replaying.popleft()
                    if not self._replaying:
                        self._replaying = None
                    continue
                notice = await subscription._replay_one(self._store)
                if notice is not None and subscription.active and self.ended is None:
                    return notice
                continue
            return NOTHING
        return None

    async def next(self, idle: float | None = None) -> Notice | Reply | Idle | None:
        """The next thing to send, waiting for it; None once the feed ended; IDLE when there
        was nothing for `idle` seconds. Call it again only once the previous one is sent."""
        while (item := await self.take()) is NOTHING:
            self._wake = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(idle):  # None: no limit
                    await self._wake
            except TimeoutError:
                return IDLE
            finally:
                self._wake = None
        return item

    # Backlog accounting

    def _enqueue(self, item: Notice | Reply) -> None:
        if self.ended is not None:
            return
        self._append(item)
        self._count_one()
        self._wake_up()

    def _append(self, item: Notice | Reply) -> None:
        if self._queue is None:
            self._queue = deque()
        self._queue.append(item)

    def _count_one(self) -> None:
        self._unsent += 1
        if self._unsent > self.max_backlog:
            self.end(End.OVERFLOW)

    def _uncount(self, n: int) -> None:
        self._unsent -= n

    def _wake_up(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if self.on_ready is not None:
            self.on_ready()


class Streams:
    """Every open feed of the server, so that a stop reaches idle connections too."""

    def __init__(self, registry: Registry, store: Store, limits: RealtimeConfig) -> None:
        self._registry = registry
        self._store = store
        self._limits = limits
        self._open: set[Feed] = set()

    def open(self, kind: str) -> Feed:
        """A new feed for a connection of this kind; raises ShuttingDown once the server is stopping."""
        if self._registry.shutting_down:
            raise ShuttingDown()
        feed = Feed(self._registry, self._store, self._limits, kind)
        self._open.add(feed)
        return feed

    def close(self, feed: Feed) -> None:
        feed.close()
        self._open.discard(feed)

    def shut_down(self) -> None:
        for feed in list(self._open):
            feed.end(End.GOING_AWAY)

    def __len__(self) -> int:
        return len(self._open)
