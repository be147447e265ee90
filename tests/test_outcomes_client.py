"""Outcomes from the client side: the Python client's typed summary and first-error wait, and the
`cbhub wait --fail-on-error` and `cbhub group` commands, against a real server."""

from __future__ import annotations

import asyncio
import urllib.request
from urllib.parse import urlencode

import orjson
from helpers import MARKETING_CLOUD_FIELDS, eventually, post_callback, registry_size
from test_cli_client import cbhub

from cbhub.client import CbHub, DeliveryError, SyncCbHub

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def url_of(client) -> str:
    return f"http://{client.host}:{client.port}"


def marketing_cloud(request_id: str, error: tuple[str, str] | None = None) -> bytes:
    fields = {**MARKETING_CLOUD_FIELDS, "RequestID": request_id}
    if error is not None:
        fields.update(OverallStatusCode="Error", StatusCode="Error", ErrorCode=error[0], StatusMessage=error[1])
    return urlencode(fields).encode()


async def answer(client, token: str, request_id: str, error: tuple[str, str] | None = None) -> None:
    await post_callback(client, {"token": token}, data=marketing_cloud(request_id, error), headers=FORM)


async def test_the_client_reads_outcomes_and_waits_for_a_groups_first_error(client):
    async with CbHub(url_of(client)) as hub:
        handles = await hub.create_batch(4, group="nightly", label="UpsertDE")
        waiting = asyncio.create_task(hub.wait_group("nightly", timeout=30, until="first_error"))
        await eventually(lambda: registry_size(client) == 1)
        await answer(client, handles[0].token, "r0")
        await answer(client, handles[1].token, "r1", ("12014", "Invalid data extension"))
        summary = await asyncio.wait_for(waiting, 10)
        assert summary is not None
        assert (summary.ok, summary.error, summary.unknown, summary.pending) == (1, 1, 0, 2)
        [error] = summary.errors
        assert (error.token, error.label, error.correlation_id) == (handles[1].token, "UpsertDE", "r1")
        assert error.error == DeliveryError("12014", "Invalid data extension")
        assert sorted(summary.pending_tokens) == sorted(h.token for h in handles[2:])
        assert not summary.all_ok

        delivery = await handles[1].wait(timeout=5)
        assert delivery.outcome == "error" and str(delivery.error) == "12014: Invalid data extension"
        assert (await handles[1].refresh()).outcome == "error"
        assert (await handles[2].refresh()).outcome is None  # pending: no result yet

        # Only the errors, by page and as a stream.
        page = await hub.list_deliveries(group="nightly", outcome="error")
        assert [d.correlation_id for d in page.deliveries] == ["r1"]
        async for found in hub.deliveries(group="nightly", outcome="error"):
            assert found.correlation_id == "r1"
            break

        # Its own rule at mint.
        ruled = await hub.create(outcome={"field": "/state", "ok": ["done"], "error": ["failed"], "error_message": "/why"})
        await post_callback(client, {"token": ruled.token}, json={"state": "FAILED", "why": "disk full"})
        assert (await ruled.wait(timeout=5)).error == DeliveryError(None, "disk full")
        assert (await hub.wait_group("nightly", timeout=0.1)) is None  # still 2 pending


async def test_wait_fail_on_error_exits_4(client):
    async with CbHub(url_of(client)) as hub:
        failed, fine = await hub.create(), await hub.create()
    await answer(client, failed.token, "r-bad", ("310007", "Row already exists"))
    await answer(client, fine.token, "r-good")

    ran = await cbhub(client, "wait", failed.token, "--timeout", "5", "--fail-on-error")
    assert ran.code == 4
    assert orjson.loads(ran.out)["ErrorCode"] == "310007"  # the body is printed all the same
    assert ran.err == f"cbhub: callback {failed.token} answered with an error: 310007: Row already exists\n"
    assert (await cbhub(client, "wait", failed.token, "--timeout", "5")).code == 0  # without it, delivered
    assert (await cbhub(client, "wait", fine.token, "--timeout", "5", "--fail-on-error")).code == 0


async def test_group_prints_the_summary_and_exits_by_outcome(client):
    async with CbHub(url_of(client)) as hub:
        handles = await hub.create_batch(3, group="g-cli")
    for n, handle in enumerate(handles[:2]):
        await answer(client, handle.token, f"r{n}")

    ran = await cbhub(client, "group", "g-cli", "--json")
    assert ran.code == 5  # no error, one pending
    summary = orjson.loads(ran.out)
    assert summary["outcomes"] == {"ok": 2, "error": 0, "unknown": 0}
    assert summary["pending_tokens"] == [handles[2].token]

    ran = await cbhub(client, "group", "g-cli", "--wait", "--timeout", "0.3")
    assert (ran.code, ran.err) == (2, "cbhub: timed out after 0.3 s waiting for group g-cli\n")

    waiting = asyncio.create_task(cbhub(client, "group", "g-cli", "--wait", "--until", "first_error"))
    await eventually(lambda: registry_size(client) == 1)
    await answer(client, handles[2].token, "r2", ("12014", "Invalid data extension"))
    ran = await waiting
    assert ran.code == 4
    text = ran.text
    assert text.startswith("group g-cli: 3 callbacks, 2 ok · 1 error\n")
    assert f"  r2  12014     {handles[2].token}  Invalid data extension\n" in text
    assert "pending" in text and "  pending          0\n" in text

    async with CbHub(url_of(client)) as hub:
        [single] = await hub.create_batch(1, group="all-fine")
    await answer(client, single.token, "only")
    ran = await cbhub(client, "group", "all-fine", "--wait", "--timeout", "10")
    assert ran.code == 0 and ran.text.startswith("group all-fine: 1 callbacks, 1 ok\n")
    ran = await cbhub(client, "group", "no-such-group")
    assert ran.code == 1 and ran.err.startswith("cbhub: ")


def test_the_sync_client_mirrors_the_summary(serve_process):
    url = serve_process("--port", "0").wait_until_serving()
    with SyncCbHub(url) as hub:
        [handle] = hub.create_batch(1, group="sync")
        request = urllib.request.Request(
            handle.url, data=marketing_cloud("s1", ("1", "bad")), method="POST", headers=FORM
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        summary = hub.wait_group("sync", timeout=10, until="first_error")
        assert summary is not None and summary.error == 1 and summary.errors[0].correlation_id == "s1"
        assert hub.group("sync").error == 1
