"""Group commit on its own: what turns the store unwritable, and what alone turns it back."""

from __future__ import annotations

import pytest

from cbhub.errors import StoreUnavailable
from cbhub.store.group_commit import GroupCommit


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
