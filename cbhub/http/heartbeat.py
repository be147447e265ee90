"""One heartbeat for every websocket of the server, instead of a timer per socket.

aiohttp's own heartbeat (`WebSocketResponse(heartbeat=...)`) keeps a timer, its callback and a
hook on every received chunk per connection: about half a kilobyte for each idle websocket. Here
one timer ticks every half `realtime.heartbeat` for all of them, and each socket costs one entry
in a dict. The promise is aiohttp's: a socket not heard from for `realtime.heartbeat` seconds
is pinged, and one that leaves that ping unanswered for half as long again is dropped, so dead
peers do not hold subscriptions.

"Heard from" is any frame the socket's reader takes, pongs included (the websocket route tells
`heard`). The ping is written straight to the transport: a control frame of two bytes, written
between two whole frames of aiohttp's writer (which writes each frame in one go, with no await
inside), and never compressed (RFC 6455, section 5.5).
"""

from __future__ import annotations

import asyncio

# FIN + PING opcode, no payload, unmasked as a server's frames are.
PING_FRAME = b"\x89\x00"
# Ticks (half heartbeats) of silence after which a socket is pinged, and dropped.
PING_AFTER = 2
DROP_AFTER = 3


class Heartbeat:
    """Pings idle websockets and drops the dead ones, with one timer for all of them."""

    __slots__ = ("_half", "_silent", "_timer")

    def __init__(self, interval: float) -> None:
        self._half = interval / 2
        # Each watched socket's transport -> the ticks since it was last heard from.
        self._silent: dict[asyncio.Transport, int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, transport: asyncio.Transport) -> None:
        self._silent[transport] = 0
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._half, self._tick)

    def heard(self, transport: asyncio.Transport) -> None:
        if transport in self._silent:
            self._silent[transport] = 0

    def forget(self, transport: asyncio.Transport) -> None:
        self._silent.pop(transport, None)

    def __len__(self) -> int:
        return len(self._silent)

    def _tick(self) -> None:
        silent = self._silent
        # A copy of the keys: a socket's handler may forget it while this runs.
        for transport in list(silent):
            ticks = silent[transport] + 1
            silent[transport] = ticks
            if transport.is_closing():
                continue
            if ticks == PING_AFTER:
                transport.write(PING_FRAME)
            elif ticks >= DROP_AFTER:
                # Its ping went unanswered: as aiohttp does, no closing handshake with a peer
                # that does not answer (its handler sees the connection lost, code 1006).
                transport.abort()
        self._timer = asyncio.get_running_loop().call_later(self._half, self._tick) if silent else None
