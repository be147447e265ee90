"""A callback's timers, as pure rules: the settle window (latest wins) and overdue.

Both are computed from stored times, never from timers in memory, so a restart loses nothing:
- Settle: a callback minted (or waited on) with a settle window of S seconds has *settled* once
  its latest on-time delivery stayed the latest for S seconds. The store keeps the due time
  (that delivery's arrival + S) and the sweep marks `settled_at` when it passes; a newer
  delivery moves the due time and makes `settled_at` null again (latest wins).
- Overdue: a callback minted with `expect_within` S is *overdue* if it is still pending at
  created_at + S. It stays pending and still takes deliveries; the flag stays set.
"""

from __future__ import annotations

from cbhub.domain.model import Callback

# The longest settle window, in seconds.
MAX_SETTLE = 300.0


def settle_due(received_at: int, settle_ms: int) -> int:
    """When a delivery received at `received_at` has settled, if none newer comes."""
    return received_at + settle_ms


def overdue_due(created_at: int, expect_within: int | None) -> int | None:
    """When a callback minted at `created_at` is overdue if still pending; None: never."""
    return None if expect_within is None else created_at + expect_within * 1000


def quiet_until(callback: Callback, settle_ms: int) -> int | None:
    """When the callback's latest delivery settles under this window; None without a delivery."""
    if callback.result is None:
        return None
    return settle_due(callback.result.received_at, settle_ms)


def has_settled(callback: Callback, settle_ms: int, now: int) -> bool:
    """Whether a wait with this window may answer "settled": the latest delivery stayed the
    latest for the window, or the callback can receive no more (then what it has is final)."""
    if callback.closed(now):
        return True
    until = quiet_until(callback, settle_ms)
    return until is not None and now >= until
