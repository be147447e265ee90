"""A full disk, really: `cbhub serve` on a small tmpfs of its own, filled until commits fail.

The promise under test: a callback answered 200 is on disk. While the disk is full every answer
is 200 (stored) or 503 `store_unavailable` with Retry-After, and /readyz says 503; once space is
freed, the server turns ready by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest
from helpers import eventually

# CI runs as root and sets this: there the test must run, and a failed mount fails it.
REQUIRE_ENV = "CBHUB_REQUIRE_ROOT_MOUNT"
# Small enough to fill in a moment, large enough for the schema and a few hundred deliveries.
DISK_SIZE = "4m"
SENDERS = 16
# Load from one address is what this test makes: the per-address rate limit is not under test.
UNLIMITED = {"CBHUB_INGEST_RATE_PER_IP": "0"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def small_disk(tmp_path: Path):
    """A directory on a tmpfs of DISK_SIZE: a file system that really fills. Request it before
    serve_process: fixtures are torn down in reverse, so the server is gone before the unmount."""

    def cannot(reason: str) -> None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so the full-disk test must run")
        pytest.skip(f"{reason}: the full-disk test mounts a tmpfs, which needs root")

    if os.geteuid() != 0:
        cannot("not root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        cannot("no mount or umount command")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        cannot(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        unmounted = subprocess.run(["umount", str(disk)], capture_output=True, text=True, timeout=30)
        if unmounted.returncode != 0:
            # Still in use (a process left running): detached all the same, so that no mount
            # outlives the test, and said.
            subprocess.run(["umount", "--lazy", str(disk)], timeout=30)
            raise AssertionError(f"umount {disk} failed: {unmounted.stderr.strip()}")


class Answers:
    """What the senders were answered: 200 (stored) or 503 store_unavailable with Retry-After.
    Anything else is collected as wrong."""

    def __init__(self) -> None:
        self.stored: dict[bytes, int] = {}  # body -> the delivery id its 200 named
        self.refused: list[bytes] = []
        self.wrong: list[str] = []

    async def post(
        self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        try:
            async with session.post(url, data=body, headers={**FORM, **(headers or {})}) as response:
                payload = await response.json()
                if response.status == 200:
                    self.stored[body] = payload["delivery_id"]
                elif (
                    response.status == 503
                    and payload["error"]["code"] == "store_unavailable"
                    and response.headers.get("Retry-After", "").isdigit()
                ):
                    self.refused.append(body)
                else:
                    self.wrong.append(f"{response.status} {dict(response.headers)} {payload}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.wrong.append(f"{type(exc).__name__}: {exc}")


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        return response.status


async def _until(condition: Callable[[], Any], timeout: float, what: str) -> float:
    """`eventually`, timed: the seconds `condition` (a bool, or an awaitable of one) took to hold."""
    started = time.monotonic()
    await eventually(condition, timeout, what)
    return time.monotonic() - started


class Readiness:
    """/readyz, watched beside the server's write-probe row (read through a read-only connection
    of its own). A server whose disk is full may turn ready only once a write really commits:
    the probe's one page can fit in what room the write-ahead log has left, where a batch of
    deliveries does not. So each turn to ready must come with a probe row newer than the one
    there before the last "not ready"; requests that write nothing commit too, and must not
    turn it ready."""

    def __init__(self, session: aiohttp.ClientSession, url: str, db: Path) -> None:
        self.session = session
        self.url = url
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        self.probe_before_not_ready: int | None = None
        self.turns = 0

    def probe_row(self) -> int:
        """When the write probe that committed last was made (0: never)."""
        (at,) = self.conn.execute("SELECT coalesce(max(at), 0) FROM write_probe").fetchone()
        return at

    async def ready(self) -> bool:
        probe = self.probe_row()
        ready = await _status(self.session, f"{self.url}/readyz") == 200
        if not ready:
            self.probe_before_not_ready = probe
        elif self.probe_before_not_ready is not None:
            assert self.probe_row() > self.probe_before_not_ready, "turned ready, and no write probe committed"
            self.turns += 1
            self.probe_before_not_ready = None
        return ready

    def close(self) -> None:
        self.conn.close()


def _fill_up(fill) -> None:
    """Write to the filler until the file system has no room left."""
    try:
        while True:
            fill.write(b"\0" * 65536)  # a partial write takes the last bytes; the next one fails
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc


async def test_a_full_disk_answers_503_never_200_and_recovers_by_itself(small_disk, serve_process):
    db = small_disk / "cbhub.db"
    server = serve_process("--port", "0", "--db", str(db), env=UNLIMITED)
    url = server.wait_until_serving()
    answers = Answers()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        async with session.post(f"{url}/v1/callbacks/batch", json={"count": 50, "ttl": 3600}) as response:
            assert response.status == 201
            tokens = [c["token"] for c in (await response.json())["callbacks"]]
        assert await _status(session, f"{url}/readyz") == 200
        # A message stored before the outage, which its sender retries during it.
        retry = (session, f"{url}/cb/{tokens[0]}", b"retried=1", {"webhook-id": "msg-1"})
        await answers.post(*retry)
        assert b"retried=1" in answers.stored

        stop = asyncio.Event()

        async def sender(worker: int) -> None:
            seq = 0
            while not stop.is_set():
                # Unique bodies, so that each stored row names the POST it came from.
                body = f"worker={worker}&seq={seq}&pad={'x' * random.randint(100, 3000)}".encode()
                seq += 1
                await answers.post(session, f"{url}/cb/{random.choice(tokens)}", body)

        # Closed before the server stops: an open connection would keep the WAL (and the mount).
        with contextlib.closing(Readiness(session, url, db)) as readiness:
            senders = [asyncio.create_task(sender(w)) for w in range(SENDERS)]
            try:
                await _until(lambda: len(answers.stored) >= 200, 20, "deliveries stored before the filling")
                stored_before = len(answers.stored)

                # The filler takes all the room left, in one go: were it filled bit by bit, the
                # growing write-ahead log would take the room first, and freeing the filler would
                # give none back. It takes whatever appears later too.
                filler = small_disk / "filler"
                with open(filler, "wb", buffering=0) as fill:
                    _fill_up(fill)

                    async def refusing() -> bool:
                        _fill_up(fill)
                        return len(answers.refused) >= 300 and not await readiness.ready()

                    await _until(refusing, 30, "commits failing on the full disk")

                    # A second of outage (four of the server's write probes) under the same load,
                    # and requests that write nothing: a token that does not exist, and a sender's
                    # retry of a stored message (200, "duplicate"). Those commit even now.
                    refused_before = len(answers.refused)
                    outage = time.monotonic()
                    while time.monotonic() - outage < 1.0:
                        _fill_up(fill)
                        async with session.post(f"{url}/cb/{'n' * 43}", data=b"noise", headers=FORM) as response:
                            assert response.status in (404, 503)
                        await answers.post(*retry)
                        await readiness.ready()
                    assert len(answers.refused) > refused_before + 100, "the senders were refused all along"
                    assert await _status(session, f"{url}/healthz") == 200  # alive, just not writable
                    # Reads go on.
                    async with session.get(f"{url}/v1/deliveries/{answers.stored[b'retried=1']}/body") as response:
                        assert await response.read() == b"retried=1"
            finally:
                stop.set()
                await asyncio.gather(*senders)
            assert not answers.wrong, answers.wrong[:5]
            stored_while_full, refused = len(answers.stored) - stored_before, len(answers.refused)
            ready_while_full = readiness.turns

            # Nobody writes now: only the server's own probe can find that the disk has room
            # again (and Readiness checks that one did).
            assert not await readiness.ready()
            filler.unlink()
            to_ready = await _until(readiness.ready, 2, "ready after the space was freed")

        # And it takes every callback again.
        before = len(answers.stored)
        for n in range(100):
            await answers.post(session, f"{url}/cb/{tokens[n % len(tokens)]}", f"after=1&n={n}".encode())
        assert not answers.wrong and len(answers.stored) == before + 100 and len(answers.refused) == refused

    server.proc.send_signal(signal.SIGTERM)
    code, log = await asyncio.to_thread(server.finish)
    assert code == 0, log
    assert "database or disk is full" in log, log[-3000:]  # the failures were the disk's

    # Read from the file itself, with the server gone.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows: dict[bytes, list[int]] = {}
        for delivery_id, body in conn.execute("SELECT id, body FROM deliveries"):
            rows.setdefault(bytes(body), []).append(delivery_id)
    finally:
        conn.close()
    # Every POST answered 200 is there, byte for byte, exactly once, under the id it was given.
    for body, delivery_id in answers.stored.items():
        assert rows.get(body) == [delivery_id], f"answered 200 as {delivery_id}, stored as {rows.get(body)}"
    # And nothing else: no POST answered 503 was kept (its sender's retry would store it twice).
    assert len(rows) == len(answers.stored)
    print(
        f"\nfull disk, {SENDERS} senders: {stored_before} answered 200 before the filling;"
        f" then {stored_while_full} answered 200 and {refused} answered 503;"
        f" ready {to_ready:.2f} s after the space was freed (and {ready_while_full} times while full, each"
        f" once a write probe committed)"
    )
