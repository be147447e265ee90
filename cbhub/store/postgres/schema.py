"""PostgreSQL schema migrations: MIGRATIONS[n] takes a database from version n to n + 1.

The version lives in the one-row table `cbhub_schema`. Steps are append-only, as for SQLite. The
columns mirror SQLite's (the row mappers in rows.py read both), with one difference: names that
come from outside (label, group, correlation id, query string, a sender's message id) are kept
as bytes, because PostgreSQL text cannot hold a NUL character and a callback must be stored
whatever it carries.
"""

from __future__ import annotations

# Delivery ids, creation and closing positions are taken from sequences while the ordering lock is held
# (see postgres.py), so they are in commit order; a sequence never hands out a number twice,
# so ids stay cursors forever, whatever retention deletes.
_V1 = [
    """CREATE TABLE callbacks (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        token TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        label BYTEA,
        group_name BYTEA,
        metadata TEXT NOT NULL DEFAULT '{}',
        deliveries INTEGER NOT NULL DEFAULT 0,
        last_delivery_id BIGINT,
        -- Its places among creations and among closings (expiry, cancellation) in commit
        -- order: how the other instances learn of them, as they learn of deliveries by id.
        created_seq BIGINT,
        closed_seq BIGINT
    )""",
    "CREATE INDEX callbacks_group ON callbacks (group_name, status) WHERE group_name IS NOT NULL",
    "CREATE INDEX callbacks_pending_expiry ON callbacks (expires_at) WHERE status = 'pending'",
    "CREATE INDEX callbacks_expiry ON callbacks (expires_at)",
    "CREATE INDEX callbacks_status ON callbacks (status)",
    "CREATE UNIQUE INDEX callbacks_created ON callbacks (created_seq) WHERE created_seq IS NOT NULL",
    "CREATE UNIQUE INDEX callbacks_closed ON callbacks (closed_seq) WHERE closed_seq IS NOT NULL",
    "CREATE SEQUENCE creation_seq",
    "CREATE SEQUENCE closing_seq",
    "CREATE SEQUENCE delivery_ids",
    """CREATE TABLE deliveries (
        id BIGINT PRIMARY KEY DEFAULT nextval('delivery_ids'),
        callback_id BIGINT NOT NULL REFERENCES callbacks (id),
        group_name BYTEA,
        received_at BIGINT NOT NULL,
        method TEXT NOT NULL,
        content_type TEXT,
        remote_addr TEXT,
        headers BYTEA NOT NULL,
        query BYTEA NOT NULL,
        body BYTEA NOT NULL,
        correlation_id BYTEA,
        dedupe_key BYTEA
    )""",
    "ALTER SEQUENCE delivery_ids OWNED BY deliveries.id",
    "CREATE INDEX deliveries_callback ON deliveries (callback_id, id)",
    "CREATE INDEX deliveries_group ON deliveries (group_name, id) WHERE group_name IS NOT NULL",
    "CREATE INDEX deliveries_correlation ON deliveries (correlation_id, id) WHERE correlation_id IS NOT NULL",
    "CREATE UNIQUE INDEX deliveries_dedupe ON deliveries (callback_id, dedupe_key) WHERE dedupe_key IS NOT NULL",
    """CREATE TABLE idempotency_keys (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        callback_ids TEXT NOT NULL,
        PRIMARY KEY (scope, key)
    )""",
    "CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at)",
    "CREATE TABLE write_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at BIGINT NOT NULL)",
]

# Who minted each callback (an API key's name) and the guards on its public URL as JSON, as in
# SQLite's version 2.
_V2 = [
    "ALTER TABLE callbacks ADD COLUMN created_by TEXT",
    "ALTER TABLE callbacks ADD COLUMN allow_ips TEXT",
    "ALTER TABLE callbacks ADD COLUMN verify TEXT",
]

# The callback listing (GET /v1/callbacks), newest first under one filter, as in SQLite's
# version 3; PostgreSQL indexes do not end with the row id by themselves, so they name it.
_V3 = [
    "CREATE INDEX callbacks_group_created ON callbacks (group_name, id) WHERE group_name IS NOT NULL",
    "CREATE INDEX callbacks_label_created ON callbacks (label, id) WHERE label IS NOT NULL",
    "CREATE INDEX callbacks_owner_created ON callbacks (created_by, id) WHERE created_by IS NOT NULL",
    "CREATE INDEX deliveries_correlation_callback ON deliveries (correlation_id, callback_id)"
    " WHERE correlation_id IS NOT NULL",
]

# Late deliveries, as in SQLite's version 4.
_V4 = [
    "ALTER TABLE deliveries ADD COLUMN late BOOLEAN NOT NULL DEFAULT false",
    "ALTER TABLE callbacks ADD COLUMN late_deliveries INTEGER NOT NULL DEFAULT 0",
]

# Expected sets and contracts, as in SQLite's _expected_sets_and_contracts (correlation ids as
# bytes, as elsewhere).
_EXPECTED_SETS_AND_CONTRACTS = [
    "ALTER TABLE callbacks ADD COLUMN expect_total INTEGER",
    "ALTER TABLE callbacks ADD COLUMN expect_named BOOLEAN NOT NULL DEFAULT false",
    "ALTER TABLE callbacks ADD COLUMN expect_arrived INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE callbacks ADD COLUMN expect_unexpected INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE callbacks ADD COLUMN contract TEXT",
    "ALTER TABLE callbacks ADD COLUMN invalid_deliveries INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE deliveries ADD COLUMN problems TEXT",
    """CREATE TABLE expected_ids (
        callback_id BIGINT NOT NULL,
        correlation_id BYTEA NOT NULL,
        position INTEGER NOT NULL,
        arrived BOOLEAN NOT NULL DEFAULT false,
        PRIMARY KEY (callback_id, correlation_id)
    )""",
    "CREATE INDEX expected_ids_missing ON expected_ids (callback_id, position) WHERE NOT arrived",
]
# What a callback's URL answers its sender, and what each delivery was answered, as in SQLite's
# _sender_answers.
_SENDER_ANSWERS = [
    "ALTER TABLE callbacks ADD COLUMN response TEXT",
    "ALTER TABLE deliveries ADD COLUMN answer TEXT",
]

# Timing, as in SQLite's timing step; and the places of settlings and overdue markings in
# commit order, how the other instances learn of them (see feed.py).
_TIMING = [
    "ALTER TABLE callbacks ADD COLUMN settle_ms BIGINT",
    "ALTER TABLE callbacks ADD COLUMN settle_due BIGINT",
    "ALTER TABLE callbacks ADD COLUMN settled_at BIGINT",
    "ALTER TABLE callbacks ADD COLUMN expect_within BIGINT",
    "ALTER TABLE callbacks ADD COLUMN overdue_due BIGINT",
    "ALTER TABLE callbacks ADD COLUMN overdue BOOLEAN NOT NULL DEFAULT false",
    "ALTER TABLE callbacks ADD COLUMN overdue_seq BIGINT",
    "ALTER TABLE callbacks ADD COLUMN settled_seq BIGINT",
    "CREATE SEQUENCE overdue_positions",
    "CREATE SEQUENCE settled_positions",
    "CREATE INDEX callbacks_settle_due ON callbacks (settle_due) WHERE settle_due IS NOT NULL",
    "CREATE INDEX callbacks_overdue_due ON callbacks (overdue_due) WHERE overdue_due IS NOT NULL",
    "CREATE INDEX callbacks_overdue ON callbacks (group_name, id) WHERE overdue = TRUE",
    "CREATE INDEX callbacks_overdue_created ON callbacks (id) WHERE overdue = TRUE",
    "CREATE UNIQUE INDEX callbacks_overdue_seq ON callbacks (overdue_seq) WHERE overdue_seq IS NOT NULL",
    "CREATE UNIQUE INDEX callbacks_settled_seq ON callbacks (settled_seq) WHERE settled_seq IS NOT NULL",
]

# Outcomes, as in SQLite's _outcomes step.
_OUTCOMES = [
    "ALTER TABLE deliveries ADD COLUMN outcome TEXT NOT NULL DEFAULT 'unknown'",
    "ALTER TABLE deliveries ADD COLUMN error TEXT",
    "ALTER TABLE callbacks ADD COLUMN outcome TEXT",
    "ALTER TABLE callbacks ADD COLUMN error TEXT",
    "ALTER TABLE callbacks ADD COLUMN outcome_rule TEXT",
    "UPDATE callbacks SET outcome = 'unknown' WHERE last_delivery_id IS NOT NULL",
    "UPDATE deliveries SET outcome = 'invalid' WHERE problems IS NOT NULL",
    "CREATE INDEX callbacks_group_outcome ON callbacks (group_name, status, outcome, id) WHERE group_name IS NOT NULL",
    "CREATE INDEX callbacks_outcome_created ON callbacks (outcome, id) WHERE outcome IS NOT NULL",
]

MIGRATIONS: list[list[str]] = [
    _V1,
    _V2,
    _V3,
    _V4,
    _EXPECTED_SETS_AND_CONTRACTS,
    _SENDER_ANSWERS,
    _TIMING,
    _OUTCOMES,
]
