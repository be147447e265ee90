"""Durable storage of callbacks and deliveries, behind one interface (`Store`)."""

from typing import Callable

from cbhub.config import Config
from cbhub.store.base import (
    AddressNotAllowed,
    CallbackClosed,
    CallbackFilter,
    CallbackNotFound,
    CallbackPage,
    DeliveryFilter,
    DeliveryRefused,
    Guard,
    IdempotencyConflict,
    IngestResult,
    SchemaTooNew,
    SignatureInvalid,
    Store,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "AddressNotAllowed",
    "CallbackClosed",
    "CallbackFilter",
    "CallbackNotFound",
    "CallbackPage",
    "DeliveryFilter",
    "DeliveryRefused",
    "Guard",
    "IdempotencyConflict",
    "IngestResult",
    "SchemaTooNew",
    "SignatureInvalid",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "create_store",
]


def create_store(config: Config, on_commit: Callable[[int, float], None] | None = None) -> Store:
    """The store the configuration names, not yet opened (`await store.open()`).

    `on_commit(batch_size, seconds)` is told of every commit."""
    from cbhub.store.sqlite import SQLiteStore

    return SQLiteStore(config.storage.path, synchronous=config.storage.synchronous, on_commit=on_commit)
