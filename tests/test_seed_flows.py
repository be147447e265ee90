"""The two flows cbhub is built for, end to end, through the examples: Marketing Cloud's
asynchronous SOAP calls, and an enrichment API's callbackUrl. The providers are real HTTP
servers in the test that behave as the documentation of the real ones says."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from xml.sax.saxutils import escape

import aiohttp
import pytest
from aiohttp import web

from cbhub.client import CbHub

EXAMPLES = Path(__file__).parent.parent / "examples"
SOAP = "{http://schemas.xmlsoap.org/soap/envelope/}"
PARTNER = "{http://exacttarget.com/wsdl/partnerAPI}"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def url_of(client) -> str:
    return f"http://{client.host}:{client.port}"


class FakeProvider:
    """A third party's HTTP server, with the client it calls back with and its pending work."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()
        self.app = web.Application()
        self.app.cleanup_ctx.append(self._session)

    async def _session(self, app: web.Application):
        self.session = aiohttp.ClientSession()
        yield
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.session.close()

    def later(self, work) -> None:
        """Run `work` after the answer, as a provider's background job."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class FakeMarketingCloud(FakeProvider):
    """The SOAP endpoint: accepts asynchronous Create calls, answers OK with a RequestID at
    once, and later POSTs the ten form fields to the call's ResponseAddress, once, no retry.
    A row whose Email it has seen before fails with a primary key violation."""

    ACCESS_TOKEN = "mc-access-token"

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, dict] = {}  # RequestID -> what the call asked
        self.callback_statuses: list[int] = []
        self._emails: set[str] = set()
        self.app.router.add_post("/Service.asmx", self.soap)

    async def soap(self, request: web.Request) -> web.Response:
        envelope = ET.fromstring(await request.read())
        assert envelope.findtext(f"{SOAP}Header/{{http://exacttarget.com}}fueloauth") == self.ACCESS_TOKEN
        create = envelope.find(f"{SOAP}Body/{PARTNER}CreateRequest")
        assert create is not None
        options = create.find(f"{PARTNER}Options")
        assert options.findtext(f"{PARTNER}RequestType") == "Asynchronous"
        send_to = options.find(f"{PARTNER}SendResponseTo")
        assert send_to.findtext(f"{PARTNER}ResponseType") == "HTTPPost"
        properties = {
            prop.findtext(f"{PARTNER}Name"): prop.findtext(f"{PARTNER}Value")
            for prop in create.iter(f"{PARTNER}Property")
        }
        request_id = str(uuid.uuid4())
        call = {
            "address": send_to.findtext(f"{PARTNER}ResponseAddress"),
            "respond_when": send_to.findtext(f"{PARTNER}RespondWhen"),
            "data_extension": create.findtext(f"{PARTNER}Objects/{PARTNER}CustomerKey"),
            "properties": properties,
        }
        self.calls[request_id] = call
        duplicate = properties["Email"] in self._emails
        self._emails.add(properties["Email"])
        self.later(self._call_back(request_id, call, duplicate))
        return web.Response(text=self._create_response(request_id), content_type="text/xml")

    @staticmethod
    def _create_response(request_id: str) -> str:
        return (
            f'<soap:Envelope xmlns:soap="{SOAP[1:-1]}"><soap:Body>'
            f'<CreateResponse xmlns="{PARTNER[1:-1]}"><Results><StatusCode>OK</StatusCode>'
            f"<StatusMessage>Queued</StatusMessage></Results>"
            f"<RequestID>{request_id}</RequestID><OverallStatus>OK</OverallStatus></CreateResponse>"
            f"</soap:Body></soap:Envelope>"
        )

    async def _call_back(self, request_id: str, call: dict, duplicate: bool) -> None:
        await asyncio.sleep(random.uniform(0, 0.05))  # processed from its queue, in any order
        status = "Error" if duplicate else "OK"
        email = escape(call["properties"]["Email"])
        fields = {
            "RequestID": request_id,
            "ConversationID": "",
            "OverallStatusCode": status,
            "StatusCode": status,
            # Left empty for a successful call, as Marketing Cloud does.
            "StatusMessage": "Violation of PRIMARY KEY constraint" if duplicate else "",
            "ErrorCode": "12000" if duplicate else "",
            "RequestType": "Asynchronous",
            "ResultType": "DataExtensionObject",
            "ResultDetailXML": f"<Result><StatusCode>{status}</StatusCode><Object><Email>{email}</Email></Object></Result>",
            "SequenceCode": "1",
        }
        async with self.session.post(call["address"], data=fields) as response:
            self.callback_statuses.append(response.status)  # and no retry, whatever it is


async def test_500_marketing_cloud_async_calls_in_one_group_all_arrive_correlated_by_request_id(client, aiohttp_server):
    example = load_example("marketing_cloud")
    mc = FakeMarketingCloud()
    mc_server = await aiohttp_server(mc.app)
    soap_url = f"http://127.0.0.1:{mc_server.port}/Service.asmx"
    rows = [{"Email": f"customer{n}@example.com", "FirstName": f"Ann <{n}> & co"} for n in range(500)]
    rows[250] = dict(rows[100])  # the same key twice: Marketing Cloud reports that call failed

    async with CbHub(url_of(client)) as hub, aiohttp.ClientSession() as session:
        run = await example.create_rows(
            hub, session, soap_url, mc.ACCESS_TOKEN, "Customers", rows, group="nightly-upsert", timeout=50
        )
        group = await hub.group("nightly-upsert")

    assert run.awaited == {} and run.refused == []
    assert len(run.outcomes) == 500 and set(run.outcomes) == set(mc.calls)
    assert mc.callback_statuses == [200] * 500
    assert (group.total, group.received) == (500, 500)
    for request_id, outcome in run.outcomes.items():
        call = mc.calls[request_id]
        # Each outcome is the callback of the very call that RequestID names.
        assert call["address"].endswith(f"/cb/{outcome.token}")
        assert call["properties"] == outcome.row
        assert call["respond_when"] == "Always" and call["data_extension"] == "Customers"
        assert f"<Email>{outcome.row['Email']}</Email>" in outcome.delivery.body["ResultDetailXML"]
        assert outcome.delivery.body["RequestID"] == request_id
    failed = [o for o in run.outcomes.values() if o.status_code != "OK"]
    assert [(o.row["Email"], o.error_code) for o in failed] == [("customer100@example.com", "12000")]


async def test_the_marketing_cloud_script_prints_one_line_per_row(client, aiohttp_server):
    mc = FakeMarketingCloud()
    soap_url = f"http://127.0.0.1:{(await aiohttp_server(mc.app)).port}/Service.asmx"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBHUB_")}
    env.update(CBHUB_URL=url_of(client), MC_ACCESS_TOKEN=mc.ACCESS_TOKEN)
    rows = b'{"Email": "a@example.com"}\n{"Email": "b@example.com"}\n{"Email": "a@example.com"}\n'
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "marketing_cloud.py"), "--soap-url", soap_url, "--data-extension", "Customers",
        "--timeout", "20", "-", env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(rows), 40)
    lines = sorted(out.decode().splitlines(), key=lambda line: "Error" in line)
    assert proc.returncode == 1, err.decode()  # one row failed
    assert len(lines) == 3 and {line.split()[0] for line in lines} == set(mc.calls)
    assert [line.split(" ", 1)[1] for line in lines] == ["OK", "OK", "Error 12000 Violation of PRIMARY KEY constraint"]


def test_the_soap_envelope_asks_for_an_http_post_to_the_callback_url():
    example = load_example("marketing_cloud")
    xml = example.soap_envelope(
        "https://mc.example.com/Service.asmx", "tok", "Customers", {"Email": "a&b@example.com"},
        "https://hooks.example.com/cb/abc", respond_when="OnCallComplete",
    )  # fmt: skip
    root = ET.fromstring(xml)
    send_to = root.find(f"{SOAP}Body/{PARTNER}CreateRequest/{PARTNER}Options/{PARTNER}SendResponseTo")
    assert send_to.findtext(f"{PARTNER}ResponseType") == "HTTPPost"
    assert send_to.findtext(f"{PARTNER}ResponseAddress") == "https://hooks.example.com/cb/abc"
    assert send_to.findtext(f"{PARTNER}RespondWhen") == "OnCallComplete"
    assert root.findtext(f".//{PARTNER}Property/{PARTNER}Value") == "a&b@example.com"
    with pytest.raises(ValueError, match="OnError"):
        asyncio.run(example.create_rows(None, None, "", "", "", [], respond_when="OnError"))


class FakeEnrichmentProvider(FakeProvider):
    """Answers `{"status": "processing"}` at once and POSTs the enriched company to the request's
    callbackUrl later: when the test says so, or by itself with `automatic`."""

    def __init__(self, automatic: bool = False, refuse: bool = False) -> None:
        super().__init__()
        self.automatic = automatic
        self.refuse = refuse
        self.requests: list[dict] = []
        self.app.router.add_post("/enrich", self.enrich)

    async def enrich(self, request: web.Request) -> web.Response:
        if self.refuse:
            return web.json_response({"error": "quota exceeded"}, status=429)
        body = await request.json()
        assert set(body) == {"companyName", "callbackUrl"}
        self.requests.append(body)
        if self.automatic:
            self.later(self.call_back(body, employees=400))
        return web.json_response(
            {
                "status": "processing",
                "message": "The resolution has started. We will send the result to the callback URL "
                "you provided on completion.",
            }
        )

    async def call_back(self, request: dict, employees: int) -> None:
        result = {"companyName": request["companyName"], "address": "123 Tech Boulevard", "employees": employees}
        async with self.session.post(request["callbackUrl"], json=result) as response:
            assert response.status == 200


async def test_enrichment_shows_awaiting_then_the_result_then_the_latest_callback(client, aiohttp_server):
    example = load_example("enrichment")
    provider = FakeEnrichmentProvider()
    provider_url = f"http://127.0.0.1:{(await aiohttp_server(provider.app)).port}/enrich"

    async with CbHub(url_of(client)) as hub, aiohttp.ClientSession() as session:
        states = example.enrich(hub, session, provider_url, "Acme Logistics", timeout=20, follow=True)
        awaiting = await anext(states)
        assert (awaiting.state, awaiting.result) == ("awaiting callback", None)
        assert str(awaiting) == "Acme Logistics: awaiting callback"
        [request] = provider.requests
        assert request == {"companyName": "Acme Logistics", "callbackUrl": f"{url_of(client)}/cb/{awaiting.token}"}

        await provider.call_back(request, employees=250)
        enriched = await anext(states)
        assert (enriched.state, enriched.result["employees"]) == ("enriched", 250)
        assert str(enriched).startswith('Acme Logistics: enriched {"companyName": "Acme Logistics"')

        # The provider calls back a second time: the latest payload is the result.
        await provider.call_back(request, employees=400)
        updated = await anext(states)
        assert (updated.state, updated.result["employees"]) == ("updated", 400)
        await states.aclose()

        callback = await hub.get(awaiting.token)
        assert (callback.deliveries, callback.result.body["employees"]) == (2, 400)
        assert callback.label == "Acme Logistics" and callback.metadata == {"companyName": "Acme Logistics"}


async def test_two_callbacks_before_the_client_looks_give_the_latest_result(client, aiohttp_server):
    example = load_example("enrichment")
    provider = FakeEnrichmentProvider()
    provider_url = f"http://127.0.0.1:{(await aiohttp_server(provider.app)).port}/enrich"

    async with CbHub(url_of(client)) as hub, aiohttp.ClientSession() as session:
        states = example.enrich(hub, session, provider_url, "Acme Logistics", timeout=20)
        assert (await anext(states)).state == "awaiting callback"
        await provider.call_back(provider.requests[0], employees=250)
        await provider.call_back(provider.requests[0], employees=400)
        enriched = await anext(states)
        assert (enriched.state, enriched.result["employees"]) == ("enriched", 400)
        with pytest.raises(StopAsyncIteration):
            await anext(states)


async def test_a_provider_refusing_the_request_is_reported_and_its_callback_cancelled(client, aiohttp_server):
    example = load_example("enrichment")
    provider = FakeEnrichmentProvider(refuse=True)
    provider_url = f"http://127.0.0.1:{(await aiohttp_server(provider.app)).port}/enrich"
    async with CbHub(url_of(client)) as hub, aiohttp.ClientSession() as session:
        with pytest.raises(example.ProviderError, match="429"):
            await anext(example.enrich(hub, session, provider_url, "Acme Logistics", group="crm"))
        group = await hub.group("crm")
    assert (group.total, group.cancelled) == (1, 1)


async def test_the_enrichment_script_prints_awaiting_then_enriched(client, aiohttp_server):
    provider = FakeEnrichmentProvider(automatic=True)
    provider_url = f"http://127.0.0.1:{(await aiohttp_server(provider.app)).port}/enrich"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBHUB_")}
    env["CBHUB_URL"] = url_of(client)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "enrichment.py"), "--provider-url", provider_url, "--timeout", "20",
        "Acme Logistics", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == [
        "Acme Logistics: awaiting callback",
        'Acme Logistics: enriched {"companyName": "Acme Logistics", "address": "123 Tech Boulevard", "employees": 400}',
    ]
