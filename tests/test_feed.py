"""A feed on its own: one connection's stream of subscriptions over a real store and registry,
without HTTP. The seam between replay and live, the backlog, and letting go."""

from __future__ import annotations

from helpers import incoming, spec

from cbhub.config import RealtimeConfig
from cbhub.domain.filters import DeliveryFilter
from cbhub.domain.model import now_ms
from cbhub.waiting.registry import Registry
from cbhub.waiting.subscriptions import NOTHING, End, Feed, Notice

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True


async def drain(feed: Feed) -> list[Notice | object]:
    """Everything the feed has to send now, as a writer would take it."""
    sent = []
    while (item := await feed.take()) is not NOTHING and item is not None:
        sent.append(item)
    return sent


async def test_a_replay_then_live_sends_each_delivery_once_in_order(make_store):
    registry = Registry()
    store = await make_store(registry.publish)
    [callback], _ = await store.mint([spec()], now_ms())
    stored = [(await store.ingest(incoming(callback.token, b"n=%d" % n))).delivery.id for n in range(3)]

    feed = Feed(registry, store, RealtimeConfig(), "websocket")
    await feed.subscribe("s", DeliveryFilter(token=callback.token), after=0, confirm="subscribed")
    assert await feed.take() == "subscribed"
    first = await feed.take()
    assert isinstance(first, Notice) and first.delivery.id == stored[0]
    # Committed while the replay is under way: held back, then sent after the stored ones.
    live = (await store.ingest(incoming(callback.token, b"n=3"))).delivery.id
    rest = await drain(feed)
    assert [notice.delivery.id for notice in rest] == [*stored[1:], live]
    assert len(registry) == 1

    # Live now: the next one comes at once, and a cancel says how the callback ended.
    newest = (await store.ingest(incoming(callback.token, b"n=4"))).delivery.id
    await store.cancel(callback.token, now_ms())
    notices = await drain(feed)
    assert [(n.delivery.id if n.delivery else n.status) for n in notices] == [newest, "cancelled"]


async def test_a_consumer_too_far_behind_is_ended_and_let_go(make_store):
    registry = Registry()
    store = await make_store(registry.publish)
    [callback], _ = await store.mint([spec()], now_ms())
    feed = Feed(registry, store, RealtimeConfig(max_backlog=2), "sse")
    await feed.subscribe("s", DeliveryFilter(token=callback.token))
    for n in range(3):
        await store.ingest(incoming(callback.token, b"n=%d" % n))
    assert feed.ended is End.OVERFLOW
    assert await feed.take() is None
    assert len(registry) == 0


async def test_unsubscribing_drops_what_was_queued(make_store):
    registry = Registry()
    store = await make_store(registry.publish)
    [callback], _ = await store.mint([spec()], now_ms())
    feed = Feed(registry, store, RealtimeConfig(), "websocket")
    await feed.subscribe("s", DeliveryFilter(token=callback.token))
    await store.ingest(incoming(callback.token))
    assert feed.unsubscribe("s") and not feed.unsubscribe("s")
    assert await feed.take() is NOTHING
    assert len(registry) == 0
