"""The OpenAPI document matches the real routes and what the server accepts, and fuzzing with
every Schemathesis check finds nothing: no 5xx, no crash, no request judged otherwise."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cbhub.domain import networks
from cbhub.domain.bodies import parse_body
from cbhub.domain.signatures import SpecError, parse_spec
from cbhub.http.api import ALLOW_IPS, VERIFY
from helpers import assert_error, bearer, mint

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


# The document and the parsers agree: what the document calls valid the server accepts, and
# what it calls invalid the server refuses, at each declared bound and just past it.

# Values whose fate a `pattern` decides (re.fullmatch on a ^...$ pattern reads as JSON Schema does).
PATTERN_PROBES = ("", "0", "1", "true", "FALSE", "True", "yes", "2", " 1")


def _probes(schema: dict[str, Any]) -> list[tuple[Any, bool]]:
    """Values at a schema's bounds and just past them, each with whether the schema accepts it."""
    if "enum" in schema:
        return [(value, True) for value in schema["enum"]] + [("none-of-these", False)]
    if "pattern" in schema:
        return [(value, re.fullmatch(schema["pattern"], value) is not None) for value in PATTERN_PROBES]
    kind = schema["type"]
    if kind == "array":  # one value of a repeated parameter, at its item's bounds
        return _probes(schema["items"])
    if kind == "integer":
        low, high = schema["minimum"], schema["maximum"]
        return [(low, True), (high, True), (low - 1, False), (high + 1, False)]
    if kind == "number":
        if schema.get("exclusiveMinimum"):  # OpenAPI 3.0: a flag on the minimum
            low, high = schema["minimum"], schema["maximum"]
            return [(low, False), (high, True), (high + 0.5, False), ("soon", False)]
        return [(schema["minimum"], True), (schema["minimum"] - 0.5, False), ("soon", False)]
    if kind == "string":
        longest = schema["maxLength"]
        probes = [("x" * longest, True), ("x" * (longest + 1), False)]
        return probes + [("", False)] if schema.get("minLength") else probes
    raise AssertionError(f"no probes for {schema}: teach _probes this declaration")


async def _query_status(client, path: str, query: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
    """The status (and error) of a GET; a stream that opens is closed at once."""
    if path.endswith("/ws"):
        try:
            async with client.ws_connect(path, params=query):
                return 101, None
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, None
    async with client.get(path, params=query) as response:
        error = (await response.json())["error"] if response.status >= 400 else None
        return response.status, error


async def test_every_query_parameter_is_accepted_to_its_bounds_and_refused_past_them(start_hub, make_config):
    # Long-polls hold at most 0.1 s: an accepted probe answers at once or after that.
    client = await start_hub(make_config(**{"callbacks.max_wait": "0.1"}))
    callback = await mint(client, group="g")
    names = {"token": callback["token"], "group": "g", "id": "1", "name": "index.html"}
    document = await (await client.get("/v1/openapi.json")).json()
    probed = 0
    for template, item in document["paths"].items():
        path = template.format(**names)
        parameters = item.get("get", {}).get("parameters", [])
        # A required parameter is given (a real value) while another one is probed.
        required = {p["name"]: names[p["name"]] for p in parameters if p["in"] == "query" and p["required"]}
        for parameter in parameters:
            if parameter["in"] != "query":
                continue
            name = parameter["name"]
            for value, accepted in _probes(parameter["schema"]):
                status, error = await _query_status(client, path, {**required, name: str(value)})
                where = f"{template}?{name}={str(value)[:30]}"
                if accepted:
                    # Read and used: answered, or not found (an unknown token filtered on).
                    assert status < 400 or status == 404, (where, status, error)
                else:
                    assert status == 400, (where, status)
                    if error is not None:  # a websocket handshake shows the status only
                        assert error["code"] == "invalid_parameter" and error["message"].startswith(f"{name}:")
                probed += 1
    assert probed > 50  # every route's parameters, not none


async def test_every_body_field_is_accepted_to_its_bounds_and_refused_past_them(client):
    document = await (await client.get("/v1/openapi.json")).json()
    for path in ("/v1/callbacks", "/v1/callbacks/batch"):
        request_body = document["paths"][path]["post"]["requestBody"]
        name = request_body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        schema = document["components"]["schemas"][name]
        # The required fields at their smallest, so that each probe is the only thing in question.
        smallest = {field: schema["properties"][field]["minimum"] for field in schema.get("required", [])}
        assert request_body["required"] == bool(smallest)
        if smallest:
            await assert_error(await client.post(path), 400, "invalid_field")
        for field, field_schema in schema["properties"].items():
            probes = [(None, True)] if field_schema.get("nullable") and field not in smallest else []
            if field_schema.get("type") in ("integer", "string"):
                probes += _probes(field_schema)
            # A field bounded by another (expect_within by ttl) is probed with the other at its largest.
            widest = {"ttl": schema["properties"]["ttl"]["maximum"]} if field == "expect_within" else {}
            for value, accepted in probes:
                response = await client.post(path, json={**smallest, **widest, field: value})
                where = f"{path} {field}={str(value)[:30]}"
                if accepted:
                    assert response.status in (200, 201), (where, await response.text())
                else:
                    error = await assert_error(response, 400, "invalid_field")
                    assert error["message"].startswith(f"{field}:"), where
        # A field of no other declaration: refused by name.
        await assert_error(await client.post(path, json={**smallest, "colour": "blue"}), 400, "unknown_field")


async def test_the_allow_ips_schema_takes_its_limit_of_addresses_and_refuses_one_more(client):
    schema = (await (await client.get("/v1/openapi.json")).json())["components"]["schemas"]["MintRequest"]
    allow_ips = schema["properties"]["allow_ips"]
    address = "192.0.2.1"
    assert re.fullmatch(allow_ips["items"]["pattern"], address)
    await mint(client, allow_ips=[address] * allow_ips["maxItems"])
    response = await client.post("/v1/callbacks", json={"allow_ips": [address] * (allow_ips["maxItems"] + 1)})
    await assert_error(response, 400, "invalid_field")


# Where a schema needs a pattern, the pattern against the parser over many strings. A ^...$
# pattern under re.fullmatch reads as JSON Schema's (ECMAScript) search does.


def _verify_schema(scheme: str) -> dict[str, Any]:
    [branch] = [b for b in VERIFY.schema()["oneOf"] if b["properties"]["scheme"]["enum"] == [scheme]]
    return branch["properties"]


def _accepts(verify: dict[str, Any]) -> bool:
    try:
        parse_spec(verify)
    except SpecError:
        return False
    return True


@settings(max_examples=300)  # pure functions: cheap examples
@given(key=st.text(alphabet="Aa0+/=_- \n", max_size=13))
def test_the_standard_webhooks_secret_pattern_is_what_the_parser_accepts(key):
    secret = "whsec_" + key
    described = re.fullmatch(_verify_schema("standard-webhooks")["secret"]["pattern"], secret) is not None
    assert described == _accepts({"scheme": "standard-webhooks", "secret": secret})


# Hidden headers in other cases and spaces (the Kelvin sign lowers to k), and near misses.
HIDDEN_LOOKALIKES = ("Authorization", " cookie\t", "PROXY-Authorization", "Coo\u212aie", "cookies", "X-Sig")
# Python's whitespace and JSON Schema's differ: U+001C is one only to Python, U+FEFF the reverse.
SPACE_LOOKALIKES = (" ", "\x1c", "\ufeff")


@settings(max_examples=300)
@given(
    header=st.one_of(
        st.sampled_from(HIDDEN_LOOKALIKES + SPACE_LOOKALIKES), st.text(max_size=12), st.text(min_size=99, max_size=102)
    )
)
def test_the_hmac_header_schema_is_what_the_parser_accepts(header):
    schema = _verify_schema("hmac-sha256")["header"]
    described = (
        len(header) <= schema["maxLength"]
        and re.search(schema["pattern"], header) is not None
        and re.fullmatch(schema["not"]["pattern"], header) is None
    )
    assert described == _accepts({"scheme": "hmac-sha256", "secret": "s", "header": header})


def _cidr(address: ipaddress.IPv4Address | ipaddress.IPv6Address, length: int, exploded: bool) -> str:
    return f"{address.exploded if exploded else address}/{length}"


NETWORKS = st.one_of(
    st.builds(_cidr, st.ip_addresses(v=4), st.integers(0, 32), st.booleans()),
    st.builds(_cidr, st.ip_addresses(v=6), st.integers(0, 128), st.booleans()),
    st.ip_addresses().map(str),
)


@settings(max_examples=300)
@given(network=NETWORKS, garbage=st.text(alphabet="0123456789abcdefABCDEF:./% ", max_size=24))
def test_the_allow_ips_pattern_describes_the_usual_notations_and_nothing_refused(network, garbage):
    pattern = ALLOW_IPS.schema()["items"]["pattern"]
    assert re.fullmatch(pattern, network), network
    assert networks.normalise([network])
    if re.fullmatch(pattern, garbage):
        assert networks.normalise([garbage])


TESTS = Path(__file__).parent


# Two API keys, as two users of Web Fuzzing Commons: object_level_authorization checks that
# neither reads the other's callbacks, ignored_auth that /v1 refuses a request without a key.
FUZZ_USERS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef0"}


def _fuzz_as_peers(url: str, tmp_path: Path) -> tuple[str, Path]:
    """The document (fetched with a key: the server wants one) and a configuration naming the
    keys' owners as users who must not see each other's objects."""
    request = urllib.request.Request(f"{url}/v1/openapi.json", headers=bearer(FUZZ_USERS["alice"]))
    document = tmp_path / "openapi.json"
    with urllib.request.urlopen(request, timeout=10) as response:
        document.write_bytes(response.read())
    users = tmp_path / "users.json"
    entries = [
        {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {key}"}]}
        for name, key in FUZZ_USERS.items()
    ]
    users.write_bytes(orjson.dumps({"auth": entries}))
    config = tmp_path / "schemathesis.toml"
    # JSON strings and lists are TOML ones too.
    path, peers = orjson.dumps(str(users)).decode(), orjson.dumps(list(FUZZ_USERS)).decode()
    config.write_text((TESTS / "schemathesis.toml").read_text() + f"\n[auth.wfc]\npath = {path}\npeers = {peers}\n")
    return str(document), config


@pytest.mark.parametrize("api_keys", [False, True], ids=["open", "two_api_keys"])
def test_schemathesis_with_every_check_finds_nothing(serve_process, tmp_path, api_keys):
    server_env = {"CBHUB_CALLBACKS_MAX_WAIT": "0.2"}
    if api_keys:
        server_env["CBHUB_API_KEYS"] = ",".join(f"{name}:{key}" for name, key in FUZZ_USERS.items())
    server = serve_process("--port", "0", env=server_env)
    url = server.wait_until_serving()
    # Every check (tests/schemathesis.toml, which says why the few exceptions are made), with
    # the hooks that keep Schemathesis itself reading what cbhub deliberately serves.
    location, config = f"{url}/v1/openapi.json", TESTS / "schemathesis.toml"
    if api_keys:
        location, config = _fuzz_as_peers(url, tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "--config-file",
            str(config),
            "run",
            location,
            "--url",
            url,
            # Bounded for CI on 2 cores: about 20 s a run, the same requests every time.
            "--max-examples",
            "20",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            # Endless streams (websocket, SSE) are proven by their own tests, and their
            # parameters by test_every_query_parameter_is_accepted_to_its_bounds_...
            "--exclude-path-regex",
            "/(ws|events)$",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # A worker thread that dies leaves the operations behind it untested and the run passing.
    assert "Traceback" not in output, output[-6000:]


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
