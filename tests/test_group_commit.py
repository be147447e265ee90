"""Group commit on its own: how writes share commits, what a broken op does to its batch, the
order of announcing and answering, and what turns the store unwritable and back."""

from __future__ import annotations

import asyncio

import pytest
from helpers import eventually

from cbhub.domain.model import CREATED, Callback, Event
from cbhub.errors import StoreUnavailable
from cbhub.store.group_commit import GroupCommit, OpFailed


async def test_only_a_committed_write_probe_makes_a_failed_store_writable_again():
    disk_full = True

    async def run_batch(ops: list[str]) -> list[str]:
        # As SQLite on a full disk: a transaction that wrote nothing commits, one that wrote fails.
        if disk_full and any(op != "refused" for op in ops):
            raise StoreUnavailable("database or disk is full")
        return ops

    async def announce(events: list) -> None:
        pass

    writes = GroupCommit(run_batch, announce)
    writes.start()
    try:
        with pytest.raises(StoreUnavailable):
            await writes.submit("ingest")
        assert not writes.writable
        # A request that writes nothing (an unknown token, a sender's retry) commits, and proves nothing.
        assert await writes.submit("refused") == "refused"
        assert not writes.writable
        disk_full = False
        assert await writes.submit("ingest") == "ingest"
        assert not writes.writable  # the probe decides, within a quarter of a second
        await writes.submit("probe", probe=True)
        assert writes.writable
    finally:
        await writes.close()


async def test_writes_submitted_during_a_commit_share_the_next_one_and_a_broken_op_fails_alone():
    batches: list[list[str]] = []
    first_commit_running = asyncio.Event()
    release_first_commit = asyncio.Event()

    async def run_batch(ops: list[str]) -> list[str]:
        batches.append(list(ops))
        if len(batches) == 1:
            first_commit_running.set()
            await release_first_commit.wait()
        if "bug" in ops:
            raise OpFailed(ops.index("bug"), ValueError("a bug in one op"))
        return [op.upper() for op in ops]

    announced: list[list[Event]] = []

    async def announce(events: list[Event]) -> None:
        announced.append(events)

    writes = GroupCommit(run_batch, announce)
    writes.start()
    try:
        first = asyncio.create_task(writes.submit("a"))
        await first_commit_running.wait()
        # Submitted while the first commit runs: they wait for it, then commit together.
        rest = [asyncio.create_task(writes.submit(op)) for op in ("b", "bug", "c")]
        await eventually(lambda: len(writes._pending) == 3)
        release_first_commit.set()
        assert await first == "A"
        assert await rest[0] == "B" and await rest[2] == "C"
        with pytest.raises(ValueError, match="a bug in one op"):
            await rest[1]
        # The batch with the broken op was rolled back and run again without it.
        assert batches == [["a"], ["b", "bug", "c"], ["b", "c"]]
    finally:
        await writes.close()


async def test_a_committed_write_is_announced_before_its_writer_is_answered():
    order: list[str] = []

    async def run_batch(ops: list[str]) -> list[str]:
        return ops

    async def announce(events: list[Event]) -> None:
        order.extend(f"announced {event.kind}" for event in events)

    writes = GroupCommit(run_batch, announce)
    writes.start()
    try:
        callback = Callback("t", "pending", 0, 1, None, None, {})
        await writes.submit("mint", announce=lambda result: [Event(CREATED, callback)])
        order.append("answered")
        assert order == ["announced created", "answered"]
    finally:
        await writes.close()
