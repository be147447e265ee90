"""Listing callbacks (GET /v1/callbacks) and the everything stream with `created` events, which
the inspector page is built on."""

from __future__ import annotations

import sqlite3

import orjson
import pytest
from helpers import MARKETING_CLOUD_FIELDS, mint, post_callback
from helpers import read_event

from cbhub.store.sqlite.migrations import MIGRATIONS

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True


async def listing(client, query: str = "") -> dict:
    response = await client.get(f"/v1/callbacks?{query}")
    assert response.status == 200, await response.text()
    return await response.json()


def tokens(page: dict) -> list[str]:
    return [callback["token"] for callback in page["callbacks"]]


async def test_callbacks_are_listed_newest_first_and_paged_backwards_by_creation(client):
    minted = [(await mint(client, label=f"n{n}"))["token"] for n in range(7)]
    page = await listing(client, "limit=3")
    assert tokens(page) == minted[::-1][:3]
    assert "result" not in page["callbacks"][0]
    assert page["callbacks"][0]["status"] == "pending" and page["callbacks"][0]["label"] == "n6"
    assert page["callbacks"][0]["callback_url"].endswith("/cb/" + minted[-1])
    seen = tokens(page)
    while page["next_before"] is not None:
        page = await listing(client, f"limit=3&before={page['next_before']}")
        seen += tokens(page)
    assert seen == minted[::-1]  # each once, newest first
    assert (await listing(client))["next_before"] is None  # default limit 50: all on one page


async def test_filters_by_group_label_status_and_correlation_id_combine(client):
    a = await mint(client, group="g", label="upsert")
    b = await mint(client, group="g", label="delete")
    c = await mint(client, group="other", label="upsert")
    await post_callback(client, a, data=MARKETING_CLOUD_FIELDS)
    await client.delete(f"/v1/callbacks/{b['token']}")
    assert tokens(await listing(client, "group=g")) == [b["token"], a["token"]]
    assert tokens(await listing(client, "label=upsert")) == [c["token"], a["token"]]
    assert tokens(await listing(client, "group=g&label=upsert")) == [a["token"]]
    assert tokens(await listing(client, "status=received")) == [a["token"]]
    assert tokens(await listing(client, "status=cancelled")) == [b["token"]]
    assert tokens(await listing(client, "status=pending&group=other")) == [c["token"]]
    assert tokens(await listing(client, f"correlation_id={MARKETING_CLOUD_FIELDS['RequestID']}")) == [a["token"]]
    assert tokens(await listing(client, "correlation_id=nobody")) == []
    assert tokens(await listing(client, "group=nobody")) == []


async def test_bad_listing_parameters_are_400_naming_the_parameter(client):
    for query, word in (
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=x", "limit"),
        ("before=0", "before"),
        ("before=-4", "before"),
        ("status=awaiting", "status"),
        ("group=" + "g" * 201, "group"),
    ):
        response = await client.get(f"/v1/callbacks?{query}")
        assert response.status == 400, query
        error = (await response.json())["error"]
        assert error["code"] == "invalid_parameter" and error["message"].startswith(word), query
    assert len((await listing(client, "limit=500"))["callbacks"]) == 0


async def test_the_everything_stream_sends_created_deliveries_and_statuses(client):
    async with client.get("/v1/events") as response:
        assert response.status == 200
        callback = await mint(client, label="fresh", group="g")
        event = await read_event(response)
        assert event is not None and event["event"] == "created" and "id" not in event
        created = orjson.loads(event["data"])
        assert created["token"] == callback["token"] and created["status"] == "pending"
        assert created["label"] == "fresh" and created["callback_url"] == callback["callback_url"]

        receipt = await post_callback(client, callback, data={"RequestID": "r-1"})
        event = await read_event(response)
        assert event is not None and event["event"] == "delivery" and event["id"] == str(receipt["delivery_id"])

        other = await mint(client)
        await client.delete(f"/v1/callbacks/{other['token']}")
        events = [await read_event(response), await read_event(response)]
        assert [e["event"] for e in events if e] == ["created", "status"]
        assert orjson.loads(events[1]["data"]) == {"token": other["token"], "status": "cancelled"}

        # A batch is told callback by callback; an idempotent repeat mints nothing and tells nothing.
        batch = await client.post("/v1/callbacks/batch", json={"count": 3}, headers={"Idempotency-Key": "k"})
        again = await client.post("/v1/callbacks/batch", json={"count": 3}, headers={"Idempotency-Key": "k"})
        assert batch.status == 201 and again.status == 200
        told = [orjson.loads((await read_event(response))["data"])["token"] for _ in range(3)]
        assert told == [c["token"] for c in (await batch.json())["callbacks"]]
        last = await mint(client, label="last")
        event = await read_event(response)
        assert orjson.loads(event["data"])["token"] == last["token"]  # nothing came in between


async def test_created_events_reach_filtered_streams_only_within_their_filters(client):
    async with client.get("/v1/events?group=g") as by_group, client.get("/v1/events?correlation_id=c") as by_id:
        await mint(client, group="other")
        inside = await mint(client, group="g")
        event = await read_event(by_group)
        assert event["event"] == "created" and orjson.loads(event["data"])["token"] == inside["token"]
        # A correlation id belongs to deliveries: its stream gets the delivery, no creation.
        await post_callback(client, inside, json={"correlation_id": "c"})
        event = await read_event(by_id)
        assert event["event"] == "delivery" and orjson.loads(event["data"])["token"] == inside["token"]
        assert (await read_event(by_group))["event"] == "delivery"


async def test_websocket_subscriptions_are_not_sent_creations(client):
    async with client.ws_connect("/v1/ws") as ws:
        await ws.send_json({"op": "subscribe", "id": "g", "group": "g"})
        assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
        callback = await mint(client, group="g")
        await post_callback(client, callback, json={"n": 1})
        frame = await ws.receive_json(timeout=5)
        assert frame["type"] == "delivery"  # not a creation first


async def test_a_creation_during_a_replay_is_sent_before_what_follows(client):
    old = await mint(client)
    await post_callback(client, old, json={"n": 0})
    async with client.get("/v1/events?after=0") as response:
        replayed = await read_event(response)
        assert replayed["event"] == "delivery"
        fresh = await mint(client)
        event = await read_event(response)
        assert event["event"] == "created" and orjson.loads(event["data"])["token"] == fresh["token"]


@pytest.mark.sqlite_only
async def test_a_version_1_database_gains_the_listing_indexes(start_hub, make_config, db_path):
    conn = sqlite3.connect(db_path)
    MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO callbacks (token, status, created_at, expires_at, label) VALUES ('tx', 'pending', 1, 4102444800000, 'old')"
    )
    conn.commit()
    conn.close()
    client = await start_hub(make_config())
    assert tokens(await listing(client, "label=old")) == ["tx"]
    await client.close()
    conn = sqlite3.connect(db_path)
    indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"callbacks_group_created", "callbacks_label_created", "deliveries_correlation_callback"} <= indexes
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


KEYS = {"alice": "alice-key-7f3e9a1c5b", "bob": "bob-key-4d8c2e6a0f91", "ops": "ops-key-2d7f9e4a6c1b35"}


async def test_with_keys_each_key_lists_and_streams_only_its_own_callbacks(start_hub, make_config, session_as):
    client = await start_hub(make_config(**{"auth.api_keys": KEYS, "auth.admin": ["ops"]}))
    alice, bob, ops = (session_as(client, KEYS[name]) for name in ("alice", "bob", "ops"))
    assert (await client.get("/v1/callbacks")).status == 401
    async with bob.get("/v1/events") as bobs, ops.get("/v1/events") as opss:
        assert bobs.status == 200 and opss.status == 200
        secret = await mint(alice, label="alice-secret")
        await post_callback(alice, secret, json={"n": 1})
        own = await mint(bob, label="bob-own")
        # Bob's stream tells of his own callback only; the admin's of everything, in order.
        event = await read_event(bobs)
        assert event["event"] == "created" and orjson.loads(event["data"])["token"] == own["token"]
        told = [(await read_event(opss))["event"] for _ in range(3)]
        assert told == ["created", "delivery", "created"]
    for session, expected in ((alice, [secret]), (bob, [own]), (ops, [own, secret])):
        listed = await (await session.get("/v1/callbacks")).json()
        assert tokens(listed) == [callback["token"] for callback in expected]
    found = await (await bob.get("/v1/callbacks?label=alice-secret")).json()
    assert found == {"callbacks": [], "next_before": None}
