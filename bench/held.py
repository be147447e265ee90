"""Held waiters: the server's resident memory while it holds many idle waiters.

The clients are bare sockets (a request written, nothing read), so that this process can hold
ten thousand of them cheaply; the server cannot tell them from real clients, but they come 200
at a time. The storm is the other case: real HTTP clients (aiohttp's, a connection each)
opening their long-polls all at once, as a fleet of workers restarting together does.
"""

from __future__ import annotations

import asyncio
import base64
import os

import aiohttp

from bench.procs import HOST
from bench.targets import PubSub

CONNECTING_AT_ONCE = 200
WARM_UP = 50
SETTLE = 1.0
STORM_WARM_UP = 20


def _request(target: PubSub, kind: str, channel: str) -> bytes:
    if kind == "long_poll":
        return f"GET {target.wait_path(channel)} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {target.ws_path(channel)} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def _open(target: PubSub, kind: str, channels: list[str]) -> list[asyncio.StreamWriter]:
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def one(channel: str) -> asyncio.StreamWriter:
        async with gate:
            reader, writer = await asyncio.open_connection(HOST, target.server.port)
            writer.write(_request(target, kind, channel))
            if kind == "websocket":
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 101"):
                    raise RuntimeError(f"{target.name}: websocket refused: {head[:80]!r}")
            return writer

    return await asyncio.gather(*(one(channel) for channel in channels))


async def _close(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for writer in writers), return_exceptions=True)


async def bytes_per_waiter(target: PubSub, kind: str, count: int, timeout: float = 120.0) -> float:
    """Growth of the server's RSS per idle waiter of `kind` while it holds `count` of them."""
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
        channels = await target.channels(session, count + WARM_UP)
        # A few first, so one-off costs (lazy imports, caches, pools) are not counted per waiter.
        warm = await _open(target, kind, channels[:WARM_UP])
        await target.until_held(session, kind, WARM_UP, timeout=30)
        await _close(warm)
        await asyncio.sleep(SETTLE)
        before = target.server.rss()
        writers = await _open(target, kind, channels[WARM_UP:])
        try:
            await target.until_held(session, kind, count, timeout=timeout / 2)
            await asyncio.sleep(SETTLE)
            after = target.server.rss()
        finally:
            await _close(writers)
    return (after - before) / count


async def _poll(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url) as response:
        await response.read()


async def _storm(target: PubSub, control: aiohttp.ClientSession, channels: list[str], timeout: float) -> int:
    """Open a long-poll on each channel at once, each from its own connection; the server's
    RSS once it holds them all. Every poll is cancelled (its connection closed) on return."""
    base = target.server.url
    # Those of an earlier storm may still be held (the bare baseline sleeps on after its
    # client is gone).
    already = await target.held(control, "long_poll")
    # No limit on connections: every request is sent at once, on a connection of its own.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as storm:
        polls = [asyncio.ensure_future(_poll(storm, base + target.wait_path(channel))) for channel in channels]
        try:
            await target.until_held(control, "long_poll", already + len(channels), timeout=timeout)
            await asyncio.sleep(SETTLE)
            return target.server.rss()
        finally:
            for poll in polls:
                poll.cancel()
            await asyncio.gather(*polls, return_exceptions=True)


async def storm_bytes_per_waiter(target: PubSub, count: int, timeout: float = 120.0) -> float:
    """Growth of the server's RSS per long-poll when `count` aiohttp clients open their
    long-polls at once, read once the server holds them all."""
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as control:
        channels = await target.channels(control, count + STORM_WARM_UP)
        # A few first, so one-off costs are not counted per waiter.
        await _storm(target, control, channels[:STORM_WARM_UP], timeout / 4)
        await asyncio.sleep(SETTLE)
        before = target.server.rss()
        after = await _storm(target, control, channels[STORM_WARM_UP:], timeout / 2)
    return (after - before) / count
