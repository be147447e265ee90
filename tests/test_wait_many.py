"""GET /v1/wait: any or all of several callbacks, against a real server on both backends."""

from __future__ import annotations

import asyncio

from helpers import (
    assert_error,
    bearer,
    incoming,
    mint,
    post_callback,
    registry_size,
    start_waiting,
)

from cbhub.http.keys import HUB

ALL_BACKENDS = True


def _path(tokens: list[str], mode: str, timeout: float = 30) -> str:
    return "/v1/wait?" + "&".join(f"token={t}" for t in tokens) + f"&mode={mode}&timeout={timeout}"


async def _answer(task: asyncio.Task) -> dict:
    response = await asyncio.wait_for(task, 10)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_any_answers_once_one_of_several_has_a_result(client):
    callbacks = [await mint(client) for _ in range(3)]
    tokens = [c["token"] for c in callbacks]
    task = await start_waiting(client, _path(tokens, "any"))
    await post_callback(client, callbacks[1], json={"n": 1})
    answer = await _answer(task)
    assert answer["ready"] == [tokens[1]]
    [callback] = answer["callbacks"]
    assert callback["token"] == tokens[1] and callback["status"] == "received"
    assert callback["result"]["body"] == {"n": 1}
    assert registry_size(client) == 0


async def test_all_answers_once_none_is_pending_results_and_closings_alike(client):
    callbacks = [await mint(client) for _ in range(3)]
    tokens = [c["token"] for c in callbacks]
    task = await start_waiting(client, _path(tokens, "all"))
    await post_callback(client, callbacks[2], json={"n": 2})
    await post_callback(client, callbacks[0], json={"n": 0})
    assert not task.done()
    assert (await client.delete(f"/v1/callbacks/{tokens[1]}")).status == 200
    answer = await _answer(task)
    assert answer["ready"] == tokens  # in the order asked
    statuses = [c["status"] for c in answer["callbacks"]]
    assert statuses == ["received", "cancelled", "received"]
    assert answer["callbacks"][2]["result"]["body"] == {"n": 2}


async def test_already_ready_answers_at_once_and_all_is_the_default_mode(client):
    done, waiting = await mint(client), await mint(client)
    await post_callback(client, done, json={"x": 1})
    response = await client.get(_path([done["token"], waiting["token"]], "any", timeout=0))
    assert response.status == 200
    assert (await response.json())["ready"] == [done["token"]]
    response = await client.get(f"/v1/wait?token={done['token']}&token={waiting['token']}&timeout=0")
    assert response.status == 204  # all: one is still pending


async def test_repeated_tokens_count_once(client):
    callback = await mint(client)
    await post_callback(client, callback, json={})
    response = await client.get(_path([callback["token"]] * 3, "all", timeout=0))
    answer = await response.json()
    assert answer["ready"] == [callback["token"]] and len(answer["callbacks"]) == 1


async def test_204_on_timeout(client):
    callbacks = [await mint(client) for _ in range(2)]
    response = await client.get(_path([c["token"] for c in callbacks], "any", timeout=0.05))
    assert response.status == 204
    assert registry_size(client) == 0


async def test_an_unknown_token_is_a_404_naming_it(client):
    callback = await mint(client)
    unknown = "no-such-token-at-all"  # well formed, never minted
    response = await client.get(_path([callback["token"], unknown], "any"))
    error = await assert_error(response, 404, "callback_not_found")
    assert unknown in error["message"]
    assert registry_size(client) == 0


async def test_over_1000_tokens_is_a_400_and_none_is_a_400(client):
    callback = await mint(client)
    await post_callback(client, callback, json={})
    # 1,000 given (repeats included) is the limit; 1,001 is refused before any read.
    at_limit = await client.get("/v1/wait", params=[("token", callback["token"])] * 1000 + [("timeout", "0")])
    assert at_limit.status == 200
    over = await client.get("/v1/wait", params=[("token", "t")] * 1001)
    error = await assert_error(over, 400, "invalid_parameter")
    assert error["message"].startswith("token:")
    await assert_error(await client.get("/v1/wait?mode=any"), 400, "invalid_parameter")
    await assert_error(await client.get(f"/v1/wait?token={callback['token']}&mode=some"), 400, "invalid_parameter")


async def test_a_delivery_committed_between_registering_and_reading_is_not_missed(client):
    """Register, then read: the read here is made to see the callbacks as they were before a
    delivery that commits right after it, and the waiter still wakes for that delivery."""
    callbacks = [await mint(client) for _ in range(2)]
    tokens = [c["token"] for c in callbacks]
    hub = client.app[HUB]
    real_read = hub.store.callback_statuses

    async def read_then_deliver(*args, **kwargs):
        statuses = await real_read(*args, **kwargs)  # both pending
        await hub.ingest(incoming(tokens[0], b'{"late": "for the read"}', "application/json"))
        return statuses

    hub.store.callback_statuses = read_then_deliver
    try:
        response = await asyncio.wait_for(client.get(_path(tokens, "any", timeout=30)), 10)
    finally:
        del hub.store.callback_statuses
    assert response.status == 200
    answer = await response.json()
    assert answer["ready"] == [tokens[0]]
    assert answer["callbacks"][0]["result"]["body"] == {"late": "for the read"}


KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef0"}


async def test_with_api_keys_another_keys_token_is_a_404_like_an_unknown_one(start_hub, make_config, session_as):
    client = await start_hub(make_config(**{"auth.api_keys": KEYS}))
    alice, bob = session_as(client, KEYS["alice"]), session_as(client, KEYS["bob"])
    mine = await mint(alice)
    theirs = await mint(bob)
    await post_callback(client, theirs, json={})
    response = await alice.get(_path([mine["token"], theirs["token"]], "any", timeout=0))
    error = await assert_error(response, 404, "callback_not_found")
    unknown = await alice.get(_path([mine["token"], "x" * 43], "any", timeout=0))
    assert (await unknown.json())["error"]["message"] == error["message"].replace(theirs["token"], "x" * 43)
    # Bob waits on his own; Alice's delivery does not wake him, his does.
    await post_callback(client, mine, json={})
    other = await mint(bob)
    task = await start_waiting(client, _path([other["token"]], "any"), session=bob)
    await post_callback(client, other, json={"bob": True})
    answer = await _answer(task)
    assert answer["ready"] == [other["token"]]
    assert (await client.get("/v1/wait?token=x", headers=bearer("wrong-key-0123456789"))).status == 401
