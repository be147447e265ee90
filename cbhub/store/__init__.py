"""Durable storage of callbacks and deliveries, behind one interface (`Store`)."""

from typing import Callable

from cbhub.config import Config
from cbhub.errors import StoreError
from cbhub.store.base import CallbackPage, IngestResult, Store

__all__ = [
    "CallbackPage",
    "IngestResult",
    "Store",
    "create_store",
]


def create_store(config: Config, on_commit: Callable[[int, float], None] | None = None) -> Store:
    """The store the configuration names, not yet opened (`await store.open()`).

    `on_commit(batch_size, seconds)` is told of every commit."""
    if config.storage.backend == "postgres":
        # Imported only when chosen: asyncpg is an extra, needed only by those who choose it.
        try:
            from cbhub.store.postgres.store import PostgresStore
        except ImportError as exc:
            raise StoreError(f"storage.backend = postgres needs asyncpg: pip install 'cbhub[postgres]' ({exc})") from exc

        return PostgresStore(config.storage.dsn, pool_size=config.storage.pool_size, on_commit=on_commit)
    from cbhub.store.sqlite.store import SQLiteStore

    return SQLiteStore(config.storage.path, synchronous=config.storage.synchronous, on_commit=on_commit)
