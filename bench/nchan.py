"""nchan (nginx's pub/sub module), the C reference for waking waiters: configured on loopback
as a long-poll and websocket pub/sub, one worker process, like cbhub's one event loop.

Found when `nginx` is on PATH and Debian's libnginx-mod-nchan (or another nchan build) is
installed; otherwise the suite says so and skips the comparison.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import psutil

from bench.procs import HOST, Cores, Server, StartFailed

MODULE_PATHS = (
    Path("/usr/lib/nginx/modules/ngx_nchan_module.so"),
    Path("/usr/share/nginx/modules/ngx_nchan_module.so"),
)

CONFIG = """\
load_module {module};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 30000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 25000; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    nchan_shared_memory_size 256m;
    server {{
        listen {host}:{port};
        location ~ ^/sub/(\\w+)$ {{
            nchan_subscriber longpoll websocket;
            nchan_channel_id $1;
            nchan_subscriber_timeout 300;
        }}
        location ~ ^/pub/(\\w+)$ {{
            nchan_publisher http;
            nchan_channel_id $1;
        }}
        location = /status {{ nchan_stub_status; }}
    }}
}}
"""


def find_module() -> Path | None:
    if shutil.which("nginx") is None:
        return None
    return next((path for path in MODULE_PATHS if path.exists()), None)


def missing_reason() -> str:
    if shutil.which("nginx") is None:
        return "nginx is not installed (apt-get install nginx-light libnginx-mod-nchan)"
    return "the nchan module is not installed (apt-get install libnginx-mod-nchan)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_nchan(workdir: Path, cores: Cores, timeout: float = 15.0) -> Server:
    module = find_module()
    if module is None:
        raise StartFailed(missing_reason())
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(CONFIG.format(module=module, dir=workdir, host=HOST, port=port))
    log_path = workdir / "nginx.log"
    spawned = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*cores.server_prefix(), "nginx", "-p", str(workdir), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    # nginx says nothing once it is up: it is up when its port answers.
    deadline = spawned + timeout
    while time.perf_counter() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.01)
    else:
        proc.kill()
    if proc.poll() is not None:
        raise StartFailed(f"nginx did not start: {(workdir / 'error.log').read_text(errors='replace')[-2000:]}")
    server = Server("nchan", proc, f"http://{HOST}:{port}", log_path, time.perf_counter() - spawned)
    server._rss_pid = _worker_pid(proc)
    return server


def _worker_pid(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            if "worker" in " ".join(child.cmdline()):
                return child.pid
        time.sleep(0.02)
    raise StartFailed("nginx started no worker process")
