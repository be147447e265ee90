"""What the SQLite store promises beyond the shared contract: how one batch's writes fail."""

from __future__ import annotations

import asyncio
import sqlite3

from cbhub.domain.model import Event, MintSpec, now_ms
from cbhub.domain.filters import DeliveryFilter
from tests.test_store_contract import incoming


async def test_an_op_that_breaks_after_writing_fails_alone_and_leaves_nothing(make_store, db_path):
    events: list[Event] = []
    store = await make_store(events.append)
    callbacks, _ = await store.mint([MintSpec(ttl=3600, label=None, group=None, metadata={})] * 10, now_ms())

    def broken(conn: sqlite3.Connection) -> None:
        # A write, then a bug: what a savepoint per op used to guard against.
        conn.execute("INSERT INTO write_probe (id, at) VALUES (1, 42)")
        raise RuntimeError("a bug after a write")

    # All submitted before the writer runs: one batch, the broken op in its middle.
    writes = [store.ingest(incoming(c.token)) for c in callbacks[:5]]
    writes.append(store._writes.submit(broken))
    writes += [store.ingest(incoming(c.token)) for c in callbacks[5:]]
    results = await asyncio.gather(*writes, return_exceptions=True)

    assert isinstance(results[5], RuntimeError)
    stored = await store.find_deliveries(DeliveryFilter(), 0, 100)
    assert [r.delivery.id for n, r in enumerate(results) if n != 5] == [d.id for d in stored]
    assert len(stored) == 10 and [e.delivery.id for e in events if e.kind == "delivery"] == [d.id for d in stored]
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM write_probe").fetchone() == (0,)
    assert store.writable


async def test_the_write_ahead_log_is_copied_back_while_writes_go_on(make_store, db_path):
    """Checkpoints run beside the writer (and the writer's own, past 2,000 pages, should they
    fall behind): the WAL stays a few megabytes, however much is written."""
    store = await make_store()
    callbacks, _ = await store.mint([MintSpec(ttl=3600, label=None, group=None, metadata={})] * 100, now_ms())
    body = bytes(range(256)) * 16  # 4 KiB that no page can share
    for round in range(80):
        await asyncio.gather(*(store.ingest(incoming(c.token, raw=body)) for c in callbacks))
    written = 80 * 100 * len(body)
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.stat().st_size < 12 * 2**20 < written / 2
    assert db_path.stat().st_size > written * 0.7  # most of it is in the database file already
