"""A spinner with the elapsed time, for long waits on a terminal; silent anywhere else."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import TextIO

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
ASCII_FRAMES = "|/-\\"
INTERVAL = 0.1


def elapsed(seconds: float) -> str:
    """Seconds as a person reads them: 7s, 2m05s, 1h02m03s."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Spinner:
    """`async with Spinner("waiting for X", sys.stderr):` draws while the block runs, and erases
    itself at the end. Does nothing unless `stream` is a terminal: logs and pipes stay clean."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.enabled = stream.isatty()
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self.frames = FRAMES if encoding == "utf8" else ASCII_FRAMES
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Spinner:
        if self.enabled:
            self._task = asyncio.create_task(self._draw())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self.stream.write("\r\033[K")  # erase the line, so what follows starts clean
        self.stream.flush()

    async def _draw(self) -> None:
        started = time.monotonic()
        frame = 0
        while True:
            spent = elapsed(time.monotonic() - started)
            self.stream.write(f"\r{self.frames[frame % len(self.frames)]} {self.label} {spent}\033[K")
            self.stream.flush()
            frame += 1
            await asyncio.sleep(INTERVAL)
