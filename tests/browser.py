"""What the browser tests share: Debian's chromium driven by Playwright, plain HTTP calls as a
client and as a third party would make them, and a TCP relay whose connections can be cut."""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

# Debian's package puts it here; Playwright's own browser builds cannot be downloaded.
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
# Set by .ci/run, which installs chromium and curl: there, the browser tests must run.
REQUIRE_BROWSER_ENV = "CBHUB_REQUIRE_BROWSER"
# Skipped only on a machine without chromium (a developer's); CI installs it and sets
# CBHUB_REQUIRE_BROWSER, so there a missing browser fails instead. Every browser test module
# takes this as its `pytestmark`.
if not HAVE_CHROMIUM and os.environ.get(REQUIRE_BROWSER_ENV):
    raise RuntimeError(f"no chromium at {CHROMIUM}, and {REQUIRE_BROWSER_ENV} is set: apt-get install chromium")
NEEDS_CHROMIUM = pytest.mark.skipif(
    not HAVE_CHROMIUM, reason=f"no chromium at {CHROMIUM}: apt-get install chromium (CI installs it and runs these)"
)
CHROMIUM_FLAGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def call(
    url: str, method: str = "GET", json_body: Any = None, key: str | None = None, **kwargs: Any
) -> tuple[int, Any]:
    """A client API request with urllib; (status, decoded JSON)."""
    headers = {"Content-Type": "application/json"} if json_body is not None else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(json_body).encode() if json_body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def mint(base: str, key: str | None = None, **fields: Any) -> dict[str, Any]:
    status, callback = call(f"{base}/v1/callbacks", "POST", fields, key=key)
    assert status == 201, callback
    return callback


def post_form(url: str, fields: dict[str, str]) -> dict[str, Any]:
    """POST form fields as Marketing Cloud does: application/x-www-form-urlencoded."""
    data = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def post_raw(url: str, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type, **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


class Relay:
    """A TCP relay in front of the server: the browser talks through it, and `cut()` drops every
    connection and refuses new ones, as a network drop does, until `restore()`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            doomed, self._sockets = self._sockets, set()
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            listener.close()
        for sock in doomed:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # Either side ending ends both; each pump closes the socket it reads.
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            source.close()
