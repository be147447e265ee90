"""The cbhub client: mint callback URLs and await what arrives on them.

    async with CbHub() as hub:                      # $CBHUB_URL, $CBHUB_API_KEY
        cb = await hub.create(label="upsert", ttl=3600)
        hand_out(cb.url)
        delivery = await cb.wait(timeout=600)       # or Expired, Cancelled, TimeoutError

It needs only aiohttp and orjson, not the server's dependencies.
"""

from cbhub.client.errors import (
    CallbackClosed,
    Cancelled,
    CbHubError,
    Expired,
    InvalidRequest,
    NotFound,
    NoWebSocket,
    Unauthorized,
    Unavailable,
    Unreachable,
)
from cbhub.client.hub import CallbackHandle, CbHub
from cbhub.client.models import (
    Callback,
    Delivery,
    DeliveryError,
    DeliveryPage,
    Expected,
    GroupError,
    GroupStatus,
    TimerEvent,
)
from cbhub.client.streaming import Auto, Backoff, LongPoll, Transport, WebSocket
from cbhub.client.sync import SyncCallbackHandle, SyncCbHub

__all__ = [
    "Auto",
    "Backoff",
    "Callback",
    "CallbackClosed",
    "CallbackHandle",
    "Cancelled",
    "CbHub",
    "CbHubError",
    "Delivery",
    "DeliveryError",
    "DeliveryPage",
    "Expected",
    "Expired",
    "GroupError",
    "GroupStatus",
    "InvalidRequest",
    "LongPoll",
    "NoWebSocket",
    "NotFound",
    "SyncCallbackHandle",
    "SyncCbHub",
    "TimerEvent",
    "Transport",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "WebSocket",
]
