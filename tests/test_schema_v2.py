"""Databases from before API keys: migrated in place, their callbacks owned by no key."""

from __future__ import annotations

import logging
import sqlite3

from cbhub.domain.model import now_ms
from cbhub.store.sqlite.migrations import MIGRATIONS
from helpers import bearer, mint, post_callback

KEYS = {"billing": "billing-key-5f0c2a9d7e1b", "ops": "ops-key-2d7f9e4a6c1b35"}


def _version_1_database(path) -> str:
    token = "legacy-token-0123456789abcdefghijklmnopqrstuvw"
    conn = sqlite3.connect(path)
    MIGRATIONS[0](conn)
    now = now_ms()
    conn.execute(
        "INSERT INTO callbacks (token, status, created_at, expires_at, label, metadata) VALUES (?, ?, ?, ?, ?, ?)",
        (token, "pending", now, now + 3_600_000, "from v1", '{"k": 1}'),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    return token


async def test_a_version_1_database_is_migrated_and_only_admins_see_its_callbacks(
    start_hub, make_config, db_path, session_as, caplog
):
    token = _version_1_database(db_path)
    caplog.set_level(logging.INFO, logger="cbhub")
    client = await start_hub(make_config(**{"auth.api_keys": KEYS, "auth.admin": ["ops"]}))
    assert f"migrated from schema version 1 to {len(MIGRATIONS)}" in caplog.text
    # sqlite3 made the file with the umask's mode; cbhub says so rather than changing it.
    assert "can be read by other users" in caplog.text

    ops, billing = session_as(client, KEYS["ops"]), session_as(client, KEYS["billing"])
    legacy = await (await ops.get(f"/v1/callbacks/{token}")).json()
    assert legacy["label"] == "from v1" and legacy["created_by"] is None
    assert legacy["allow_ips"] == [] and legacy["verify"] is None
    assert (await billing.get(f"/v1/callbacks/{token}")).status == 404

    await post_callback(client, legacy, json={"still": "works"})
    ours = await mint(billing)
    assert ours["created_by"] == "billing"
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)


async def test_callbacks_minted_before_keys_stay_with_admins_once_keys_are_set(start_hub, make_config, session_as):
    open_hub = await start_hub(make_config())
    before = await mint(open_hub)
    keyed = await start_hub(make_config(**{"auth.api_keys": KEYS, "auth.admin": ["ops"]}))
    assert (await session_as(keyed, KEYS["billing"]).get(f"/v1/callbacks/{before['token']}")).status == 404
    assert (await session_as(keyed, KEYS["ops"]).get(f"/v1/callbacks/{before['token']}")).status == 200
    assert (await keyed.get(f"/v1/callbacks/{before['token']}", headers=bearer("x" * 20))).status == 401
