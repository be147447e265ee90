"""SQLite schema migrations: MIGRATIONS[n] takes a database from version n to n + 1.

The version lives in `PRAGMA user_version`. Steps are append-only: a released step is never
edited, so every database, however old, walks the same path forward.
"""

from __future__ import annotations

import sqlite3
from typing import Callable


def _v1_initial(conn: sqlite3.Connection) -> None:
    # AUTOINCREMENT: ids are never reused, even after retention deletes the newest rows, so a
    # delivery id is a cursor a client can keep forever.
    conn.execute(
        """CREATE TABLE callbacks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            token TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            label TEXT,
            group_name TEXT,
            metadata TEXT NOT NULL DEFAULT '{}',
            deliveries INTEGER NOT NULL DEFAULT 0,
            last_delivery_id INTEGER
        )"""
    )
    conn.execute("CREATE INDEX callbacks_group ON callbacks (group_name, status) WHERE group_name IS NOT NULL")
    conn.execute("CREATE INDEX callbacks_pending_expiry ON callbacks (expires_at) WHERE status = 'pending'")
    # Retention walks callbacks by expiry whatever their status; metrics count them by status.
    conn.execute("CREATE INDEX callbacks_expiry ON callbacks (expires_at)")
    conn.execute("CREATE INDEX callbacks_status ON callbacks (status)")
    conn.execute(
        """CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            callback_id INTEGER NOT NULL,
            group_name TEXT,
            received_at INTEGER NOT NULL,
            method TEXT NOT NULL,
            content_type TEXT,
            remote_addr TEXT,
            headers BLOB NOT NULL,
            query TEXT NOT NULL,
            body BLOB NOT NULL,
            correlation_id TEXT,
            dedupe_key TEXT
        )"""
    )
    conn.execute("CREATE INDEX deliveries_callback ON deliveries (callback_id, id)")
    conn.execute("CREATE INDEX deliveries_group ON deliveries (group_name, id) WHERE group_name IS NOT NULL")
    conn.execute(
        "CREATE INDEX deliveries_correlation ON deliveries (correlation_id, id) WHERE correlation_id IS NOT NULL"
    )
    conn.execute(
        "CREATE UNIQUE INDEX deliveries_dedupe ON deliveries (callback_id, dedupe_key) WHERE dedupe_key IS NOT NULL"
    )
    conn.execute(
        """CREATE TABLE idempotency_keys (
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            callback_ids TEXT NOT NULL,
            PRIMARY KEY (scope, key)
        ) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at)")
    # One row rewritten by the write probe that tells when a failing store is writable again.
    conn.execute("CREATE TABLE write_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL)")


def _v2_owner_and_guards(conn: sqlite3.Connection) -> None:
    # Who minted each callback (an API key's name; NULL before keys, or without them), and the
    # guards on its public URL as JSON (NULL: none): a list of CIDRs, a signature spec.
    conn.execute("ALTER TABLE callbacks ADD COLUMN created_by TEXT")
    conn.execute("ALTER TABLE callbacks ADD COLUMN allow_ips TEXT")
    conn.execute("ALTER TABLE callbacks ADD COLUMN verify TEXT")


def _callback_listing_indexes(conn: sqlite3.Connection) -> None:
    # GET /v1/callbacks lists newest first (by id) under one filter at a time: each index ends
    # with the rowid (the id), so a filtered page is an index range read backwards, no sort.
    conn.execute("CREATE INDEX callbacks_group_created ON callbacks (group_name) WHERE group_name IS NOT NULL")
    conn.execute("CREATE INDEX callbacks_label_created ON callbacks (label) WHERE label IS NOT NULL")
    # A key's own callbacks, newest first: what the inspector shows a non-admin key.
    conn.execute("CREATE INDEX callbacks_owner_created ON callbacks (created_by) WHERE created_by IS NOT NULL")
    # The callbacks that received a correlation id, without reading the deliveries' rows.
    conn.execute(
        "CREATE INDEX deliveries_correlation_callback ON deliveries (correlation_id, callback_id)"
        " WHERE correlation_id IS NOT NULL"
    )


def _v4_late_deliveries(conn: sqlite3.Connection) -> None:
    # Deliveries that came after their callback closed are kept, flagged, and counted apart.
    conn.execute("ALTER TABLE deliveries ADD COLUMN late INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE callbacks ADD COLUMN late_deliveries INTEGER NOT NULL DEFAULT 0")


def _expected_sets_and_contracts(conn: sqlite3.Connection) -> None:
    # An expected set: its size (NULL: none), whether its ids were named at mint, and how many
    # arrived or were not in it; a contract as JSON (NULL: none); a delivery's problems under
    # it as a JSON list (NULL: it fits).
    conn.execute("ALTER TABLE callbacks ADD COLUMN expect_total INTEGER")
    conn.execute("ALTER TABLE callbacks ADD COLUMN expect_named INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE callbacks ADD COLUMN expect_arrived INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE callbacks ADD COLUMN expect_unexpected INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE callbacks ADD COLUMN contract TEXT")
    conn.execute("ALTER TABLE callbacks ADD COLUMN invalid_deliveries INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE deliveries ADD COLUMN problems TEXT")
    # One row per expected id (named: all of them from the mint on; counted: each as it
    # arrives), so an arrival is one keyed update however large the set. `position` is the
    # mint order (or arrival order), the cursor of the missing ids' pages.
    conn.execute(
        """CREATE TABLE expected_ids (
            callback_id INTEGER NOT NULL,
            correlation_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            arrived INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (callback_id, correlation_id)
        ) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX expected_ids_missing ON expected_ids (callback_id, position) WHERE arrived = 0")
def _sender_answers(conn: sqlite3.Connection) -> None:
    # What a callback's URL answers its sender (a spec as JSON, NULL: cbhub's receipt), and
    # what each delivery was answered when it was not the receipt (JSON, NULL: the receipt).
    conn.execute("ALTER TABLE callbacks ADD COLUMN response TEXT")
    conn.execute("ALTER TABLE deliveries ADD COLUMN answer TEXT")
def _timing(conn: sqlite3.Connection) -> None:
    # The settle window (ms) and when the latest delivery settles (its arrival + the window;
    # NULL once settled, or without a window) and did (settled_at); the seconds within which a
    # callback is expected, when it is overdue if still pending (NULL once looked at), and
    # whether it was. The sweep finds what is due through the two partial indexes.
    for column in ("settle_ms", "settle_due", "settled_at", "expect_within", "overdue_due"):
        conn.execute(f"ALTER TABLE callbacks ADD COLUMN {column} INTEGER")
    conn.execute("ALTER TABLE callbacks ADD COLUMN overdue INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX callbacks_settle_due ON callbacks (settle_due) WHERE settle_due IS NOT NULL")
    conn.execute("CREATE INDEX callbacks_overdue_due ON callbacks (overdue_due) WHERE overdue_due IS NOT NULL")
    # GET /v1/callbacks?overdue=true, newest first, and the overdue count of a group.
    conn.execute("CREATE INDEX callbacks_overdue ON callbacks (group_name) WHERE overdue = TRUE")
    conn.execute("CREATE INDEX callbacks_overdue_created ON callbacks (overdue) WHERE overdue = TRUE")
def _outcomes(conn: sqlite3.Connection) -> None:
    # How each delivery went (ok, error, unknown, invalid) and what went wrong (JSON or NULL),
    # decided when it was stored; rows stored before this are unknown.
    conn.execute("ALTER TABLE deliveries ADD COLUMN outcome TEXT NOT NULL DEFAULT 'unknown'")
    conn.execute("ALTER TABLE deliveries ADD COLUMN error TEXT")
    # A callback's result's outcome (NULL while it has none) and error, so that a listing shows
    # them without reading results; and its own rule (JSON or NULL).
    conn.execute("ALTER TABLE callbacks ADD COLUMN outcome TEXT")
    conn.execute("ALTER TABLE callbacks ADD COLUMN error TEXT")
    conn.execute("ALTER TABLE callbacks ADD COLUMN outcome_rule TEXT")
    # Existing results keep the outcome their deliveries were given.
    conn.execute("UPDATE callbacks SET outcome = 'unknown' WHERE last_delivery_id IS NOT NULL")
    # Deliveries stored with problems (they did not fit their callback's contract) are invalid.
    conn.execute("UPDATE deliveries SET outcome = 'invalid' WHERE problems IS NOT NULL")
    # A group's summary (counts by status and outcome, its errors, its pending tokens) from the
    # index alone; and the listing by outcome, newest first.
    conn.execute(
        "CREATE INDEX callbacks_group_outcome ON callbacks (group_name, status, outcome) WHERE group_name IS NOT NULL"
    )
    conn.execute("CREATE INDEX callbacks_outcome_created ON callbacks (outcome) WHERE outcome IS NOT NULL")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1_initial,
    _v2_owner_and_guards,
    _callback_listing_indexes,
    _v4_late_deliveries,
    _expected_sets_and_contracts,
    _sender_answers,
    _timing,
    _outcomes,
]
