"""The pub/sub servers the waiter benchmarks talk to (cbhub, nchan, and the bare aiohttp
baseline, which holds waiters on cbhub's paths): their URLs, how channels are made, and how
many waiters each says it holds."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.procs import Server

MINT_BATCH = 1000
WAIT_SECONDS = 300  # long-polls outlive any measurement; cbhub's callbacks.max_wait


@dataclass(frozen=True)
class PubSub:
    name: str
    server: Server

    @property
    def is_cbhub(self) -> bool:
        return self.name == "cbhub"

    @property
    def is_nchan(self) -> bool:
        return self.name == "nchan"

    def wait_path(self, channel: str) -> str:
        return f"/sub/{channel}" if self.is_nchan else f"/v1/callbacks/{channel}/wait?timeout={WAIT_SECONDS}"

    def ws_path(self, channel: str) -> str:
        return f"/sub/{channel}" if self.is_nchan else f"/v1/callbacks/{channel}/ws"

    def publish_path(self, channel: str) -> str:
        return f"/pub/{channel}" if self.is_nchan else f"/cb/{channel}"

    async def channels(self, session: aiohttp.ClientSession, count: int) -> list[str]:
        """`count` fresh channels: minted callbacks for cbhub, new ids for the others."""
        if not self.is_cbhub:
            return [secrets.token_hex(16) for _ in range(count)]
        return await mint(session, self.server.url, count)

    async def held(self, session: aiohttp.ClientSession, kind: str) -> int:
        """How many waiters of `kind` ("long_poll", "websocket") the server says it holds."""
        if not self.is_nchan:
            async with session.get(f"{self.server.url}/metrics") as response:
                text = await response.text()
            match = re.search(rf'^cbhub_waiters\{{kind="{kind}"\}} (\S+)$', text, re.M)
        else:
            async with session.get(f"{self.server.url}/status") as response:
                text = await response.text()
            match = re.search(r"^subscribers: (\d+)", text, re.M)
        return int(float(match.group(1))) if match else 0

    async def until_held(self, session: aiohttp.ClientSession, kind: str, count: int, timeout: float) -> None:
        """Return once the server holds `count` waiters; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (held := await self.held(session, kind)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} holds {held} of {count} {kind} waiters after {timeout:.0f} s")
            await asyncio.sleep(0.05)


async def mint(
    session: aiohttp.ClientSession, base_url: str, count: int, ttl: int = 7200, fields: dict[str, Any] | None = None
) -> list[str]:
    """Mint `count` callbacks on a cbhub (with the mint `fields` given, such as a contract);
    their tokens."""
    tokens: list[str] = []
    while len(tokens) < count:
        batch = min(MINT_BATCH, count - len(tokens))
        spec = {**(fields or {}), "count": batch, "ttl": ttl}
        async with session.post(f"{base_url}/v1/callbacks/batch", json=spec) as response:
            if response.status != 201:
                raise RuntimeError(f"minting failed: {response.status} {await response.text()}")
            tokens.extend(callback["token"] for callback in (await response.json())["callbacks"])
    return tokens
