"""A real Apache Kafka broker for the whole test session, and helpers around it.

The broker is started once (embedded, on free loopback ports, in a temp dir); every test
gets its own topic names, consumer group and ports, so tests cannot see each other's data.
If the broker cannot start, every integration test errors: nothing is skipped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from streams.bridge import Bridge
from streams.codec import first_device_key
from streams.config import Credential, Settings
from streams.embedded_kafka import EmbeddedKafka, KafkaStartError, free_port
from streams.topics import ensure_topics, topic_specs

USER, PASSWORD = "smartme", "webhook-secret"


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


AUTH = basic_auth(USER, PASSWORD)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    last: Exception | None = None
    for attempt in range(3):  # a free port can be taken between probing and binding
        broker = EmbeddedKafka(
            state_dir=tmp_path_factory.mktemp(f"kafka{attempt}"),
            cache_dir=Path("~/.cache/meterstream/kafka"),
            port=free_port(), controller_port=free_port(),
        )
        try:
            broker.start()
        except KafkaStartError as exc:
            last = exc
            continue
        try:
            yield broker
        finally:
            broker.stop()
        return
    raise RuntimeError(f"the embedded Kafka broker did not start: {last}")


def unique_settings(kafka: EmbeddedKafka, state_dir: Path) -> Settings:
    """Settings no other test shares: own topics, consumer group, ports and state dir."""
    suffix = uuid.uuid4().hex[:8]
    base = Settings(
        kafka_bootstrap=kafka.bootstrap,
        app_id=f"meterstream-test-{suffix}",
        topic_partitions=3,
        state_dir=state_dir,
        bridge_port=free_port(),
        worker_port=free_port(),
        bridge_credentials=(Credential("test", USER, PASSWORD),),
        worker_session_timeout=6.0,
        log_level="warning",
    )
    topics = {name: f"{value}.{suffix}" for name, value in base.all_topics.items()}
    return base.replace(**topics)


@pytest.fixture
def settings(kafka: EmbeddedKafka, tmp_path: Path) -> Settings:
    return unique_settings(kafka, tmp_path / "state")


@contextlib.asynccontextmanager
async def running_bridge(settings: Settings) -> AsyncIterator[Bridge]:
    """The bridge in this process, listening on its port, ready (producer connected)."""
    bridge = Bridge(settings)
    runner = web.AppRunner(bridge.app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    await web.TCPSite(runner, settings.bridge_host, settings.bridge_port).start()
    try:
        await wait_http_ok(bridge_url(settings, "/readyz"), timeout=60)
        yield bridge
    finally:
        await runner.cleanup()


def bridge_url(settings: Settings, path: str | None = None) -> str:
    return f"http://{settings.bridge_host}:{settings.bridge_port}{path or settings.bridge_path}"


async def wait_http_ok(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not 200 after {timeout:.0f}s")
            await asyncio.sleep(0.2)


class Process:
    """A meterstream sub-command in its own process, stopped (and reaped) by PID."""

    def __init__(self, command: str, settings: Settings, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        env = {**os.environ, **settings.to_env()}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams", command], env=env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def log_problems(self, lines: int = 60) -> str:
        """The log's last error and warning lines."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join([line for line in text if "[ERROR]" in line or "[WARNING]" in line]
                         [-lines:])


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[Any]:
    """Start meterstream sub-commands; all of them are killed at the end of the test."""
    started: list[Process] = []

    def start(command: str, settings: Settings) -> Process:
        process = Process(command, settings, tmp_path / f"{command}-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
    # Shown by pytest when the test failed: the processes' logs go with their tmp_path.
    for process in started:
        print(f"--- {process.log_path.name}:\n{process.log_problems()}")


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
                     logs: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{logs()}"
        await asyncio.sleep(0.5)


async def produce_raw(settings: Settings, bodies: list[bytes]) -> None:
    """Webhook bodies straight into the raw topic, keyed as the bridge keys them."""
    await ensure_topics(settings.kafka_bootstrap, topic_specs(settings))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(settings.topic_raw, body, key=first_device_key(body))
                for body in bodies]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def read_records(
    bootstrap: str, topic: str, *, count: int, timeout: float = 60.0, settle: float = 1.0
) -> list[ConsumerRecord]:
    """Every record of a topic once at least `count` arrived: read on to the end offsets
    of that moment (a topic with replayed duplicates holds more than `count`, and the
    first `count` records need not cover every partition), then `settle` s more, so a
    test asserting "exactly N" also sees extras. Whatever there is at `timeout`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] | None = None
        while not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
            if time.monotonic() > deadline:
                return []
            if not partitions:
                await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord] = []
        ends: dict[TopicPartition, int] | None = None
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
            if len(records) < count:
                continue
            if ends is None:
                ends = await consumer.end_offsets(tps)
            behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
            if behind:
                continue
            settle_until = settle_until or time.monotonic() + settle
            if time.monotonic() >= settle_until:
                break
        return records
    finally:
        await consumer.stop()


async def topic_size(bootstrap: str, topic: str) -> int:
    """Number of records in a topic (sum of end offsets; no compaction in these tests)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps) if tps else {}
        return sum(ends.values())
    finally:
        await consumer.stop()


async def metric_value(url: str, name: str) -> float | None:
    """One sample of a Prometheus text endpoint (None when absent or unreachable)."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
    except (aiohttp.ClientError, OSError):
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def header(record: ConsumerRecord, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value).decode()
    return None
