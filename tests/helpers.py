"""What the tests share besides fixtures: acting as a client or a third party, waiting for a
condition (never for a time), and running `cbhub serve` as a user does."""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp.test_utils import TestClient

from bench.payload import MARKETING_CLOUD_FIELDS  # noqa: F401  (the tests post it, as the benchmark does)
from cbhub.domain.bodies import parse_body
from cbhub.domain.model import Event, Incoming, MintSpec, now_ms
from cbhub.http.keys import HUB


def registry_size(client: TestClient) -> int:
    return len(client.app[HUB].registry)


async def mint(client: TestClient, status: int = 201, **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/callbacks", json=fields)
    assert response.status == status, await response.text()
    return await response.json()


async def post_callback(client: TestClient, callback: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """POST to the callback's public URL as a third party would, expecting 200."""
    async with client.post(f"/cb/{callback['token']}", **kwargs) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def start_waiting(client: TestClient, path: str, session: Any = None) -> asyncio.Task:
    """A GET that waits (a long-poll on a callback, a group or deliveries), registered before
    this returns: whatever wakes it shows, and nothing before it can be missed."""
    before = registry_size(client)
    task = asyncio.create_task((session or client).get(path))
    await eventually(lambda: task.done() or registry_size(client) > before)
    assert not task.done(), f"{path} was answered at once instead of waiting"
    return task


async def start_watching(client: TestClient, token: str, session: Any = None) -> asyncio.Task:
    """A long-poll on the callback, registered before this returns: whatever wakes it shows."""
    return await start_waiting(client, f"/v1/callbacks/{token}/wait?timeout=30", session)


async def woken_with(task: asyncio.Task) -> list[dict[str, Any]]:
    """The deliveries that woke a watching long-poll."""
    response = await asyncio.wait_for(task, 10)
    assert response.status == 200, await response.text()
    return (await response.json())["deliveries"]


async def assert_error(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == code and error["message"], error
    return error


# Waiting for a condition, never for a fixed time: a busy machine only makes these slower.
# The timeouts are generous on purpose; they only bound how long a failing test takes.


# How often `eventually` asks again. The wait is for the condition, however long it takes up to
# the timeout; this is only the pause between two looks.
POLL_SECONDS = 0.01


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = "the condition"
) -> None:
    """Until `predicate()` holds; it may be a coroutine function (asking a server over HTTP)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        held = predicate()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert loop.time() < deadline, f"{what} did not hold within {timeout} s"
        await asyncio.sleep(POLL_SECONDS)


def eventually_sync(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "the condition") -> None:
    """`eventually` for a test without an event loop: blocks this thread until `predicate()` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        time.sleep(POLL_SECONDS)


WAITERS_LINE = re.compile(r'^cbhub_waiters\{kind="(\w+)"\} (\S+)$', re.M)


async def waiters(url: str) -> dict[str, float]:
    """The server's `cbhub_waiters` gauge by kind, as an operator reads it on /metrics: how to
    see who waits on a server in another process."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    return {kind: float(n) for kind, n in WAITERS_LINE.findall(text)}


def waiters_sync(url: str) -> dict[str, float]:
    """`waiters` for a test without an event loop."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {kind: float(n) for kind, n in WAITERS_LINE.findall(text)}


async def has_waiters(url: str, **count: int) -> bool:
    """Whether the server at `url` holds these many waiters of each kind (`long_poll=1`)."""
    found = await waiters(url)
    return all(found.get(kind) == n for kind, n in count.items())


async def post_acknowledged(session: Any, url: str, body: str | bytes, acknowledged: dict) -> bool:
    """POST a form body to a callback URL as a sender under load would; a 200 records the
    delivery id under the body. False when the server could not be reached: that POST was
    never acknowledged, so nothing may be expected of it."""
    import aiohttp

    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
            if r.status == 200:
                acknowledged[body] = (await r.json())["delivery_id"]
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False
    return True


class ServerProcess:
    """`cbhub serve` as a real subprocess, as a user runs it."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        import os
        import subprocess
        import sys

        self.log_lines: list[str] = []
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CBHUB_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cbhub", "serve", *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = ""
        self._partial = ""
        self._drain: Any = None

    def wait_until_serving(self, timeout: float = 60.0) -> str:
        """Read the log until the listening line; the URL it names."""
        import os
        import re
        import selectors

        assert self.proc.stderr is not None
        # Read the descriptor, not the file object: bytes a file object buffered past the
        # listening line would never reach communicate() in finish().
        fd = self.proc.stderr.fileno()
        selector = selectors.DefaultSelector()
        selector.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.1):
                continue
            chunk = os.read(fd, 65536).decode(errors="replace")
            if not chunk:
                break
            self._partial += chunk
            *lines, self._partial = self._partial.split("\n")
            self.log_lines.extend(line + "\n" for line in lines)
            for line in lines:
                match = re.search(r"serving on (https?://\S+)", line)
                if match:
                    self.url = match.group(1)
                    # From now on a thread reads the log: a server under load writes more
                    # access log than a pipe holds, and would block on a full pipe.
                    self.keep_reading()
                    return self.url
        raise AssertionError("server did not start:\n" + "".join(self.log_lines) + self._partial)

    def keep_reading(self) -> None:
        """Go on reading the log in the background: a server under load writes more access log
        than a pipe holds, and would block on a full pipe."""
        if self._drain is not None:
            return
        import os
        import threading

        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()

        def drain() -> None:
            while chunk := os.read(fd, 65536):
                self._partial += chunk.decode(errors="replace")

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()

    def log_so_far(self) -> str:
        """Everything logged until now, without waiting for the exit (once `keep_reading` runs)."""
        return "".join(self.log_lines) + self._partial

    def finish(self, timeout: float = 15.0) -> tuple[int, str]:
        """Wait for exit; the exit code and everything logged."""
        if self._drain is not None:
            self.proc.wait(timeout=timeout)
            self._drain.join(timeout)
            self.proc.stderr.close()
            return self.proc.returncode, "".join(self.log_lines) + self._partial
        _, rest = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.log_lines) + self._partial + (rest or "")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self._drain is not None:
            self.proc.wait()
            self._drain.join(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
        else:
            self.proc.communicate()  # reaps the process and closes its pipe


async def terminate_listeners(admin: Any, expected: int) -> int:
    """Terminate, from the database side, the listening connections of cbhub instances on
    admin's database, once all `expected` of them are connected; how many were terminated."""
    listeners = (
        "FROM pg_stat_activity WHERE application_name = 'cbhub listener' AND datname = current_database()"
    )

    async def all_connected() -> bool:
        return await admin.fetchval(f"SELECT count(*) {listeners}") >= expected

    await eventually(all_connected, what=f"{expected} listening connections")
    return await admin.fetchval(f"SELECT count(pg_terminate_backend(pid)) {listeners}")


# Server-Sent Events


async def read_event(response: Any) -> dict[str, str] | None:
    """The next event's fields, comments skipped; None when the stream ends."""
    fields: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(response.content.readline(), 5)).decode()
        if not line:
            return None
        line = line.rstrip("\n")
        if not line:
            if fields:
                return fields
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


# The store, without HTTP

HOUR = 3600


def spec(ttl: int = HOUR, label: str | None = None, group: str | None = None, **metadata: Any) -> MintSpec:
    return MintSpec(ttl=ttl, label=label, group=group, metadata=metadata)


def written(events: list[Event]) -> list[Event]:
    """The events of deliveries and closings, without creations."""
    return [event for event in events if event.kind != "created"]


def incoming(
    token: str,
    raw: bytes = b"a=1",
    content_type: str | None = "application/x-www-form-urlencoded",
    dedupe_key: str | None = None,
    correlation_id: str | None = None,
    query_string: str = "",
    received_at: int | None = None,
) -> Incoming:
    return Incoming(
        token=token,
        received_at=now_ms() if received_at is None else received_at,
        method="POST",
        content_type=content_type,
        remote_addr="127.0.0.1",
        headers={"Content-Type": content_type or "", "X-Trace": "t-1"},
        query_string=query_string,
        raw=raw,
        correlation_id=correlation_id,
        parsed=parse_body(raw, content_type),
        dedupe_key=dedupe_key,
    )
