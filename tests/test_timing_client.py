"""Timing through the Python client and the command line: waits with a settle window, the
timer events in the client's stream, and `cbhub wait --settle`."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from helpers import eventually, post_callback, registry_size
from test_cli_client import cbhub

from cbhub.client import CbHub, Delivery, TimerEvent

ALL_BACKENDS = True


def url_of(client) -> str:
    return f"http://{client.host}:{client.port}"


async def test_wait_with_settle_returns_the_latest_delivery_once_the_provider_stopped_sending(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(ttl=600)
        waiting = asyncio.create_task(cb.wait(timeout=30, settle=1))
        await eventually(lambda: registry_size(client) == 1, what="the wait to be registered")
        await post_callback(client, {"token": cb.token}, json={"n": 1})
        second = await post_callback(client, {"token": cb.token}, json={"n": 2})
        answered_before_second = waiting.done()
        delivery = await asyncio.wait_for(waiting, 20)
        if not answered_before_second:
            assert (delivery.id, delivery.body) == (second["delivery_id"], {"n": 2})


async def test_a_callback_minted_with_settle_and_expect_within_shows_them(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(ttl=600, settle=0.3, expect_within=1)
        assert (cb.callback.settle, cb.callback.expect_within) == (0.3, 1)
        assert (cb.callback.settled_at, cb.callback.overdue) == (None, False)
        delivered = await post_callback(client, {"token": cb.token}, json={"n": 1})
        # A plain wait uses the callback's window.
        assert (await cb.wait(timeout=20)).id == delivered["delivery_id"]

        async def settled() -> bool:
            return (await cb.refresh()).settled_at is not None

        await eventually(settled, what="settled_at")
        assert cb.callback.settled_at is not None and cb.callback.settled_at >= cb.callback.result.received_at
        assert cb.callback.overdue is False  # received before it was due


async def test_events_streams_deliveries_then_the_settled_and_overdue_events(client):
    async with CbHub(url_of(client)) as hub:
        late = await hub.create(ttl=60, group="g", expect_within=2)
        settling = await hub.create(ttl=60, group="g", settle=0.3)
        seen: list[Delivery | TimerEvent] = []

        async def follow() -> None:
            async for item in hub.events(group="g"):
                seen.append(item)
                if len([i for i in seen if isinstance(i, TimerEvent)]) == 2:
                    return

        following = asyncio.create_task(follow())
        await eventually(lambda: registry_size(client) == 1, what="the subscription")
        assert not (await late.refresh()).overdue, "subscribing took longer than expect_within"
        delivered = await post_callback(client, {"token": settling.token}, json={"n": 1})
        await asyncio.wait_for(following, 20)
        timers = {item.kind: item for item in seen if isinstance(item, TimerEvent)}
        assert timers["overdue"].token == late.token
        assert timers["settled"].token == settling.token
        assert timers["settled"].delivery_id == delivered["delivery_id"]
        assert timers["settled"].settled_at is not None
        assert [i.id for i in seen if isinstance(i, Delivery)] == [delivered["delivery_id"]]
        assert (await late.refresh()).overdue is True
        # The delivery stream alone is not told of timers.
        async for item in hub.deliveries(group="g"):
            assert isinstance(item, Delivery) and item.id == delivered["delivery_id"]
            break


async def test_cbhub_wait_with_settle_prints_the_final_body(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(ttl=600)
    await post_callback(client, {"token": cb.token}, json={"n": 1})
    second = await post_callback(client, {"token": cb.token}, json={"n": 2})
    ran = await cbhub(client, "wait", cb.token, "--settle", "0.3", "--timeout", "20")
    assert ran.code == 0, ran.err
    assert orjson.loads(ran.out) == {"n": 2}
    assert second["delivery_id"]
    ran = await cbhub(client, "wait", cb.token, "--settle", "301", "--timeout", "5")
    assert ran.code != 0 and "settle" in ran.err
    ran = await cbhub(client, "new", "--settle", "2", "--expect-within", "5", "--ttl", "60", "--json")
    assert ran.code == 0, ran.err
    minted = orjson.loads(ran.out)
    assert (minted["settle"], minted["expect_within"]) == (2, 5)


async def test_the_enrichment_example_with_settle_shows_awaiting_then_the_final_latest_result(client, aiohttp_server):
    from test_seed_flows import FakeEnrichmentProvider, load_example

    example = load_example("enrichment")
    provider = FakeEnrichmentProvider()
    provider_url = f"http://127.0.0.1:{(await aiohttp_server(provider.app)).port}/enrich"
    async with CbHub(url_of(client)) as hub, aiohttp.ClientSession() as session:
        states = example.enrich(hub, session, provider_url, "Acme Logistics", timeout=20, settle=0.5)
        awaiting = await anext(states)
        assert str(awaiting) == "Acme Logistics: awaiting callback"
        # The provider calls back twice: the latest payload is the result, shown once final.
        await provider.call_back(provider.requests[0], employees=250)
        await provider.call_back(provider.requests[0], employees=400)
        final = await anext(states)
        assert (final.state, final.result["employees"]) == ("final", 400)
        callback = await hub.get(awaiting.token)
        assert callback.settle == 0.5 and callback.result is not None and callback.result.id == final.delivery_id
