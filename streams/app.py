"""The Faust application of a worker: topics, tables and agents, built from settings.

``Pipeline`` is constructed per process (and per test) instead of living at module
level, so settings are passed in and tests can build as many isolated apps as they need.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from streams.codec import Decoder
from streams.config import Settings
from streams.metrics import WorkerMetrics


def make_faust_app(settings: Settings) -> faust.App:
    brokers = [f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")
               if host.strip()]
    return faust.App(
        settings.app_id,
        broker=brokers or "kafka://127.0.0.1:9092",
        store=settings.store,
        datadir=str(settings.state_dir),
        web_enabled=True,
        web_bind=settings.worker_host,
        web_host=settings.worker_host,
        web_port=settings.worker_port,
        web_tables_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        broker_session_timeout=settings.worker_session_timeout,
        broker_heartbeat_interval=max(settings.worker_session_timeout / 5, 0.5),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
    )


class Pipeline:
    """One worker's app, topics, metrics and agents."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry)
        self.clock = clock
        self.app = make_faust_app(settings)
        self.decoder = Decoder(settings.obis_scales, settings.local_timezone)
        self.raw_topic = self._topic(settings.topic_raw)
        self.readings_topic = self._topic(settings.topic_readings)
        self.deadletter_topic = self._topic(settings.topic_deadletter)

        from streams.agents import decode

        self.decode_agent = decode.register(self)
        self._register_pages()

    def _register_pages(self) -> None:
        async def healthz(web: Any, _request: Any) -> Any:
            return web.json({"status": "ok", "detail": "worker process alive"})

        self.app.page("/healthz")(healthz)

    def output_topics(self) -> list[Any]:
        """Topics the agents write to (tests replace their ``send``)."""
        return [self.readings_topic, self.deadletter_topic]

    def _topic(self, name: str) -> Any:
        return self.app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.settings.topic_partitions,
        )
