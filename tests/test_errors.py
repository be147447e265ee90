"""One error catalogue: every error cbhub raises on purpose has one status, one stable code and
one shape, over HTTP and over a websocket alike."""

from __future__ import annotations

import inspect

import pytest
from helpers import mint

from cbhub import errors
from cbhub.errors import CbhubError
from cbhub.http.keys import HUB

# The websocket test runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True

# A sample of each error, built as the code that raises it does.
SAMPLES: dict[type[CbhubError], CbhubError] = {
    errors.InvalidField: errors.InvalidField("ttl", "must be a whole number"),
    errors.InvalidParameter: errors.InvalidParameter("after", "must be a whole number"),
    errors.InvalidHeader: errors.InvalidHeader("Last-Event-ID", "must be a delivery id"),
    errors.UnknownField: errors.UnknownField("tll", frozenset({"ttl"})),
    errors.DeliveryRefused: errors.DeliveryRefused("a guard said no"),
    errors.AddressNotAllowed: errors.AddressNotAllowed("203.0.113.9 is not in allow_ips"),
    errors.SignatureInvalid: errors.SignatureInvalid("no signature header"),
    errors.CallbackNotFound: errors.CallbackNotFound("abcdefghijkl"),
    errors.SubscriptionNotFound: errors.SubscriptionNotFound("jobs"),
    errors.CallbackClosed: errors.CallbackClosed("expired"),
    errors.RateLimited: errors.RateLimited("too many refused requests", 0.2),
    errors.StoreUnavailable: errors.StoreUnavailable("disk I/O error"),
}


def every_error() -> list[CbhubError]:
    found = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, CbhubError)]
    return [SAMPLES[c] if c in SAMPLES else c() for c in found]


@pytest.mark.parametrize("error", every_error(), ids=lambda e: type(e).__name__)
def test_every_error_has_a_status_a_code_and_the_one_shape(error: CbhubError) -> None:
    assert 400 <= error.status <= 599
    body = error.to_json()
    assert list(body) == ["error"] and list(body["error"]) == ["code", "message"]
    assert body["error"]["code"] and body["error"]["message"]
    assert all(isinstance(value, str) for value in error.headers.values())


def test_a_code_always_means_the_same_status() -> None:
    statuses: dict[str, int] = {}
    for error in every_error():
        assert statuses.setdefault(error.code, error.status) == error.status, error.code


def test_what_a_client_is_told_keeps_secrets_and_details_out() -> None:
    # The store's reason is for the log; a token is shortened wherever it is said.
    unavailable = errors.StoreUnavailable("database or disk is full: /var/lib/cbhub/cbhub.db")
    assert "/var/lib" in str(unavailable) and "/var/lib" not in unavailable.to_json()["error"]["message"]
    assert str(errors.CallbackNotFound("a-long-secret-token")) == "a-long…"
    assert errors.RateLimited("slow down", 0.2).headers == {"Retry-After": "1"}


async def test_a_store_error_during_a_websocket_subscribe_is_an_error_frame_not_a_dropped_socket(client):
    callback = await mint(client)
    async with client.ws_connect("/v1/ws") as ws:
        # The store stops answering reads after the handshake.
        await client.app[HUB].store.close()
        await ws.send_json({"op": "subscribe", "id": "jobs", "tokens": [callback["token"]]})
        frame = await ws.receive_json(timeout=5)
        assert frame["type"] == "error" and frame["id"] == "jobs"
        assert frame["error"] == {"code": "store_unavailable", "message": "the store cannot commit right now; retry"}
        await ws.send_json({"op": "ping"})
        assert await ws.receive_json(timeout=5) == {"type": "pong"}
