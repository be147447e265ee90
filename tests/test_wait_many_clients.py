"""wait_any / wait_all in the Python client, `response=` at mint, and `cbhub wait URL1 URL2
--any|--all` as a shell script runs it, against a real server."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from helpers import eventually, post_callback, registry_size
from test_cli_client import cbhub

from cbhub.client import CbHub, NotFound


def url_of(client) -> str:
    return f"http://{client.host}:{client.port}"


async def test_wait_any_returns_the_first_ready_and_wait_all_every_one(client):
    async with CbHub(url_of(client)) as hub:
        first, second = await hub.create(), await hub.create()
        waiting = asyncio.create_task(hub.wait_any([first, second.token], timeout=20))
        await eventually(lambda: registry_size(client) == 1)
        await post_callback(client, {"token": second.token}, json={"n": 2})
        [ready] = await asyncio.wait_for(waiting, 10)
        assert ready.token == second.token and ready.result is not None and ready.result.body == {"n": 2}

        waiting = asyncio.create_task(hub.wait_all([first.callback, second], timeout=20))
        await eventually(lambda: registry_size(client) == 1)
        await first.cancel()
        both = await asyncio.wait_for(waiting, 10)
        assert [c.token for c in both] == [first.token, second.token]
        assert [c.status for c in both] == ["cancelled", "received"]


async def test_wait_all_times_out_and_an_unknown_token_is_not_found(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create()
        with pytest.raises(TimeoutError):
            await hub.wait_all([cb], timeout=0.2)
        with pytest.raises(NotFound):
            await hub.wait_any([cb, "no-such-token"], timeout=1)
        with pytest.raises(TypeError):
            await hub.wait_any([42], timeout=1)  # type: ignore[list-item]


async def test_create_takes_a_response_the_sender_then_hears(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(response={"echo": "json:challenge"})
        assert cb.callback.response == {"echo": "json:challenge"}
        response = await client.post(f"/cb/{cb.token}", json={"challenge": "c-1"})
        assert await response.text() == "c-1"
        delivery = await cb.wait(timeout=5)
        assert delivery.answered == {"status": 200, "content_type": "text/plain; charset=utf-8", "body": "c-1", "headers": {}}


async def test_cli_wait_any_and_all_print_the_ready_callbacks_and_exit_as_documented(client):
    async with CbHub(url_of(client)) as hub:
        a, b = await hub.create(), await hub.create()
    await post_callback(client, {"token": a.token}, json={"a": 1})
    ran = await cbhub(client, "wait", a.url, b.url, "--any", "--timeout", "10")
    assert ran.code == 0, ran.err
    printed = orjson.loads(ran.out)
    assert printed["ready"] == [a.token] and printed["callbacks"][0]["result"]["body"] == {"a": 1}
    # All, by default with several: b is still pending, so it times out (exit 2).
    ran = await cbhub(client, "wait", a.url, b.token, "--timeout", "0.2")
    assert ran.code == 2 and "timed out" in ran.err
    # b cancelled: all are ready, but one has no result (exit 3).
    assert (await client.delete(f"/v1/callbacks/{b.token}")).status == 200
    ran = await cbhub(client, "wait", a.url, b.url, "--all", "--timeout", "10")
    assert ran.code == 3, ran.err
    assert orjson.loads(ran.out)["ready"] == [a.token, b.token]
    # One URL without --any/--all: unchanged, the body alone.
    ran = await cbhub(client, "wait", a.url, "--timeout", "10")
    assert ran.code == 0 and orjson.loads(ran.out) == {"a": 1}
    ran = await cbhub(client, "wait", a.url, b.url, "--any", "--all")
    assert ran.code != 0
