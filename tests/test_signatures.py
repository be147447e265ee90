"""Signed callbacks: a request that does not prove its sender is refused with 401, stored
nowhere, wakes nobody, and is counted and logged without the secret.

Standard Webhooks signatures are made by the `standardwebhooks` package, as a real sender makes
them; GitHub-style signatures the way GitHub's documentation computes them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from standardwebhooks import Webhook

from cbhub.http.keys import HUB
from helpers import assert_error, mint, post_callback, start_watching, woken_with

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True

SECRET = "whsec_" + base64.b64encode(b"the sender's 32-byte signing key").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody else's signing key.....").decode()
THIRD_SECRET = "whsec_" + base64.b64encode(b"a third party's signing key.....").decode()
GITHUB_SECRET = "It's a Secret to Everybody"


def signed(body: bytes, msg_id: str, secret: str = SECRET, at: datetime | None = None) -> dict[str, str]:
    """The headers a Standard Webhooks sender puts on `body`."""
    at = at or datetime.now(timezone.utc)
    signature = Webhook(secret).sign(msg_id, at, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


def github_signature(body: bytes, secret: str = GITHUB_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), msg=body, digestmod=hashlib.sha256).hexdigest()


async def refused(client, callback, body: bytes, headers: dict[str, str]) -> dict:
    async with client.post(f"/cb/{callback['token']}", data=body, headers=headers) as response:
        return await assert_error(response, 401, "signature_invalid")


async def test_standard_webhooks_signatures_are_verified(client, caplog):
    caplog.set_level(logging.INFO, logger="cbhub")
    callback = await mint(client, verify={"scheme": "standard-webhooks", "secret": SECRET})
    assert callback["verify"] == {"scheme": "standard-webhooks"}
    watching = await start_watching(client, callback["token"])

    body = b'{"companyName": "Acme Logistics", "employees": 400}'
    now = datetime.now(timezone.utc)
    forgeries = {
        "tampered body": (body.replace(b"400", b"4000"), signed(body, "msg_1")),
        "wrong secret": (body, signed(body, "msg_1", OTHER_SECRET)),
        "stale timestamp": (body, signed(body, "msg_1", at=now - timedelta(seconds=301))),
        "from the future": (body, signed(body, "msg_1", at=now + timedelta(minutes=10))),
        "no signature": (body, {k: v for k, v in signed(body, "msg_1").items() if k != "webhook-signature"}),
        "bad timestamp": (body, {**signed(body, "msg_1"), "webhook-timestamp": "yesterday"}),
        "unsigned": (body, {"Content-Type": "application/json"}),
    }
    reasons = {name: (await refused(client, callback, *request))["message"] for name, request in forgeries.items()}
    assert "webhook-timestamp" in reasons["stale timestamp"] and "300 s" in reasons["stale timestamp"]
    assert "missing webhook-signature" in reasons["no signature"]
    assert not watching.done()

    await post_callback(client, callback, data=body, headers=signed(body, "msg_1"))
    [delivery] = await woken_with(watching)
    assert delivery["body"] == {"companyName": "Acme Logistics", "employees": 400}

    state = await (await client.get(f"/v1/callbacks/{callback['token']}")).json()
    assert state["deliveries"] == 1
    assert SECRET not in orjson.dumps(state).decode()

    # Counted and logged, with a short token and never the secret.
    assert client.app[HUB].refused["signature"] == len(forgeries)
    refusals = [r.getMessage() for r in caplog.records if "refused a delivery" in r.getMessage()]
    assert len(refusals) == len(forgeries)
    assert all(r.levelno == logging.WARNING for r in caplog.records if "refused a delivery" in r.getMessage())
    assert f"refused a delivery to {callback['token'][:6]}…" in refusals[0]
    assert callback["token"] not in caplog.text and SECRET not in caplog.text
    assert SECRET.removeprefix("whsec_") not in caplog.text


async def test_a_forgery_reusing_a_real_message_id_is_refused_not_taken_for_a_retry(client):
    callback = await mint(client, verify={"scheme": "standard-webhooks", "secret": SECRET})
    genuine = b'{"status": "done"}'
    first = await post_callback(client, callback, data=genuine, headers=signed(genuine, "msg_42"))

    forged = b'{"status": "refund everything"}'
    await refused(client, callback, forged, {**signed(genuine, "msg_42"), "webhook-id": "msg_42"})
    await refused(client, callback, forged, signed(forged, "msg_42", OTHER_SECRET))

    # The sender's own retry is still recognised as one.
    retry = await post_callback(client, callback, data=genuine, headers=signed(genuine, "msg_42"))
    assert retry == {**first, "duplicate": True}
    state = await (await client.get(f"/v1/callbacks/{callback['token']}")).json()
    assert state["deliveries"] == 1 and state["result"]["body"] == {"status": "done"}


async def test_a_sender_rotating_its_secret_signs_twice_and_either_passes(client):
    # While the sender rotates, the receiver may hold the old secret or the new one: the request
    # signed with both passes either, whichever of its two entries matches (the first or the second).
    body = b'{"n": 1}'
    old, new = signed(body, "msg_r", OTHER_SECRET), signed(body, "msg_r", SECRET)
    both = {**new, "webhook-signature": f"{old['webhook-signature']} {new['webhook-signature']}"}
    for secret in (OTHER_SECRET, SECRET):
        callback = await mint(client, verify={"scheme": "standard-webhooks", "secret": secret})
        delivered = await post_callback(client, callback, data=body, headers=both)
        assert not delivered["duplicate"]
        state = await (await client.get(f"/v1/callbacks/{callback['token']}")).json()
        assert state["deliveries"] == 1 and state["result"]["body"] == {"n": 1}
    # Neither entry from a third secret: refused.
    callback = await mint(client, verify={"scheme": "standard-webhooks", "secret": THIRD_SECRET})
    await refused(client, callback, body, both)


async def test_github_style_hmac_signatures_are_verified(client):
    verify = {
        "scheme": "hmac-sha256",
        "secret": GITHUB_SECRET,
        "header": "X-Hub-Signature-256",
        "encoding": "hex",
        "prefix": "sha256=",
    }
    callback = await mint(client, verify=verify)
    assert callback["verify"] == {k: v for k, v in verify.items() if k != "secret"}
    watching = await start_watching(client, callback["token"])

    body = b"Hello, World!"
    # The example from GitHub's documentation on validating webhook deliveries.
    assert github_signature(body) == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    for forged_body, signature in (
        (b"Hello, World?", github_signature(body)),
        (body, github_signature(body, "not the secret")),
        (body, github_signature(body).removeprefix("sha256=")),
        (body, ""),
    ):
        await refused(client, callback, forged_body, {"X-Hub-Signature-256": signature, "Content-Type": "text/plain"})
    assert not watching.done()

    headers = {"X-Hub-Signature-256": github_signature(body), "Content-Type": "text/plain"}
    await post_callback(client, callback, data=body, headers=headers)
    [delivery] = await woken_with(watching)
    assert delivery["body"] == "Hello, World!"
    # Hex digits are case-blind.
    upper = "sha256=" + github_signature(body).removeprefix("sha256=").upper()
    await post_callback(client, callback, data=body, headers={"X-Hub-Signature-256": upper})


async def test_base64_hmac_without_prefix_as_shopify_sends_it(client):
    secret = "shpss_0123456789"
    callback = await mint(
        client, verify={"scheme": "hmac-sha256", "secret": secret, "header": "X-Shopify-Hmac-Sha256", "encoding": "base64"}
    )
    body = b'{"id": 820982911946154508}'
    digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    await refused(client, callback, body, {"X-Shopify-Hmac-Sha256": digest.lower()})
    await post_callback(client, callback, data=body, headers={"X-Shopify-Hmac-Sha256": digest})


async def test_the_configured_default_scheme_guards_callbacks_minted_without_one(start_hub, make_config):
    config = make_config(
        **{
            "ingest.verify.scheme": "standard-webhooks",
            "ingest.verify.secret": SECRET,
            "ingest.verify_tolerance": "3600",
        }
    )
    client = await start_hub(config)
    plain = await mint(client)
    assert plain["verify"] is None  # its own: none; the server's default applies
    body = b'{"a": 1}'
    await refused(client, plain, body, {"Content-Type": "application/json"})
    # A 40-minute-old timestamp is inside the configured hour.
    old = signed(body, "msg_old", at=datetime.now(timezone.utc) - timedelta(minutes=40))
    await post_callback(client, plain, data=body, headers=old)

    # A callback's own scheme replaces the default.
    own = await mint(client, verify={"scheme": "hmac-sha256", "secret": GITHUB_SECRET, "header": "X-Sig"})
    await refused(client, own, body, signed(body, "msg_2"))
    await post_callback(client, own, data=body, headers={"X-Sig": github_signature(body).removeprefix("sha256=")})


@pytest.mark.parametrize(
    ("verify", "named"),
    [
        ("whsec_abc", "verify: must be an object"),
        ({"secret": SECRET}, "verify.scheme"),
        ({"scheme": "md5", "secret": "x"}, "verify.scheme"),
        ({"scheme": "standard-webhooks"}, "verify.secret"),
        ({"scheme": "standard-webhooks", "secret": "no-prefix-secret"}, "starts with whsec_"),
        ({"scheme": "standard-webhooks", "secret": "whsec_not*base64!"}, "base64"),
        ({"scheme": "standard-webhooks", "secret": SECRET, "header": "X-Sig"}, "verify.header: only for"),
        ({"scheme": "hmac-sha256", "secret": "s3cret-value"}, "verify.header: required"),
        ({"scheme": "hmac-sha256", "secret": "s3cret-value", "header": "Authorization"}, "verify.header"),
        ({"scheme": "hmac-sha256", "secret": "s3cret-value", "header": "X", "encoding": "b32"}, "verify.encoding"),
        ({"scheme": "hmac-sha256", "secret": "s3cret-value", "header": "X", "salt": "x"}, "verify.salt: unknown"),
    ],
)
async def test_a_bad_verify_at_mint_is_400_naming_the_field_not_the_secret(client, verify, named):
    response = await client.post("/v1/callbacks", json={"verify": verify, "group": "bad"})
    error = await assert_error(response, 400, "invalid_field")
    assert named in error["message"]
    assert "s3cret-value" not in error["message"] and "not*base64" not in error["message"]
    assert (await client.get("/v1/groups/bad")).status == 404


@pytest.mark.parametrize("padding", ["=", "==", "===="])
async def test_a_whsec_secret_padded_past_a_whole_group_is_refused_on_every_python(client, padding):
    # 24 bytes of key: 32 base64 characters, no padding due (Python 3.11 and 3.12 took any).
    secret = "whsec_" + base64.b64encode(b"a 24-byte signing key...").decode()
    await mint(client, verify={"scheme": "standard-webhooks", "secret": secret})
    padded = {"scheme": "standard-webhooks", "secret": secret + padding}
    response = await client.post("/v1/callbacks", json={"verify": padded})
    error = await assert_error(response, 400, "invalid_field")
    assert error["message"] == "verify.secret: after whsec_, the secret must be base64"


@pytest.mark.parametrize("value", [False, 0, [], {}])
@pytest.mark.parametrize("field", ["encoding", "prefix"])
async def test_an_encoding_or_prefix_is_its_default_only_when_absent_null_or_empty(client, field, value):
    hmac_spec = {"scheme": "hmac-sha256", "secret": "s3cret-value", "header": "X-Sig"}
    response = await client.post("/v1/callbacks", json={"verify": {**hmac_spec, field: value}})
    error = await assert_error(response, 400, "invalid_field")
    assert error["message"].startswith(f"verify.{field}:")
    for default in (None, ""):
        await mint(client, verify={**hmac_spec, field: default})


def test_a_bad_default_scheme_stops_the_start_naming_the_key():
    from cbhub.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"ingest\.verify\.secret: a standard-webhooks secret starts with whsec_"):
        load_config(env={"CBHUB_INGEST_VERIFY_SCHEME": "standard-webhooks", "CBHUB_INGEST_VERIFY_SECRET": "plain"})
    with pytest.raises(ConfigError, match=r"ingest\.verify\.scheme"):
        load_config(env={"CBHUB_INGEST_VERIFY_SCHEME": "sha1"})
