"""The Python client with expected sets and contracts, against a real server."""

from __future__ import annotations

import asyncio

import pytest
from helpers import MARKETING_CLOUD_FIELDS, eventually, post_callback, registry_size

from cbhub.client import CbHub, Expected, Expired, InvalidRequest, SyncCbHub
from cbhub.http.keys import HUB


def url_of(client) -> str:
    return f"http://{client.host}:{client.port}"


def form(request_id: str) -> dict[str, str]:
    return {**MARKETING_CLOUD_FIELDS, "RequestID": request_id}


async def test_expect_at_mint_then_wait_until_the_set_is_complete_and_page_what_is_missing(client):
    ids = [f"req-{n}" for n in range(1, 2501)]
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(ttl=600, expect=ids)
        assert cb.callback.expected == Expected(total=2500, arrived=0, unexpected=0, missing=ids[:100])
        sent = {i for i in ids[:-1] if i.endswith("0")}
        for request_id in sorted(sent):
            await post_callback(client, {"token": cb.token}, data=form(request_id))
        # Paged through 1000 at a time: every id, in mint order.
        assert [i async for i in cb.missing()] == [i for i in ids if i not in sent]

        waiting = asyncio.create_task(cb.wait(timeout=30))
        await eventually(lambda: registry_size(client) == 1)
        for request_id in [i for i in ids if i not in sent]:
            await post_callback(client, {"token": cb.token}, data=form(request_id))
        delivery = await asyncio.wait_for(waiting, 20)
        assert delivery.correlation_id == ids[-1]
        state = await cb.refresh()
        assert state.status == "received" and state.expected is not None and state.expected.complete
        assert [i async for i in hub.missing(cb.token)] == []


async def test_a_set_that_expires_incomplete_raises_expired(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(ttl=600, expect=2)
        await post_callback(client, {"token": cb.token}, data=form("one"))
        waiting = asyncio.create_task(cb.wait(timeout=30))
        await eventually(lambda: registry_size(client) == 1)
        await client.app[HUB].store.expire_due(int(cb.callback.expires_at.timestamp() * 1000) + 1)
        with pytest.raises(Expired, match="1 of its expected ids") as raised:
            await asyncio.wait_for(waiting, 10)
        assert raised.value.callback.expected.arrived == 1


async def test_contract_at_mint_and_problems_on_deliveries(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(contract={"form_fields": ["RequestID", "StatusCode"]})
        assert cb.callback.contract == {
            "json_schema": None,
            "form_fields": ["RequestID", "StatusCode"],
            "content_types": [],
            "reject": False,
        }
        await post_callback(client, {"token": cb.token}, data={"RequestID": "r"})
        await post_callback(client, {"token": cb.token}, data=form("r"))
        page = await hub.list_deliveries(token=cb.token)
        assert [d.invalid for d in page.deliveries] == [True, False]
        assert page.deliveries[0].problems == ("field 'StatusCode' is missing or empty",)
        assert (await cb.wait(timeout=5)).id == page.deliveries[1].id
        with pytest.raises(InvalidRequest, match="contract: json_schema is not a valid"):
            await hub.create(contract={"json_schema": {"type": 3}})


def test_the_sync_client_mints_a_set_and_lists_what_is_missing(serve_process):
    url = serve_process("--port", "0").wait_until_serving()
    with SyncCbHub(url) as hub:
        cb = hub.create(expect=["a", "b", "c"], contract={"content_types": ["application/x-www-form-urlencoded"]})
        assert cb.callback.expected is not None and cb.callback.expected.missing == ["a", "b", "c"]
        assert hub.missing(cb.token) == ["a", "b", "c"]
