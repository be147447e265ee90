"""The store's timers on every backend: what is due is marked once, from stored times, and
announced; a newer delivery moves a settle window (latest wins)."""

from __future__ import annotations

from dataclasses import replace

from helpers import incoming, spec

from cbhub.domain.model import OVERDUE, SETTLED, Event

ALL_BACKENDS = True


def _timers(events: list[Event]) -> list[tuple[str, str]]:
    return [(event.kind, event.token) for event in events if event.kind in (SETTLED, OVERDUE)]


async def test_a_settle_window_is_marked_once_after_the_latest_delivery_and_restarts_with_a_newer_one(make_store):
    events: list[Event] = []
    store = await make_store(events.append)
    [callback], _ = await store.mint([replace(spec(), settle_ms=1000)], 2_000_000_000_000 - 1_000)
    token = callback.token
    assert callback.settle_ms == 1000 and callback.settled_at is None
    await store.ingest(incoming(token, received_at=2_000_000_000_000))
    first_due = 2_000_000_000_000 + 1000
    assert not await store.has_timers_due(first_due - 1)
    assert await store.mark_settled(first_due - 1) == []
    # A newer delivery before it is due: the window starts over from it.
    result = await store.ingest(incoming(token, b"a=2", received_at=2_000_000_000_500))
    assert result.callback.settled_at is None
    assert not await store.has_timers_due(first_due)
    assert await store.mark_settled(first_due) == []
    due = 2_000_000_000_500 + 1000
    assert await store.has_timers_due(due)
    [settled] = await store.mark_settled(due)
    assert (settled.token, settled.settled_at) == (token, due)
    assert settled.result is not None and settled.result.id == result.delivery.id
    assert await store.mark_settled(due + 10_000) == []  # once
    assert _timers(events) == [(SETTLED, token)]
    assert (await store.get_callback(token)).settled_at == due
    # Latest wins: a newer delivery unsettles it until it settles in turn.
    await store.ingest(incoming(token, b"a=3", received_at=2_000_000_010_000))
    assert (await store.get_callback(token)).settled_at is None
    [again] = await store.mark_settled(2_000_000_011_000)
    assert again.settled_at == 2_000_000_011_000
    assert _timers(events) == [(SETTLED, token), (SETTLED, token)]


async def test_only_a_callback_still_pending_when_expected_turns_overdue_once(make_store):
    events: list[Event] = []
    store = await make_store(events.append)
    now = 3_000_000_000_000
    [hung, answered, plain], _ = await store.mint(
        [replace(spec(), expect_within=10), replace(spec(), expect_within=10), spec()], now
    )
    await store.ingest(incoming(answered.token, received_at=now + 5_000))
    assert not await store.has_timers_due(now + 9_999)
    assert await store.has_timers_due(now + 10_000)
    looked = await store.mark_overdue(now + 10_000)
    assert {c.token: c.overdue for c in looked} == {hung.token: True, answered.token: False}
    assert await store.mark_overdue(now + 20_000) == []  # each looked at once
    assert not await store.has_timers_due(now + 20_000)
    assert _timers(events) == [(OVERDUE, hung.token)]
    assert (await store.get_callback(hung.token)).overdue is True
    assert (await store.get_callback(answered.token)).overdue is False
    assert (await store.get_callback(plain.token)).overdue is False
    # Still pending, still taking deliveries; the flag stays.
    await store.ingest(incoming(hung.token, received_at=now + 30_000))
    after = await store.get_callback(hung.token)
    assert (after.status, after.overdue) == ("received", True)


async def test_a_group_counts_its_overdue_callbacks(make_store):
    store = await make_store()
    now = 4_000_000_000_000
    await store.mint([replace(spec(group="g"), expect_within=1)] * 3 + [spec(group="g")], now)
    assert await store.overdue_count("g") == 0
    while await store.mark_overdue(now + 1_000):
        pass
    assert await store.overdue_count("g") == 3
    assert await store.overdue_count("g", owner="someone-else") == 0
    assert await store.overdue_count("other") == 0


async def test_a_late_delivery_leaves_the_settled_result_as_it_was(make_store):
    store = await make_store()
    now = 5_000_000_000_000
    [callback], _ = await store.mint([replace(spec(), settle_ms=1000)], now)
    await store.ingest(incoming(callback.token, received_at=now + 1))
    [settled] = await store.mark_settled(now + 1_001)
    await store.cancel(callback.token, now + 2_000)
    late = await store.ingest(incoming(callback.token, b"a=late", received_at=now + 3_000))
    assert late.delivery.late
    after = await store.get_callback(callback.token)
    assert after.settled_at == settled.settled_at
    assert not await store.has_timers_due(now + 100_000)
