"""A blocking facade over `CbHub`, for scripts and notebooks.

The asynchronous client runs on an event loop in a thread of its own, so this works even where
the calling thread already runs a loop (a Jupyter notebook does).
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any, Awaitable, Iterator, Mapping, Sequence, TypeVar

from cbhub.client.hub import CbHub, HandleBase, Until
from cbhub.client.models import Callback, Delivery, DeliveryPage, GroupStatus

T = TypeVar("T")

# How long an interrupted call (Ctrl-C) may take to wind down its work on the loop.
CANCEL_GRACE = 2.0


class SyncCallbackHandle(HandleBase):
    """A callback as `SyncCbHub.create` returns it: its URL, and a blocking `wait`."""

    def __init__(self, hub: SyncCbHub, callback: Callback) -> None:
        self.hub = hub
        self.callback = callback

    def wait(self, timeout: float | None = None, after: int = 0, settle: float | None = None) -> Delivery:
        """The latest delivery; see `CbHub.wait`."""
        return self.hub.wait(self.token, timeout=timeout, after=after, settle=settle)

    def refresh(self) -> Callback:
        self.callback = self.hub.get(self.token)
        return self.callback

    def cancel(self) -> Callback:
        self.callback = self.hub.cancel(self.token)
        return self.callback


class SyncCbHub:
    """`CbHub` with blocking methods: `with SyncCbHub() as hub: hub.create().wait(60)`."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, **options: Any) -> None:
        self.hub = CbHub(base_url, api_key, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cbhub-client", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def base_url(self) -> str:
        return self.hub.base_url

    def __enter__(self) -> SyncCbHub:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self.hub.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _run(self, work: Awaitable[T]) -> T:
        if self._closed and not self._loop.is_running():
            getattr(work, "close", lambda: None)()  # never started: no "never awaited" warning
            raise RuntimeError("this SyncCbHub is closed")
        finished = threading.Event()

        async def tracked() -> T:
            try:
                return await work
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(tracked(), self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted here (Ctrl-C): stop the work on the loop too, and let it wind down.
            if not future.done():
                future.cancel()
                finished.wait(CANCEL_GRACE)
            raise

    def create(
        self,
        ttl: int | None = None,
        label: str | None = None,
        group: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        expect: Sequence[str] | int | None = None,
        contract: Mapping[str, Any] | None = None,
        response: Mapping[str, Any] | None = None,
        settle: float | None = None,
        expect_within: int | None = None,
        outcome: Mapping[str, Any] | None = None,
    ) -> SyncCallbackHandle:
        handle = self._run(
            self.hub.create(
                ttl,
                label,
                group,
                metadata,
                idempotency_key=idempotency_key,
                expect=expect,
                contract=contract,
                response=response,
                settle=settle,
                expect_within=expect_within,
                outcome=outcome,
            )
        )
        return SyncCallbackHandle(self, handle.callback)

    def create_batch(self, count: int, **fields: Any) -> list[SyncCallbackHandle]:
        """`count` callbacks alike; `fields` as for `create` (ttl, label, group, metadata, outcome)."""
        handles = self._run(self.hub.create_batch(count, **fields))
        return [SyncCallbackHandle(self, handle.callback) for handle in handles]

    def get(self, token: str) -> Callback:
        return self._run(self.hub.get(token))

    def cancel(self, token: str) -> Callback:
        return self._run(self.hub.cancel(token))

    def missing(self, token: str, page_size: int = 1000) -> list[str]:
        """Every id of the callback's expected set that has not arrived, in mint order."""

        async def read() -> list[str]:
            return [correlation_id async for correlation_id in self.hub.missing(token, page_size)]

        return self._run(read())

    def wait(self, token: str, timeout: float | None = None, after: int = 0, settle: float | None = None) -> Delivery:
        return self._run(self.hub.wait(token, timeout=timeout, after=after, settle=settle))

    def wait_any(self, callbacks: Sequence[HandleBase | Callback | str], timeout: float | None = None) -> list[Callback]:
        return self._run(self.hub.wait_any(callbacks, timeout))

    def wait_all(self, callbacks: Sequence[HandleBase | Callback | str], timeout: float | None = None) -> list[Callback]:
        return self._run(self.hub.wait_all(callbacks, timeout))

    def list_deliveries(self, **filters: Any) -> DeliveryPage:
        return self._run(self.hub.list_deliveries(**filters))

    def deliveries(self, **filters: Any) -> Iterator[Delivery]:
        """The endless stream of `CbHub.deliveries`, one blocking step at a time."""
        stream = self.hub.deliveries(**filters)
        try:
            while True:
                yield self._run(stream.__anext__())
        finally:
            if not self._closed:  # a generator dropped after close() has nothing left to stop
                self._run(stream.aclose())

    def body(self, delivery_id: int) -> bytes:
        return self._run(self.hub.body(delivery_id))

    def group(self, group: str) -> GroupStatus:
        return self._run(self.hub.group(group))

    def wait_group(self, group: str, timeout: float, until: Until = "all") -> GroupStatus | None:
        return self._run(self.hub.wait_group(group, timeout, until))
