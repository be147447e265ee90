"""What a held connection keeps: a long-poll, a websocket or an event stream received whole
gives back its connection's read timer at once (server.read_timeout still bounds the next
request on that connection)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from helpers import eventually

from cbhub.app import create_app
from cbhub.config import load_config
from cbhub.http.deadline import DeadlineAppRunner, DeadlineRequestHandler
from cbhub.http.keys import HUB

READ_TIMEOUT = 0.5


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[DeadlineAppRunner, str]]:
    """cbhub behind the runner `cbhub serve` uses, with its read deadline."""
    app = create_app(load_config(env={}, overrides={"storage.path": str(tmp_path / "cbhub.db")}))
    runner = DeadlineAppRunner(app, read_timeout=READ_TIMEOUT, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield runner, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def protocols(runner: DeadlineAppRunner) -> list[DeadlineRequestHandler]:
    assert runner.server is not None
    return [p for p in runner.server.connections if isinstance(p, DeadlineRequestHandler)]


async def mint(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.post(f"{url}/v1/callbacks", json={}) as response:
        return str((await response.json())["token"])


def waiting(runner: DeadlineAppRunner, kind: str) -> bool:
    return runner.app[HUB].registry.count_by_kind().get(kind, 0) == 1


async def test_a_held_long_poll_gives_back_its_read_timer(served):
    runner, url = served
    token = await mint(url)
    _, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    writer.write(f"GET /v1/callbacks/{token}/wait?timeout=60 HTTP/1.1\r\nHost: cbhub\r\n\r\n".encode())
    await eventually(lambda: waiting(runner, "long_poll"))
    [held] = protocols(runner)
    assert held._read_timer is None
    writer.close()
    await writer.wait_closed()


async def test_a_websocket_gives_back_its_read_timer(served):
    runner, url = served
    token = await mint(url)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/v1/callbacks/{token}/ws") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
        [held] = protocols(runner)
        assert held._read_timer is None


async def test_the_next_request_on_a_connection_that_was_held_still_has_its_deadline(served):
    _, url = served
    token = await mint(url)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    writer.write(f"GET /v1/callbacks/{token}/wait?timeout=0.05 HTTP/1.1\r\nHost: cbhub\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 204")
    # Kept alive: half of a next request, the rest never sent, is cut at the read deadline.
    writer.write(b"POST /cb/never HTTP/1.1\r\nHost: cbhub\r\n")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    await writer.wait_closed()
