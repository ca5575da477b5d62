"""Faust agents under ``agent.test_context()``: no Kafka, memory tables, outbound topics
recorded instead of produced (the Faust testing guide's recipe)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2

from streams.agents.outbox import Record
from streams.app import Pipeline
from streams.config import Settings


@dataclass
class Sent:
    key: Any
    value: Any
    timestamp: float | None = None
    headers: Any = None
    partition: int | None = None


def _delivered() -> asyncio.Future[None]:
    """What Faust's send() returns: a future that resolves when Kafka acknowledged."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


@dataclass
class Outbox:
    """What agents sent, per topic name."""

    records: dict[str, list[Sent]] = field(default_factory=dict)

    def of(self, topic: str) -> list[Sent]:
        return self.records.get(topic, [])


class Clock:
    """The pipeline's wall clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(1_800_000_000.0)


@pytest.fixture
async def pipeline(tmp_path: Path, clock: Clock) -> AsyncIterator[tuple[Pipeline, Outbox]]:
    async for made in make_pipeline(tmp_path, clock):
        yield made


async def make_pipeline(tmp_path: Path, clock: Clock, **overrides: Any
                        ) -> AsyncIterator[tuple[Pipeline, Outbox]]:
    settings = Settings(store="memory://", state_dir=tmp_path / "state",
                        kafka_bootstrap="127.0.0.1:1", topic_partitions=6).replace(**overrides)
    pipeline = Pipeline(settings, clock=clock)
    # No broker in test_context: partition devices like the producer would (murmur2).
    pipeline.partition_of = lambda device_id: (  # type: ignore[method-assign]
        murmur2(device_id.encode()) & 0x7FFFFFFF) % settings.topic_partitions
    app = pipeline.app
    app.loop = asyncio.get_running_loop()
    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    outbox = Outbox()

    async def produce(topic: str, value: bytes, *, key: bytes | None = None,
                      device_id: str | None = None, partition: int | None = None,
                      timestamp: float | None = None, headers: Any = None
                      ) -> asyncio.Future[None]:
        if partition is None and device_id is not None:
            partition = pipeline.partition_of(device_id)
        outbox.records.setdefault(topic, []).append(
            Sent(key, value, timestamp, headers, partition))
        return _delivered()

    pipeline.produce = produce  # type: ignore[method-assign]

    async def send_records(topic: str, partition: int, records: list[Record]
                           ) -> list[tuple[list[Record], asyncio.Future[None]]]:
        outbox.records.setdefault(topic, []).extend(
            Sent(key, value, timestamp_ms / 1000 if timestamp_ms else None, dict(headers),
                 partition) for key, value, timestamp_ms, headers in records)
        return [(records, _delivered())]

    def partition_for(topic: str, key: bytes | None, device_id: str | None) -> int:
        if device_id is not None:
            return pipeline.partition_of(device_id) or 0
        return 0 if key is None else (murmur2(key) & 0x7FFFFFFF) % settings.topic_partitions

    pipeline.send_records = send_records  # type: ignore[method-assign]
    pipeline.partition_for = partition_for  # type: ignore[method-assign]
    yield pipeline, outbox


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    """Agents batch events (take_events), so a put() returns before its batch ran."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "agent did not get there"
        await asyncio.sleep(0.01)


def counter(metric: Any) -> float:
    return float(metric._value.get())
