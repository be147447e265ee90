"""The address a request really comes from, behind trusted reverse proxies.

`X-Forwarded-For` and `Forwarded` are written by whoever sends them, so they are believed only
when the connection comes from a configured trusted proxy. The chain is then read from the
nearest hop outwards, skipping trusted proxies: the first other address is the client. A client
cannot forge its way past this, because its own proxy appends the address it really saw.
"""

from __future__ import annotations

from functools import lru_cache

from aiohttp import web

from cbhub.domain import networks


def _forwarded_for(request: web.Request) -> list[str]:
    """The hops the proxies recorded, client first. X-Forwarded-For wins when both are present:
    it is what almost every proxy appends to, while a `Forwarded` it passes through untouched
    would be the client's own words."""
    xff = request.headers.getall("X-Forwarded-For", [])
    if xff:
        return [hop.strip() for line in xff for hop in line.split(",") if hop.strip()]
    return [_host_of(element.get("for", "")) for element in request.forwarded]


def _host_of(node: str) -> str:
    """The address of a Forwarded `for=` node: "[2001:db8::1]:4711", "192.0.2.60:80", "_hidden"."""
    node = node.strip()
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else ""
    if node.count(":") == 1:
        return node.partition(":")[0]
    return node


@lru_cache(maxsize=4096)
def _peer_text(remote: str | None) -> str | None:
    """The connection's address in its canonical text form: the same few senders call again
    and again, and parsing an address costs more than the rest of this module's work."""
    parsed = networks.parse_address(remote)
    return str(parsed) if parsed is not None else remote


def client_address(request: web.Request, trusted_proxies: tuple[str, ...]) -> str | None:
    """The sender's IP address as text; None when a trusted proxy could not say who it was."""
    peer = _peer_text(request.remote)
    if not trusted_proxies or not networks.contains(trusted_proxies, peer):
        return peer
    hops = _forwarded_for(request)
    if not hops:
        return peer
    for hop in reversed(hops):
        address = networks.parse_address(hop)
        if address is None:
            # "unknown" or an obfuscated name: the real client cannot be told, so no allowlist
            # may let it through under the proxy's address.
            return None
        if not networks.contains(trusted_proxies, str(address)):
            return str(address)
    # Every hop is a trusted proxy: the first of them is the client.
    return str(networks.parse_address(hops[0]))
