"""The OpenAPI document matches the real routes, and fuzzing finds no 5xx and no crash."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cbhub.domain.bodies import parse_body
from helpers import assert_error

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True


def _route_table(app) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method not in ("HEAD", "*"):
            routes.add((route.method.lower(), path))
    return routes


async def test_the_document_describes_exactly_the_real_routes(client):
    response = await client.get("/v1/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.")
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    assert described == _route_table(client.app)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (method, path)
            for name in re.findall(r"{(\w+)}", path):
                assert any(p["name"] == name and p["in"] == "path" for p in operation["parameters"]), (path, name)


async def test_a_wrong_method_on_the_batch_route_names_only_post(client):
    # /v1/callbacks/{token} must not claim "batch": aiohttp would add its GET and DELETE.
    for method in ("OPTIONS", "GET", "DELETE", "PUT"):
        response = await client.request(method, "/v1/callbacks/batch")
        await assert_error(response, 405, "method_not_allowed")
        assert response.headers["Allow"] == "POST", method
    response = await client.put("/v1/callbacks/some-token")
    await assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(",")) == {"GET", "DELETE"}
    assert (await client.get("/v1/callbacks/some-token")).status == 404


def test_schemathesis_finds_no_server_error_and_only_documented_statuses(serve_process, tmp_path):
    server = serve_process("--port", "0", env={"CBHUB_CALLBACKS_MAX_WAIT": "0.2"})
    url = server.wait_until_serving()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "run",
            f"{url}/v1/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "15",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            # The stateful phase would read back stored third-party bodies (any bytes, any
            # declared type) and fail to parse them itself; arbitrary bodies are covered below.
            "--phases",
            "examples,coverage,fuzzing",
            # Endless streams (websocket, SSE) are proven by their own tests.
            "--exclude-path-regex",
            "/(ws|events)$",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


FORM = "application/x-www-form-urlencoded"
content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            FORM,
            f"{FORM}; charset=latin-1",
            "text/plain",
            "text/xml; charset=utf-16",
            "application/octet-stream",
            "application/cloudevents+json",
            "",
            "text/plain; charset=nonsense",
        ]
    ),
    st.text(max_size=40),
)
bodies = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(str.encode),
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode()
    ),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
        max_leaves=8,
    ).map(orjson.dumps),
)


@settings(max_examples=400)  # a pure function: cheap examples
@given(raw=bodies, content_type=content_types)
def test_body_parsing_never_raises_and_always_accounts_for_the_bytes(raw, content_type):
    parsed = parse_body(raw, content_type)
    if parsed.body_base64 is not None:
        import base64

        assert base64.b64decode(parsed.body_base64) == raw
    elif raw:
        assert parsed.body is not None or parsed.parse_error is not None or raw.strip() == b"null"
    orjson.dumps(parsed.body)  # always representable as JSON


def _sendable(header: str) -> bool:
    """What an HTTP client can put in a header at all (printable ISO-8859-1)."""
    return header.isprintable() and all(ord(c) < 256 for c in header)


def test_any_body_with_any_content_type_is_stored_and_returned_intact(serve_process):
    server = serve_process("--port", "0")
    url = server.wait_until_serving()
    request = urllib.request.Request(f"{url}/v1/callbacks", data=b'{"ttl": 3600}', method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        token = orjson.loads(response.read())["token"]

    @settings(max_examples=60)  # three requests to a real server each
    @given(raw=bodies, content_type=content_types.filter(_sendable))
    def post_and_read_back(raw, content_type):
        headers = {"Content-Type": content_type} if content_type else {}
        post = urllib.request.Request(f"{url}/cb/{token}", data=raw, headers=headers, method="POST")
        with urllib.request.urlopen(post, timeout=10) as response:
            assert response.status == 200
            delivery_id = orjson.loads(response.read())["delivery_id"]
        with urllib.request.urlopen(f"{url}/v1/deliveries/{delivery_id}/body", timeout=10) as response:
            assert response.read() == raw
        with urllib.request.urlopen(f"{url}/v1/deliveries?after={delivery_id - 1}&limit=1", timeout=10) as response:
            [delivery] = orjson.loads(response.read())["deliveries"]
        assert delivery["size"] == len(raw)

    try:
        post_and_read_back()
    except Exception:
        server.proc.terminate()
        print(server.finish()[1][-4000:])
        raise


async def test_with_api_keys_the_document_needs_one_and_says_so(start_hub, make_config):
    client = await start_hub(make_config(**{"auth.api_keys": {"ops": "0123456789abcdef0123"}}))
    assert (await client.get("/v1/openapi.json")).status == 401
    response = await client.get("/v1/openapi.json", headers={"Authorization": "Bearer 0123456789abcdef0123"})
    document = await response.json()
    assert document["security"] == [{"bearer": []}]
    assert "401" in document["paths"]["/v1/callbacks"]["post"]["responses"]
    assert "401" not in document["paths"]["/healthz"]["get"]["responses"]
    assert document["paths"]["/cb/{token}"]["post"]["security"] == []
    events = document["paths"]["/v1/events"]["get"]["parameters"]
    assert any(p["name"] == "access_token" and p["in"] == "query" for p in events)
