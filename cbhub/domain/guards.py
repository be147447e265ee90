"""The guards on a public callback URL, as the store runs them on the callback a request is for.

They see plain data only (the request as `Incoming`, the callback), never an HTTP object, so the
store can run them inside its write transaction, on the row it loads anyway.
"""

from __future__ import annotations

from typing import Callable

from cbhub.domain import networks, signatures
from cbhub.domain.model import Callback, Incoming
from cbhub.domain.signatures import VerifySpec
from cbhub.errors import AddressNotAllowed, SignatureInvalid

# Run by `Store.ingest` on the callback a request is for, before anything is written; raises
# DeliveryRefused. It gets plain data only, so any backend can run it inside its transaction.
Guard = Callable[[Callback], None]


def check_address(allow_ips: tuple[str, ...], remote_addr: str | None, whose: str) -> None:
    """Raise AddressNotAllowed unless `remote_addr` lies in `allow_ips` (empty: anyone)."""
    if allow_ips and not networks.contains(allow_ips, remote_addr):
        raise AddressNotAllowed(f"{remote_addr or 'an unknown address'} is not in {whose} allow_ips")


def delivery_guard(incoming: Incoming, default_verify: VerifySpec | None, tolerance_s: int) -> Guard:
    """The per-callback guards for `incoming`: the callback's own allowlist, then its signature
    scheme, or the configured default scheme when it has none."""

    def guard(callback: Callback) -> None:
        check_address(callback.allow_ips, incoming.remote_addr, "this callback's")
        spec = callback.verify or default_verify
        if spec is None:
            return
        reason = signatures.problem(spec, incoming.headers, incoming.raw, incoming.received_at // 1000, tolerance_s)
        if reason is not None:
            raise SignatureInvalid(reason)

    return guard
