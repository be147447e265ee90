"""Slow senders (Slowloris) cannot starve real ones: server.read_timeout, against a real
`cbhub serve`.

A request must arrive whole, headers and body, within server.read_timeout of its first byte (a
new connection's: of its accept), however it trickles; what is served after it (long-polls,
websockets, event streams, idle keep-alive) is not cut.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import orjson


async def _metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def _mint(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(f"{url}/v1/callbacks", json={}) as response:
        assert response.status == 201, await response.text()
        return (await response.json())["token"]


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
