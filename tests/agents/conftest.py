"""Faust agents under ``agent.test_context()``: no Kafka, memory tables, outbound topics
recorded instead of produced (the Faust testing guide's recipe)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streams.app import Pipeline
from streams.config import Settings


@dataclass
class Sent:
    key: Any
    value: Any
    timestamp: float | None = None
    headers: Any = None


@dataclass
class Outbox:
    """What agents sent, per topic name."""

    records: dict[str, list[Sent]] = field(default_factory=dict)

    def of(self, topic: str) -> list[Sent]:
        return self.records.get(topic, [])


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[tuple[Pipeline, Outbox]]:
    settings = Settings(store="memory://", state_dir=tmp_path / "state",
                        kafka_bootstrap="127.0.0.1:1")
    pipeline = Pipeline(settings, clock=lambda: 1_800_000_000.0)
    app = pipeline.app
    app.loop = asyncio.get_running_loop()
    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    outbox = Outbox()

    for topic in pipeline.output_topics():
        async def send(*, key: Any = None, value: Any = None, timestamp: float | None = None,
                       headers: Any = None, _name: str = topic.get_topic_name(),
                       **_: Any) -> None:
            outbox.records.setdefault(_name, []).append(Sent(key, value, timestamp, headers))

        topic.send = send
    yield pipeline, outbox
