"""What a 200 promises: proven by killing a real `cbhub serve` process."""

from __future__ import annotations

import asyncio
import random
import signal
import time

import aiohttp
import orjson

from helpers import eventually, post_acknowledged

# Load from one address is what these tests make: the per-address rate limit is not under test.
UNLIMITED = {"CBHUB_INGEST_RATE_PER_IP": "0"}


async def _mint(session: aiohttp.ClientSession, url: str, count: int) -> list[str]:
    async with session.post(f"{url}/v1/callbacks/batch", json={"count": count, "ttl": 3600}) as response:
        assert response.status == 201
        return [c["token"] for c in (await response.json())["callbacks"]]


async def _all_deliveries(session: aiohttp.ClientSession, url: str) -> list[dict]:
    found, after = [], 0
    while True:
        async with session.get(f"{url}/v1/deliveries?after={after}&limit=1000") as response:
            page = await response.json()
        if not page["deliveries"]:
            return found
        found += page["deliveries"]
        after = page["next_after"]


async def test_kill_9_under_load_loses_nothing_that_was_answered_200(serve_process, tmp_path):
    acknowledged: dict[bytes, int] = {}  # body -> delivery id answered
    tokens: list[str] = []
    for round_no in range(5):
        server = serve_process("--port", "0", "--db", str(tmp_path / "crash.db"), env=UNLIMITED)
        started = time.monotonic()
        url = server.wait_until_serving()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(f"{url}/readyz") as response:
                assert response.status == 200
            assert time.monotonic() - started < 10, "the server must answer at once after a restart"
            if not tokens:
                tokens = await _mint(session, url, 50)
            stop = asyncio.Event()

            async def sender(worker: int) -> None:
                seq = 0
                while not stop.is_set():
                    body = f"round={round_no}&worker={worker}&seq={seq}&pad={'x' * random.randint(0, 2000)}".encode()
                    seq += 1
                    if not await post_acknowledged(session, f"{url}/cb/{random.choice(tokens)}", body, acknowledged):
                        return  # the server died under us

            senders = [asyncio.create_task(sender(w)) for w in range(32)]
            # Counted, not timed: each round is under real load when it is killed, however
            # slow the machine; then the kill lands at a random point of that load.
            before = len(acknowledged)
            await eventually(lambda: len(acknowledged) >= before + 25, timeout=30, what="25 acknowledged POSTs")
            await asyncio.sleep(random.uniform(0, 0.5))
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            stop.set()
            await asyncio.gather(*senders)

    server = serve_process("--port", "0", "--db", str(tmp_path / "crash.db"))
    url = server.wait_until_serving()
    async with aiohttp.ClientSession() as session:
        stored = await _all_deliveries(session, url)
        raw_by_id = {}
        for delivery in random.sample(stored, min(50, len(stored))):
            async with session.get(f"{url}/v1/deliveries/{delivery['id']}/body") as response:
                raw_by_id[delivery["id"]] = await response.read()
    by_body: dict[bytes, list[int]] = {}
    for delivery in stored:
        body = "&".join(f"{k}={v}" for k, v in delivery["body"].items()).encode()
        by_body.setdefault(body, []).append(delivery["id"])
    for body, delivery_id in acknowledged.items():
        assert by_body.get(body) == [delivery_id], "every acknowledged POST is stored exactly once"
    for delivery_id, raw in raw_by_id.items():
        [body] = [b for b, ids in by_body.items() if ids == [delivery_id]]
        assert raw == body, "byte for byte"
    ids = [d["id"] for d in stored]
    assert ids == sorted(ids) and len(ids) == len(set(ids))


async def test_sigterm_lets_an_ingest_in_flight_commit_and_answer_then_exits_0(serve_process, tmp_path):
    server = serve_process("--port", "0")
    url = server.wait_until_serving()
    async with aiohttp.ClientSession() as session:
        [token] = await _mint(session, url, 1)
        half_sent = asyncio.Event()
        go_on = asyncio.Event()

        async def slow_body():
            yield b'{"part": 1, '
            half_sent.set()
            await go_on.wait()
            yield b'"done": true}'

        # With Expect: 100-continue the body is sent only once the server answers 100 Continue,
        # which it does as its handler starts: half sent, the request is in flight.
        posting = asyncio.create_task(
            session.post(
                f"{url}/cb/{token}", data=slow_body(), headers={"Content-Type": "application/json"}, expect100=True
            )
        )
        await half_sent.wait()
        server.proc.send_signal(signal.SIGTERM)
        stopping = "stopping: 1 callback requests in flight"
        await eventually(lambda: stopping in server.log_so_far(), what="the server stopping, with the request")
        go_on.set()
        response = await asyncio.wait_for(posting, 10)
        assert response.status == 200
        delivery_id = (await response.json())["delivery_id"]
        response.release()
    code, log = await asyncio.to_thread(server.finish)
    assert code == 0, log

    server = serve_process("--port", "0")
    url = server.wait_until_serving()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v1/callbacks/{token}") as response:
            result = (await response.json())["result"]
    assert result["id"] == delivery_id and result["body"] == {"part": 1, "done": True}


async def _stopped_json_log(server) -> tuple[str, list[dict]]:
    """Stop a server started with --log-format json; its log, and the log as one object a line."""
    server.proc.send_signal(signal.SIGTERM)
    code, log = await asyncio.to_thread(server.finish)
    assert code == 0, log
    return log, [orjson.loads(line) for line in log.splitlines() if line.strip()]


async def test_the_log_is_one_json_object_per_line_and_never_shows_a_whole_token(serve_process):
    server = serve_process("--port", "0", "--log-format", "json")
    url = server.wait_until_serving()
    async with aiohttp.ClientSession() as session:
        [token] = await _mint(session, url, 1)
        async with session.post(f"{url}/cb/{token}", data="a=1") as response:
            assert response.status == 200
        async with session.get(f"{url}/v1/callbacks/{token}/wait?timeout=1") as response:
            assert response.status == 200
        async with session.post(f"{url}/cb/{token}zz", data="a=1") as response:
            assert response.status == 404
    log, entries = await _stopped_json_log(server)
    access = [e for e in entries if e["logger"] == "cbhub.access"]
    assert [(e["method"], e["status"]) for e in access] == [("POST", 201), ("POST", 200), ("GET", 200), ("POST", 404)]
    assert access[1]["path"] == f"/cb/{token[:6]}…"
    assert token not in log and token[:7] not in log


async def test_the_access_lines_can_be_left_out_and_the_other_lines_stay(serve_process):
    server = serve_process("--port", "0", "--log-format", "json", env={"CBHUB_LOG_ACCESS": "false"})
    url = server.wait_until_serving()
    async with aiohttp.ClientSession() as session:
        [token] = await _mint(session, url, 1)
        async with session.post(f"{url}/cb/{token}", data={"a": "1"}) as response:
            assert response.status == 200
        async with session.get(f"{url}/v1/callbacks/{token}") as response:
            assert (await response.json())["result"]["body"] == {"a": "1"}
    _, entries = await _stopped_json_log(server)
    loggers = {entry["logger"] for entry in entries}
    assert "cbhub" in loggers  # "serving on", "stopped", ...
    assert "cbhub.access" not in loggers


async def test_backup_while_the_server_takes_callbacks(serve_process, tmp_path):
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "live.db"
    server = serve_process("--port", "0", "--db", str(db), env=UNLIMITED)
    url = server.wait_until_serving()
    async with aiohttp.ClientSession() as session:
        tokens = await _mint(session, url, 20)
        before = []
        for n in range(100):
            async with session.post(f"{url}/cb/{tokens[n % 20]}", data=f"n={n}") as response:
                before.append((await response.json())["delivery_id"])
        stop = asyncio.Event()

        async def keep_posting():
            n = 0
            while not stop.is_set():
                async with session.post(f"{url}/cb/{tokens[n % 20]}", data=f"later={n}") as response:
                    assert response.status == 200
                n += 1

        load = asyncio.create_task(keep_posting())
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "cbhub", "backup", str(tmp_path / "copy.db"), "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        stop.set()
        await load
    assert result.returncode == 0, result.stderr
    assert "backed up" in result.stderr
    copy = tmp_path / "copy.db"
    assert copy.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(copy)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {row[0] for row in conn.execute("SELECT id FROM deliveries")}
    conn.close()
    assert set(before) <= stored

    # The copy is a working database: a server starts on it with everything in it.
    restored = serve_process("--port", "0", "--db", str(copy))
    url = restored.wait_until_serving()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v1/deliveries?limit=1000") as response:
            ids = [d["id"] for d in (await response.json())["deliveries"]]
    assert set(before) <= set(ids)


def test_backup_of_a_missing_database_fails_with_a_message(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "cbhub", "backup", str(tmp_path / "copy.db"), "--db", str(tmp_path / "none.db")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "no database" in result.stderr and "Traceback" not in result.stderr


async def test_the_access_log_names_the_real_client_behind_a_trusted_proxy(serve_process):
    server = serve_process("--port", "0", env={"CBHUB_SERVER_TRUSTED_PROXIES": "127.0.0.1"})
    url = server.wait_until_serving()
    async with aiohttp.ClientSession() as session:
        [token] = await _mint(session, url, 1)
        async with session.post(f"{url}/cb/{token}", data="a=1", headers={"X-Forwarded-For": "203.0.113.7"}) as r:
            assert r.status == 200
    server.proc.send_signal(signal.SIGTERM)
    code, log = await asyncio.to_thread(server.finish)
    assert code == 0
    [line] = [line for line in log.splitlines() if "POST /cb/" in line]
    assert line.endswith("203.0.113.7")
