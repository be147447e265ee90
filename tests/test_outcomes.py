"""Outcomes against a real server: how each delivery went, which of a group's callbacks failed or
never answered, and a wait that answers at the first error."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import orjson
from helpers import (
    HOUR,
    MARKETING_CLOUD_FIELDS,
    assert_error,
    incoming,
    mint,
    post_callback,
    read_event,
    start_waiting,
    written,
)

from cbhub.domain.filters import CallbackFilter, DeliveryFilter
from cbhub.domain.model import Event, MintSpec, now_ms
from cbhub.domain.outcomes import parse_rule
from cbhub.store.sqlite.migrations import MIGRATIONS

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def marketing_cloud(request_id: str, error: tuple[str, str] | None = None) -> bytes:
    """The form Marketing Cloud posts to a ResponseAddress: OK, or an error with its code and
    message (StatusMessage and ErrorCode are empty on success)."""
    fields = {**MARKETING_CLOUD_FIELDS, "RequestID": request_id}
    if error is not None:
        code, message = error
        fields.update(OverallStatusCode="Error", StatusCode="Error", ErrorCode=code, StatusMessage=message)
    return urlencode(fields).encode()


async def send(client, callback, body: bytes) -> dict:
    return await post_callback(client, callback, data=body, headers=FORM)


async def test_500_marketing_cloud_calls_3_errors_2_never_answered(client):
    # 500 async calls, each with its own ResponseAddress, awaited as one group.
    response = await client.post("/v1/callbacks/batch", json={"count": 500, "group": "upsert-500", "label": "UpsertDE"})
    callbacks = (await response.json())["callbacks"]
    request_id = {c["token"]: f"req-{n:03d}" for n, c in enumerate(callbacks)}
    failing = {callbacks[100]["token"]: ("12014", "Invalid data extension"),
               callbacks[250]["token"]: ("310007", "Row already exists"),
               callbacks[499]["token"]: ("", "Timeout while processing")}
    silent = [callbacks[7]["token"], callbacks[300]["token"]]
    answering = [c for c in callbacks if c["token"] not in silent]
    first_error = callbacks[100]

    waiting = await start_waiting(client, "/v1/groups/upsert-500/wait?until=first_error&timeout=60")
    limit = asyncio.Semaphore(16)

    async def answer(callback):
        async with limit:
            await send(client, callback, marketing_cloud(request_id[callback["token"]], failing.get(callback["token"])))

    # Everything before the first error: none of it may end the first-error wait.
    before = [c for c in answering[:150] if c["token"] not in failing]
    await asyncio.gather(*(answer(c) for c in before))
    await answer(first_error)
    response = await asyncio.wait_for(waiting, 10)
    assert response.status == 200
    summary = await response.json()
    assert summary["outcomes"] == {"ok": len(before), "error": 1, "unknown": 0}
    assert summary["errors"] == [
        {
            "token": first_error["token"],
            "label": "UpsertDE",
            "correlation_id": "req-100",
            "error": {"code": "12014", "message": "Invalid data extension"},
            "delivery_id": summary["errors"][0]["delivery_id"],
        }
    ]
    assert summary["pending"] == 500 - len(before) - 1

    # The rest arrive; two calls never answer.
    await asyncio.gather(*(answer(c) for c in answering if c not in before and c is not first_error))

    summary = await (await client.get("/v1/groups/upsert-500")).json()
    assert summary["total"] == 500 and summary["received"] == 498 and summary["pending"] == 2
    assert summary["outcomes"] == {"ok": 495, "error": 3, "unknown": 0}
    assert sorted(summary["pending_tokens"]) == sorted(silent)
    assert {e["correlation_id"]: e["error"] for e in summary["errors"]} == {
        "req-100": {"code": "12014", "message": "Invalid data extension"},
        "req-250": {"code": "310007", "message": "Row already exists"},
        "req-499": {"code": None, "message": "Timeout while processing"},
    }
    ids = [e["delivery_id"] for e in summary["errors"]]
    assert ids == sorted(ids)  # in the order they came

    # Waiting again for a first error answers at once; waiting for all times out: 2 are missing.
    response = await client.get("/v1/groups/upsert-500/wait?until=first_error&timeout=5")
    assert response.status == 200 and (await response.json())["outcomes"]["error"] == 3
    response = await client.get("/v1/groups/upsert-500/wait?timeout=0.2")
    assert response.status == 204

    # The errors alone, from the listing and from the deliveries.
    listed = await (await client.get("/v1/callbacks?group=upsert-500&outcome=error")).json()
    assert {c["token"] for c in listed["callbacks"]} == set(failing)
    assert all(c["outcome"] == "error" for c in listed["callbacks"])
    # The listing shows each result's error without the result itself.
    assert {c["error"]["code"] for c in listed["callbacks"]} == {"12014", "310007", None}
    found = await (await client.get("/v1/deliveries?group=upsert-500&outcome=error")).json()
    assert [d["correlation_id"] for d in found["deliveries"]] == ["req-100", "req-250", "req-499"]
    assert found["deliveries"][0]["error"] == {"code": "12014", "message": "Invalid data extension"}


async def test_a_group_where_all_went_well_answers_first_error_when_none_is_pending(client):
    response = await client.post("/v1/callbacks/batch", json={"count": 3, "group": "fine"})
    callbacks = (await response.json())["callbacks"]
    waiting = await start_waiting(client, "/v1/groups/fine/wait?until=first_error&timeout=30")
    for n, callback in enumerate(callbacks):
        await send(client, callback, marketing_cloud(f"r{n}"))
    response = await asyncio.wait_for(waiting, 10)
    summary = await response.json()
    assert summary["pending"] == 0 and summary["outcomes"] == {"ok": 3, "error": 0, "unknown": 0}
    assert summary["errors"] == [] and summary["pending_tokens"] == []


async def test_a_first_error_wait_times_out_with_204_and_refuses_other_untils(client):
    await client.post("/v1/callbacks/batch", json={"count": 2, "group": "quiet"})
    response = await client.get("/v1/groups/quiet/wait?until=first_error&timeout=0.1")
    assert response.status == 204
    await assert_error(await client.get("/v1/groups/quiet/wait?until=last"), 400, "invalid_parameter")
    await assert_error(await client.get("/v1/groups/nobody/wait?until=first_error&timeout=0"), 404, "group_not_found")


async def test_delivery_and_callback_outcomes(client):
    callback = await mint(client)
    assert callback["outcome"] is None and callback["outcome_rule"] is None  # pending: no result yet
    await post_callback(client, callback, json={"status": "running"})
    state = await (await client.get(f"/v1/callbacks/{callback['token']}")).json()
    assert state["outcome"] == "unknown" and state["result"]["outcome"] == "unknown"
    assert state["result"]["error"] is None
    await post_callback(client, callback, json={"status": "failed", "error": {"code": "E1", "message": "no"}})
    state = await (await client.get(f"/v1/callbacks/{callback['token']}")).json()
    assert state["outcome"] == "error"
    assert state["result"]["error"] == state["error"] == {"code": "E1", "message": "no"}
    await post_callback(client, callback, json={"status": "succeeded"})
    state = await (await client.get(f"/v1/callbacks/{callback['token']}")).json()
    assert state["outcome"] == "ok" and state["error"] is None  # the latest result counts

    found = await (await client.get(f"/v1/deliveries?token={callback['token']}")).json()
    assert [d["outcome"] for d in found["deliveries"]] == ["unknown", "error", "ok"]
    only = await (await client.get(f"/v1/deliveries?token={callback['token']}&outcome=unknown")).json()
    assert [d["body"] for d in only["deliveries"]] == [{"status": "running"}]
    await assert_error(await client.get("/v1/deliveries?outcome=bad"), 400, "invalid_parameter")
    await assert_error(await client.get("/v1/callbacks?outcome=bad"), 400, "invalid_parameter")
    for outcome in ("ok", "error", "unknown", "invalid"):
        assert (await client.get(f"/v1/deliveries?outcome={outcome}")).status == 200
        assert (await client.get(f"/v1/callbacks?outcome={outcome}")).status == 200


async def test_a_callbacks_own_rule_decides_first(client):
    rule = {
        "field": "/result/state",
        "ok": ["shipped"],
        "error": ["rejected"],
        "error_code": "/result/code",
        "error_message": "/result/why",
    }
    callback = await mint(client, outcome=rule, group="orders")
    assert callback["outcome_rule"] == rule
    await post_callback(client, callback, json={"status": "ok", "result": {"state": "REJECTED", "code": 7, "why": "stock"}})
    state = await (await client.get(f"/v1/callbacks/{callback['token']}")).json()
    assert state["outcome"] == "error" and state["result"]["error"] == {"code": "7", "message": "stock"}
    assert state["outcome_rule"] == rule

    # The same rule minted again under the same idempotency key is the same request.
    headers = {"Idempotency-Key": "k-rule"}
    first = await client.post("/v1/callbacks", json={"outcome": rule}, headers=headers)
    again = await client.post("/v1/callbacks", json={"outcome": rule}, headers=headers)
    assert (await first.json())["token"] == (await again.json())["token"]
    other = await client.post("/v1/callbacks", json={"outcome": {**rule, "ok": ["sent"]}}, headers=headers)
    await assert_error(other, 422, "idempotency_key_reused")


async def test_a_bad_rule_is_refused_naming_its_fault(client):
    response = await client.post("/v1/callbacks", json={"outcome": {"field": "/s", "error": "failed"}})
    body = await assert_error(response, 400, "invalid_field")
    assert "outcome.error" in body["message"]
    response = await client.post("/v1/callbacks/batch", json={"count": 2, "outcome": {"ok": ["x"]}})
    body = await assert_error(response, 400, "invalid_field")
    assert "outcome.field" in body["message"]


async def test_built_in_rules_can_be_turned_off(start_hub, make_config):
    client = await start_hub(make_config(**{"outcomes.builtin": False}))
    plain = await mint(client)
    await send(client, plain, marketing_cloud("r1", ("1", "bad")))
    ruled = await mint(client, outcome={"field": "ErrorCode", "error": ["1"]})
    await send(client, ruled, marketing_cloud("r2", ("1", "bad")))
    assert (await (await client.get(f"/v1/callbacks/{plain['token']}")).json())["outcome"] == "unknown"
    assert (await (await client.get(f"/v1/callbacks/{ruled['token']}")).json())["outcome"] == "error"


async def test_streams_filter_by_outcome(client):
    callback = await mint(client, group="g")
    async with client.ws_connect("/v1/ws") as ws, client.get("/v1/events?outcome=error") as events:
        await ws.send_json({"op": "subscribe", "id": "errors", "group": "g", "outcome": "error"})
        assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": "errors"}
        await ws.send_json({"op": "subscribe", "id": "bad", "outcome": "worse"})
        frame = await ws.receive_json(timeout=5)
        assert frame["type"] == "error" and "outcome" in frame["error"]["message"]

        await send(client, callback, marketing_cloud("fine"))
        await send(client, callback, marketing_cloud("broken", ("9", "boom")))
        frame = await ws.receive_json(timeout=5)
        assert frame["delivery"]["correlation_id"] == "broken"  # the ok one was not sent
        assert frame["delivery"]["error"] == {"code": "9", "message": "boom"}
        event = await read_event(events)
        assert event is not None and event["event"] == "delivery"
        assert orjson.loads(event["data"])["correlation_id"] == "broken"


async def test_outcomes_are_counted_in_the_metrics(client):
    callback = await mint(client)
    await send(client, callback, marketing_cloud("a"))
    await send(client, callback, marketing_cloud("b", ("1", "x")))
    await post_callback(client, callback, json={"status": "failed"})
    text = await (await client.get("/metrics")).text()
    assert 'cbhub_delivery_outcomes_total{outcome="ok"} 1.0' in text
    assert 'cbhub_delivery_outcomes_total{outcome="error"} 2.0' in text
    assert 'cbhub_delivery_outcomes_total{outcome="invalid"} 0.0' in text


def test_the_schema_knows_its_outcome_step():
    # Guards against a step added on one backend only (the versions are counted, not named).
    from cbhub.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS

    assert len(MIGRATIONS) == len(PG_MIGRATIONS)


# The store, without HTTP


async def test_the_store_keeps_outcomes_and_summarises_a_group_per_owner(make_store):
    events: list[Event] = []
    store = await make_store(events.append)
    rule = parse_rule({"field": "/state", "error": ["failed"], "error_message": "/why"})
    (alice_ok, alice_bad, bob_bad, alice_waits), _ = await store.mint(
        [
            MintSpec(HOUR, "a1", "g", {}, created_by="alice"),
            MintSpec(HOUR, "a2", "g", {}, created_by="alice", outcome_rule=rule),
            MintSpec(HOUR, "b1", "g", {}, created_by="bob"),
            MintSpec(HOUR, "a3", "g", {}, created_by="alice"),
        ],
        now_ms(),
    )
    json_type = "application/json"
    await store.ingest(incoming(alice_ok.token, marketing_cloud("r1")))
    result = await store.ingest(incoming(alice_bad.token, b'{"state": "FAILED", "why": "disk"}', json_type, correlation_id="r2"))
    assert (result.delivery.outcome, result.delivery.error) == ("error", {"code": None, "message": "disk"})
    assert (result.callback.outcome, result.callback.error) == ("error", {"code": None, "message": "disk"})
    # What waiters are told carries the outcome too.
    assert [e.delivery.outcome for e in written(events) if e.delivery is not None] == ["ok", "error"]
    await store.ingest(incoming(bob_bad.token, marketing_cloud("r3", ("7", "no"))), builtin_outcomes=True)

    summary = await store.group_summary("g", owner="alice")
    assert summary.counts["pending"] == 1 and summary.outcomes == {"ok": 1, "error": 1, "unknown": 0}
    assert [(e.token, e.label, e.correlation_id) for e in summary.errors] == [(alice_bad.token, "a2", "r2")]
    assert summary.pending_tokens == [alice_waits.token]
    everyone = await store.group_summary("g")
    assert everyone.outcomes["error"] == 2 and len(everyone.errors) == 2
    counts_only = await store.group_summary("g", details=False)
    assert (counts_only.errors, counts_only.pending_tokens) == ([], [])

    # Read back: the callback's outcome and rule, the delivery's error.
    read = await store.get_callback(alice_bad.token)
    assert (read.outcome, read.outcome_rule, read.error) == ("error", rule, {"code": None, "message": "disk"})
    assert read.result is not None and read.result.error == {"code": None, "message": "disk"}
    found = await store.find_deliveries(DeliveryFilter(group="g", outcome="error"), 0, 10)
    assert [d.token for d in found] == [alice_bad.token, bob_bad.token]
    page = await store.list_callbacks(CallbackFilter(outcome="ok"), None, 10)
    assert [c.token for c in page.callbacks] == [alice_ok.token]

    # A late delivery keeps its own outcome and leaves the callback's alone.
    await store.cancel(alice_bad.token, now_ms())
    late = await store.ingest(incoming(alice_bad.token, b'{"state": "done"}', json_type))
    assert late.delivery.late and late.delivery.outcome == "ok"
    assert (await store.get_callback(alice_bad.token)).outcome == "error"
