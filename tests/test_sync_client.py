"""The blocking client, as a script or a notebook uses it, against a `cbhub serve` process."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from cbhub.client import Expired, NotFound, SyncCbHub
from helpers import eventually_sync, waiters_sync


def third_party_post(url: str, body: dict) -> None:
    request = urllib.request.Request(
        url, data=orjson.dumps(body), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture
def server_url(serve_process) -> str:
    return serve_process("--port", "0").wait_until_serving()


def test_a_script_mints_hands_out_and_blocks_until_the_result(server_url):
    with SyncCbHub(server_url) as hub:
        cb = hub.create(label="Acme Logistics", ttl=600)
        assert cb.url.startswith(f"{server_url}/cb/")
        # The third party answers from elsewhere once this thread blocks in wait(), which the
        # server shows as one long-poll waiting.
        def third_party() -> None:
            eventually_sync(lambda: waiters_sync(server_url)["long_poll"] == 1, what="the blocking wait")
            third_party_post(cb.url, {"employees": 400})

        with ThreadPoolExecutor(1) as elsewhere:
            answered = elsewhere.submit(third_party)
            try:
                delivery = cb.wait(timeout=20)
            finally:
                answered.result()
        assert delivery.body == {"employees": 400}
        assert cb.refresh().status == "received"
        assert hub.get(cb.token).result == delivery

        with pytest.raises(TimeoutError):
            hub.create().wait(timeout=0.2)
        with pytest.raises(Expired):
            hub.create(ttl=1).wait(timeout=20)
        with pytest.raises(NotFound):
            hub.wait("missing", timeout=1)


def test_a_script_iterates_over_a_groups_deliveries(server_url):
    with SyncCbHub(server_url) as hub:
        batch = hub.create_batch(3, group="g")
        for n, cb in enumerate(batch):
            third_party_post(cb.url, {"n": n})
        seen = []
        for delivery in hub.deliveries(group="g"):
            seen.append(delivery.body["n"])
            if len(seen) == 3:
                break
        assert seen == [0, 1, 2]
        assert hub.group("g").received == 3


async def test_it_works_where_the_calling_thread_already_runs_an_event_loop(server_url):
    # As in a notebook: an event loop is running in this thread, and blocking calls still work.
    with SyncCbHub(server_url) as hub:
        cb = hub.create()
        third_party_post(cb.url, {"ok": True})
        assert cb.wait(timeout=5).body == {"ok": True}


def test_ctrl_c_interrupts_a_blocking_wait_and_the_client_stays_usable(server_url, tmp_path):
    # As in a notebook: a cell blocked in wait() is interrupted, and the next cell goes on.
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import sys\n"
        "from cbhub.client import SyncCbHub\n"
        "with SyncCbHub(sys.argv[1]) as hub:\n"
        "    cb = hub.create()\n"
        "    print('waiting', flush=True)\n"
        "    try:\n"
        "        cb.wait(timeout=60)\n"
        "    except KeyboardInterrupt:\n"
        "        print('interrupted', flush=True)\n"
        "    print(hub.get(cb.token).status, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), server_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "waiting\n"
        # Into the blocking wait: the server holds its long-poll.
        eventually_sync(lambda: waiters_sync(server_url)["long_poll"] == 1, what="the script's wait")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (0, "interrupted\npending\n", "")
