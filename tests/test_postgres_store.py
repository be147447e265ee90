"""Several PostgreSQL stores over one database, as several instances run: cursors, wake-ups,
and the rules the database enforces between them."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from cbhub.domain.model import Event, now_ms
from cbhub.errors import SchemaTooNew
from cbhub.domain.filters import DeliveryFilter
from cbhub.store.postgres.store import PostgresStore
from helpers import eventually, terminate_listeners
from test_operations import (  # noqa: F401  (run here again, on PostgreSQL)
    test_metrics_show_deliveries_callbacks_waiters_and_commits,
    test_retention_zero_keeps_everything,
)
from test_restart import test_data_and_cursors_survive_a_restart  # noqa: F401  (on PostgreSQL)
from helpers import incoming, spec, written


@pytest.fixture
def backend() -> str:
    # Every test here, the ones imported from other modules too, runs on PostgreSQL.
    return "postgres"


SLOW_INSERT = """
CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.body = 'slow'::bytea THEN PERFORM pg_sleep(1.0); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow_insert AFTER INSERT ON deliveries FOR EACH ROW EXECUTE FUNCTION slow_insert();
"""
IN_PG_SLEEP = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()"


async def _read_while(store: PostgresStore, running: asyncio.Future) -> list[int]:
    """Follow the cursor as a client does, every few milliseconds, until `running` is done."""
    seen: list[int] = []
    while True:
        done = running.done()
        page = await store.find_deliveries(DeliveryFilter(), seen[-1] if seen else 0, 100)
        seen += [d.id for d in page]
        if done:
            return seen
        await asyncio.sleep(0.005)


async def _slow_then_fast(make_store, pg_dsn: str) -> tuple[list[int], int, int]:
    """Instance A stores a delivery that takes its id and then 1 s to commit; meanwhile
    instance B stores another. Returns what a reader following the cursor saw, and both ids."""
    first, second, reader = await make_store(), await make_store(), await make_store()
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(SLOW_INSERT)
        (a, b), _ = await first.mint([spec(), spec()], now_ms())
        slow = asyncio.ensure_future(first.ingest(incoming(a.token, b"slow")))

        async def in_the_trigger() -> bool:
            return await admin.fetchval(IN_PG_SLEEP) == 1

        # A's insert sleeps in its trigger: A holds its id now, uncommitted.
        await eventually(in_the_trigger, what="A's insert in its trigger")
    finally:
        await admin.close()
    fast = asyncio.ensure_future(second.ingest(incoming(b.token, b"fast")))
    both = asyncio.gather(slow, fast)
    seen = await _read_while(reader, both)
    slow_id, fast_id = ((await slow).delivery.id, (await fast).delivery.id)
    return seen, slow_id, fast_id


async def test_a_reader_never_sees_a_later_id_before_an_earlier_one_commits(make_store, pg_dsn):
    seen, slow_id, fast_id = await _slow_then_fast(make_store, pg_dsn)
    assert slow_id < fast_id, "B waited for A: ids are taken in commit order"
    assert seen == [slow_id, fast_id], "the cursor skipped nothing"


async def test_without_the_ordering_lock_a_reader_would_skip_an_id(make_store, pg_dsn, monkeypatch):
    # The hazard the lock exists for, shown by taking it away: B commits its later id while A's
    # earlier one is still in flight, and a reader past B's id never sees A's.
    monkeypatch.setattr("cbhub.store.postgres.store.TAKE_ORDER_LOCK", "SELECT $1::bigint")
    seen, slow_id, fast_id = await _slow_then_fast(make_store, pg_dsn)
    assert slow_id < fast_id
    assert seen == [fast_id], "a plain sequence lets the cursor pass an id committed later"


async def test_every_instance_announces_everyone_s_commits_once_in_commit_order(make_store):
    heard: dict[str, list[Event]] = {"a": [], "b": []}
    a = await make_store(heard["a"].append)
    b = await make_store(heard["b"].append)
    callbacks, _ = await a.mint([spec(group="g")] * 40 + [spec(ttl=1, group="g")] * 5, now_ms())

    async def write(n: int) -> None:
        store = random.choice((a, b))
        await asyncio.sleep(random.uniform(0, 0.05))
        if n < 30:
            await store.ingest(incoming(callbacks[n].token, f"n={n}".encode()))
            await store.ingest(incoming(callbacks[n].token, f"n={n}&again=1".encode()))
        else:
            await store.cancel(callbacks[n].token, now_ms())

    await asyncio.gather(*(write(n) for n in range(40)))
    # The store is told the time: 1.1 s on, the five with a 1 s TTL are due.
    expired = await b.expire_due(now_ms() + 1100)
    assert len(expired) == 5
    stored = [d.id for d in await a.find_deliveries(DeliveryFilter(), 0, 1000)]
    assert len(stored) == 60
    for name in ("a", "b"):
        await eventually(lambda: len(written(heard[name])) >= 75, what=f"75 events announced to {name}")
        assert [e.token for e in heard[name] if e.kind == "created"] == [c.token for c in callbacks]
        events = written(heard[name])
        ids = [e.delivery.id for e in events if e.delivery is not None]
        assert ids == stored, f"instance {name}: every delivery once, in id order"
        closed = [(e.token, e.callback.status) for e in events if e.delivery is None]
        assert sorted(closed) == sorted(
            [(c.token, "cancelled") for c in callbacks[30:40]] + [(c.token, "expired") for c in callbacks[40:]]
        )
    # A delivery announced to the other instance carries its callback, as a local one does.
    [one] = [e for e in heard["a"] if e.delivery is not None and e.delivery.id == stored[0]]
    assert one.callback.token == one.delivery.token and one.callback.group == "g"
    assert one.callback.result is one.delivery


async def test_idempotent_minting_and_sender_retries_hold_across_instances(make_store):
    a, b = await make_store(), await make_store()
    for round_no in range(10):
        key = ("", f"key-{round_no}", "fp")
        (first, created_a), (second, created_b) = await asyncio.gather(
            a.mint([spec()] * 3, now_ms(), key), b.mint([spec()] * 3, now_ms(), key)
        )
        assert [c.token for c in first] == [c.token for c in second]
        assert sorted([created_a, created_b]) == [False, True]
    [callback], _ = await a.mint([spec()], now_ms())
    results = await asyncio.gather(
        *(store.ingest(incoming(callback.token, dedupe_key="webhook-id:m1")) for store in (a, b, a, b))
    )
    assert len({r.delivery.id for r in results}) == 1
    assert sorted(r.duplicate for r in results) == [False, True, True, True]
    assert (await b.get_callback(callback.token)).deliveries == 1


async def test_a_terminated_listening_connection_reconnects_and_misses_nothing(make_store, pg_dsn):
    heard: list[Event] = []
    await make_store(heard.append)  # instance a, listening
    b = await make_store()
    callbacks, _ = await b.mint([spec()] * 3, now_ms())
    admin = await asyncpg.connect(pg_dsn)
    try:
        for callback in callbacks:
            killed = await terminate_listeners(admin, expected=2)
            assert killed == 2  # a's and b's
            # Posted while a is (most likely) not listening yet.
            delivery = (await b.ingest(incoming(callback.token))).delivery
            await eventually(
                lambda: delivery.id in [e.delivery.id for e in heard if e.delivery], what="the delivery announced to a"
            )
    finally:
        await admin.close()
    ids = [e.delivery.id for e in heard if e.delivery]
    assert ids == sorted(ids) and len(ids) == 3
    assert [e.token for e in heard if e.kind == "created"] == [c.token for c in callbacks], "minted on b"


async def test_concurrent_ingests_share_commits(make_store):
    sizes: list[int] = []
    store = await make_store()
    callbacks, _ = await store.mint([spec()] * 200, now_ms())
    store._writes._on_commit = lambda size, seconds: sizes.append(size)
    await asyncio.gather(*(store.ingest(incoming(c.token)) for c in callbacks))
    assert sum(sizes) == 200 and max(sizes) > 10, sizes


async def test_a_database_from_a_newer_cbhub_is_refused(make_store, pg_dsn):
    store = await make_store()
    await store.close()
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("UPDATE cbhub_schema SET version = 99")
    await conn.close()
    with pytest.raises(SchemaTooNew, match="99"):
        await PostgresStore(pg_dsn).open()


async def test_a_write_the_database_refuses_fails_alone_and_its_batch_commits(make_store):
    events: list[Event] = []
    store = await make_store(events.append)
    callbacks, _ = await store.mint([spec()] * 20, now_ms())
    # PostgreSQL text cannot hold NUL: this one write is refused by the server, mid-batch.
    writes = [
        store.ingest(incoming(c.token, content_type="text/plain\x00" if n == 7 else "text/plain"))
        for n, c in enumerate(callbacks)
    ]
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(results[7], asyncpg.PostgresError)
    stored = await store.find_deliveries(DeliveryFilter(), 0, 100)
    assert sorted(r.delivery.id for n, r in enumerate(results) if n != 7) == [d.id for d in stored]
    assert len(stored) == 19 and [e.delivery.id for e in written(events)] == [d.id for d in stored]
    assert store.writable


async def test_connections_terminated_while_idle_cost_no_write_and_no_read(make_store, pg_dsn):
    store = await make_store()
    [callback], _ = await store.mint([spec()], now_ms())
    admin = await asyncpg.connect(pg_dsn)
    try:
        # With a timeout, pg_terminate_backend returns once each backend has exited.
        killed = await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity"
            " WHERE application_name IN ('cbhub writer', 'cbhub reader') AND datname = current_database()"
        )
    finally:
        await admin.close()
    assert killed >= 2
    result = await store.ingest(incoming(callback.token))  # on a new writer connection
    assert (await store.get_callback(callback.token)).result.id == result.delivery.id
    assert store.writable


async def test_a_writer_connection_found_dead_by_a_batch_is_replaced_without_failing_it(make_store, pg_dsn):
    store = await make_store()
    [callback], _ = await store.mint([spec()], now_ms())
    admin = await asyncpg.connect(pg_dsn)
    connect = store._writer_connection
    handed_out: list[int] = []

    async def dying() -> asyncpg.Connection:
        # The first connection the batch gets dies under it before its first statement.
        conn = await connect()
        if not handed_out:
            await admin.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        handed_out.append(conn.get_server_pid())
        return conn

    store._writer_connection = dying
    try:
        result = await store.ingest(incoming(callback.token))
    finally:
        await admin.close()
    assert len(handed_out) == 2 and handed_out[0] != handed_out[1], "retried on a new connection"
    assert (await store.get_callback(callback.token)).result.id == result.delivery.id
    assert store.writable
