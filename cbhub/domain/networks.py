"""IP networks from configuration and mint requests, and whether an address is inside one."""

from __future__ import annotations

import functools
import ipaddress
from typing import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# A list longer than this is a mistake, and a cost on every delivery it guards.
MAX_NETWORKS = 256


def parse_network(text: str) -> Network:
    """A CIDR ("203.0.113.0/24", "2001:db8::/32") or a single address; ValueError otherwise.

    Host bits are allowed ("10.1.2.3/8" means 10.0.0.0/8), as in most firewall syntaxes.
    """
    return ipaddress.ip_network(text.strip(), strict=False)


def normalise(values: Iterable[str]) -> tuple[str, ...]:
    """Each value as its canonical CIDR; ValueError naming the first bad one."""
    networks: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string")
        try:
            networks.append(str(parse_network(value)))
        except ValueError:
            raise ValueError(f"{value[:60]!r} is not an IP address or CIDR") from None
    if len(networks) > MAX_NETWORKS:
        raise ValueError(f"at most {MAX_NETWORKS} networks")
    return tuple(networks)


@functools.lru_cache(maxsize=1024)
def networks_of(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """Parsed once per distinct list: the same allowlist guards many deliveries."""
    return tuple(parse_network(cidr) for cidr in cidrs)


def parse_address(text: str | None) -> Address | None:
    """An address as written by a socket or a proxy, IPv4-mapped IPv6 folded to IPv4; None when
    it is not an address (a Unix socket, an obfuscated Forwarded identifier)."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def contains(cidrs: tuple[str, ...], address: str | None) -> bool:
    """Whether `address` lies in one of the networks; an unknown address lies in none."""
    parsed = parse_address(address)
    if parsed is None:
        return False
    return any(parsed in network for network in networks_of(cidrs))
