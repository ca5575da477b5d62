"""`meterstream run` (what `make run` starts) and the README's curl, end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from streams.config import Credential, Settings
from streams.embedded_kafka import free_port
from tests.conftest import ROOT


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"  # a zombie has exited; its parent just has not reaped it


def test_run_starts_everything_serves_the_readme_curl_and_stops_cleanly(tmp_path: Path) -> None:
    settings = Settings(
        kafka_state_dir=tmp_path / "kafka", kafka_port=free_port(),
        kafka_controller_port=free_port(), bridge_port=free_port(), worker_port=free_port(),
        state_dir=tmp_path / "state", app_id="meterstream-run-test", log_level="warning",
        bridge_credentials=(Credential("local", "meterstream", "meterstream"),),
    )
    env = {**os.environ, **settings.to_env()}
    env.pop("METERSTREAM_KAFKA_BOOTSTRAP")  # unset: `run` must start its own broker
    out = (tmp_path / "run.out").open("w+")
    run = subprocess.Popen([sys.executable, "-m", "streams", "run"], env=env, cwd=tmp_path,
                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "meterstream is running" not in Path(out.name).read_text():
            assert run.poll() is None, Path(out.name).read_text()[-3000:]
            assert time.monotonic() < deadline, Path(out.name).read_text()[-3000:]
            time.sleep(0.5)
        banner = Path(out.name).read_text()
        assert f"POST http://127.0.0.1:{settings.bridge_port}/smartme/realtime" in banner
        assert f"http://127.0.0.1:{settings.worker_port}/metrics" in banner
        processes = _descendants(run.pid)
        assert len(processes) >= 3  # java broker, bridge, worker

        # The README's curl, verbatim apart from the port.
        curl = shutil.which("curl")
        assert curl, "curl is needed for the README walk-through"
        posted = subprocess.run(
            [curl, "-s", "-u", "meterstream:meterstream", "--data-binary",
             f"@{ROOT / 'examples' / 'seed-example.pb'}",
             f"http://127.0.0.1:{settings.bridge_port}/smartme/realtime"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        assert json.loads(posted.stdout)["status"] == "accepted"

        tail_env = {**env, "METERSTREAM_LOG_LEVEL": "warning"}
        deadline = time.monotonic() + 90
        lines: list[str] = []
        while not lines and time.monotonic() < deadline:
            tail = subprocess.run(
                [sys.executable, "-m", "streams", "tail", "meter.readings", "-n", "1",
                 "--timeout", "5"], env=tail_env, capture_output=True, text=True, timeout=60,
            )
            lines = tail.stdout.splitlines()
        assert lines, "no decoded reading appeared"
        reading = json.loads(lines[0])["value"]
        assert reading["device_id"] == "3bd0fce9-9f8e-4183-b3d1-0c1622a22ca1"
        assert reading["timestamp"] == "2019-10-16T12:20:44.978851Z"
    finally:
        run.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            status = run.wait(120)
        except subprocess.TimeoutExpired:
            run.kill()
            raise
        out.close()
    assert status == 0, Path(out.name).read_text()[-3000:]
    time.sleep(0.5)
    leftovers = [pid for pid in processes if _alive(pid)]
    assert not leftovers, f"processes left behind: {leftovers}"
