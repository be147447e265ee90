"""Await Marketing Cloud's asynchronous SOAP calls through cbhub.

Every asynchronous Create call (here: one data extension row each) names its own cbhub callback
URL as `SendResponseTo.ResponseAddress`, with `ResponseType` HTTPPost. Marketing Cloud answers
the call at once with OverallStatus OK and a RequestID, queues it, and once it has processed it
POSTs ten form fields (RequestID, StatusCode, ErrorCode, ...) to that URL, once per call, and
never retries. cbhub has stored each POST before answering it; the callbacks of one run share a
group, so a single stream awaits them all, and each is matched to its call by RequestID.

    export CBHUB_URL=https://hooks.example.com     # a cbhub Marketing Cloud can reach
    python examples/marketing_cloud.py \\
        --soap-url https://YOUR_SUBDOMAIN.soap.marketingcloudapis.com/Service.asmx \\
        --access-token "$MC_ACCESS_TOKEN" --data-extension Customers rows.jsonl

`rows.jsonl` holds one JSON object per line: the row's fields by name. One line of output per
row: its RequestID, StatusCode, and ErrorCode and StatusMessage when it failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Iterable
from xml.sax.saxutils import escape

import aiohttp

from cbhub.client import CbHub, Delivery

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER_NS = "http://exacttarget.com/wsdl/partnerAPI"
MAX_BATCH = 1000  # callbacks minted per request
# RespondWhen values under which a callback comes for every call, success or not.
ANSWERS_EVERY_CALL = ("Always", "OnCallComplete")


def soap_envelope(
    soap_url: str,
    access_token: str,
    data_extension: str,
    row: dict[str, Any],
    response_address: str,
    respond_when: str = "Always",
) -> str:
    """The SOAP envelope of an asynchronous Create of one data extension row, whose outcome is
    POSTed to `response_address`."""
    properties = "".join(
        f"<Property><Name>{escape(str(name))}</Name><Value>{escape(str(value))}</Value></Property>"
        for name, value in row.items()
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="{SOAP_NS}" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing">
  <s:Header>
    <a:Action s:mustUnderstand="1">Create</a:Action>
    <a:To s:mustUnderstand="1">{escape(soap_url)}</a:To>
    <fueloauth xmlns="http://exacttarget.com">{escape(access_token)}</fueloauth>
  </s:Header>
  <s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
    <CreateRequest xmlns="{PARTNER_NS}">
      <Options>
        <RequestType>Asynchronous</RequestType>
        <QueuePriority>Medium</QueuePriority>
        <SendResponseTo>
          <ResponseType>HTTPPost</ResponseType>
          <ResponseAddress>{escape(response_address)}</ResponseAddress>
          <RespondWhen>{escape(respond_when)}</RespondWhen>
          <IncludeResults>true</IncludeResults>
          <IncludeObjects>true</IncludeObjects>
        </SendResponseTo>
      </Options>
      <Objects xsi:type="DataExtensionObject">
        <CustomerKey>{escape(data_extension)}</CustomerKey>
        <Properties>{properties}</Properties>
      </Objects>
    </CreateRequest>
  </s:Body>
</s:Envelope>"""


class SoapError(Exception):
    """Marketing Cloud refused the call itself: no callback will come for it."""


def parse_create_response(xml: str) -> str:
    """The RequestID of an accepted asynchronous call; raises SoapError for a refusal."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise SoapError(f"the answer is not XML: {exc}") from None
    fault = root.find(f".//{{{SOAP_NS}}}Fault")
    if fault is not None:
        raise SoapError(fault.findtext("faultstring") or "SOAP fault")
    status = root.findtext(f".//{{{PARTNER_NS}}}OverallStatus")
    request_id = root.findtext(f".//{{{PARTNER_NS}}}RequestID")
    if status != "OK" or not request_id:
        raise SoapError(f"OverallStatus {status!r}")
    return request_id


@dataclass(frozen=True)
class CallOutcome:
    """One row's call: what Marketing Cloud reported in its callback."""

    row: dict[str, Any]
    request_id: str
    token: str  # the cbhub callback its outcome was posted to
    status_code: str  # "OK" or "Error"
    error_code: str
    status_message: str
    delivery: Delivery


@dataclass
class Run:
    """Where a run stands: outcomes by RequestID, calls still awaited, calls refused."""

    group: str
    outcomes: dict[str, CallOutcome]
    awaited: dict[str, tuple[dict[str, Any], str]]  # RequestID -> (row, token)
    refused: list[tuple[dict[str, Any], str]]  # (row, why)


async def create_rows(
    hub: CbHub,
    session: aiohttp.ClientSession,
    soap_url: str,
    access_token: str,
    data_extension: str,
    rows: list[dict[str, Any]],
    *,
    group: str | None = None,
    respond_when: str = "Always",
    concurrency: int = 20,
    ttl: int = 24 * 3600,
    timeout: float | None = None,
) -> Run:
    """Create each row with an asynchronous call, then await every call's callback.

    Returns once every accepted call's outcome arrived, or when `timeout` seconds have passed
    (the calls not yet answered are then left in `Run.awaited`).
    """
    if respond_when not in ANSWERS_EVERY_CALL:
        raise ValueError(f"respond_when={respond_when!r}: a callback would not come for every call")
    run = Run(group or f"mc-{uuid.uuid4()}", {}, {}, [])
    callbacks = []
    for start in range(0, len(rows), MAX_BATCH):
        count = len(rows[start : start + MAX_BATCH])
        callbacks += await hub.create_batch(count, group=run.group, ttl=ttl, label=f"Create {data_extension}")

    limit = asyncio.Semaphore(concurrency)

    async def call(row: dict[str, Any], url: str, token: str) -> None:
        envelope = soap_envelope(soap_url, access_token, data_extension, row, url, respond_when)
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": "Create"}
        async with limit:
            try:
                async with session.post(soap_url, data=envelope.encode(), headers=headers) as response:
                    request_id = parse_create_response(await response.text())
            except (SoapError, aiohttp.ClientError) as exc:
                run.refused.append((row, str(exc)))
                await hub.cancel(token)  # nothing will come: its group no longer counts it pending
                return
        run.awaited[request_id] = (row, token)

    await asyncio.gather(*(call(row, cb.url, cb.token) for row, cb in zip(rows, callbacks)))
    if run.awaited:
        try:
            async with asyncio.timeout(timeout):
                await _collect(hub, run)
        except TimeoutError:
            pass
    return run


async def _collect(hub: CbHub, run: Run) -> None:
    # The group is this run's own: its stream from the start replays every callback that came
    # while the calls were still being sent, then waits for the rest.
    async for delivery in hub.deliveries(group=run.group):
        request_id = delivery.correlation_id  # cbhub reads it from the RequestID field
        if request_id not in run.awaited:
            continue  # not one of ours, or a repeat
        row, token = run.awaited[request_id]
        if delivery.token != token:
            continue  # a RequestID posted to another call's URL: not this call's outcome
        del run.awaited[request_id]
        fields = delivery.body if isinstance(delivery.body, dict) else {}
        run.outcomes[request_id] = CallOutcome(
            row=row,
            request_id=request_id,
            token=token,
            status_code=fields.get("StatusCode", ""),
            error_code=fields.get("ErrorCode", ""),
            status_message=fields.get("StatusMessage", ""),
            delivery=delivery,
        )
        if not run.awaited:
            return


def read_rows(lines: Iterable[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.strip()]


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create data extension rows asynchronously and await the outcomes.")
    parser.add_argument(
        "--soap-url", required=True, help="https://YOUR_SUBDOMAIN.soap.marketingcloudapis.com/Service.asmx"
    )
    parser.add_argument("--access-token", default=os.environ.get("MC_ACCESS_TOKEN"), help="default: $MC_ACCESS_TOKEN")
    parser.add_argument("--data-extension", required=True, help="the data extension's external key")
    parser.add_argument("--respond-when", default="Always", choices=ANSWERS_EVERY_CALL)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to await the callbacks")
    parser.add_argument("rows", type=argparse.FileType("r"), help="JSON lines, one row each ('-' for stdin)")
    args = parser.parse_args(argv)
    if not args.access_token:
        parser.error("--access-token or $MC_ACCESS_TOKEN is required")
    rows = read_rows(args.rows)

    async with CbHub() as hub, aiohttp.ClientSession() as session:
        run = await create_rows(
            hub, session, args.soap_url, args.access_token, args.data_extension, rows,
            respond_when=args.respond_when, timeout=args.timeout,
        )  # fmt: skip
    for outcome in run.outcomes.values():
        detail = f" {outcome.error_code} {outcome.status_message}" if outcome.status_code != "OK" else ""
        print(f"{outcome.request_id} {outcome.status_code}{detail}")
    for request_id in run.awaited:
        print(f"{request_id} no callback within {args.timeout:g} s")
    for row, why in run.refused:
        print(f"refused {row}: {why}", file=sys.stderr)
    failed = run.awaited or run.refused or any(o.status_code != "OK" for o in run.outcomes.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
