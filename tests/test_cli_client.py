"""The client commands as a shell script uses them: the real `cbhub` executable against a real
server, checking stdout, stderr and exit codes."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
from helpers import MARKETING_CLOUD_FIELDS, eventually, mint, post_callback, registry_size

BIN = Path(sys.executable).parent
CBHUB = str(BIN / "cbhub")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBHUB_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@dataclass
class Ran:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()


def url_of(client) -> str:
    return f"http://{client.host}:{client.port}"


async def cbhub(client, *args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Ran:
    """Run `cbhub ARGS --url <the test server>` to completion."""
    url_args = ["--url", url_of(client)] if client is not None else []
    proc = await asyncio.create_subprocess_exec(
        CBHUB,
        *args,
        *url_args,
        env=env or clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Ran(proc.returncode, out, err.decode())


async def test_new_prints_only_the_url_and_wait_prints_the_form_fields_as_json(client):
    ran = await cbhub(client, "new", "--label", "UpsertDE", "--ttl", "600")
    assert ran.code == 0 and ran.err == ""
    url = ran.text.removesuffix("\n")
    assert "\n" not in url and url.startswith(f"{url_of(client)}/cb/")
    token = url.rsplit("/", 1)[1]
    assert (await (await client.get(f"/v1/callbacks/{token}")).json())["label"] == "UpsertDE"

    waiting = asyncio.create_task(cbhub(client, "wait", url, "--timeout", "20"))
    await eventually(lambda: registry_size(client) == 1, timeout=15)
    await post_callback(client, {"token": token}, data=MARKETING_CLOUD_FIELDS)
    ran = await waiting
    assert (ran.code, ran.err) == (0, "")
    assert orjson.loads(ran.out) == MARKETING_CLOUD_FIELDS
    assert ran.text.startswith('{\n  "RequestID"')  # indented for a person to read


async def test_a_shell_script_mints_hands_out_and_waits(client, tmp_path):
    script = 'url=$(cbhub new --url "$HUB") && echo "$url" > handed-out && cbhub wait "$url" --url "$HUB" --timeout 20'
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        cwd=tmp_path,
        env=clean_env(HUB=url_of(client)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    handed_out = tmp_path / "handed-out"
    await eventually(lambda: handed_out.exists() and handed_out.read_text().endswith("\n"), timeout=15)
    token = handed_out.read_text().strip().rsplit("/", 1)[1]
    await post_callback(client, {"token": token}, json={"companyName": "Acme Logistics", "employees": 400})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert orjson.loads(out) == {"companyName": "Acme Logistics", "employees": 400}


async def test_wait_prints_text_as_it_came_and_binary_as_the_exact_bytes(client):
    text_cb = await mint(client)
    await post_callback(
        client, text_cb, data="line one\nligne deux é", headers={"Content-Type": "text/plain; charset=utf-8"}
    )
    ran = await cbhub(client, "wait", text_cb["token"], "--timeout", "5")
    assert (ran.code, ran.out) == (0, "line one\nligne deux é".encode())

    binary = bytes(range(256)) * 4
    binary_cb = await mint(client)
    await post_callback(client, binary_cb, data=binary, headers={"Content-Type": "application/octet-stream"})
    ran = await cbhub(client, "wait", binary_cb["token"], "--timeout", "5")
    assert (ran.code, ran.out) == (0, binary)


async def test_wait_exit_codes_timeout_expired_cancelled_and_errors(client, unused_tcp_port):
    pending = await mint(client)
    ran = await cbhub(client, "wait", pending["token"], "--timeout", "0.3")
    assert (ran.code, ran.out) == (2, b"")
    assert ran.err == f"cbhub: timed out after 0.3 s waiting for callback {pending['token']}\n"

    short = await mint(client, ttl=1)
    ran = await cbhub(client, "wait", short["token"], "--timeout", "20")
    assert (ran.code, ran.err) == (3, f"cbhub: callback {short['token']} expired without a delivery\n")

    cancel = await cbhub(client, "cancel", pending["callback_url"])
    assert (cancel.code, cancel.text) == (0, "cancelled\n")
    ran = await cbhub(client, "wait", pending["token"], "--timeout", "20")
    assert (ran.code, ran.err) == (3, f"cbhub: callback {pending['token']} was cancelled without a delivery\n")
    # Cancelling what already expired changes nothing, and says so.
    assert (await cbhub(client, "cancel", short["token"])).text == "expired\n"

    ran = await cbhub(client, "wait", "no-such-token", "--timeout", "5")
    assert (ran.code, ran.err) == (1, "cbhub: no callback has this token\n")

    ran = await cbhub(None, "wait", "t", "--timeout", "5", "--url", f"http://127.0.0.1:{unused_tcp_port}")
    assert ran.code == 1 and ran.err.startswith(f"cbhub: cannot reach cbhub at http://127.0.0.1:{unused_tcp_port}")
    assert ran.err.count("\n") == 1


async def test_wait_after_an_id_waits_for_a_newer_delivery(client):
    cb = await mint(client)
    first = await post_callback(client, cb, json={"n": 1})
    ran = await cbhub(client, "wait", cb["token"], "--after", str(first["delivery_id"]), "--timeout", "0.3")
    assert ran.code == 2
    await post_callback(client, cb, json={"n": 2})
    ran = await cbhub(client, "wait", cb["token"], "--after", str(first["delivery_id"]), "--timeout", "5")
    assert orjson.loads(ran.out) == {"n": 2}


async def test_new_with_count_and_json_and_the_url_from_the_environment(client):
    env = clean_env(CBHUB_URL=url_of(client))
    ran = await cbhub(None, "new", "--count", "3", "--group", "batch", env=env)
    urls = ran.text.splitlines()
    assert ran.code == 0 and len(set(urls)) == 3
    assert all(url.startswith(f"{url_of(client)}/cb/") for url in urls)
    assert (await (await client.get("/v1/groups/batch")).json())["pending"] == 3

    ran = await cbhub(None, "new", "--json", "--metadata", '{"row": 7}', env=env)
    callback = orjson.loads(ran.out)
    assert callback["metadata"] == {"row": 7} and callback["status"] == "pending"
    assert callback == await (await client.get(f"/v1/callbacks/{callback['token']}")).json()

    ran = await cbhub(None, "new", "--json", "--count", "2", env=env)
    assert [c["status"] for c in orjson.loads(ran.out)["callbacks"]] == ["pending", "pending"]

    ran = await cbhub(None, "new", "--ttl", "0", env=env)
    assert (ran.code, ran.out) == (1, b"") and ran.err.startswith("cbhub: ttl: must be from 1")


async def test_show_prints_the_callback_as_the_api_returns_it(client):
    cb = await mint(client, label="shown")
    await post_callback(client, cb, json={"ok": True})
    ran = await cbhub(client, "show", cb["callback_url"])
    assert ran.code == 0
    assert orjson.loads(ran.out) == await (await client.get(f"/v1/callbacks/{cb['token']}")).json()
    assert (await cbhub(client, "show", "nope")).code == 1


async def read_lines(stream: asyncio.StreamReader, count: int) -> list[dict]:
    lines = []
    while len(lines) < count:
        line = await asyncio.wait_for(stream.readline(), 15)
        assert line, "the stream ended"
        lines.append(orjson.loads(line))
    return lines


async def test_tail_prints_one_json_line_per_delivery_and_stops_cleanly_on_ctrl_c(client):
    ours, theirs = await mint(client, group="import"), await mint(client, group="other")
    stored = await post_callback(client, ours, json={"n": 1})
    await post_callback(client, theirs, json={"n": "not ours"})

    proc = await asyncio.create_subprocess_exec(
        CBHUB, "tail", "--group", "import", "--url", url_of(client),
        env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    [first] = await read_lines(proc.stdout, 1)
    assert (first["id"], first["body"]) == (stored["delivery_id"], {"n": 1})
    await post_callback(client, ours, json={"n": 2})
    [second] = await read_lines(proc.stdout, 1)
    assert second["body"] == {"n": 2} and second["token"] == ours["token"]

    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0
    assert out == b"" and b"Traceback" not in err

    # Resuming with --after the last id printed replays nothing already seen.
    await post_callback(client, ours, json={"n": 3})
    proc = await asyncio.create_subprocess_exec(
        CBHUB, "tail", "--token", ours["callback_url"], "--after", str(second["id"]), "--url", url_of(client),
        env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    [third] = await read_lines(proc.stdout, 1)
    assert third["body"] == {"n": 3}
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert (proc.returncode, out) == (0, b"") and b"Traceback" not in err


async def test_a_spinner_shows_on_a_terminal_and_never_in_a_pipe(client):
    cb = await mint(client)
    # Not a terminal: stderr holds the one message and nothing else.
    ran = await cbhub(client, "wait", cb["token"], "--timeout", "0.5")
    assert ran.err == f"cbhub: timed out after 0.5 s waiting for callback {cb['token']}\n"

    controller, terminal = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            CBHUB, "wait", cb["token"], "--timeout", "1", "--url", url_of(client),
            env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=terminal,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    screen = shown.decode()
    assert proc.returncode == 2 and out == b""
    assert f"waiting for callback {cb['token'][:12]}" in screen and " 0s" in screen
    assert screen.rstrip().endswith(f"timed out after 1 s waiting for callback {cb['token']}")


async def test_ctrl_c_during_a_wait_exits_130_quietly(client):
    cb = await mint(client)
    proc = await asyncio.create_subprocess_exec(
        CBHUB, "wait", cb["token"], "--url", url_of(client),
        env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await eventually(lambda: registry_size(client) == 1, timeout=15)  # it is waiting
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert (proc.returncode, out, err) == (130, b"", b"")


async def test_a_bad_timeout_is_refused_before_anything_is_awaited(client):
    ran = await cbhub(client, "wait", "t", "--timeout", "-1")
    assert ran.code == 2 and "must be 0 or more seconds" in ran.err


def test_the_spinner_shows_the_elapsed_time_as_a_person_reads_it():
    from cbhub.cli.progress import elapsed

    assert [elapsed(s) for s in (0.4, 7.9, 65, 3723)] == ["0s", "7s", "1m05s", "1h02m03s"]


def test_tokens_that_start_with_a_dash_are_not_taken_for_options():
    from cbhub.cli.client import protect_tokens

    dash, help_like = "-6RzntY_7znjobR8tKQb-Z8Cs3I4HDi9dqCo2NOihTk", "-hXzntY_7znjobR8tKQb-Z8Cs3I4HDi9dqCo2NOihTk"
    assert protect_tokens(["wait", dash, "--timeout", "5"]) == ["wait", "--timeout", "5", "--", dash]
    assert protect_tokens(["show", help_like]) == ["show", "--", help_like]
    assert protect_tokens(["tail", "--token", dash]) == ["tail", f"--token={dash}"]
    assert protect_tokens(["wait", "-h"]) == ["wait", "-h"]
    assert protect_tokens(["serve", "--db", dash]) == ["serve", "--db", dash]
    assert protect_tokens(["wait", "--", dash]) == ["wait", "--", dash]


async def test_the_commands_take_any_token_even_one_starting_with_a_dash(client, db_path):
    # cbhub mints no token starting with "-" any more...
    response = await client.post("/v1/callbacks/batch", json={"count": 1000})
    assert not any(cb["token"].startswith("-") for cb in (await response.json())["callbacks"])
    # ...but tokens minted before (a "-" in one of 64) still work with every command.
    import sqlite3

    dashed = await mint(client)
    old_token = "-" + dashed["token"][1:]
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE callbacks SET token = ? WHERE token = ?", (old_token, dashed["token"]))
    conn.commit()
    conn.close()
    dashed = {**dashed, "token": old_token}
    await post_callback(client, dashed, json={"ok": True})
    ran = await cbhub(client, "wait", dashed["token"], "--timeout", "5")
    assert (ran.code, orjson.loads(ran.out)) == (0, {"ok": True})
    assert orjson.loads((await cbhub(client, "show", dashed["token"])).out)["token"] == dashed["token"]

    proc = await asyncio.create_subprocess_exec(
        CBHUB, "tail", "--token", dashed["token"], "--url", url_of(client),
        env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    [line] = await read_lines(proc.stdout, 1)
    assert line["token"] == dashed["token"]
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.communicate(), 15)
    assert (await cbhub(client, "cancel", dashed["token"])).text == "cancelled\n"


async def test_the_api_key_is_sent_from_the_flag_or_the_environment(aiohttp_server):
    from aiohttp import web

    async def refuse(request: web.Request) -> web.Response:
        seen = request.headers.get("Authorization", "nothing")
        return web.json_response({"error": {"code": "unauthorized", "message": f"refused: {seen}"}}, status=401)

    app = web.Application()
    app.router.add_get("/v1/callbacks/{token}", refuse)
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}"
    ran = await cbhub(None, "show", "t", env=clean_env(CBHUB_URL=url, CBHUB_API_KEY="from-env"))
    assert (ran.code, ran.err) == (1, "cbhub: refused: Bearer from-env\n")
    ran = await cbhub(None, "show", "t", "--url", url, "--api-key", "from-flag")
    assert ran.err == "cbhub: refused: Bearer from-flag\n"
    ran = await cbhub(None, "show", "t", "--url", url)
    assert ran.err == "cbhub: refused: nothing\n"


async def test_tail_rides_out_a_server_restart(aiohttp_client, config, unused_tcp_port):
    from cbhub.app import create_app
    from cbhub.http.keys import HUB

    on_the_port = {"port": unused_tcp_port}
    server = await aiohttp_client(create_app(config), server_kwargs=on_the_port)
    url = f"http://127.0.0.1:{unused_tcp_port}"
    cb = await mint(server, group="g")
    proc = await asyncio.create_subprocess_exec(
        CBHUB, "tail", "--group", "g", "--url", url,
        env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    await post_callback(server, cb, json={"n": 1})
    [first] = await read_lines(proc.stdout, 1)
    await eventually(lambda: len(server.app[HUB].registry) == 1, timeout=15)

    await server.close()
    server = await aiohttp_client(create_app(config), server_kwargs=on_the_port)
    await post_callback(server, cb, json={"n": 2})
    [second] = await read_lines(proc.stdout, 1)
    assert (first["body"], second["body"]) == ({"n": 1}, {"n": 2})

    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert (proc.returncode, out) == (0, b"")
    assert "reconnecting" in err.decode() and "Traceback" not in err.decode()
