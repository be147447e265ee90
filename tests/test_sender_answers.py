"""What the sender hears: a mint's "response" (a fixed answer or an echo), the server default
[ingest.response], the GET verification handshake, and refusals that keep cbhub's JSON errors.
Against a real server on both backends."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from helpers import assert_error, mint

from cbhub.config import ConfigError, load_config

ALL_BACKENDS = True

FIXED = {
    "status": 202,
    "content_type": "application/xml",
    "body": "<ack>ok</ack>",
    "headers": {"X-Ack": "yes", "Cache-Control": "no-store"},
}


async def _deliveries(client, token: str) -> list[dict]:
    response = await client.get(f"/v1/deliveries?token={token}")
    return (await response.json())["deliveries"]


def _assert_answered(response, text: str, status: int, content_type: str) -> None:
    assert response.status == status, text
    assert response.headers["Content-Type"] == content_type
    # Whatever its type, a body cbhub did not write runs nothing in a browser on cbhub's origin.
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


async def test_a_fixed_answer_on_first_duplicate_and_late_deliveries(client):
    callback = await mint(client, response=FIXED)
    assert callback["response"] == FIXED
    token = callback["token"]
    for _ in range(2):  # the first, then the sender's retry (stored once)
        response = await client.post(f"/cb/{token}", json={"a": 1}, headers={"webhook-id": "msg-1"})
        _assert_answered(response, await response.text(), 202, "application/xml")
        assert await response.text() == "<ack>ok</ack>"
        assert response.headers["X-Ack"] == "yes" and response.headers["Cache-Control"] == "no-store"
    assert (await client.delete(f"/v1/callbacks/{token}")).status == 200
    late = await client.post(f"/cb/{token}", data="after the end")
    _assert_answered(late, await late.text(), 202, "application/xml")
    deliveries = await _deliveries(client, token)
    assert [d["late"] for d in deliveries] == [False, True]
    expected = {"status": 202, "content_type": "application/xml", "body": "<ack>ok</ack>", "headers": FIXED["headers"]}
    assert [d["answered"] for d in deliveries] == [expected, expected]
    stored = await (await client.get(f"/v1/callbacks/{token}")).json()
    assert stored["response"] == FIXED and stored["result"]["answered"] == expected


async def test_without_a_response_spec_the_receipt_is_unchanged_and_nothing_is_recorded(client):
    callback = await mint(client)
    assert callback["response"] is None
    response = await client.post(f"/cb/{callback['token']}", json={})
    assert response.headers["Content-Type"] == "application/json"
    receipt = await response.json()
    assert receipt["ok"] is True and receipt["duplicate"] is False
    [delivery] = await _deliveries(client, callback["token"])
    assert delivery["answered"] is None


async def test_defaults_of_a_fixed_answer(client):
    callback = await mint(client, response={"body": "thanks"})
    assert callback["response"] == {"status": 200, "content_type": "text/plain; charset=utf-8", "body": "thanks", "headers": {}}
    response = await client.post(f"/cb/{callback['token']}", data="x")
    _assert_answered(response, "", 200, "text/plain; charset=utf-8")
    assert await response.text() == "thanks"


async def test_refusals_keep_cbhubs_json_errors(start_hub, make_config):
    client = await start_hub(make_config(**{"callbacks.keep_late": "false", "limits.max_body_bytes": "400"}))
    await assert_error(await client.post("/cb/no-such-token", data="x"), 404, "callback_not_found")
    walled = await mint(client, response=FIXED, allow_ips=["10.0.0.0/8"])
    await assert_error(await client.post(f"/cb/{walled['token']}", data="x"), 403, "address_not_allowed")
    signed = await mint(client, response=FIXED, verify={"scheme": "hmac-sha256", "secret": "s3cret", "header": "X-Sig"})
    await assert_error(await client.post(f"/cb/{signed['token']}", data="x", headers={"X-Sig": "bad"}), 401, "signature_invalid")
    good = hmac.new(b"s3cret", b"x", hashlib.sha256).hexdigest()
    response = await client.post(f"/cb/{signed['token']}", data="x", headers={"X-Sig": good})
    assert response.status == 202 and await response.text() == "<ack>ok</ack>"
    big = await mint(client, response=FIXED)
    await assert_error(await client.post(f"/cb/{big['token']}", data="x" * 401), 413, "payload_too_large")
    assert (await client.delete(f"/v1/callbacks/{big['token']}")).status == 200
    await assert_error(await client.post(f"/cb/{big['token']}", data="x"), 410, "callback_cancelled")
    # A handshake on a closed callback is refused as a delivery would be.
    closed = await mint(client, response={"echo": "query:c"})
    assert (await client.get(f"/cb/{closed['token']}?c=1")).status == 200
    assert (await client.delete(f"/v1/callbacks/{closed['token']}")).status == 200
    await assert_error(await client.get(f"/cb/{closed['token']}?c=1"), 410, "callback_cancelled")


async def test_echo_answers_the_named_query_parameter_form_field_or_json_field(client):
    by_query = await mint(client, response={"echo": "query:hub.challenge"})
    assert by_query["response"] == {"echo": "query:hub.challenge"}
    response = await client.post(f"/cb/{by_query['token']}?hub.challenge=abc%20123&hub.challenge=2", data="{}")
    _assert_answered(response, "", 200, "text/plain; charset=utf-8")
    assert await response.text() == "abc 123"  # the first of a repeated one

    by_form = await mint(client, response={"echo": "form:challenge"})
    response = await client.post(f"/cb/{by_form['token']}", data={"challenge": "f-1", "other": "x"})
    assert await response.text() == "f-1"

    by_json = await mint(client, response={"echo": "json:challenge"})
    slack = {"token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}
    response = await client.post(f"/cb/{by_json['token']}", json=slack)
    assert await response.text() == slack["challenge"]
    response = await client.post(f"/cb/{by_json['token']}", json={"challenge": 42})
    assert await response.text() == "42"  # not a string: its JSON text
    response = await client.post(f"/cb/{by_json['token']}", json={"challenge": "c" * 5000})
    assert await response.text() == "c" * 4096  # bounded as a fixed body is

    # Every one of them was stored, with what it was answered.
    answered = [d["answered"]["body"] for d in await _deliveries(client, by_json["token"])]
    assert answered == [slack["challenge"], "42", "c" * 4096]


async def test_echo_of_a_missing_value_is_an_empty_200_and_the_delivery_is_stored(client):
    callback = await mint(client, response={"echo": "json:challenge"})
    for kwargs in ({"json": {"other": 1}}, {"data": "challenge=not-json"}, {"json": [1, 2]}):
        response = await client.post(f"/cb/{callback['token']}", **kwargs)
        _assert_answered(response, "", 200, "text/plain; charset=utf-8")
        assert await response.text() == ""
    assert len(await _deliveries(client, callback["token"])) == 3


async def test_a_get_handshake_is_answered_by_echo_and_not_stored(client):
    callback = await mint(client, response={"echo": "query:hub.challenge"})
    token = callback["token"]
    query = "hub.mode=subscribe&hub.topic=https://example.com/feed&hub.challenge=c-9&hub.lease_seconds=86400"
    response = await client.get(f"/cb/{token}?{query}")
    _assert_answered(response, await response.text(), 200, "text/plain; charset=utf-8")
    assert await response.text() == "c-9"
    stored = await (await client.get(f"/v1/callbacks/{token}")).json()
    assert stored["status"] == "pending" and stored["deliveries"] == 0
    assert await _deliveries(client, token) == []


async def test_a_get_handshake_is_guarded_like_a_delivery_but_not_signed(client):
    await assert_error(await client.get("/cb/no-such-token?hub.challenge=x"), 404, "callback_not_found")
    walled = await mint(client, response={"echo": "query:c"}, allow_ips=["10.0.0.0/8"])
    await assert_error(await client.get(f"/cb/{walled['token']}?c=x"), 403, "address_not_allowed")
    # The handshakes of WebSub and Meta carry no signature: a callback that verifies its
    # deliveries still answers its GET.
    signed = await mint(client, response={"echo": "query:c"}, verify={"scheme": "hmac-sha256", "secret": "s", "header": "X-Sig"})
    response = await client.get(f"/cb/{signed['token']}?c=ok")
    assert response.status == 200 and await response.text() == "ok"


async def test_get_without_echo_stays_405(client):
    for fields in ({}, {"response": FIXED}):
        callback = await mint(client, **fields)
        response = await client.get(f"/cb/{callback['token']}?hub.challenge=x")
        await assert_error(response, 405, "method_not_allowed")
        assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"POST", "PUT", "PATCH"}
    response = await client.delete(f"/cb/{callback['token']}")
    await assert_error(response, 405, "method_not_allowed")


async def test_the_server_default_answers_callbacks_minted_without_a_response(start_hub, make_config):
    overrides = {
        "ingest.response.status": "201",
        "ingest.response.body": '{"received": true}',
        "ingest.response.content_type": "application/json",
        "ingest.response.headers": {"X-Hub": "cbhub"},
    }
    client = await start_hub(make_config(**overrides))
    plain = await mint(client)
    response = await client.post(f"/cb/{plain['token']}", data="x")
    _assert_answered(response, "", 201, "application/json")
    assert await response.json() == {"received": True} and response.headers["X-Hub"] == "cbhub"
    [delivery] = await _deliveries(client, plain["token"])
    assert delivery["answered"]["status"] == 201 and delivery["answered"]["body"] == '{"received": true}'
    # A mint's own spec wins over the default.
    own = await mint(client, response={"echo": "query:c"})
    response = await client.post(f"/cb/{own['token']}?c=mine", data="x")
    assert response.status == 200 and await response.text() == "mine"


def test_a_bad_server_default_is_refused_at_start_naming_the_key():
    with pytest.raises(ConfigError, match=r"ingest\.response\.headers: Set-Cookie may not be set"):
        load_config(env={"CBHUB_INGEST_RESPONSE_HEADERS": "Set-Cookie:a=b"})
    with pytest.raises(ConfigError, match=r"ingest\.response\.status"):
        load_config(env={"CBHUB_INGEST_RESPONSE_STATUS": "302"})
    assert load_config(env={}).ingest.response.spec() is None


@pytest.mark.parametrize(
    ("response", "field"),
    [
        ("text", "response"),
        ({"status": 302}, "response.status"),
        ({"status": True}, "response.status"),
        ({"body": "x" * 4097}, "response.body"),
        ({"content_type": ""}, "response.content_type"),
        ({"content_type": "text/plain\r\nX-Injected: 1"}, "response.content_type"),
        ({"headers": {f"X-{i}": "v" for i in range(11)}}, "response.headers"),
        ({"headers": {"Set-Cookie": "a=b"}}, "response.headers"),
        ({"headers": {"proxy-authenticate": "x"}}, "response.headers"),
        ({"headers": {"Connection": "close"}}, "response.headers"),
        ({"headers": {"Content-Length": "1"}}, "response.headers"),
        ({"headers": {"Access-Control-Allow-Origin": "*"}}, "response.headers"),
        ({"headers": {"Bad Name": "v"}}, "response.headers"),
        ({"headers": {"X-Ok": "line\nbreak"}}, "response.headers.X-Ok"),
        ({"echo": "xml:challenge"}, "response.echo"),
        ({"echo": "query:"}, "response.echo"),
        ({"echo": "query:c", "status": 200}, "response.status"),
        ({"colour": "blue"}, "response.colour"),
    ],
)
async def test_a_bad_spec_is_refused_at_mint_naming_the_field(client, response, field):
    error = await assert_error(await client.post("/v1/callbacks", json={"response": response}), 400, "invalid_field")
    assert error["message"].startswith(f"{field}:"), error


async def test_the_largest_spec_is_taken(client):
    headers = {f"X-H{i}": "v" * 1000 for i in range(10)}
    callback = await mint(client, response={"status": 299, "body": "é" * 4096, "headers": headers})
    response = await client.post(f"/cb/{callback['token']}", data="x")
    assert response.status == 299 and await response.text() == "é" * 4096
    assert response.headers["X-H9"] == "v" * 1000


async def test_a_different_response_under_the_same_idempotency_key_is_a_conflict(client):
    key = {"Idempotency-Key": "k-1"}
    first = await client.post("/v1/callbacks", json={"response": {"body": "a"}}, headers=key)
    assert first.status == 201
    again = await client.post("/v1/callbacks", json={"response": {"body": "a"}}, headers=key)
    assert again.status == 200
    other = await client.post("/v1/callbacks", json={"response": {"body": "b"}}, headers=key)
    await assert_error(other, 422, "idempotency_key_reused")


async def test_the_spec_and_each_answer_survive_a_restart(start_hub, config):
    first = await start_hub(config)
    callback = await mint(first, response=FIXED)
    token = callback["token"]
    assert (await first.post(f"/cb/{token}", data="before")).status == 202
    await first.close()

    again = await start_hub(config)
    stored = await (await again.get(f"/v1/callbacks/{token}")).json()
    assert stored["response"] == FIXED
    response = await again.post(f"/cb/{token}", data="after")
    assert response.status == 202 and await response.text() == "<ack>ok</ack>"
    answered = [d["answered"]["status"] for d in await _deliveries(again, token)]
    assert answered == [202, 202]
