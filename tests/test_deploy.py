"""The single-file deployment: deploy/build-pyz makes a cbhub.pyz that serves on its own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.timeout(300)
def test_the_pyz_serves_with_nothing_but_python(tmp_path):
    pyz = tmp_path / "cbhub.pyz"
    build = subprocess.run(
        ["bash", str(ROOT / "deploy" / "build-pyz"), str(pyz)], capture_output=True, text=True, timeout=280
    )
    assert build.returncode == 0, build.stdout + build.stderr
    # The bare interpreter, with no site-packages (-S) and an empty environment: only what the
    # file carries can be imported.
    python = getattr(sys, "_base_executable", sys.executable)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHIV_ROOT": str(tmp_path / "shiv")}
    server = subprocess.Popen(
        [python, "-S", str(pyz), "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            assert line, "the pyz exited before serving"
            if match := re.search(r"serving on (http\S+)", line):
                url = match.group(1)
        assert url
        with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
            assert response.status == 200
        # The inspector's static files travel inside the file too.
        with urllib.request.urlopen(url + "/static/main.js", timeout=10) as response:
            assert response.status == 200 and b"LiveStream" in response.read()
        assert (tmp_path / "cbhub.db").exists()
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert server.returncode == 0


def test_the_systemd_unit_is_valid_hardened_and_runs_serve():
    unit = (ROOT / "deploy" / "cbhub.service").read_text()
    analyze = "/usr/bin/systemd-analyze"
    if os.path.exists(analyze):
        verify = subprocess.run([analyze, "verify", str(ROOT / "deploy" / "cbhub.service")], capture_output=True, text=True)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.lstrip().startswith("#")
    )
    assert "cbhub.pyz serve" in settings["ExecStart"]
    assert settings["DynamicUser"] == "yes" and settings["StateDirectory"] == "cbhub"
    assert settings["ProtectSystem"] == "strict" and settings["Restart"] == "on-failure"
    assert settings["NoNewPrivileges"] == "yes"
    assert os.path.basename(settings["ExecStart"].split()[0]) == "python3"
