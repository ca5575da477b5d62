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


class Run:
    """`meterstream run` in its own session, as `make run` starts it (no Kafka configured)."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(
            kafka_state_dir=tmp_path / "kafka", kafka_port=free_port(),
            kafka_controller_port=free_port(), bridge_port=free_port(),
            worker_port=free_port(), state_dir=tmp_path / "state",
            app_id="meterstream-run-test", log_level="warning",
            bridge_credentials=(Credential("local", "meterstream", "meterstream"),),
        )
        self.env = {**os.environ, **self.settings.to_env()}
        self.env.pop("METERSTREAM_KAFKA_BOOTSTRAP")  # unset: `run` starts its own broker
        self.out_path = tmp_path / "run.out"
        self.out = self.out_path.open("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams", "run"], env=self.env, cwd=tmp_path,
            stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes: set[int] = set()

    def output(self) -> str:
        return self.out_path.read_text()

    def wait_for_banner(self) -> str:
        deadline = time.monotonic() + 180
        while "meterstream is running" not in self.output():
            assert self.process.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, self.output()[-3000:]
            time.sleep(0.5)
        self.processes = _descendants(self.process.pid)
        assert len(self.processes) >= 3  # java broker, bridge, worker
        return self.output()

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        try:
            status = self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        finally:
            self.out.close()
        return status

    def leftovers(self) -> list[int]:
        time.sleep(0.5)
        return [pid for pid in self.processes if _alive(pid)]


def test_run_starts_everything_serves_the_readme_curl_and_stops_cleanly(tmp_path: Path) -> None:
    run = Run(tmp_path)
    settings, env = run.settings, run.env
    try:
        banner = run.wait_for_banner()
        assert f"POST http://127.0.0.1:{settings.bridge_port}/smartme/realtime" in banner
        assert f"http://127.0.0.1:{settings.worker_port}/metrics" in banner

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
        status = run.stop(signal.SIGINT)  # what Ctrl-C does
    assert status == 0, run.output()[-3000:]
    assert not run.leftovers(), f"processes left behind: {run.leftovers()}"


def test_run_banner_lists_the_endpoints_and_topics_and_sigterm_stops_everything(
    tmp_path: Path
) -> None:
    run = Run(tmp_path)
    settings = run.settings
    try:
        banner = run.wait_for_banner()
    finally:
        status = run.stop(signal.SIGTERM)  # what a service manager sends
    bridge = f"http://127.0.0.1:{settings.bridge_port}"
    for expected in (f"{bridge}/metrics", f"{bridge}/healthz", f"{bridge}/readyz",
                     f"127.0.0.1:{settings.kafka_port} (embedded",
                     f"{settings.topic_raw} → {settings.topic_readings} → "
                     f"{settings.topic_aggregates}, {settings.topic_alerts}",
                     settings.topic_late, settings.topic_deadletter,
                     f"http://127.0.0.1:{settings.worker_port}/devices/"):
        assert expected in banner, expected
    assert status == 0, run.output()[-3000:]
    assert not run.leftovers(), f"processes left behind: {run.leftovers()}"
