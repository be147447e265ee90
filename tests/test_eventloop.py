"""The event loop `cbhub serve` runs on: uvloop when installed, unless configured otherwise."""

from __future__ import annotations

import asyncio

import pytest

from cbhub.config import ConfigError, load_config
from cbhub.cli.eventloop import loop_factory, resolve, uvloop_installed


def test_auto_means_uvloop_exactly_when_it_is_installed() -> None:
    assert resolve("auto") == ("uvloop" if uvloop_installed() else "asyncio")
    assert resolve("asyncio") == "asyncio"
    assert loop_factory("asyncio") is asyncio.new_event_loop


def test_an_unknown_event_loop_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="server.event_loop: 'tokio'"):
        load_config(env={"CBHUB_SERVER_EVENT_LOOP": "tokio"})
    assert load_config(env={"CBHUB_SERVER_EVENT_LOOP": "AsyncIO"}).server.event_loop == "asyncio"


@pytest.mark.parametrize("choice", ["asyncio", "auto"])
def test_serve_says_which_loop_it_runs_on(serve_process, tmp_path, choice: str) -> None:
    server = serve_process("--port", "0", "--db", str(tmp_path / "cb.db"), env={"CBHUB_SERVER_EVENT_LOOP": choice})
    server.wait_until_serving()
    assert f"event loop: {resolve(choice)}" in "".join(server.log_lines)
