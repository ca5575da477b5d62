"""``meterstream run``: embedded Kafka (when no bootstrap is configured), bridge and worker.

The bridge and the worker run as child processes, each in its own session so a terminal
Ctrl-C reaches only the supervisor, which then stops them in order: the bridge first (it
drains in-flight webhooks into Kafka), then the worker (it commits), then Kafka. Every
child also gets SIGTERM from the kernel if the supervisor dies, so nothing is orphaned.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
import urllib.request
from types import FrameType

from streams import embedded_kafka
from streams.config import Settings, environment_with

log = logging.getLogger(__name__)

_STOP_TIMEOUTS = {"bridge": 30.0, "worker": 60.0}


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.requested:
            log.info("%s received: stopping", signal.Signals(signum).name)
        self.requested = True


def _start_child(name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "streams", name],
        env=env, start_new_session=True,
        preexec_fn=embedded_kafka._die_with_parent,
    )


def _stop_child(name: str, proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(_STOP_TIMEOUTS[name])
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) did not stop in %.0fs, killing", name, proc.pid,
                    _STOP_TIMEOUTS[name])
        proc.kill()
        proc.wait()


def _wait_ready(url: str, timeout: float, stop: _StopFlag) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.requested:
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
            if response.status == 200:
                return True
        time.sleep(0.3)
    return False


def _banner(settings: Settings, bootstrap: str, embedded: bool) -> str:
    bridge = f"http://{settings.bridge_host}:{settings.bridge_port}"
    worker = f"http://{settings.worker_host}:{settings.worker_port}"
    cred = settings.bridge_credentials[0] if settings.bridge_credentials else None
    auth = f"-u {cred.username}:<password of source {cred.source}>" if cred else ""
    kafka = f"{bootstrap} (embedded, data in {settings.kafka_state_dir})" if embedded \
        else bootstrap
    return "\n".join([
        "",
        "meterstream is running",
        f"  webhook   POST {bridge}{settings.bridge_path}",
        f"  bridge    {bridge}/metrics  {bridge}/healthz  {bridge}/readyz",
        f"  worker    {worker}/metrics",
        f"  kafka     {kafka}",
        f"  topics    {settings.topic_raw} → {settings.topic_readings} → "
        f"{settings.topic_aggregates}, {settings.topic_alerts}",
        f"            late: {settings.topic_late}, dead letters: {settings.topic_deadletter}",
        f"  devices   {worker}/devices/<device id>  (latest reading, open windows)",
        f"  try       curl {auth} --data-binary @body.pb {bridge}{settings.bridge_path}",
        "  Ctrl-C stops everything.",
        "",
    ])


def run_pipeline(settings: Settings) -> int:
    stop = _StopFlag()
    kafka = None
    bootstrap = settings.kafka_bootstrap
    try:
        if not bootstrap:
            kafka = embedded_kafka.from_settings(settings)
            log.info("starting embedded Kafka %s on 127.0.0.1:%d", settings.kafka_version,
                     settings.kafka_port)
            bootstrap = kafka.start()
        env = environment_with(METERSTREAM_KAFKA_BOOTSTRAP=bootstrap)
        children = {name: _start_child(name, env) for name in ("worker", "bridge")}
        ready = _wait_ready(f"http://{settings.bridge_host}:{settings.bridge_port}/readyz",
                            120.0, stop)
        if ready:
            print(_banner(settings, bootstrap, kafka is not None), flush=True)
        elif not stop.requested:
            log.error("the bridge did not become ready in 120s")
            stop.requested = True
        status = 0
        while not stop.requested:
            for name, proc in children.items():
                if proc.poll() is not None:
                    log.error("%s exited with status %s: stopping the pipeline", name,
                              proc.returncode)
                    status = 1
                    stop.requested = True
            time.sleep(0.3)
        for name in ("bridge", "worker"):
            _stop_child(name, children[name])
        return status
    except embedded_kafka.KafkaStartError as exc:
        log.error("embedded Kafka did not start: %s", exc)
        return 1
    finally:
        if kafka is not None:
            kafka.stop()
            log.info("embedded Kafka stopped")


def run_kafka_only(settings: Settings) -> int:
    stop = _StopFlag()
    kafka = embedded_kafka.from_settings(settings)
    try:
        bootstrap = kafka.start()
    except embedded_kafka.KafkaStartError as exc:
        log.error("embedded Kafka did not start: %s", exc)
        return 1
    try:
        print(f"Kafka {settings.kafka_version} ready: METERSTREAM_KAFKA_BOOTSTRAP={bootstrap}"
              f" (pid {kafka.pid}, started in {kafka.startup_seconds:.1f}s)", flush=True)
        while not stop.requested and kafka.running:
            time.sleep(0.3)
        return 0 if stop.requested else 1
    finally:
        kafka.stop()
