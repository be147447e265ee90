"""Await an enrichment API that answers "processing" at once and POSTs the result later.

The request carries a callback URL minted by cbhub (`callbackUrl`); the provider answers
`{"status": "processing"}` straight away, and POSTs the enriched company to that URL when it is
done. The request shows as awaiting its callback until then. A provider may call back more than
once: the most recent payload is the result, as the provider's documentation says. With
--settle S the callback is minted with a settle window: the result is shown once the provider
stopped sending for S seconds, as the final one.

    export CBHUB_URL=https://hooks.example.com     # a cbhub the provider can reach
    python examples/enrichment.py --provider-url https://api.example.com/enrich "Acme Logistics"

Prints one line per change: "Acme Logistics: awaiting callback", then "Acme Logistics:
enriched {...}" (with --settle, "Acme Logistics: final {...}"); with --follow, also "Acme
Logistics: updated {...}" for each later callback, until the callback expires.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp

from cbhub.client import CbHub, Expired

AWAITING = "awaiting callback"
ENRICHED = "enriched"
FINAL = "final"  # enriched, and the provider stopped sending for the settle window
UPDATED = "updated"


class ProviderError(Exception):
    """The provider did not accept the request."""


@dataclass(frozen=True)
class Enrichment:
    """Where one company's request stands."""

    company: str
    state: str  # AWAITING, ENRICHED (FINAL with a settle window), or UPDATED by a later callback
    token: str  # its cbhub callback
    result: Any = None  # the latest payload the provider posted
    delivery_id: int | None = None

    def __str__(self) -> str:
        shown = "" if self.result is None else " " + json.dumps(self.result, ensure_ascii=False)
        return f"{self.company}: {self.state}{shown}"


async def enrich(
    hub: CbHub,
    session: aiohttp.ClientSession,
    provider_url: str,
    company: str,
    *,
    ttl: int = 3600,
    timeout: float | None = None,
    follow: bool = False,
    group: str | None = None,
    settle: float | None = None,
) -> AsyncIterator[Enrichment]:
    """Request the enrichment of `company`, then yield each change of its state: awaiting,
    enriched, and with `follow` every later update until the callback expires. `timeout` bounds
    the wait for the first result; `group` files the callback under a cbhub group. With
    `settle` (seconds), the result comes once the provider stopped sending for that long: the
    latest payload, final."""
    cb = await hub.create(ttl=ttl, label=company, group=group, metadata={"companyName": company}, settle=settle)
    request = {"companyName": company, "callbackUrl": cb.url}
    async with session.post(provider_url, json=request) as response:
        text = await response.text()
    try:
        answer = json.loads(text)
    except ValueError:
        answer = text[:200]
    if response.status >= 300 or not isinstance(answer, dict) or answer.get("status") != "processing":
        await cb.cancel()  # nothing will come: no one should keep waiting for it
        raise ProviderError(f"{provider_url} answered {response.status}: {answer}")
    yield Enrichment(company, AWAITING, cb.token)

    # With a settle window, the callback's waits answer once the latest delivery stayed the latest.
    delivery = await cb.wait(timeout=timeout)
    yield Enrichment(company, ENRICHED if settle is None else FINAL, cb.token, delivery.body, delivery.id)
    while follow:
        try:
            # Later callbacks are optional: await them until the callback expires.
            delivery = await cb.wait(after=delivery.id)
        except Expired:
            return  # nothing more can come
        yield Enrichment(company, UPDATED, cb.token, delivery.body, delivery.id)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Enrich companies through a provider that calls back.")
    parser.add_argument("--provider-url", required=True, help="the provider's enrichment endpoint")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to await each result")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds the callback URLs stay valid")
    parser.add_argument("--follow", action="store_true", help="keep showing later callbacks until they expire")
    parser.add_argument(
        "--settle", type=float, metavar="S", help="show the result once the provider stopped sending for S seconds"
    )
    parser.add_argument("companies", nargs="+", metavar="COMPANY")
    args = parser.parse_args(argv)

    async def one(hub: CbHub, session: aiohttp.ClientSession, company: str) -> bool:
        try:
            async for state in enrich(
                hub,
                session,
                args.provider_url,
                company,
                ttl=args.ttl,
                timeout=args.timeout,
                follow=args.follow,
                settle=args.settle,
            ):
                print(state, flush=True)
        except (ProviderError, TimeoutError, Expired) as exc:
            print(f"{company}: failed: {exc}", file=sys.stderr, flush=True)
            return False
        return True

    async with CbHub() as hub, aiohttp.ClientSession() as session:
        done = await asyncio.gather(*(one(hub, session, company) for company in args.companies))
    return 0 if all(done) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
