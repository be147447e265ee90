"""Configuration precedence and `cbhub serve` as a user runs it."""

from __future__ import annotations

import signal
import urllib.request

import orjson
import pytest

from cbhub.config import Config, ConfigError, load_config


def test_defaults_need_no_configuration():
    config = load_config(env={})
    assert config == Config()
    assert (config.server.host, config.server.port, config.storage.path) == ("127.0.0.1", 8080, "cbhub.db")
    assert config.storage.synchronous == "FULL"
    assert (config.callbacks.default_ttl, config.callbacks.max_ttl, config.callbacks.max_wait) == (
        86400,
        2592000,
        300,
    )
    assert config.limits.max_body_bytes == 1048576
    assert config.callbacks.correlation_fields[0] == "RequestID"


def test_flag_beats_env_beats_file_beats_default(tmp_path):
    path = tmp_path / "cbhub.toml"
    path.write_text('[server]\nport = 9001\nhost = "0.0.0.0"\n[storage]\nsynchronous = "normal"\n')
    from_file = load_config(path, env={})
    assert (from_file.server.port, from_file.server.host, from_file.storage.synchronous) == (9001, "0.0.0.0", "NORMAL")

    env = {"CBHUB_SERVER_PORT": "9002", "CBHUB_STORAGE_SYNCHRONOUS": "EXTRA"}
    from_env = load_config(path, env=env)
    assert (from_env.server.port, from_env.server.host, from_env.storage.synchronous) == (9002, "0.0.0.0", "EXTRA")

    from_flag = load_config(path, env=env, overrides={"server.port": "9003", "server.host": None})
    assert (from_flag.server.port, from_flag.server.host) == (9003, "0.0.0.0")

    listed = load_config(env={"CBHUB_CALLBACKS_CORRELATION_FIELDS": "JobId, job_id"})
    assert listed.callbacks.correlation_fields == ("JobId", "job_id")


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[server]\nport = 'eighty'\n", {}, "server.port: 'eighty'"),
        ("", {"CBHUB_SERVER_PORT": "99999"}, "server.port: 99999"),
        ("", {"CBHUB_STORAGE_SYNCHRONOUS": "sometimes"}, "storage.synchronous: 'SOMETIMES'"),
        ("[callbacks]\ndefault_ttl = 0\n", {}, "callbacks.default_ttl: 0"),
        ("", {"CBHUB_SERVER_READ_TIMEOUT": "0"}, "server.read_timeout: 0.0"),
        ("[callbacks]\ndefault_ttl = 99999999\n", {}, "callbacks.default_ttl"),
        ("[server]\npublic_url = 'hooks.example.com'\n", {}, "server.public_url"),
        ("[server]\nprot = 1\n", {}, "unknown key server.prot"),
        ("[sever]\nport = 1\n", {}, "unknown section [sever]"),
        ("[server\n", {}, "not valid TOML"),
    ],
)
def test_a_bad_value_names_the_key_and_the_value(tmp_path, toml, env, message):
    path = tmp_path / "cbhub.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(path, env=env)


def test_the_example_config_lists_every_key_with_its_default():
    import dataclasses
    import re
    import tomllib
    from pathlib import Path

    example = Path(__file__).parent.parent / "config.example.toml"
    text = example.read_text()
    # Uncomment every "# key = value" line: the result must load and equal the defaults. In a
    # comment, prose and examples (such as an API key line) do not start with a bare key.
    key_line = re.compile(r"# [a-z_]+ = ")
    uncommented = "\n".join(line[2:] if key_line.match(line) else line for line in text.splitlines())
    parsed = tomllib.loads(uncommented)

    def tuples(value):
        if isinstance(value, dict):
            return {k: tuples(v) for k, v in value.items()}
        return tuple(value) if isinstance(value, list) else value

    defaults = Config()
    assert set(parsed) == {f.name for f in dataclasses.fields(Config)}
    for section in parsed:
        expected = dataclasses.asdict(getattr(defaults, section))
        assert tuples(parsed[section]) == expected, section
    assert load_config(example, env={}) == defaults


def _get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, orjson.loads(response.read())


def test_serve_runs_with_no_configuration_and_stops_cleanly_on_sigterm(serve_process, tmp_path):
    server = serve_process("--port", "0")
    url = server.wait_until_serving()
    assert url.startswith("http://127.0.0.1:")
    assert _get(url + "/healthz") == (200, {"status": "ok"})
    assert (tmp_path / "cbhub.db").exists()
    server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log


def test_serve_takes_config_file_env_and_flags(serve_process, tmp_path):
    config = tmp_path / "cbhub.toml"
    config.write_text('[storage]\npath = "from-file.db"\n[server]\npublic_url = "https://hooks.example.com/"\n')
    server = serve_process("--config", str(config), "--port", "0", env={"CBHUB_STORAGE_PATH": "from-env.db"})
    url = server.wait_until_serving()
    request = urllib.request.Request(url + "/v1/callbacks", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        callback = orjson.loads(response.read())
    assert callback["callback_url"].startswith("https://hooks.example.com/cb/")
    assert (tmp_path / "from-env.db").exists() and not (tmp_path / "from-file.db").exists()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "http"], {}, "server.port: 'http'"),
        ([], {"CBHUB_SERVER_PORT": "-1"}, "server.port: -1"),
        (["--config", "missing.toml"], {}, "config file not found"),
    ],
)
def test_serve_refuses_a_bad_value_with_a_message(serve_process, args, env, message):
    server = serve_process(*args, env=env)
    code, log = server.finish()
    assert code == 2
    assert message in log


def test_serve_refuses_a_database_from_a_newer_cbhub(serve_process, tmp_path):
    import sqlite3

    conn = sqlite3.connect(tmp_path / "new.db")
    conn.execute("PRAGMA user_version = 42")
    conn.close()
    server = serve_process("--db", "new.db", "--port", "0")
    code, log = server.finish()
    assert code == 1
    assert "schema version 42" in log and "Traceback" not in log


def test_storage_backend_settings_are_checked_and_the_dsn_never_shown():
    from cbhub.cli.serve import describe_storage

    config = load_config(env={"CBHUB_STORAGE_BACKEND": "postgres", "CBHUB_STORAGE_DSN": "postgresql://u:pw@db:5433/hub"})
    assert (config.storage.backend, config.storage.pool_size) == ("postgres", 10)
    assert describe_storage(config.storage) == "PostgreSQL postgresql://u@db:5433/hub"
    assert "pw" not in repr(config)
    with pytest.raises(ConfigError, match="storage.dsn is required"):
        load_config(env={"CBHUB_STORAGE_BACKEND": "postgres"})
    with pytest.raises(ConfigError, match="storage.backend") as refused:
        load_config(env={"CBHUB_STORAGE_BACKEND": "mysql"})
    assert "sqlite, postgres" in str(refused.value)
    with pytest.raises(ConfigError, match="storage.dsn") as refused:
        load_config(env={"CBHUB_STORAGE_BACKEND": "postgres", "CBHUB_STORAGE_DSN": "mysql://u:pw@db/x"})
    assert "pw" not in str(refused.value)
    with pytest.raises(ConfigError, match="storage.pool_size"):
        load_config(env={"CBHUB_STORAGE_POOL_SIZE": "0"})


def test_serve_on_an_unreachable_postgres_fails_with_a_message(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "cbhub", "serve", "--port", "0"],
        env={
            **{name: value for name, value in os.environ.items() if not name.startswith("CBHUB_")},
            "CBHUB_STORAGE_BACKEND": "postgres",
            "CBHUB_STORAGE_DSN": f"postgresql://cbhub:secret@127.0.0.1:{port}/cbhub",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr
