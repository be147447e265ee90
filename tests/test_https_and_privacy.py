"""HTTPS served by cbhub itself, a database only its owner can read, and logs that never show
a key, a secret or a whole token."""

from __future__ import annotations

import base64
import os
import signal
import ssl
import stat
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
import trustme
from standardwebhooks import Webhook

from helpers import mint, post_callback


def _call(url: str, data: bytes | None = None, headers: dict | None = None, context=None, method=None):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"null")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    """A certificate for this host from a throwaway CA; the CA is what a client trusts."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return ca, cert_path, key_path


def test_serve_https_with_a_certificate_the_client_verifies(serve_process, certificate):
    ca, cert_path, key_path = certificate
    env = {"CBHUB_SERVER_TLS_CERT": str(cert_path), "CBHUB_SERVER_TLS_KEY": str(key_path)}
    server = serve_process("--port", "0", env=env)
    url = server.wait_until_serving()
    assert url.startswith("https://127.0.0.1:")

    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    status, callback = _call(url + "/v1/callbacks", b"{}", context=trusting)
    assert status == 201
    assert callback["callback_url"] == f"{url}/cb/{callback['token']}"

    status, _ = _call(callback["callback_url"], b"StatusCode=OK", context=trusting)
    assert status == 200
    status, answer = _call(f"{url}/v1/callbacks/{callback['token']}/wait?timeout=5", context=trusting)
    assert answer["deliveries"][0]["body"] == {"StatusCode": "OK"}

    # A client that does not trust the certificate's issuer refuses to talk; plain HTTP fails.
    with pytest.raises(urllib.error.URLError) as untrusted:
        _call(url + "/healthz", context=ssl.create_default_context())
    assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _call(url.replace("https://", "http://") + "/healthz")

    server.proc.send_signal(signal.SIGTERM)
    assert server.finish()[0] == 0


def test_serve_stops_with_a_message_when_the_certificate_cannot_be_used(serve_process, certificate, tmp_path):
    _, cert_path, key_path = certificate
    missing = serve_process("--port", "0", env={"CBHUB_SERVER_TLS_CERT": "nope.pem", "CBHUB_SERVER_TLS_KEY": "nope.key"})
    code, log = missing.finish()
    assert code == 1 and "cannot start" in log and "Traceback" not in log

    half = serve_process("--port", "0", env={"CBHUB_SERVER_TLS_CERT": str(cert_path)})
    code, log = half.finish()
    assert code == 2 and "server.tls_key" in log

    swapped = serve_process("--port", "0", env={"CBHUB_SERVER_TLS_CERT": str(key_path), "CBHUB_SERVER_TLS_KEY": str(cert_path)})
    code, log = swapped.finish()
    assert code == 1 and "cannot start" in log and "Traceback" not in log


async def test_the_database_and_its_wal_files_are_readable_by_the_owner_only(start_hub, make_config, db_path):
    previous = os.umask(0)  # the most permissive umask: the modes come from cbhub, not from it
    try:
        client = await start_hub(make_config())
        callback = await mint(client)
        await post_callback(client, callback, json={"payload": "private"})
        files = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
        for path in files:
            assert path.exists(), path
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        os.umask(previous)


def test_logs_show_no_key_no_secret_and_no_whole_token(serve_process):
    keys = {"billing": "billing-key-5f0c2a9d7e1b", "crm": "crm-key-8a4e6b1d3c9f07"}
    secret = "whsec_" + base64.b64encode(b"a signing key nobody may log....").decode()
    env = {"CBHUB_API_KEYS": ",".join(f"{name}:{key}" for name, key in keys.items())}
    server = serve_process("--port", "0", "--log-level", "debug", env=env)
    url = server.wait_until_serving()
    billing = {"Authorization": f"Bearer {keys['billing']}"}

    status, callback = _call(url + "/v1/callbacks", orjson.dumps({"verify": {"scheme": "standard-webhooks", "secret": secret}}), billing)
    assert status == 201
    token = callback["token"]
    body = b'{"done": true}'
    now = datetime.now(timezone.utc)
    good = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_1", now, body.decode()),
    }
    assert _call(callback["callback_url"], body, good)[0] == 200
    assert _call(callback["callback_url"], body + b" ", good)[0] == 401  # tampered
    assert _call(f"{url}/v1/callbacks/{token}/wait?timeout=1", headers=billing)[0] == 200
    assert _call(f"{url}/v1/callbacks/{token}", headers={"Authorization": f"Bearer {keys['crm']}"})[0] == 404
    assert _call(f"{url}/v1/callbacks/{token}", headers={"Authorization": f"Bearer {keys['crm']}x"})[0] == 401
    assert _call(f"{url}/v1/callbacks/{token}?access_token={keys['billing']}")[0] == 401
    assert _call(f"{url}/cb/{token[:-1]}", body)[0] == 404
    assert _call(f"{url}/v1/callbacks/{token}/nothing", headers=billing)[0] == 404
    assert _call(f"{url}/v1/callbacks/{token}", headers=billing, method="DELETE")[0] == 200
    assert _call(callback["callback_url"], body, good)[0] == 200  # the same message: stored once already
    assert _call(callback["callback_url"], body + b" ", good)[0] == 401  # a forger learns nothing of the state

    server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log
    assert f"{token[:6]}…" in log  # the refusal was logged, naming the callback briefly
    for forbidden in (token, token[:7], *keys.values(), secret, secret.removeprefix("whsec_")):
        assert forbidden not in log, forbidden
