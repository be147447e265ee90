"""500 calls answered on one URL: which failed, which never answered, and hearing of the first
failure at once.

Marketing Cloud can answer every asynchronous call of a run on one ResponseAddress. A callback
minted with the run's RequestIDs as its expected set reads each POST's outcome, and its wait with
`until=first_error` answers at the first error instead of at completion (RespondWhen.OnError on
the awaiting side). A POST that does not fit the callback's contract is kept as invalid.
"""

from __future__ import annotations

import asyncio

from helpers import MARKETING_CLOUD_FIELDS, mint, post_callback, start_waiting

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True

FAILED_WITH = {"code": "12014", "message": "Invalid data extension"}


def answer(request_id: str, failed: bool = False) -> dict[str, str]:
    """Marketing Cloud's callback fields for one call; cbhub takes RequestID as the correlation id."""
    fields = {**MARKETING_CLOUD_FIELDS, "RequestID": request_id}
    if failed:
        fields.update(OverallStatusCode="Error", StatusCode="Error", ErrorCode="12014", StatusMessage="Invalid data extension")
    return fields


async def send(client, callback: dict, request_ids: list[str], failing: set[str] = frozenset(), parallel: int = 16) -> None:
    queue = list(request_ids)

    async def sender() -> None:
        while queue:
            request_id = queue.pop(0)
            receipt = await post_callback(client, callback, data=answer(request_id, request_id in failing))
            assert receipt["ok"]

    await asyncio.gather(*(sender() for _ in range(parallel)))


async def read(client, path: str, **params) -> dict:
    response = await client.get(path, params=params)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_500_calls_on_one_url_3_errors_and_2_never_answered(client):
    ids = [f"req-{n:03d}" for n in range(500)]
    errors = {ids[100], ids[250], ids[400]}
    withheld = [ids[317], ids[401]]
    callback = await mint(client, ttl=3600, label="upsert-500", expect={"correlation_ids": ids})
    token = callback["token"]

    first_error = await start_waiting(client, f"/v1/callbacks/{token}/wait?timeout=60&until=first_error")
    complete = await start_waiting(client, f"/v1/callbacks/{token}/wait?timeout=60")
    await send(client, callback, ids[:100])
    assert not first_error.done(), "no error yet, and the set is not complete"

    await send(client, callback, [ids[100]], failing=errors)
    woken = await first_error
    assert woken.status == 200
    answered = await woken.json()
    failed = [d for d in answered["deliveries"] if d["outcome"] == "error"]
    assert [(d["correlation_id"], d["error"]) for d in failed] == [(ids[100], FAILED_WITH)]
    assert answered["callback"]["status"] == "pending"

    await send(client, callback, [i for i in ids[101:] if i not in withheld], failing=errors)
    state = await read(client, f"/v1/callbacks/{token}")
    assert state["status"] == "pending"
    assert state["expected"]["arrived"] == 498 and state["expected"]["missing"] == withheld
    assert not complete.done(), "the set is not complete: the plain wait still holds"
    complete.cancel()

    found = await read(client, "/v1/deliveries", token=token, outcome="error")
    assert sorted(d["correlation_id"] for d in found["deliveries"]) == sorted(errors)
    assert (await read(client, f"/v1/callbacks/{token}/missing"))["missing"] == withheld

    # A wait begun after an error was stored answers at once with it.
    again = await client.get(f"/v1/callbacks/{token}/wait", params={"timeout": "5", "until": "first_error"})
    assert again.status == 200
    assert any(d["outcome"] == "error" for d in (await again.json())["deliveries"])


async def test_a_delivery_that_does_not_fit_the_contract_is_invalid_and_never_the_result(client):
    callback = await mint(client, contract={"form_fields": ["RequestID", "OverallStatusCode"]})
    token = callback["token"]
    receipt = await post_callback(client, callback, json={"status": "done"})
    stored = (await read(client, "/v1/deliveries", token=token))["deliveries"]
    assert [(d["id"], d["outcome"]) for d in stored] == [(receipt["delivery_id"], "invalid")]
    assert stored[0]["problems"] and stored[0]["error"] is None

    state = await read(client, f"/v1/callbacks/{token}")
    assert state["status"] == "pending" and state["outcome"] is None and state["result"] is None
    assert state["deliveries"] == 1 and state["invalid_deliveries"] == 1
    invalid = await read(client, "/v1/deliveries", token=token, outcome="invalid")
    assert [d["id"] for d in invalid["deliveries"]] == [receipt["delivery_id"]]

    await post_callback(client, callback, data=answer("req-1"))
    state = await read(client, f"/v1/callbacks/{token}")
    assert state["status"] == "received" and state["outcome"] == "ok"


async def test_an_unknown_until_is_refused_naming_it(client):
    callback = await mint(client, expect={"count": 2})
    response = await client.get(f"/v1/callbacks/{callback['token']}/wait", params={"until": "first_ok"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "invalid_parameter" and "until" in error["message"]
