"""Contracts: what a callback's deliveries must look like. Nothing refused is lost.

A delivery that does not fit is stored with its problems and answered 200 (or 422 when the
contract says reject, for senders that retry), but it is "invalid": never the result, never
completing a wait or an expected set.
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

from cbhub.domain.expectations import parse_contract

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True

STATUS_SCHEMA = {
    "type": "object",
    "required": ["status", "job"],
    "properties": {"status": {"enum": ["done", "failed"]}, "job": {"type": "integer"}},
}


async def callback_now(client, token: str) -> dict:
    return await (await client.get(f"/v1/callbacks/{token}")).json()


async def deliveries_of(client, token: str) -> list[dict]:
    return (await (await client.get(f"/v1/deliveries?token={token}")).json())["deliveries"]


async def test_a_delivery_that_does_not_fit_the_schema_is_stored_invalid_and_never_the_result(client):
    callback = await mint(client, contract={"json_schema": STATUS_SCHEMA})
    token = callback["token"]
    assert callback["contract"]["json_schema"] == STATUS_SCHEMA and callback["contract"]["reject"] is False
    waiting = await start_waiting(client, f"/v1/callbacks/{token}/wait?timeout=60")

    unfit = await post_callback(client, callback, json={"status": "sort of", "job": "seven"})
    assert unfit["ok"] is True
    [stored] = await deliveries_of(client, token)
    assert stored["id"] == unfit["delivery_id"] and len(stored["problems"]) == 2
    assert any("'sort of' is not one of" in problem for problem in stored["problems"])
    assert any(problem.startswith("$.job:") for problem in stored["problems"])
    # Still pending, no result, and the wait did not answer.
    now = await callback_now(client, token)
    assert (now["status"], now["result"], now["deliveries"]) == ("pending", None, 1)
    assert not waiting.done()

    fit = await post_callback(client, callback, json={"status": "done", "job": 7})
    answer = await (await asyncio.wait_for(waiting, 10)).json()
    assert [d["id"] for d in answer["deliveries"]] == [fit["delivery_id"]]
    assert answer["deliveries"][0]["problems"] == []
    now = await callback_now(client, token)
    assert (now["status"], now["result"]["id"], now["deliveries"]) == ("received", fit["delivery_id"], 2)

    # After the result, an invalid one is stored and still never becomes it.
    await post_callback(client, callback, json={"status": 1})
    now = await callback_now(client, token)
    assert now["result"]["id"] == fit["delivery_id"] and now["deliveries"] == 3


async def test_a_reference_to_another_document_is_never_fetched_and_says_so(client):
    callback = await mint(client, contract={"json_schema": {"$ref": "https://schemas.example.com/result.json"}})
    await post_callback(client, callback, json={"status": "done"})
    [stored] = await deliveries_of(client, callback["token"])
    assert len(stored["problems"]) == 1 and stored["problems"][0].startswith("the schema cannot be applied")


async def test_form_fields_and_content_types(client):
    callback = await mint(client, contract={"form_fields": ["RequestID", "StatusCode"]})
    await post_callback(client, callback, data={"RequestID": "r-1", "StatusCode": ""})
    await post_callback(client, callback, json={"RequestID": "r-2"})
    await post_callback(client, callback, data="plain", headers={"Content-Type": "text/plain"})
    await post_callback(client, callback, data=MARKETING_CLOUD_FIELDS)
    problems = [d["problems"] for d in await deliveries_of(client, callback["token"])]
    assert problems == [
        ["field 'StatusCode' is missing or empty"],
        ["field 'StatusCode' is missing or empty"],
        ["the body is not a form (nor a JSON object): the contract names fields"],
        [],
    ]
    assert (await callback_now(client, callback["token"]))["result"]["correlation_id"] == MARKETING_CLOUD_FIELDS["RequestID"]

    typed = await mint(client, contract={"content_types": ["application/x-www-form-urlencoded"]})
    await post_callback(client, typed, json={"a": 1})
    await post_callback(client, typed, data={"a": "1"})
    problems = [d["problems"] for d in await deliveries_of(client, typed["token"])]
    assert problems == [["content type 'application/json' is not one of application/x-www-form-urlencoded"], []]


def stored_id(error: dict) -> int:
    """The delivery id a contract_violation names: "... (stored as invalid delivery 12): ..."."""
    return int(error["message"].split("stored as invalid delivery ", 1)[1].split(")", 1)[0])


async def test_reject_answers_422_and_stores_it_all_the_same_retries_too(client):
    callback = await mint(client, contract={"json_schema": STATUS_SCHEMA, "reject": True})
    token = callback["token"]
    ids = []
    for _ in range(2):  # a sender that retries on a 4xx: each try is kept
        response = await client.post(f"/cb/{token}", json={"status": "?"})
        error = await assert_error(response, 422, "contract_violation")
        assert "'?' is not one of" in error["message"]
        ids.append(stored_id(error))
    # The same message id (a retry the sender names) is stored once, and refused alike.
    for _ in range(2):
        response = await client.post(f"/cb/{token}", json={"status": "?"}, headers={"webhook-id": "msg-1"})
        ids.append(stored_id(await assert_error(response, 422, "contract_violation")))
    stored = await deliveries_of(client, token)
    assert [d["id"] for d in stored] == sorted(set(ids)) and len(stored) == 3
    assert all(d["problems"] for d in stored)
    assert (await callback_now(client, token))["status"] == "pending"
    fit = await post_callback(client, callback, json={"status": "failed", "job": 1})
    assert (await callback_now(client, token))["result"]["id"] == fit["delivery_id"]


async def test_an_invalid_delivery_never_counts_in_an_expected_set(client):
    callback = await mint(
        client, expect={"correlation_ids": ["r-1"]}, contract={"form_fields": ["RequestID", "OverallStatusCode"]}
    )
    token = callback["token"]
    waiting = await start_waiting(client, f"/v1/callbacks/{token}/wait?timeout=60")
    await post_callback(client, callback, data={"RequestID": "r-1"})
    now = await callback_now(client, token)
    assert now["status"] == "pending" and now["expected"]["arrived"] == 0 and now["expected"]["missing"] == ["r-1"]
    assert not waiting.done()
    await post_callback(client, callback, data={"RequestID": "r-1", "OverallStatusCode": "OK"})
    answer = await (await asyncio.wait_for(waiting, 10)).json()
    assert answer["callback"]["status"] == "received" and answer["callback"]["expected"]["arrived"] == 1


async def test_streams_show_invalid_deliveries_with_their_problems(client):
    callback = await mint(client, contract={"content_types": ["application/json"]})
    async with client.ws_connect("/v1/ws") as ws:
        await ws.send_json({"op": "subscribe", "id": "s", "tokens": [callback["token"]]})
        assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": "s"}
        await post_callback(client, callback, data="x", headers={"Content-Type": "text/plain"})
        frame = await ws.receive_json(timeout=5)
        assert frame["type"] == "delivery"
        assert frame["delivery"]["problems"] == ["content type 'text/plain' is not one of application/json"]


async def test_a_contract_is_checked_at_mint(client):
    for contract, problem in (
        ({"json_schema": {"type": "strange"}}, "not a valid JSON Schema 2020-12 at type"),
        ({"json_schema": {"properties": {"a": {"minLength": -1}}}}, "properties/a/minLength"),
        ({"json_schema": "string"}, "json_schema must be"),
        ({"form_fields": "RequestID"}, "form_fields must be"),
        ({"content_types": [""]}, "content_types must"),
        ({"reject": "yes"}, "reject must be"),
        ({"schema": {}}, "unknown field 'schema'"),
    ):
        response = await client.post("/v1/callbacks", json={"contract": contract})
        error = await assert_error(response, 400, "invalid_field")
        assert error["message"].startswith("contract:") and problem in error["message"], (contract, error)
    # A batch's callbacks share one contract.
    batch = await client.post("/v1/callbacks/batch", json={"count": 2, "contract": {"form_fields": ["RequestID"]}})
    assert batch.status == 201
    assert all(c["contract"]["form_fields"] == ["RequestID"] for c in (await batch.json())["callbacks"])


def test_a_body_too_deep_to_check_is_kept_as_invalid_never_failing_the_write():
    nested = parse_contract({"json_schema": {"$defs": {"n": {"items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}})
    deep = b"[" * 1000 + b"]" * 1000
    assert nested.problems(deep, "application/json", None) == ("the body is nested too deeply to be checked",)
    assert nested.problems(b"[[[]]]", "application/json", None) == ()
