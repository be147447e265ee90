"""Slow senders (Slowloris) cannot starve real ones: server.read_timeout, against a real
`cbhub serve`.

A request must arrive whole, headers and body, within server.read_timeout of its first byte (a
new connection's: of its accept), however it trickles; what is served after it (long-polls,
websockets, event streams, idle keep-alive) is not cut.
"""

from __future__ import annotations

import asyncio
import re
import resource
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from helpers import eventually

SLOW_SENDERS = 3000
TRICKLERS = 100  # of them, sending one more header line every second
SILENT = 100  # of them, sending nothing at all after connecting
# How early an event loop timer may fire: libuv (uvloop) rounds its deadlines to milliseconds.
TIMER_TICK = 0.002
# Descriptors each process needs beyond the slow connections (stdio, the database, the loop,
# pipes, aiohttp's sessions).
HEADROOM = 200


@dataclass
class SlowSender:
    """One raw connection that never completes its request."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    connecting_at: float  # before the connect: the server's deadline cannot be earlier
    trickles: bool
    lines_sent: int = 0
    closed_at: float | None = None
    answer: bytes = b""
    trickling: asyncio.Task | None = field(default=None, repr=False)


def _allow_open_files(needed: int) -> None:
    """This process opens SLOW_SENDERS sockets: raise the soft limit for them, within the hard
    limit. (The server raises its own limit, which this test also proves.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"this test needs {needed} open files; the hard limit is {hard} (raise ulimit -Hn)")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _start_with_soft_limit(serve_process: Any, soft_limit: int, *args: str, env: dict[str, str]) -> Any:
    """Start `cbhub serve` as a shell would leave it: with a soft limit of open files far below
    what it will need, so that it must raise its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft_limit, hard))
    try:
        return serve_process(*args, env=env)  # the child inherits the lowered limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def _until_metric(
    session: aiohttp.ClientSession, url: str, name: str, holds: Any, timeout: float = 30.0
) -> float:
    """The metric's value once `holds(value)`; fails if it does not within `timeout`."""
    seen: list[float] = []

    async def held() -> bool:
        seen.append(await _metric(session, url, name))
        return bool(holds(seen[-1]))

    await eventually(held, timeout, f"{name} reaching the value the test expects")
    return seen[-1]


async def _mint(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(f"{url}/v1/callbacks", json={}) as response:
        assert response.status == 201, await response.text()
        return (await response.json())["token"]


async def _open_slow_sender(host: str, port: int, index: int) -> SlowSender:
    loop = asyncio.get_running_loop()
    connecting_at = loop.time()
    reader, writer = await asyncio.open_connection(host, port)
    sender = SlowSender(reader, writer, connecting_at, trickles=index < TRICKLERS)
    if index >= SLOW_SENDERS - SILENT:
        return sender
    # Half of a request's headers: the rest never comes.
    writer.write(b"POST /cb/not-yet HTTP/1.1\r\nHost: cbhub\r\nContent-Type: application/x-www-form-urlencoded\r\n")
    if sender.trickles:
        sender.trickling = asyncio.create_task(_trickle(sender))
    return sender


async def _trickle(sender: SlowSender) -> None:
    """One header line every second, each of which an idle timer would take as progress."""
    try:
        while True:
            await asyncio.sleep(1)  # the sender's pace, not a wait for a condition
            sender.writer.write(b"X-Trickle-%d: more\r\n" % sender.lines_sent)
            await sender.writer.drain()
            sender.lines_sent += 1
    except ConnectionError:
        return  # the server closed the connection


async def _until_closed(sender: SlowSender) -> None:
    """Read until the server closes the connection; note when."""
    try:
        sender.answer = await sender.reader.read()
    except ConnectionError:
        pass
    sender.closed_at = asyncio.get_running_loop().time()
    if sender.trickling is not None:
        sender.trickling.cancel()
    sender.writer.close()


@pytest.mark.timeout(120)
async def test_3000_slow_senders_hold_nothing_past_the_read_timeout_and_a_real_callback_gets_200(
    serve_process,
):
    read_timeout = 4.0
    _allow_open_files(SLOW_SENDERS + HEADROOM)
    server = _start_with_soft_limit(
        serve_process, 1024, "--port", "0", env={"CBHUB_SERVER_READ_TIMEOUT": str(read_timeout)}
    )
    url = await asyncio.to_thread(server.wait_until_serving)
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()
    assert any("open files: up to" in line and "raised from 1024" in line for line in server.log_lines)
    loop = asyncio.get_running_loop()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        token = await _mint(session, url)
        fds_before = await _metric(session, url, "process_open_fds")

        started = loop.time()
        senders = await asyncio.gather(*(_open_slow_sender(host, int(port), i) for i in range(SLOW_SENDERS)))
        opened = loop.time() - started
        closing = [asyncio.create_task(_until_closed(sender)) for sender in senders]
        # Connected is not yet accepted: wait until the server holds a descriptor for each.
        fds_held = await _until_metric(
            session, url, "process_open_fds", lambda fds: fds >= fds_before + SLOW_SENDERS, read_timeout
        )

        # A real sender, meanwhile: on a fresh connection, as a third party's first call is.
        posted_at = loop.time()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as sender_session:
            async with sender_session.post(f"{url}/cb/{token}", data={"RequestID": "real"}) as response:
                assert response.status == 200, await response.text()
        answered_at = loop.time()

        # Every slow connection is closed by the server, none held past its deadline.
        await asyncio.wait_for(asyncio.gather(*closing), read_timeout + 60)
        all_closed = loop.time() - started
        # The server lets go of their descriptors (the sockets close a moment after the FIN).
        fds_after = await _until_metric(session, url, "process_open_fds", lambda fds: fds < fds_before + 50)
        timeouts = await _metric(session, url, "cbhub_read_timeouts_total")
        async with session.get(f"{url}/v1/callbacks/{token}") as response:
            callback = await response.json()

    ages = [s.closed_at - s.connecting_at for s in senders]
    trickled = [s.lines_sent for s in senders if s.trickles]
    print(
        f"\n{SLOW_SENDERS} slow connections opened in {opened:.2f} s; the server held {fds_held:.0f} descriptors "
        f"(from {fds_before:.0f}); the real callback was answered 200 in {answered_at - posted_at:.3f} s; "
        f"the slow ones were closed {min(ages):.2f} to {max(ages):.2f} s after connecting "
        f"(tricklers sent {min(trickled)} to {max(trickled)} lines meanwhile), all gone {all_closed:.2f} s "
        f"after the first connect; descriptors after: {fds_after:.0f}"
    )
    assert all(s.closed_at > answered_at for s in senders), "the real callback came while all were held"
    assert callback["deliveries"] == 1
    # Not before the deadline, and trickling did not move it: an idle timer would never fire
    # for a sender that sends a line every second. uvloop's timers tick in whole milliseconds,
    # so one may fire up to a millisecond before the exact deadline.
    assert min(ages) >= read_timeout - TIMER_TICK
    assert max(ages) < read_timeout + 10
    assert min(trickled) >= 2
    assert not any(s.answer for s in senders), "a slow sender is closed without an answer"
    assert timeouts == SLOW_SENDERS


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    return status, await asyncio.wait_for(reader.readexactly(length), 10)


def _post_head(token: str, length: int) -> bytes:
    return (
        f"POST /cb/{token} HTTP/1.1\r\nHost: cbhub\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_a_body_trickled_past_the_read_timeout_is_cut_and_stores_nothing(serve_process):
    read_timeout = 2.0
    server = serve_process("--port", "0", env={"CBHUB_SERVER_READ_TIMEOUT": str(read_timeout)})
    url = await asyncio.to_thread(server.wait_until_serving)
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()
    loop = asyncio.get_running_loop()
    body = orjson.dumps({"RequestID": "slow", "pad": "x" * 40})

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        token = await _mint(session, url)

        # Within the deadline, in pieces with pauses, a request is served as any other.
        reader, writer = await asyncio.open_connection(host, int(port))
        head = _post_head(token, len(body))
        for piece in (head[:20], head[20:], body[:10], body[10:]):
            writer.write(piece)
            await asyncio.sleep(read_timeout / 8)  # the sender's pace: slow, but within the deadline
        status, answer = await _read_response(reader)
        assert status == 200, answer

        # On the same connection, kept alive: the whole head at once, then the body a byte at a
        # time. Cut at the deadline from this request's first byte, however steadily bytes come.
        first_byte_at = loop.time()
        writer.write(_post_head(token, len(body)))
        sent = 0

        async def trickle() -> None:
            nonlocal sent
            while True:
                writer.write(body[sent : sent + 1])
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.25)  # the sender's pace

        trickling = asyncio.create_task(trickle())
        try:
            answer = await asyncio.wait_for(reader.read(), read_timeout + 10)
        except ConnectionError:
            answer = b""
        cut_after = loop.time() - first_byte_at
        trickling.cancel()
        writer.close()
        assert answer == b"", "no answer: the sender is not listening for one"
        assert read_timeout <= cut_after < read_timeout + 5
        assert 0 < sent < len(body)

        async with session.get(f"{url}/v1/callbacks/{token}") as response:
            assert (await response.json())["deliveries"] == 1  # the first request's only
        assert await _metric(session, url, "cbhub_read_timeouts_total") == 1


async def test_long_polls_websockets_event_streams_and_idle_keep_alive_outlast_the_read_timeout(serve_process):
    read_timeout = 1.5
    server = serve_process("--port", "0", env={"CBHUB_SERVER_READ_TIMEOUT": str(read_timeout)})
    url = await asyncio.to_thread(server.wait_until_serving)
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()
    loop = asyncio.get_running_loop()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        token = await _mint(session, url)
        ws = await session.ws_connect(f"{url}/v1/callbacks/{token}/ws")
        assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": token}
        stream = await session.get(f"{url}/v1/callbacks/{token}/events")
        assert await stream.content.readuntil(b"\n\n") == b": subscribed\n\n"
        # A keep-alive connection that served one request, then idles.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: cbhub\r\n\r\n")
        assert (await _read_response(reader))[0] == 200

        # A long-poll held past the deadline three times over answers when its own time is up.
        waited_from = loop.time()
        async with session.get(f"{url}/v1/callbacks/{token}/wait?timeout={3 * read_timeout}") as response:
            assert response.status == 204
        assert loop.time() - waited_from >= 3 * read_timeout

        # Meanwhile nothing was cut: the websocket and the event stream still deliver...
        async with session.post(f"{url}/cb/{token}", json={"RequestID": "late"}) as response:
            assert response.status == 200
        frame = await ws.receive_json(timeout=5)
        assert frame["type"] == "delivery" and frame["delivery"]["correlation_id"] == "late"
        event = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)
        assert b"event: delivery" in event and b'"correlation_id":"late"' in event
        # ...and the idle keep-alive connection takes its next request.
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: cbhub\r\n\r\n")
        assert (await _read_response(reader))[0] == 200
        writer.close()
        stream.close()
        await ws.close()
        assert await _metric(session, url, "cbhub_read_timeouts_total") == 0
