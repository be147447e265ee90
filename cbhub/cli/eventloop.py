"""Which event loop `cbhub serve` runs on: uvloop when it is installed (a default dependency
wherever it has wheels), else asyncio's own; `server.event_loop` chooses explicitly."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Callable

from cbhub.config import EVENT_LOOPS

__all__ = ["EVENT_LOOPS", "loop_factory", "resolve", "uvloop_installed"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """The loop `choice` ("auto", "asyncio", "uvloop") means on this machine."""
    if choice == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    return choice


def loop_factory(choice: str) -> LoopFactory:
    """A factory for asyncio.Runner; ImportError when uvloop is asked for and missing."""
    if resolve(choice) == "uvloop":
        import uvloop

        factory: LoopFactory = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop
