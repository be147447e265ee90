"""One callback URL awaiting many deliveries: an expected set of correlation ids.

Marketing Cloud calls one ResponseAddress once per asynchronous call: 500 calls, 500 POSTs to
one URL. A callback minted with `expect` stays pending until every id has come, says which have
not, and its wait answers at completion (or expiry), not at the first POST.
"""

from __future__ import annotations

import asyncio

from helpers import (
    MARKETING_CLOUD_FIELDS,
    assert_error,
    mint,
    post_callback,
    start_waiting,
)

from cbhub.http.keys import HUB

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True


def marketing_cloud_form(request_id: str) -> dict[str, str]:
    """Marketing Cloud's callback fields; cbhub takes RequestID as the correlation id."""
    return {**MARKETING_CLOUD_FIELDS, "RequestID": request_id}


async def callback_now(client, token: str) -> dict:
    response = await client.get(f"/v1/callbacks/{token}")
    assert response.status == 200, await response.text()
    return await response.json()


async def all_missing(client, token: str, limit: int) -> list[str]:
    """Every missing id through the paging route, page by page."""
    found: list[str] = []
    after = ""
    while True:
        response = await client.get(f"/v1/callbacks/{token}/missing", params={"after": after, "limit": limit})
        assert response.status == 200, await response.text()
        page = await response.json()
        assert len(page["missing"]) <= limit
        found += page["missing"]
        if page["next_after"] is None:
            return found
        assert page["next_after"] == page["missing"][-1]
        after = page["next_after"]


async def send_all(client, callback: dict, request_ids: list[str], parallel: int = 16) -> None:
    """POST each id's Marketing Cloud form to the one URL, a few at a time, each answered 200."""
    queue = list(request_ids)

    async def sender() -> None:
        while queue:
            request_id = queue.pop()
            answer = await post_callback(client, callback, data=marketing_cloud_form(request_id))
            assert answer["ok"] and not answer["late"]

    await asyncio.gather(*(sender() for _ in range(parallel)))


async def assert_still_waiting(client, waiting: asyncio.Task, token: str) -> None:
    # One more round trip after the last 200: a wake-up (announced before that 200) has been
    # handled by now, and would have answered the long-poll.
    await callback_now(client, token)
    assert not waiting.done(), "the wait answered before the set was complete"


async def test_500_calls_to_one_url_498_answered_pending_and_the_2_missing_named(client):
    ids = [f"mc-{n:03d}-5b3f2a7e" for n in range(500)]
    callback = await mint(client, ttl=3600, label="nightly-import", expect={"correlation_ids": ids})
    token = callback["token"]
    assert callback["status"] == "pending"
    assert callback["expected"] == {"total": 500, "arrived": 0, "unexpected": 0, "missing": ids[:100]}

    waiting = await start_waiting(client, f"/v1/callbacks/{token}/wait?timeout=60")
    withheld = {ids[17], ids[401]}
    await send_all(client, callback, [i for i in ids if i not in withheld])
    await assert_still_waiting(client, waiting, token)

    now = await callback_now(client, token)
    assert now["status"] == "pending"
    assert now["deliveries"] == 498 and now["result"]["correlation_id"] in ids
    assert now["expected"] == {"total": 500, "arrived": 498, "unexpected": 0, "missing": [ids[17], ids[401]]}
    # The paging route names them, in mint order, one page at a time.
    assert await all_missing(client, token, limit=1) == [ids[17], ids[401]]
    assert await all_missing(client, token, limit=1000) == [ids[17], ids[401]]

    # A repeat of an id that arrived is stored, but counts once.
    await post_callback(client, callback, data=marketing_cloud_form(ids[0]))
    now = await callback_now(client, token)
    assert (now["deliveries"], now["expected"]["arrived"], now["expected"]["unexpected"]) == (499, 498, 0)
    await assert_still_waiting(client, waiting, token)

    # Time passes: the callback expires incomplete. The wait answers with the expired callback,
    # and what never came is still named.
    await client.app[HUB].store.expire_due(callback_expiry_ms(now) + 1)
    answer = await asyncio.wait_for(waiting, 10)
    assert answer.status == 200
    woken = (await answer.json())["callback"]
    assert woken["status"] == "expired" and woken["expected"]["missing"] == [ids[17], ids[401]]
    now = await callback_now(client, token)
    assert now["status"] == "expired" and now["expected"]["arrived"] == 498
    assert await all_missing(client, token, limit=50) == [ids[17], ids[401]]


def callback_expiry_ms(callback: dict) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(callback["expires_at"]).timestamp() * 1000)


async def test_the_wait_answers_at_completion_not_at_the_first_delivery(client):
    callback = await mint(client, expect={"correlation_ids": ["a", "b", "c"]})
    token = callback["token"]
    waiting = await start_waiting(client, f"/v1/callbacks/{token}/wait?timeout=60")
    for request_id in ("a", "b"):
        await post_callback(client, callback, data=marketing_cloud_form(request_id))
        await assert_still_waiting(client, waiting, token)
    last = await post_callback(client, callback, data=marketing_cloud_form("c"))
    answer = await (await asyncio.wait_for(waiting, 10)).json()
    assert answer["callback"]["status"] == "received"
    assert answer["callback"]["expected"] == {"total": 3, "arrived": 3, "unexpected": 0, "missing": []}
    assert answer["callback"]["result"]["id"] == last["delivery_id"]
    assert [d["correlation_id"] for d in answer["deliveries"]] == ["a", "b", "c"]
    # Complete: a later wait answers at once, and later deliveries are still stored.
    await post_callback(client, callback, data=marketing_cloud_form("a"))
    again = await client.get(f"/v1/callbacks/{token}/wait?timeout=5&after={last['delivery_id']}")
    body = await again.json()
    assert body["callback"]["status"] == "received" and len(body["deliveries"]) == 1


async def test_ids_outside_the_set_or_none_are_stored_and_counted_unexpected(client):
    callback = await mint(client, expect={"correlation_ids": ["r-1", "r-2"]})
    token = callback["token"]
    await post_callback(client, callback, data=marketing_cloud_form("r-9"))
    await post_callback(client, callback, json={"no": "id"})
    await post_callback(client, callback, data=marketing_cloud_form("r-1"))
    now = await callback_now(client, token)
    assert now["status"] == "pending" and now["deliveries"] == 3
    assert now["expected"] == {"total": 2, "arrived": 1, "unexpected": 2, "missing": ["r-2"]}
    listed = await (await client.get(f"/v1/deliveries?token={token}")).json()
    assert [d["correlation_id"] for d in listed["deliveries"]] == ["r-9", None, "r-1"]


async def test_a_count_awaits_that_many_distinct_ids(client):
    callback = await mint(client, expect={"count": 3})
    token = callback["token"]
    assert callback["expected"] == {"total": 3, "arrived": 0, "unexpected": 0, "missing": None}
    for request_id in ("x", "x", "y"):
        await post_callback(client, callback, data=marketing_cloud_form(request_id))
    await post_callback(client, callback, data="no id", headers={"Content-Type": "text/plain"})
    now = await callback_now(client, token)
    assert now["status"] == "pending"
    assert now["expected"] == {"total": 3, "arrived": 2, "unexpected": 1, "missing": None}
    waiting = await start_waiting(client, f"/v1/callbacks/{token}/wait?timeout=60")
    await post_callback(client, callback, data=marketing_cloud_form("z"))
    answer = await (await asyncio.wait_for(waiting, 10)).json()
    assert answer["callback"]["status"] == "received" and answer["callback"]["expected"]["arrived"] == 3
    # Past the count, a new id is one too many; a repeat is nothing new.
    await post_callback(client, callback, data=marketing_cloud_form("w"))
    await post_callback(client, callback, data=marketing_cloud_form("y"))
    now = await callback_now(client, token)
    assert now["status"] == "received" and now["deliveries"] == 7
    assert now["expected"] == {"total": 3, "arrived": 3, "unexpected": 2, "missing": None}
    page = await (await client.get(f"/v1/callbacks/{token}/missing")).json()
    assert page == {"missing": [], "next_after": None}


async def test_an_expected_set_is_checked_at_mint(client):
    for expect, problem in (
        ({"correlation_ids": ["a", "b", "a"]}, "repeats"),
        ({"correlation_ids": ["a", ""]}, "correlation_ids[1]"),
        ({"correlation_ids": []}, "1 to 10000"),
        ({"correlation_ids": [f"i{n}" for n in range(10_001)]}, "1 to 10000"),
        ({"count": 0}, "count"),
        ({"count": 100_001}, "count"),
        ({"count": 2, "correlation_ids": ["a"]}, "must be"),
        ({"colour": "blue"}, "must be"),
        ("a", "must be"),
    ):
        response = await client.post("/v1/callbacks", json={"expect": expect})
        error = await assert_error(response, 400, "invalid_field")
        assert error["message"].startswith("expect:") and problem in error["message"], (expect, error)
    # The largest sets are taken.
    big = await mint(client, expect={"correlation_ids": [f"i{n}" for n in range(10_000)]})
    assert big["expected"]["total"] == 10_000 and len(big["expected"]["missing"]) == 100
    assert (await mint(client, expect={"count": 100_000}))["expected"]["total"] == 100_000
    # A batch mints many URLs: an expected set belongs to one.
    response = await client.post("/v1/callbacks/batch", json={"count": 2, "expect": {"count": 2}})
    await assert_error(response, 400, "unknown_field")


async def test_paging_missing_ids_in_mint_order(client):
    ids = [f"id-{n}" for n in range(250, 0, -1)]  # mint order, not sorted order
    callback = await mint(client, expect={"correlation_ids": ids})
    token = callback["token"]
    await send_all(client, callback, ids[::2])
    assert await all_missing(client, token, limit=7) == ids[1::2]
    first = await (await client.get(f"/v1/callbacks/{token}/missing?limit=1000")).json()
    assert first == {"missing": ids[1::2], "next_after": None}
    # An `after` that is not in the set is not a page.
    await assert_error(await client.get(f"/v1/callbacks/{token}/missing?after=nope"), 404, "expected_id_not_found")
    # A callback without named ids misses none; no callback at all is 404.
    plain = await mint(client)
    assert await (await client.get(f"/v1/callbacks/{plain['token']}/missing")).json() == {
        "missing": [],
        "next_after": None,
    }
    await assert_error(await client.get(f"/v1/callbacks/{'x' * 43}/missing"), 404, "callback_not_found")


async def test_the_missing_ids_of_another_keys_callback_are_not_found(start_hub, make_config, session_as):
    keys = {"billing": "billing-key-5f0c2a9d7e1b", "crm": "crm-key-8a4e6b1d3c9f07"}
    hub = await start_hub(make_config(**{"auth.api_keys": keys}))
    billing, crm = session_as(hub, keys["billing"]), session_as(hub, keys["crm"])
    callback = await mint(billing, expect={"correlation_ids": ["a", "b"]})
    mine = await billing.get(f"/v1/callbacks/{callback['token']}/missing")
    assert (await mine.json())["missing"] == ["a", "b"]
    theirs = await crm.get(f"/v1/callbacks/{callback['token']}/missing")
    await assert_error(theirs, 404, "callback_not_found")
    anonymous = await hub.get(f"/v1/callbacks/{callback['token']}/missing")
    assert anonymous.status == 401


async def test_an_idempotent_mint_with_an_expected_set_mints_it_once(client):
    body = {"expect": {"correlation_ids": ["a", "b"]}}
    first = await client.post("/v1/callbacks", json=body, headers={"Idempotency-Key": "k-1"})
    again = await client.post("/v1/callbacks", json=body, headers={"Idempotency-Key": "k-1"})
    assert (first.status, again.status) == (201, 200)
    assert (await first.json())["token"] == (await again.json())["token"]
    other = await client.post(
        "/v1/callbacks", json={"expect": {"correlation_ids": ["a", "c"]}}, headers={"Idempotency-Key": "k-1"}
    )
    await assert_error(other, 422, "idempotency_key_reused")
