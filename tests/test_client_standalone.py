"""The client stands alone: a program that only awaits callbacks needs aiohttp and orjson, not
the server's modules (storage, HTTP routes, config) nor their dependencies."""

from __future__ import annotations

import asyncio
import sys

from conftest import MARKETING_CLOUD_FIELDS, eventually, post_callback, registry_size

# Run in a fresh interpreter where importing any server module, or the server's own
# dependencies, fails; it mints, waits for the callback that the test posts, and prints it.
PROGRAM = """
import importlib.abc, sys

class ServerModulesAbsent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        server_module = name.startswith("cbhub.") and not name.startswith("cbhub.client")
        if server_module or name.split(".")[0] in ("aiosqlite", "asyncpg", "prometheus_client", "cbhub_server"):
            raise ImportError(f"{name} is not available to the client")
        return None

sys.meta_path.insert(0, ServerModulesAbsent())

from cbhub.client import SyncCbHub

with SyncCbHub(sys.argv[1]) as hub:
    cb = hub.create(label="standalone")
    print(cb.token, flush=True)
    delivery = cb.wait(timeout=20)
    print(delivery.kind, delivery.correlation_id, delivery.late, flush=True)
"""


async def test_the_client_works_with_the_server_modules_unimportable(client):
    program = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PROGRAM,
        f"http://{client.host}:{client.port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(program.stdout.readline(), 30)
        assert line, (await program.stderr.read()).decode()
        token = line.decode().strip()
        await eventually(lambda: registry_size(client) == 1, timeout=30)
        await post_callback(client, {"token": token}, data=MARKETING_CLOUD_FIELDS)
        out, err = await asyncio.wait_for(program.communicate(), 30)
    finally:
        if program.returncode is None:
            program.kill()
            await program.wait()
    assert program.returncode == 0, err.decode()
    assert out.decode().split() == ["form", MARKETING_CLOUD_FIELDS["RequestID"], "False"]
