"""The client API with API keys: who may call it, and who sees which callback."""

from __future__ import annotations

import asyncio
import signal
import urllib.error
import urllib.request

import aiohttp
import orjson
import pytest
from aiohttp import web

from cbhub.app import create_app
from cbhub.config import ConfigError, load_config
from cbhub.http.keys import CALLER
from helpers import assert_error, bearer, mint, post_callback, registry_size, start_waiting, start_watching, woken_with

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True

KEYS = {
    "billing": "billing-key-5f0c2a9d7e1b",
    "crm": "crm-key-8a4e6b1d3c9f07",
    "ops": "ops-key-2d7f9e4a6c1b35",
}


@pytest.fixture
def keyed_config(make_config):
    return make_config(**{"auth.api_keys": KEYS, "auth.admin": ["ops"]})


@pytest.fixture
async def hub(start_hub, keyed_config):
    return await start_hub(keyed_config)


@pytest.fixture
async def billing(hub, session_as):
    return session_as(hub, KEYS["billing"])


@pytest.fixture
async def crm(hub, session_as):
    return session_as(hub, KEYS["crm"])


@pytest.fixture
async def ops(hub, session_as):
    return session_as(hub, KEYS["ops"])


async def test_every_v1_route_needs_a_key_and_says_so_with_www_authenticate(hub, billing):
    callback = await mint(billing)
    token = callback["token"]
    routes = [
        ("POST", "/v1/callbacks"),
        ("POST", "/v1/callbacks/batch"),
        ("GET", f"/v1/callbacks/{token}"),
        ("DELETE", f"/v1/callbacks/{token}"),
        ("GET", f"/v1/callbacks/{token}/wait?timeout=1"),
        ("GET", "/v1/deliveries"),
        ("GET", "/v1/deliveries/1/body"),
        ("GET", "/v1/groups/g"),
        ("GET", "/v1/groups/g/wait?timeout=1"),
        ("GET", "/v1/no-such-route"),
    ]
    wrong_keys = [
        ({}, "missing_api_key", 'Bearer realm="cbhub"'),
        (bearer("not-a-key-of-this-server"), "invalid_api_key", 'Bearer realm="cbhub", error="invalid_token"'),
        (bearer(KEYS["billing"] + "x"), "invalid_api_key", None),
        ({"Authorization": f"Basic {KEYS['billing']}"}, "invalid_api_key", None),
        ({"Authorization": "Bearer "}, "invalid_api_key", None),
    ]
    for method, path in routes:
        for headers, code, challenge in wrong_keys:
            response = await hub.request(method, path, headers=headers)
            await assert_error(response, 401, code)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            if challenge:
                assert response.headers["WWW-Authenticate"] == challenge

    # Nothing was minted or cancelled by the refused requests.
    state = await (await billing.get(f"/v1/callbacks/{token}")).json()
    assert state["status"] == "pending"
    assert (await (await hub.get("/v1/callbacks/" + token, headers=bearer(KEYS["ops"]))).json())["token"] == token
    assert registry_size(hub) == 0


async def test_the_public_callback_url_and_healthz_need_no_key(hub, billing):
    callback = await mint(billing)
    await post_callback(hub, callback, json={"done": True})  # the third party has no key
    assert (await hub.get("/healthz")).status == 200


async def test_a_callback_carries_the_name_of_the_key_that_minted_it_never_the_key(billing, crm):
    callback = await mint(billing, label="invoice-7")
    assert callback["created_by"] == "billing"
    batch = await (await crm.post("/v1/callbacks/batch", json={"count": 2})).json()
    assert {c["created_by"] for c in batch["callbacks"]} == {"crm"}
    for value in KEYS.values():
        assert value not in orjson.dumps([callback, batch]).decode()


async def test_another_keys_callback_is_404_as_if_it_did_not_exist(hub, billing, crm):
    callback = await mint(billing, group="invoices")
    token = callback["token"]
    delivered = await post_callback(hub, callback, json={"amount": 12})
    missing = "x" * 43

    for method, path in (
        ("GET", f"/v1/callbacks/{token}"),
        ("DELETE", f"/v1/callbacks/{token}"),
        ("GET", f"/v1/callbacks/{token}/wait?timeout=1"),
        ("GET", f"/v1/deliveries/{delivered['delivery_id']}/body"),
        ("GET", "/v1/groups/invoices"),
        ("GET", "/v1/groups/invoices/wait?timeout=1"),
    ):
        theirs = await crm.request(method, path)
        absent = await crm.request(method, path.replace(token, missing).replace("invoices", "nothing-here"))
        assert theirs.status == absent.status == 404, (method, path)
        assert await theirs.json() == await absent.json()

    for query in ("", f"?token={token}", "?group=invoices", "?correlation_id=x", "?wait=0.2"):
        listed = await (await crm.get(f"/v1/deliveries{query}")).json()
        assert listed["deliveries"] == [], query

    # The owner still sees it, untouched by the other key's DELETE.
    state = await (await billing.get(f"/v1/callbacks/{token}")).json()
    assert state["status"] == "received" and state["result"]["body"] == {"amount": 12}
    body = await billing.get(f"/v1/deliveries/{delivered['delivery_id']}/body")
    assert await body.read() == b'{"amount": 12}'
    assert registry_size(hub) == 0


async def test_an_admin_key_sees_and_awaits_every_callback(hub, billing, crm, ops):
    from_billing = await mint(billing, group="shared")
    from_crm = await mint(crm, group="shared")
    for callback in (from_billing, from_crm):
        state = await (await ops.get(f"/v1/callbacks/{callback['token']}")).json()
        assert state["created_by"] in ("billing", "crm")
    counts = await (await ops.get("/v1/groups/shared")).json()
    assert counts["total"] == 2
    assert (await (await billing.get("/v1/groups/shared")).json())["total"] == 1

    waiting = await start_watching(hub, from_crm["token"], ops)
    await post_callback(hub, from_crm, json={"n": 1})
    [delivery] = await woken_with(waiting)
    assert delivery["body"] == {"n": 1}
    cancelled = await ops.delete(f"/v1/callbacks/{from_billing['token']}")
    assert (await cancelled.json())["status"] == "cancelled"


async def test_a_long_poll_on_deliveries_never_wakes_for_another_keys_callback(hub, billing, crm):
    ours = await mint(crm, group="batch-1")
    theirs = await mint(billing, group="batch-1")
    correlated = {"RequestID": "req-1"}

    by_group = await start_waiting(hub, "/v1/deliveries?group=batch-1&wait=20", crm)
    by_correlation = await start_waiting(hub, "/v1/deliveries?correlation_id=req-1&wait=20", crm)
    everything = await start_waiting(hub, "/v1/deliveries?wait=20", crm)
    group_wait = await start_waiting(hub, "/v1/groups/batch-1/wait?timeout=20", crm)

    # The other key's callback receives, and is even completed: none of crm's waits may answer.
    await post_callback(hub, theirs, data=correlated)
    await post_callback(hub, ours, data=correlated)
    for task in (by_group, by_correlation, everything):
        answer = await (await asyncio.wait_for(task, 10)).json()
        assert [d["token"] for d in answer["deliveries"]] == [ours["token"]]
    counts = await (await asyncio.wait_for(group_wait, 10)).json()
    assert counts["total"] == 1 and counts["received"] == 1


async def test_idempotency_keys_are_scoped_by_api_key(billing, crm):
    headers = {"Idempotency-Key": "order-1"}
    first = await billing.post("/v1/callbacks", json={"label": "a"}, headers=headers)
    other = await crm.post("/v1/callbacks", json={"label": "a"}, headers=headers)
    again = await billing.post("/v1/callbacks", json={"label": "a"}, headers=headers)
    assert (first.status, other.status, again.status) == (201, 201, 200)
    first_token = (await first.json())["token"]
    assert (await other.json())["token"] != first_token
    assert (await again.json())["token"] == first_token


async def _app_with_realtime_route(config) -> web.Application:
    """The app as later realtime routes extend it: a websocket handler under /v1 that reads the
    caller the auth middleware identified."""
    app = create_app(config)

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"caller": request[CALLER].name})
        await ws.close()
        return ws

    app.router.add_get("/v1/test-realtime/ws", ws_handler)
    return app


async def test_a_websocket_takes_the_key_as_access_token_or_header(aiohttp_client, keyed_config):
    client = await aiohttp_client(await _app_with_realtime_route(keyed_config))
    for url, headers in (
        (f"/v1/test-realtime/ws?access_token={KEYS['crm']}", {}),
        ("/v1/test-realtime/ws", bearer(KEYS["crm"])),
    ):
        async with client.ws_connect(url, headers=headers) as ws:
            assert await ws.receive_json(timeout=5) == {"caller": "crm"}

    for url in ("/v1/test-realtime/ws", "/v1/test-realtime/ws?access_token=wrong-key-0000000000"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(url)
        assert refused.value.status == 401
        assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


async def test_access_token_counts_only_on_websocket_and_event_stream_requests(hub, billing):
    callback = await mint(billing)
    url = f"/v1/callbacks/{callback['token']}?access_token={KEYS['billing']}"

    plain = await hub.get(url)
    error = await assert_error(plain, 401, "invalid_api_key")
    assert "Authorization" in error["message"]

    event_stream = await hub.get(url, headers={"Accept": "text/event-stream"})
    assert event_stream.status == 200
    assert (await event_stream.json())["token"] == callback["token"]

    # A websocket upgrade to a plain route: the key is accepted (the route then answers as it
    # does, not with 401), and a wrong key is refused before any handler runs.
    with pytest.raises(aiohttp.WSServerHandshakeError) as accepted:
        await hub.ws_connect(url)
    assert accepted.value.status == 200
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await hub.ws_connect(url.replace(KEYS["billing"], KEYS["billing"][:-1]))
    assert refused.value.status == 401

    wrong = await hub.get(url.replace(KEYS["billing"], "nope"), headers={"Accept": "text/event-stream"})
    await assert_error(wrong, 401, "invalid_api_key")


async def test_without_keys_the_api_stays_open_and_anonymous(client):
    callback = await mint(client)
    assert callback["created_by"] is None
    assert (await client.get(f"/v1/callbacks/{callback['token']}")).status == 200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CBHUB_API_KEYS": "ci:short"}, "'ci' is shorter than 16"),
        ({"CBHUB_API_KEYS": "ci"}, "auth.api_keys"),
        ({"CBHUB_API_KEYS": "a b:0123456789abcdef0"}, "the name 'a b'"),
        ({"CBHUB_API_KEYS": "a:0123456789abcdef0,b:0123456789abcdef0"}, "'a' and 'b' have the same key"),
        ({"CBHUB_API_KEYS": "a:0123456789abcdef0", "CBHUB_AUTH_ADMIN": "root"}, "auth.admin: 'root'"),
        ({"CBHUB_AUTH_ALLOW_ANONYMOUS": "perhaps"}, "auth.allow_anonymous: 'perhaps'"),
    ],
)
def test_bad_keys_are_refused_naming_the_key_never_showing_it(env, message):
    with pytest.raises(ConfigError) as refused:
        load_config(env=env)
    assert message in str(refused.value)
    assert "0123456789abcdef0" not in str(refused.value) and "short" not in str(refused.value).replace("shorter", "")


def test_keys_come_from_a_file_table_or_the_environment(tmp_path):
    path = tmp_path / "cbhub.toml"
    path.write_text('[auth]\nadmin = ["ops"]\n[auth.api_keys]\nops = "ops-key-2d7f9e4a6c1b35"\n')
    from_file = load_config(path, env={})
    assert from_file.auth.api_keys == {"ops": KEYS["ops"]} and from_file.auth.admin == ("ops",)
    env = {"CBHUB_API_KEYS": f"billing:{KEYS['billing']}, ops:{KEYS['ops']}"}
    from_env = load_config(path, env=env)
    assert from_env.auth.api_keys == {"billing": KEYS["billing"], "ops": KEYS["ops"]}
    assert KEYS["ops"] not in repr(from_env)


def _request(url: str, key: str | None = None, data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=bearer(key) if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_serve_refuses_a_reachable_address_without_keys(serve_process):
    server = serve_process("--host", "0.0.0.0", "--port", "0")
    code, log = server.finish()
    assert code == 2
    assert "0.0.0.0" in log and "CBHUB_API_KEYS" in log and "allow_anonymous" in log
    assert "Traceback" not in log


def test_serve_on_a_reachable_address_with_allow_anonymous(serve_process):
    server = serve_process("--host", "0.0.0.0", "--port", "0", env={"CBHUB_AUTH_ALLOW_ANONYMOUS": "true"})
    url = server.wait_until_serving().replace("0.0.0.0", "127.0.0.1")
    assert _request(url + "/v1/callbacks", data=b"{}")[0] == 201
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish()[0] == 0


def test_serve_on_a_reachable_address_with_keys_from_the_environment(serve_process):
    env = {"CBHUB_API_KEYS": f"billing:{KEYS['billing']},crm:{KEYS['crm']}"}
    server = serve_process("--host", "0.0.0.0", "--port", "0", env=env)
    url = server.wait_until_serving().replace("0.0.0.0", "127.0.0.1")
    status, error = _request(url + "/v1/callbacks", data=b"{}")
    assert status == 401 and error["error"]["code"] == "missing_api_key"
    status, callback = _request(url + "/v1/callbacks", KEYS["billing"], data=b"{}")
    assert status == 201 and callback["created_by"] == "billing"
    assert _request(url + f"/v1/callbacks/{callback['token']}", KEYS["crm"])[0] == 404
    server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log
    assert "client API: 2 API keys (billing, crm)" in log, log
