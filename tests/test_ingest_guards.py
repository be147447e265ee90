"""Guards on the public callback URL: source allowlists behind trusted proxies, and rate limits.

In every refusal the request is answered with the error shape, nothing is stored, and a client
long-polling the callback is woken only by the genuine delivery that follows.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from cbhub.app import create_app
from cbhub.http.keys import HUB
from cbhub.http.ratelimit import RateLimiter
from helpers import assert_error, mint, post_callback, registry_size, start_watching, woken_with

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True


async def deliveries_of(client, callback) -> int:
    return (await (await client.get(f"/v1/callbacks/{callback['token']}")).json())["deliveries"]


async def test_a_callback_minted_with_allow_ips_refuses_other_addresses(client):
    elsewhere = await mint(client, allow_ips=["203.0.113.0/24", "2001:db8::/32"])
    assert elsewhere["allow_ips"] == ["203.0.113.0/24", "2001:db8::/32"]
    watching = await start_watching(client, elsewhere["token"])

    # The test client connects from 127.0.0.1; without a trusted proxy, headers change nothing.
    for headers in ({}, {"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}):
        async with client.post(f"/cb/{elsewhere['token']}", json={"forged": True}, headers=headers) as refused:
            error = await assert_error(refused, 403, "address_not_allowed")
            assert "203.0.113" not in error["message"]
    assert await deliveries_of(client, elsewhere) == 0
    assert not watching.done()

    local = await mint(client, allow_ips=["127.0.0.1"])
    assert local["allow_ips"] == ["127.0.0.1/32"]
    await post_callback(client, local, json={"ok": True})
    watching.cancel()


@pytest.fixture
async def behind_proxy(start_hub, make_config):
    """cbhub behind a reverse proxy on this host, which is trusted, and an internal hop."""
    return await start_hub(make_config(**{"server.trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]}))


async def test_behind_a_trusted_proxy_the_forwarded_client_address_is_checked_and_recorded(behind_proxy):
    client = behind_proxy
    callback = await mint(client, allow_ips=["203.0.113.0/24", "2001:db8::/32"])
    watching = await start_watching(client, callback["token"])

    refused_headers = [
        {"X-Forwarded-For": "198.51.100.7"},
        # A client prepending an allowed address: its proxy appended the real one after it.
        {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"},
        {"X-Forwarded-For": "203.0.113.9, 198.51.100.7, 10.1.2.3"},
        {"Forwarded": 'for="[2001:db9::1]:443"'},
        {"Forwarded": "for=unknown"},
        {"X-Forwarded-For": "not-an-address"},
        {},  # no header: the proxy itself, which is not an allowed sender
    ]
    for headers in refused_headers:
        async with client.post(f"/cb/{callback['token']}", data=b"forged", headers=headers) as refused:
            await assert_error(refused, 403, "address_not_allowed")
    assert await deliveries_of(client, callback) == 0
    assert client.app[HUB].refused["address"] == len(refused_headers)

    accepted = [
        ({"X-Forwarded-For": "203.0.113.9"}, "203.0.113.9"),
        ({"X-Forwarded-For": "198.51.100.7, 203.0.113.10, 10.1.2.3"}, "203.0.113.10"),
        ({"X-Forwarded-For": "2001:db8::7"}, "2001:db8::7"),
        ({"Forwarded": 'for="[2001:db8::8]:4711";proto=https, for=10.9.9.9'}, "2001:db8::8"),
        ({"Forwarded": "for=203.0.113.11:443"}, "203.0.113.11"),
        ({"X-Forwarded-For": "::ffff:203.0.113.12"}, "203.0.113.12"),
    ]
    for number, (headers, _) in enumerate(accepted):
        await post_callback(client, callback, json={"n": number}, headers=headers)

    [first] = await woken_with(watching)
    assert first["body"] == {"n": 0} and first["remote_addr"] == "203.0.113.9"
    answer = await (await client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=1")).json()
    assert [d["remote_addr"] for d in answer["deliveries"]] == [address for _, address in accepted]


async def test_the_server_wide_allowlist_guards_every_callback_url(start_hub, make_config):
    client = await start_hub(
        make_config(
            **{
                "ingest.allow_ips": ["192.0.2.0/24"],
                "server.trusted_proxies": ["127.0.0.1"],
                "limits.max_body_bytes": 100,
            }
        )
    )
    callback = await mint(client)
    watching = await start_watching(client, callback["token"])
    outsider = {"X-Forwarded-For": "198.51.100.1"}
    # An unknown token tells an outsider nothing either, and its body is not even read.
    for token, body in ((callback["token"], b"x"), ("x" * 43, b"x"), (callback["token"], b"x" * 1000)):
        async with client.post(f"/cb/{token}", data=body, headers=outsider) as refused:
            await assert_error(refused, 403, "address_not_allowed")
    assert client.app[HUB].refused["address"] == 3
    await post_callback(client, callback, data="real", headers={"X-Forwarded-For": "192.0.2.44"})
    [delivery] = await woken_with(watching)
    assert delivery["body"] == "real" and delivery["remote_addr"] == "192.0.2.44"


async def test_ipv6_senders_are_checked_on_a_real_ipv6_connection(aiohttp_client, make_config):
    client = await aiohttp_client(create_app(make_config()), server_kwargs={"host": "::1"})
    only_v4 = await mint(client, allow_ips=["127.0.0.0/8"])
    only_v6 = await mint(client, allow_ips=["::1/128"])
    watching = await start_watching(client, only_v4["token"])
    async with client.post(f"/cb/{only_v4['token']}", data=b"x") as refused:
        await assert_error(refused, 403, "address_not_allowed")
    await post_callback(client, only_v6, data=b"x")
    state = await (await client.get(f"/v1/callbacks/{only_v6['token']}")).json()
    assert state["result"]["remote_addr"] == "::1"
    assert await deliveries_of(client, only_v4) == 0 and not watching.done()
    watching.cancel()


@pytest.mark.parametrize(
    ("allow_ips", "named"),
    [
        ("10.0.0.0/8", "must be a list"),
        (["10.0.0.0/33"], "'10.0.0.0/33'"),
        (["hooks.example.com"], "'hooks.example.com'"),
        ([42], "42"),
        (["10.0.0.1"] * 257, "at most 256"),
    ],
)
async def test_a_bad_allow_ips_at_mint_is_400_naming_the_field(client, allow_ips, named):
    response = await client.post("/v1/callbacks", json={"allow_ips": allow_ips, "group": "bad"})
    error = await assert_error(response, 400, "invalid_field")
    assert error["message"].startswith("allow_ips:") and named in error["message"]
    assert (await client.get("/v1/groups/bad")).status == 404


async def test_a_source_address_past_its_burst_gets_429_with_retry_after(start_hub, make_config):
    # 2 requests, then one every 100 s: the third within the test is always over the limit.
    config = make_config(
        **{"ingest.rate_per_ip": "0.01", "ingest.rate_burst": "2", "server.trusted_proxies": ["127.0.0.1"]}
    )
    client = await start_hub(config)
    callback = await mint(client)
    watching = await start_watching(client, callback["token"])
    sender = {"X-Forwarded-For": "203.0.113.5"}

    async with client.post("/cb/" + "x" * 43, data=b"probe", headers=sender) as probe:
        assert probe.status == 404  # probing for tokens spends the budget too
    await post_callback(client, callback, data="first", headers=sender)
    for _ in range(3):
        async with client.post(f"/cb/{callback['token']}", data=b"flood", headers=sender) as limited:
            await assert_error(limited, 429, "rate_limited")
            assert 1 <= int(limited.headers["Retry-After"]) <= 100

    # Another address has its own budget.
    await post_callback(client, callback, data="second", headers={"X-Forwarded-For": "203.0.113.6"})
    [first] = await woken_with(watching)
    assert first["body"] == "first"
    answer = await (await client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=1")).json()
    assert [d["body"] for d in answer["deliveries"]] == ["first", "second"]
    assert registry_size(client) == 0


async def test_a_rate_of_zero_turns_the_limit_off(start_hub, make_config):
    client = await start_hub(make_config(**{"ingest.rate_per_ip": "0", "ingest.rate_burst": "1"}))
    callback = await mint(client)
    for n in range(30):
        await post_callback(client, callback, json={"n": n})
    assert await deliveries_of(client, callback) == 30


async def test_a_burst_of_real_callbacks_from_one_address_is_all_stored_with_the_defaults(start_hub, make_config):
    """Marketing Cloud posts every result of a large batch from one address, and never retries
    one answered other than 200: with the defaults, none may be refused for a rate."""
    config = make_config()
    assert (config.ingest.rate_per_ip, config.ingest.refusal_rate_per_ip) == (0.0, 5.0)  # the defaults
    client = await start_hub(config)
    callbacks = []
    for _ in range(2):
        response = await client.post("/v1/callbacks/batch", json={"count": 1000, "group": "burst"})
        callbacks += (await response.json())["callbacks"]

    connections = asyncio.Semaphore(32)

    async def send(n: int, callback: dict) -> int:
        async with connections, client.post(f"/cb/{callback['token']}", data={"RequestID": str(n)}) as response:
            return response.status

    statuses = await asyncio.gather(*(send(n, callback) for n, callback in enumerate(callbacks)))
    assert statuses == [200] * 2000
    group = await (await client.get("/v1/groups/burst")).json()
    assert (group["received"], group["pending"]) == (2000, 0)

    # Probing for tokens from that address: refused requests past the burst of 50 get 429 ...
    answers = []
    for _ in range(200):
        async with client.post(f"/cb/{secrets.token_urlsafe(33)}", data=b"probe") as probe:
            answers.append((probe.status, probe.headers.get("Retry-After")))
    assert answers[:50] == [(404, None)] * 50
    assert (429, "1") in answers[50:]
    assert all(status == 429 and int(retry) >= 1 for status, retry in answers if status != 404)
    # ... while a real callback from the same address, right after, is stored as ever.
    fresh = await mint(client)
    await post_callback(client, fresh, json={"real": True})
    assert await deliveries_of(client, fresh) == 1


async def test_a_refusal_rate_of_zero_turns_the_refusal_limit_off(start_hub, make_config):
    client = await start_hub(make_config(**{"ingest.refusal_rate_per_ip": "0"}))
    for _ in range(80):
        async with client.post(f"/cb/{secrets.token_urlsafe(33)}", data=b"probe") as probe:
            assert probe.status == 404


def test_token_buckets_refill_at_the_rate_and_stay_bounded():
    now = [1000.0]
    limiter = RateLimiter(rate=2, burst=4, max_keys=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(4)] == [0.0] * 4
    assert limiter.take("a") == pytest.approx(0.5)  # one token comes back in half a second
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)

    # Idle buckets (full again) are forgotten; past max_keys the least recently used goes.
    now[0] += 10
    for key in ("b", "c", "d", "e"):
        limiter.take(key)
    assert len(limiter) <= 3
    assert limiter.take("b") == 0.0 and limiter.take("e") == 0.0
