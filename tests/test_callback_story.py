"""The user's story: mint a callback, hand out its URL, await what the third party POSTs."""

from __future__ import annotations

import asyncio
import time

from helpers import MARKETING_CLOUD_FIELDS, mint, post_callback, registry_size, start_waiting

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True


async def test_marketing_cloud_form_callback_wakes_a_waiting_long_poll(client):
    callback = await mint(client, label="UpsertDE", group="nightly-import")
    assert callback["status"] == "pending"
    assert callback["callback_url"] == f"http://{client.host}:{client.port}/cb/{callback['token']}"
    assert len(callback["token"]) >= 43  # 256 random bits, URL-safe base64

    waiting = await start_waiting(client, f"/v1/callbacks/{callback['token']}/wait?timeout=10")

    await post_callback(client, callback, data=MARKETING_CLOUD_FIELDS)
    response = await asyncio.wait_for(waiting, 5)
    assert response.status == 200
    answer = await response.json()
    assert answer["callback"]["status"] == "received"
    assert answer["callback"]["deliveries"] == 1
    [delivery] = answer["deliveries"]
    assert delivery["body"] == MARKETING_CLOUD_FIELDS  # empty StatusMessage/ErrorCode kept as ""
    assert delivery["content_type"] == "application/x-www-form-urlencoded"
    assert delivery["correlation_id"] == MARKETING_CLOUD_FIELDS["RequestID"]
    assert delivery["method"] == "POST"
    assert delivery["remote_addr"] == "127.0.0.1"
    assert delivery["parse_error"] is None and delivery["body_base64"] is None
    assert answer["callback"]["result"] == delivery


async def test_enrichment_callback_posted_three_times_keeps_the_latest_as_result(client):
    callback = await mint(client, label="Acme Logistics", metadata={"crm_id": 42})
    for employees in (100, 250, 400):
        await post_callback(client, callback, json={"companyName": "Acme Logistics", "employees": employees})

    response = await client.get(f"/v1/callbacks/{callback['token']}")
    state = await response.json()
    assert state["deliveries"] == 3
    assert state["metadata"] == {"crm_id": 42}
    assert state["result"]["body"] == {"companyName": "Acme Logistics", "employees": 400}

    response = await client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=1")
    answer = await response.json()
    assert [d["body"]["employees"] for d in answer["deliveries"]] == [100, 250, 400]
    ids = [d["id"] for d in answer["deliveries"]]
    assert ids == sorted(ids) and len(set(ids)) == 3

    # A cursor past the second delivery gives only the third.
    response = await client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=1&after={ids[1]}")
    assert [d["id"] for d in (await response.json())["deliveries"]] == [ids[2]]


async def test_a_wait_with_nothing_arriving_times_out_with_204(client):
    callback = await mint(client)
    started = time.monotonic()
    response = await client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=0.3")
    assert response.status == 204
    assert 0.25 <= time.monotonic() - started < 3
    assert registry_size(client) == 0


async def test_wait_after_the_latest_delivery_holds_until_the_next_one(client):
    callback = await mint(client)
    first = await post_callback(client, callback, json={"n": 1})
    waiting = await start_waiting(
        client, f"/v1/callbacks/{callback['token']}/wait?timeout=10&after={first['delivery_id']}"
    )
    await post_callback(client, callback, json={"n": 2})
    answer = await (await asyncio.wait_for(waiting, 5)).json()
    assert [d["body"] for d in answer["deliveries"]] == [{"n": 2}]


async def test_correlation_id_finds_and_awaits_a_callback_by_request_id(client):
    callback = await mint(client)
    request_id = "req-7c1f"
    waiting = await start_waiting(client, f"/v1/deliveries?correlation_id={request_id}&wait=10")
    # Another request id first: had it woken the long-poll, the answer below would hold its delivery.
    await post_callback(client, await mint(client), data={"RequestID": "someone-else"})
    await post_callback(client, callback, data={**MARKETING_CLOUD_FIELDS, "RequestID": request_id})

    answer = await (await asyncio.wait_for(waiting, 5)).json()
    [delivery] = answer["deliveries"]
    assert delivery["token"] == callback["token"]
    assert answer["next_after"] == delivery["id"]

    # Later, by lookup alone; JSON senders are correlated by their own key names too.
    await post_callback(client, await mint(client), json={"requestId": "json-1", "ok": True})
    for request_id_value, token in ((request_id, callback["token"]), ("json-1", None)):
        response = await client.get(f"/v1/deliveries?correlation_id={request_id_value}")
        [found] = (await response.json())["deliveries"]
        assert token is None or found["token"] == token


async def test_deliveries_filters_combine_and_page_with_next_after(client):
    group_a = [await mint(client, group="a") for _ in range(3)]
    other = await mint(client, group="b")
    for callback in group_a + [other]:
        await post_callback(client, callback, json={"token": callback["token"]})

    page = await (await client.get("/v1/deliveries?group=a&limit=2")).json()
    assert len(page["deliveries"]) == 2
    rest = await (await client.get(f"/v1/deliveries?group=a&after={page['next_after']}")).json()
    assert len(rest["deliveries"]) == 1
    tokens = {d["token"] for d in page["deliveries"] + rest["deliveries"]}
    assert tokens == {c["token"] for c in group_a}

    both = await (await client.get(f"/v1/deliveries?group=b&token={group_a[0]['token']}")).json()
    assert both == {"deliveries": [], "next_after": 0}

    empty = await (await client.get(f"/v1/deliveries?group=a&after={rest['next_after']}")).json()
    assert empty == {"deliveries": [], "next_after": rest["next_after"]}


async def test_a_deliveries_long_poll_ends_empty_when_nothing_matches(client):
    response = await client.get("/v1/deliveries?group=nobody&wait=0.3")
    assert response.status == 200
    assert await response.json() == {"deliveries": [], "next_after": 0}
    assert registry_size(client) == 0


async def test_binary_and_broken_bodies_are_stored_and_returned_byte_for_byte(client):
    callback = await mint(client)
    binary = bytes(range(256)) * 4
    broken_json = b'{"companyName": "Acme", "employees": '
    latin1_form = "City=K\xf6ln".encode("latin-1")  # not UTF-8
    cases = [
        (binary, "application/octet-stream"),
        (broken_json, "application/json"),
        (latin1_form, "application/x-www-form-urlencoded"),
        (b"\xff\xfe not text", "text/plain"),
    ]
    for raw, content_type in cases:
        await post_callback(client, callback, data=raw, headers={"Content-Type": content_type})

    answer = await (await client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=1")).json()
    deliveries = answer["deliveries"]
    assert len(deliveries) == len(cases)
    for delivery, (raw, content_type) in zip(deliveries, cases):
        assert delivery["size"] == len(raw)
        body = await client.get(f"/v1/deliveries/{delivery['id']}/body")
        assert body.status == 200
        assert await body.read() == raw
        assert body.headers["Content-Type"] == content_type

    binary_delivery, json_delivery, form_delivery, text_delivery = deliveries
    assert binary_delivery["body"] is None and binary_delivery["parse_error"] is None
    assert binary_delivery["body_base64"] is not None
    assert json_delivery["parse_error"].startswith("invalid JSON")
    assert json_delivery["body"] == broken_json.decode()
    assert form_delivery["body"] is None and form_delivery["parse_error"]
    assert text_delivery["body"] is None and text_delivery["parse_error"]


async def test_form_fields_repeated_become_lists_and_query_and_headers_are_kept(client):
    callback = await mint(client)
    url = callback["callback_url"] + "?source=mc&attempt=1"
    async with client.session.post(
        url,
        data="tag=a&tag=b&empty=",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Sender": "mc",
            "Authorization": "Basic c2VjcmV0",
            "Cookie": "session=1",
        },
    ) as response:
        assert response.status == 200
    delivery = (await (await client.get(f"/v1/callbacks/{callback['token']}")).json())["result"]
    assert delivery["body"] == {"tag": ["a", "b"], "empty": ""}
    assert delivery["query"] == {"source": "mc", "attempt": "1"}
    assert delivery["headers"]["X-Sender"] == "mc"
    assert not {"authorization", "cookie"} & {name.lower() for name in delivery["headers"]}


async def test_put_patch_and_text_bodies_are_accepted(client):
    callback = await mint(client)
    for method in ("PUT", "PATCH"):
        async with client.session.request(method, callback["callback_url"], data="done") as response:
            assert response.status == 200
    answer = await (await client.get(f"/v1/callbacks/{callback['token']}/wait")).json()
    assert [(d["method"], d["body"]) for d in answer["deliveries"]] == [("PUT", "done"), ("PATCH", "done")]


async def test_a_senders_retry_with_the_same_message_id_is_stored_once(client):
    callback = await mint(client)
    for header in ("webhook-id", "svix-id", "Idempotency-Key"):
        first = await post_callback(client, callback, json={"via": header}, headers={header: "msg_1"})
        again = await post_callback(client, callback, json={"via": header}, headers={header: "msg_1"})
        assert again == {**first, "duplicate": True}
    state = await (await client.get(f"/v1/callbacks/{callback['token']}")).json()
    assert state["deliveries"] == 3


async def test_idempotency_key_on_mint_returns_the_first_callback(client):
    headers = {"Idempotency-Key": "order-1234"}
    first = await client.post("/v1/callbacks", json={"label": "order"}, headers=headers)
    assert first.status == 201
    again = await client.post("/v1/callbacks", json={"label": "order"}, headers=headers)
    assert again.status == 200
    assert (await again.json())["token"] == (await first.json())["token"]

    different = await client.post("/v1/callbacks", json={"label": "other"}, headers=headers)
    assert different.status == 422
    assert (await different.json())["error"]["code"] == "idempotency_key_reused"

    batch = await client.post("/v1/callbacks/batch", json={"count": 3}, headers={"Idempotency-Key": "b-1"})
    batch_again = await client.post("/v1/callbacks/batch", json={"count": 3}, headers={"Idempotency-Key": "b-1"})
    assert (batch.status, batch_again.status) == (201, 200)
    assert (await batch.json()) == (await batch_again.json())


async def test_batch_mints_count_callbacks_in_one_group(client):
    response = await client.post(
        "/v1/callbacks/batch", json={"count": 5, "group": "g1", "ttl": 60, "label": "x", "metadata": {"k": 1}}
    )
    assert response.status == 201
    callbacks = (await response.json())["callbacks"]
    assert len(callbacks) == 5 and len({c["token"] for c in callbacks}) == 5
    assert all(c["group"] == "g1" and c["metadata"] == {"k": 1} for c in callbacks)
    counts = await (await client.get("/v1/groups/g1")).json()
    pending = [c["token"] for c in callbacks]
    assert counts == {
        "group": "g1", "total": 5, "pending": 5, "received": 0, "expired": 0, "cancelled": 0, "overdue": 0,
        "outcomes": {"ok": 0, "error": 0, "unknown": 0}, "errors": [], "pending_tokens": pending,
    }


async def test_cancel_wakes_the_waiter_and_closes_the_url(client):
    callback = await mint(client)
    waiting = await start_waiting(client, f"/v1/callbacks/{callback['token']}/wait?timeout=10")
    response = await client.delete(f"/v1/callbacks/{callback['token']}")
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"

    woken = await asyncio.wait_for(waiting, 5)
    assert woken.status == 200
    answer = await woken.json()
    assert answer["callback"]["status"] == "cancelled" and answer["deliveries"] == []

    again = await client.delete(f"/v1/callbacks/{callback['token']}")
    assert again.status == 200 and (await again.json())["status"] == "cancelled"
    # A sender that calls back now is not refused: the delivery is kept as late.
    async with client.session.post(callback["callback_url"], data="late") as late:
        assert late.status == 200 and (await late.json())["late"] is True
    # A wait on a cancelled callback answers at once.
    response = await client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=10")
    assert (await response.json())["callback"]["status"] == "cancelled"


async def test_expiry_wakes_the_waiter_within_a_second(client):
    callback = await mint(client, ttl=1)
    started = time.monotonic()
    response = await client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=10")
    elapsed = time.monotonic() - started
    assert response.status == 200
    assert (await response.json())["callback"]["status"] == "expired"
    assert elapsed < 2.5
    async with client.session.post(callback["callback_url"], data="late") as late:
        assert late.status == 200 and (await late.json())["late"] is True
    assert registry_size(client) == 0


async def test_a_received_callback_stays_received_after_expiry_and_keeps_later_ones_as_late(client):
    callback = await mint(client, ttl=1)
    await post_callback(client, callback, json={"done": True})
    delivery_id = (await (await client.get(f"/v1/callbacks/{callback['token']}")).json())["result"]["id"]
    # Waiting for more on a callback about to close answers when it closes, not at the timeout.
    started = time.monotonic()
    response = await client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=10&after={delivery_id}")
    assert response.status == 200 and time.monotonic() - started < 2.5
    answer = await response.json()
    assert answer["callback"]["status"] == "received" and answer["deliveries"] == []
    async with client.session.post(callback["callback_url"], data="late") as late:
        assert late.status == 200 and (await late.json())["late"] is True


async def test_unknown_tokens_are_404_everywhere(client):
    missing = "x" * 43
    for method, path in (
        ("GET", f"/v1/callbacks/{missing}"),
        ("DELETE", f"/v1/callbacks/{missing}"),
        ("GET", f"/v1/callbacks/{missing}/wait?timeout=1"),
        ("POST", f"/cb/{missing}"),
        ("POST", f"/cb/{'y' * 500}"),
        ("GET", "/v1/deliveries/999/body"),
        ("GET", "/v1/deliveries/abc/body"),
        ("GET", "/v1/groups/none"),
        ("GET", "/v1/groups/none/wait?timeout=1"),
    ):
        response = await client.request(method, path)
        assert response.status == 404, (method, path)
        error = (await response.json())["error"]
        assert error["code"].endswith("not_found") and error["message"]
    assert registry_size(client) == 0


async def test_body_over_the_limit_is_413_and_nothing_is_stored(start_hub, make_config):
    client = await start_hub(make_config(**{"limits.max_body_bytes": 1000}))
    callback = await mint(client)
    async with client.session.post(callback["callback_url"], data=b"x" * 1001) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"
    await post_callback(client, callback, data=b"x" * 1000)
    state = await (await client.get(f"/v1/callbacks/{callback['token']}")).json()
    assert state["deliveries"] == 1 and state["result"]["size"] == 1000


async def test_healthz_answers_when_the_store_does(client):
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_headers_that_are_not_utf8_are_kept_as_latin1_text(client):
    callback = await mint(client)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    body = b"a=1"
    writer.write(
        b"POST /cb/" + callback["token"].encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"X-City: K\xf6ln\r\nContent-Type: text/pl\xe4in\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert b" 200 " in status_line
    delivery = (await (await client.get(f"/v1/callbacks/{callback['token']}")).json())["result"]
    assert delivery["headers"]["X-City"] == "Köln"
    assert delivery["content_type"] == "text/pläin"
