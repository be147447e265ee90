"""Wake latency: waiters on distinct channels, then a POST to each, one at a time; the latency
of each is from the moment its POST is sent to the moment its waiter has the answer."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bench.payload import CONTENT_TYPE
from bench.targets import PubSub

KINDS = ("long_poll", "websocket")


async def wake_latencies(target: PubSub, kind: str, count: int, body: bytes, timeout: float = 60.0) -> list[float]:
    """Seconds from POST sent to answer received, for `count` waiters of `kind`, sorted."""
    async with asyncio.timeout(timeout):
        unlimited = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(connector=unlimited) as waiters,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as publisher,
        ):
            channels = await target.channels(publisher, count)
            arrived: list[float] = [0.0] * count
            events = [asyncio.Event() for _ in range(count)]
            base = target.server.url

            async def long_poll(i: int) -> None:
                async with waiters.get(base + target.wait_path(channels[i])) as response:
                    await response.read()
                arrived[i] = time.perf_counter()
                events[i].set()

            async def websocket(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
                async for message in ws:
                    if message.type is aiohttp.WSMsgType.TEXT and '"subscribed"' not in message.data[:40]:
                        arrived[i] = time.perf_counter()
                        events[i].set()
                        break
                await ws.close()

            if kind == "long_poll":
                tasks = [asyncio.create_task(long_poll(i)) for i in range(count)]
            else:
                sockets = await asyncio.gather(*(waiters.ws_connect(base + target.ws_path(c)) for c in channels))
                tasks = [asyncio.create_task(websocket(i, ws)) for i, ws in enumerate(sockets)]
            try:
                await target.until_held(publisher, kind, count, timeout=timeout / 2)
                latencies = []
                for i, channel in enumerate(channels):
                    sent = time.perf_counter()
                    async with publisher.post(
                        base + target.publish_path(channel), data=body, headers={"Content-Type": CONTENT_TYPE}
                    ) as response:
                        await response.read()
                        if response.status >= 300:
                            raise RuntimeError(f"{target.name}: publish answered {response.status}")
                    await events[i].wait()
                    latencies.append(arrived[i] - sent)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    return sorted(latencies)
