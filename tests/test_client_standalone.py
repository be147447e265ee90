"""The client stands alone: a program that only awaits callbacks needs aiohttp and orjson, not
the server's modules (storage, HTTP routes, config) nor their dependencies."""

from __future__ import annotations

import asyncio
import sys

from helpers import MARKETING_CLOUD_FIELDS, eventually, post_callback, registry_size

# A fresh interpreter where importing any server module, or the server's own dependencies,
# fails. The client and the command line's client commands are all it may load.
SERVER_ABSENT = """
import importlib.abc, sys

CLIENT_SIDE = ("cbhub.client", "cbhub.cli")

class ServerModulesAbsent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        client_side = name in CLIENT_SIDE or name.startswith(("cbhub.client.", "cbhub.cli.client", "cbhub.cli.progress"))
        if (name.startswith("cbhub.") and not client_side) or name.split(".")[0] in ("aiosqlite", "asyncpg", "prometheus_client"):
            raise ImportError(f"{name} is not available to the client")
        return None

sys.meta_path.insert(0, ServerModulesAbsent())
"""

# It mints, waits for the callback that the test posts, and prints it.
PROGRAM = SERVER_ABSENT + """
from cbhub.client import SyncCbHub

with SyncCbHub(sys.argv[1]) as hub:
    cb = hub.create(label="standalone")
    print(cb.token, flush=True)
    delivery = cb.wait(timeout=20)
    print(delivery.kind, delivery.correlation_id, delivery.late, flush=True)
"""


def run_beside(client, program: str):
    """`program` in a fresh interpreter, given the server's URL as its argument."""
    return asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        program,
        f"http://{client.host}:{client.port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_the_client_works_with_the_server_modules_unimportable(client):
    program = await run_beside(client, PROGRAM)
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


async def test_cbhub_new_runs_without_the_server_modules(client):
    new = "from cbhub.cli import main\nsys.exit(main(['new', '--url', sys.argv[1], '--label', 'cli']))\n"
    process = await run_beside(client, SERVER_ABSENT + new)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    url = out.decode().strip()
    assert url.startswith(f"http://{client.host}:{client.port}/cb/")
    minted = await (await client.get(f"/v1/callbacks/{url.rsplit('/', 1)[1]}")).json()
    assert minted["label"] == "cli"
