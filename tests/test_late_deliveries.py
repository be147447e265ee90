"""Late callbacks: a result that comes after its callback closed is kept and flagged, not lost.

Marketing Cloud never retries a POST: a 410 to a result that comes a second after the callback
expired would lose it for good.
"""

from __future__ import annotations

import asyncio

import orjson
from helpers import assert_error, eventually, mint, post_callback, registry_size, start_watching
from helpers import read_event

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True


async def deliveries(client, query: str) -> list[dict]:
    response = await client.get(f"/v1/deliveries?{query}")
    assert response.status == 200, await response.text()
    return (await response.json())["deliveries"]


async def callback_now(client, token: str) -> dict:
    return await (await client.get(f"/v1/callbacks/{token}")).json()


async def test_a_result_after_expiry_is_stored_flagged_and_streamed_but_changes_nothing(client):
    callback = await mint(client, ttl=1, group="nightly")
    token = callback["token"]
    async with client.ws_connect("/v1/ws") as ws, client.get("/v1/events?group=nightly") as sse:
        await ws.send_json({"op": "subscribe", "id": "g", "group": "nightly"})
        assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": "g"}
        waiting = await start_watching(client, token)
        # The waiter hears "expired", once.
        expired = await asyncio.wait_for(waiting, 10)
        assert (await expired.json())["callback"]["status"] == "expired"
        assert await ws.receive_json(timeout=5) == {"type": "status", "id": "g", "token": token, "status": "expired"}
        assert (await read_event(sse))["event"] == "status"

        answer = await post_callback(client, callback, data={"RequestID": "r-1", "StatusCode": "OK"})
        assert answer == {"ok": True, "delivery_id": answer["delivery_id"], "duplicate": False, "late": True}

        # Every stream still open that covers it shows it, flagged.
        frame = await ws.receive_json(timeout=5)
        assert frame["type"] == "delivery" and frame["delivery"]["id"] == answer["delivery_id"]
        assert frame["delivery"]["late"] is True and frame["delivery"]["correlation_id"] == "r-1"
        event = await read_event(sse)
        assert event["event"] == "delivery" and orjson.loads(event["data"])["late"] is True

    # The callback stays expired, without a result; the late one is counted apart.
    now = await callback_now(client, token)
    assert (now["status"], now["result"], now["deliveries"], now["late_deliveries"]) == ("expired", None, 0, 1)
    group = await (await client.get("/v1/groups/nightly")).json()
    assert (group["expired"], group["received"]) == (1, 0)

    # The listing shows it under every filter.
    for query in (f"token={token}", "group=nightly", "correlation_id=r-1"):
        [listed] = await deliveries(client, query)
        assert listed["id"] == answer["delivery_id"] and listed["late"] is True

    # A wait on the callback is not answered with it: the callback said its last word.
    again = await client.get(f"/v1/callbacks/{token}/wait?timeout=5")
    assert again.status == 200
    assert (await again.json()) == {"callback": now, "deliveries": []}
    assert registry_size(client) == 0

    metrics = await (await client.get("/metrics")).text()
    assert 'cbhub_deliveries_total{outcome="late"} 1.0' in metrics


async def test_a_delivery_after_a_cancel_is_kept_with_the_result_unchanged(client):
    callback = await mint(client, group="batch")
    token = callback["token"]
    first = await post_callback(client, callback, json={"n": 1})
    assert first["late"] is False
    assert (await client.delete(f"/v1/callbacks/{token}")).status == 200

    message = {"webhook-id": "msg-2"}
    late = await post_callback(client, callback, json={"n": 2}, headers=message)
    assert late["late"] is True and late["duplicate"] is False
    # The sender's retry of the same message is stored once, as for any delivery.
    retry = await post_callback(client, callback, json={"n": 2}, headers=message)
    assert retry == {"ok": True, "delivery_id": late["delivery_id"], "duplicate": True, "late": True}

    now = await callback_now(client, token)
    assert now["status"] == "cancelled" and now["result"]["id"] == first["delivery_id"]
    assert (now["deliveries"], now["late_deliveries"]) == (1, 1)
    listed = await deliveries(client, f"token={token}")
    assert [(d["body"], d["late"]) for d in listed] == [({"n": 1}, False), ({"n": 2}, True)]


async def test_a_received_callback_past_its_expiry_keeps_later_deliveries_as_late(start_hub, make_config):
    client = await start_hub(make_config())
    callback = await mint(client, ttl=1)
    first = await post_callback(client, callback, json={"final": True})
    # Waiting for more on it answers when it closes.
    closed = await client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=10&after={first['delivery_id']}")
    assert (await closed.json())["deliveries"] == []

    late = await post_callback(client, callback, json={"final": "really"})
    assert late["late"] is True
    now = await callback_now(client, callback["token"])
    assert now["status"] == "received" and now["result"]["body"] == {"final": True}
    assert (now["deliveries"], now["late_deliveries"]) == (1, 1)


async def test_the_guards_apply_to_a_late_delivery(client):
    callback = await mint(client, allow_ips=["203.0.113.0/24"])
    await client.delete(f"/v1/callbacks/{callback['token']}")
    async with client.post(f"/cb/{callback['token']}", data=b"from elsewhere") as refused:
        await assert_error(refused, 403, "address_not_allowed")
    assert await deliveries(client, f"token={callback['token']}") == []


async def test_with_keep_late_off_a_closed_callback_answers_410(start_hub, make_config):
    client = await start_hub(make_config(**{"callbacks.keep_late": "false"}))
    callback = await mint(client)
    await client.delete(f"/v1/callbacks/{callback['token']}")
    async with client.post(f"/cb/{callback['token']}", data=b"late") as refused:
        await assert_error(refused, 410, "callback_cancelled")
    assert (await callback_now(client, callback["token"]))["late_deliveries"] == 0


async def test_a_per_token_event_stream_ends_when_its_callback_closes_and_is_not_reopened(client):
    callback = await mint(client)
    token = callback["token"]
    path = f"/v1/callbacks/{token}/events"
    async with client.get(path) as stream:
        assert stream.status == 200
        first = await post_callback(client, callback, json={"n": 1})
        event = await read_event(stream)
        assert event["event"] == "delivery" and event["id"] == str(first["delivery_id"])
        await eventually(lambda: registry_size(client) == 1)
        await client.delete(f"/v1/callbacks/{token}")
        event = await read_event(stream)
        assert event["event"] == "status"
        assert orjson.loads(event["data"]) == {"token": token, "status": "cancelled", "closed": True}
        assert await read_event(stream) is None

    # A late delivery is not for this stream: an EventSource reconnecting with the last id it
    # saw is told 204, so it stops reconnecting.
    await post_callback(client, callback, json={"n": 2})
    first_id = str(first["delivery_id"])  # status events carry no id: the last one seen
    reconnect = await client.get(path, headers={"Last-Event-ID": first_id})
    assert reconnect.status == 204
    # A first connection replays the deliveries, then says it is closed, and ends.
    async with client.get(path) as replay:
        event = await read_event(replay)
        assert event["event"] == "delivery" and event["id"] == first_id
        event = await read_event(replay)
        assert orjson.loads(event["data"])["closed"] is True
        assert await read_event(replay) is None


async def test_a_per_token_event_stream_of_a_closed_callback_without_deliveries_is_204(client):
    callback = await mint(client)
    await client.delete(f"/v1/callbacks/{callback['token']}")
    response = await client.get(f"/v1/callbacks/{callback['token']}/events")
    assert response.status == 204


async def test_a_per_token_event_stream_closes_when_a_received_callback_expires(client):
    callback = await mint(client, ttl=1)
    async with client.get(f"/v1/callbacks/{callback['token']}/events") as stream:
        await post_callback(client, callback, json={"done": True})
        assert (await read_event(stream))["event"] == "delivery"
        event = await read_event(stream)  # at the expiry, about a second after the mint
        assert orjson.loads(event["data"]) == {"token": callback["token"], "status": "received", "closed": True}
        assert await read_event(stream) is None
