"""The store contract: everything a backend promises, run against every backend."""

from __future__ import annotations

import asyncio

import pytest
from helpers import HOUR, incoming, spec, written

from cbhub.domain.model import Callback, Event, MintSpec, now_ms
from cbhub.domain.signatures import VerifySpec
from cbhub.errors import AddressNotAllowed, CallbackClosed, CallbackNotFound, IdempotencyConflict
from cbhub.domain.filters import DeliveryFilter
from cbhub.store.base import IDEMPOTENCY_WINDOW_MS

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True


async def test_minting_gives_pending_callbacks_in_order(make_store):
    store = await make_store()
    now = now_ms()
    callbacks, created = await store.mint([spec(label="one", group="g", a=[1, 2]), spec(ttl=60)], now)
    assert created
    first, second = callbacks
    assert (first.status, first.label, first.group, first.metadata) == ("pending", "one", "g", {"a": [1, 2]})
    assert first.created_at == now and first.expires_at == now + HOUR * 1000
    assert second.expires_at == now + 60_000 and second.group is None
    assert len({first.token, second.token}) == 2 and len(first.token) >= 40
    assert (await store.get_callback(first.token)).metadata == {"a": [1, 2]}
    many, _ = await store.mint([spec(group="big")] * 300, now)
    assert len({c.token for c in many}) == 300
    assert (await store.group_counts("big"))["pending"] == 300


async def test_an_idempotency_key_returns_the_first_callbacks_and_refuses_another_request(make_store):
    store = await make_store()
    now = now_ms()
    first, created = await store.mint([spec()] * 2, now, ("", "key-1", "fp-a"))
    again, created_again = await store.mint([spec()] * 2, now + 1000, ("", "key-1", "fp-a"))
    assert created and not created_again
    assert [c.token for c in again] == [c.token for c in first]
    with pytest.raises(IdempotencyConflict):
        await store.mint([spec()], now + 2000, ("", "key-1", "fp-b"))
    # Past its window the key is free again.
    later, created_later = await store.mint([spec()], now + IDEMPOTENCY_WINDOW_MS + 1, ("", "key-1", "fp-b"))
    assert created_later and later[0].token not in {c.token for c in first}
    assert (await store.status_counts())["pending"] == 3


async def test_ingest_stores_the_request_exactly_and_counts_it(make_store):
    events: list[Event] = []
    store = await make_store(events.append)
    [callback], _ = await store.mint([spec(group="g", label="l")], now_ms())
    raw = b"RequestID=r-1&StatusCode=OK&x=%00"
    result = await store.ingest(incoming(callback.token, raw, correlation_id="r-1", query_string="q=1&q=2"))
    assert not result.duplicate
    delivery = result.delivery
    assert result.callback.status == "received" and result.callback.deliveries == 1
    assert result.callback.result is not None and result.callback.result.id == delivery.id
    assert written(events) == [Event("delivery", result.callback, delivery)], "announced before the write returned"
    stored = await store.get_delivery(delivery.id)
    assert stored is not None
    assert stored.raw == raw and stored.token == callback.token and stored.group == "g"
    assert stored.headers == {"Content-Type": "application/x-www-form-urlencoded", "X-Trace": "t-1"}
    assert stored.query == {"q": ["1", "2"]} and stored.correlation_id == "r-1"
    assert stored.to_json()["body"] == {"RequestID": "r-1", "StatusCode": "OK", "x": "\x00"}
    again = await store.get_callback(callback.token)
    assert (again.status, again.deliveries, again.result.id) == ("received", 1, delivery.id)


async def test_names_and_bodies_with_nul_and_odd_bytes_round_trip(make_store):
    store = await make_store()
    [callback], _ = await store.mint([spec(label="l\x00x", group="g\x00é", k="v\x00")], now_ms())
    raw = bytes(range(256))
    result = await store.ingest(incoming(callback.token, raw, "application/octet-stream", correlation_id="c\x00🙂"))
    stored = await store.get_delivery(result.delivery.id)
    assert stored.raw == raw and stored.correlation_id == "c\x00🙂" and stored.group == "g\x00é"
    fetched = await store.get_callback(callback.token)
    assert (fetched.label, fetched.group, fetched.metadata) == ("l\x00x", "g\x00é", {"k": "v\x00"})
    found = await store.find_deliveries(DeliveryFilter(group="g\x00é", correlation_id="c\x00🙂"), 0, 10)
    assert [d.id for d in found] == [result.delivery.id]
    # A token no callback can have is simply unknown.
    assert await store.get_callback("a\x00b") is None
    with pytest.raises(CallbackNotFound):
        await store.ingest(incoming("a\x00b"))
    assert await store.find_deliveries(DeliveryFilter(token="a\x00b"), 0, 10) == []
    assert await store.callback_statuses(["a\x00b", callback.token]) == {callback.token: "received"}


async def test_unknown_cancelled_and_expired_callbacks_refuse_deliveries_unless_kept_late(make_store):
    store = await make_store()
    now = now_ms()
    (open_, cancelled_, short), _ = await store.mint([spec(), spec(), spec(ttl=1)], now)
    with pytest.raises(CallbackNotFound):
        await store.ingest(incoming("no-such-token"))
    await store.cancel(cancelled_.token, now)
    with pytest.raises(CallbackClosed) as closed:
        await store.ingest(incoming(cancelled_.token), keep_late=False)
    assert closed.value.callback_status == "cancelled"
    with pytest.raises(CallbackClosed) as closed:
        await store.ingest(incoming(short.token, received_at=now + 1000), keep_late=False)
    assert closed.value.callback_status == "expired"
    await store.ingest(incoming(open_.token))
    assert (await store.status_counts()) == {"pending": 1, "received": 1, "expired": 0, "cancelled": 1}


async def test_a_late_delivery_is_stored_and_announced_without_changing_its_callback(make_store):
    events: list[Event] = []
    store = await make_store(events.append)
    now = now_ms()
    [callback], _ = await store.mint([spec(ttl=1)], now)
    first = await store.ingest(incoming(callback.token, b"a=1"))
    late = await store.ingest(incoming(callback.token, b"a=2", received_at=now + 1000))
    assert late.delivery.late and not first.delivery.late and not late.duplicate
    # The event shows the callback as it is: received, its result the on-time delivery.
    assert late.callback.result.id == first.delivery.id and late.callback.late_deliveries == 1
    assert [(e.delivery.id, e.delivery.late) for e in written(events)] == [
        (first.delivery.id, False),
        (late.delivery.id, True),
    ]
    stored = await store.get_callback(callback.token)
    assert (stored.status, stored.deliveries, stored.late_deliveries) == ("received", 1, 1)
    assert stored.result.id == first.delivery.id
    on_time = await store.find_deliveries(DeliveryFilter(token=callback.token, late=False), 0, 10)
    every = await store.find_deliveries(DeliveryFilter(token=callback.token), 0, 10)
    assert [d.id for d in on_time] == [first.delivery.id]
    assert [(d.id, d.late) for d in every] == [(first.delivery.id, False), (late.delivery.id, True)]


async def test_a_sender_retry_is_stored_once(make_store):
    events: list[Event] = []
    store = await make_store(events.append)
    [callback], _ = await store.mint([spec()], now_ms())
    first = await store.ingest(incoming(callback.token, b"a=1", dedupe_key="webhook-id:m1"))
    retry = await store.ingest(incoming(callback.token, b"a=1", dedupe_key="webhook-id:m1"))
    other = await store.ingest(incoming(callback.token, b"a=2", dedupe_key="webhook-id:m2"))
    assert retry.duplicate and retry.delivery.id == first.delivery.id
    assert retry.callback.result.id == first.delivery.id
    assert not other.duplicate and other.delivery.id > first.delivery.id
    assert [e.delivery.id for e in written(events)] == [first.delivery.id, other.delivery.id]
    assert (await store.get_callback(callback.token)).deliveries == 2


async def test_cancel_once_and_expire_due_announce_closings(make_store):
    events: list[Event] = []
    store = await make_store(events.append)
    now = now_ms()
    (received, pending, short), _ = await store.mint([spec(group="g"), spec(group="g"), spec(ttl=1, group="g")], now)
    await store.ingest(incoming(received.token))
    cancelled_, changed = await store.cancel(received.token, now)
    assert changed and cancelled_.status == "cancelled" and cancelled_.result is not None
    again, changed_again = await store.cancel(received.token, now)
    assert not changed_again and again.status == "cancelled"
    with pytest.raises(CallbackNotFound):
        await store.cancel("no-such-token", now)

    assert not await store.has_due(now)
    assert await store.has_due(now + 1000)
    expired = await store.expire_due(now + 1000)
    assert [c.token for c in expired] == [short.token] and expired[0].status == "expired"
    assert await store.expire_due(now + 1000) == []
    assert not await store.has_due(now + 1000)
    assert [(e.kind, e.token, e.callback.status) for e in written(events)] == [
        ("delivery", received.token, "received"),
        ("status", received.token, "cancelled"),
        ("status", short.token, "expired"),
    ]
    assert await store.group_counts("g") == {"pending": 1, "received": 0, "expired": 1, "cancelled": 1}
    assert await store.callback_statuses([pending.token, short.token, "unknown"]) == {
        pending.token: "pending",
        short.token: "expired",
    }


async def test_find_deliveries_filters_pages_and_orders(make_store):
    store = await make_store()
    (a, b, c), _ = await store.mint([spec(group="g"), spec(group="g"), spec(group="h")], now_ms())
    ids = []
    for n in range(12):
        target = (a, b, c)[n % 3]
        result = await store.ingest(incoming(target.token, f"n={n}".encode(), correlation_id=f"r{n % 2}"))
        ids.append(result.delivery.id)
    everything = await store.find_deliveries(DeliveryFilter(), 0, 100)
    assert [d.id for d in everything] == ids == sorted(ids)
    assert [d.id for d in await store.find_deliveries(DeliveryFilter(token=a.token), 0, 100)] == ids[0::3]
    both = await store.find_deliveries(DeliveryFilter(tokens=frozenset({a.token, c.token})), 0, 100)
    assert [d.id for d in both] == sorted(ids[0::3] + ids[2::3])
    assert [d.id for d in await store.find_deliveries(DeliveryFilter(group="g"), 0, 100)] == sorted(
        ids[0::3] + ids[1::3]
    )
    mixed = await store.find_deliveries(DeliveryFilter(group="h", correlation_id="r1"), 0, 100)
    assert [d.id for d in mixed] == [i for n, i in enumerate(ids) if n % 3 == 2 and n % 2 == 1]
    assert [d.id for d in await store.find_deliveries(DeliveryFilter(), ids[4], 3)] == ids[5:8]
    assert await store.find_deliveries(DeliveryFilter(), ids[-1], 100) == []
    assert await store.get_delivery(ids[-1] + 1000) is None


async def test_ids_keep_increasing_after_retention_deletes_the_newest(make_store):
    store = await make_store()
    now = now_ms()
    [old], _ = await store.mint([spec(ttl=1)], now)
    last = (await store.ingest(incoming(old.token, received_at=now))).delivery.id
    await store.probe_write(now)
    gone = 0
    while removed := await store.purge(now + 10_000, now + IDEMPOTENCY_WINDOW_MS * 2):
        gone += removed
    assert gone == 2
    assert await store.get_callback(old.token) is None
    [fresh], _ = await store.mint([spec()], now)
    assert (await store.ingest(incoming(fresh.token))).delivery.id > last


async def test_concurrent_writes_share_commits_and_all_land(make_store):
    store = await make_store()
    callbacks, _ = await store.mint([spec()] * 50, now_ms())
    results = await asyncio.gather(*(store.ingest(incoming(c.token, f"i={i}".encode())) for i, c in enumerate(callbacks)))
    ids = [r.delivery.id for r in results]
    assert len(set(ids)) == 50
    stored = await store.find_deliveries(DeliveryFilter(), 0, 100)
    assert sorted(ids) == [d.id for d in stored]
    assert store.writable
    await store.ping()


async def test_owners_and_guards_are_kept_and_enforced(make_store):
    events: list[Event] = []
    store = await make_store(events.append)
    now = now_ms()
    verify = VerifySpec(scheme="hmac-sha256", secret="s3cret", header="X-Signature")
    (mine, theirs), _ = await store.mint(
        [
            MintSpec(HOUR, None, "g", {}, created_by="alice", allow_ips=("10.0.0.0/8",), verify=verify),
            MintSpec(HOUR, None, "g", {}, created_by="bob"),
        ],
        now,
    )
    fetched = await store.get_callback(mine.token)
    assert (fetched.created_by, fetched.allow_ips, fetched.verify) == ("alice", ("10.0.0.0/8",), verify)
    assert (await store.get_callback(theirs.token)).verify is None
    assert await store.callback_statuses([mine.token, theirs.token], owner="alice") == {mine.token: "pending"}
    assert (await store.group_counts("g", owner="alice"))["pending"] == 1
    assert (await store.group_counts("g"))["pending"] == 2

    seen: list[Callback] = []

    def refuse(callback: Callback) -> None:
        seen.append(callback)
        raise AddressNotAllowed("not from there")

    with pytest.raises(AddressNotAllowed):
        await store.ingest(incoming(mine.token), refuse)
    assert seen[0].allow_ips == ("10.0.0.0/8",), "the guard is run on the stored callback"
    assert await store.find_deliveries(DeliveryFilter(), 0, 10) == [] and written(events) == []
    await store.ingest(incoming(mine.token), lambda callback: None)
    await store.ingest(incoming(theirs.token))
    owned = await store.find_deliveries(DeliveryFilter(owner="alice"), 0, 10)
    assert [d.token for d in owned] == [mine.token]
    # Over a set of tokens too (a subscription's replay): another owner's token named in it
    # gives nothing.
    named = DeliveryFilter(tokens=frozenset({mine.token, theirs.token}), owner="alice")
    assert [d.token for d in await store.find_deliveries(named, 0, 10)] == [mine.token]


async def test_new_callbacks_are_announced_once(make_store):
    events: list[Event] = []
    store = await make_store(events.append)
    callbacks, _ = await store.mint([spec(group="g")] * 3, now_ms(), ("", "k", "fp"))
    await store.mint([spec(group="g")] * 3, now_ms(), ("", "k", "fp"))  # a repeat creates nothing
    assert [(e.kind, e.token) for e in events] == [("created", c.token) for c in callbacks]
    assert events[0].callback.group == "g" and events[0].callback.status == "pending"
