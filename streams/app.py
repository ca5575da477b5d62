"""The Faust application of a worker: topics, tables and agents, built from settings.

``Pipeline`` is constructed per process (and per test) instead of living at module
level, so settings are passed in and tests can build as many isolated apps as they need.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
import orjson
from faust.exceptions import ConsumerNotStarted
from prometheus_client import CollectorRegistry

from streams import _native
from streams.agents.outbox import Outbox, Record
from streams.codec import Decoder, format_timestamp
from streams.config import ConfigError, Settings
from streams.enrichment import Enrichment
from streams.faust_consumer import FastHandoverTransport
from streams.metrics import DeviceMetrics, WorkerMetrics
from streams.offline import Meter, is_online, last_seen, load_inventory
from streams.topics import TopicSpec
from streams.windows import Aggregator, Sample

log = logging.getLogger(__name__)


# Addresses that bind every interface (compared against, never bound here).
_WILDCARDS = frozenset({"", "::", "0.0.0.0"})  # noqa: S104


def advertised_host(settings: Settings) -> str:
    """Where other workers reach this one; Faust builds its table-routing URL from it, and
    a wildcard bind address is no address to send a request to."""
    if settings.worker_advertised_host:
        return settings.worker_advertised_host
    if settings.worker_host in _WILDCARDS:
        return socket.gethostname()
    return settings.worker_host


def make_faust_app(settings: Settings) -> faust.App:
    brokers = [f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")
               if host.strip()]
    app = faust.App(
        settings.app_id,
        broker=brokers or "kafka://127.0.0.1:9092",
        store=settings.store,
        datadir=str(settings.state_dir),
        web_enabled=True,
        web_bind=settings.worker_host,
        web_host=advertised_host(settings),
        web_port=settings.worker_port,
        web_tables_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        broker_session_timeout=settings.worker_session_timeout,
        broker_heartbeat_interval=max(settings.worker_session_timeout / 5, 0.5),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_request_timeout=settings.worker_produce_timeout,
        # Two or more records go out per reading: with aiokafka's defaults (16 KiB batches,
        # no linger) a send cost ~20 µs, with these ~6 µs (measured on the embedded broker).
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        key_serializer="raw",
        value_serializer="raw",
    )
    # As Faust makes its transport for a kafka:// broker, with a faster consumer.
    app.transport = FastHandoverTransport(app.conf.broker_consumer, app)
    return app


class Pipeline:
    """One worker's app, topics, metrics and agents."""

    aggregator: Aggregator  # set by the aggregation agent's register()
    heads_table: Any
    inventory_table: Any  # set by the vendor agents' register()
    umeter_table: Any
    pollers: dict[str, Callable[[], Awaitable[None]]]  # the timers' bodies, by vendor

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
        self._partitions: dict[tuple[str, str], int] = {}
        self.thresholds = settings.thresholds()
        self.inventory: dict[str, Meter] = {}
        if settings.inventory_file is not None:
            try:
                self.inventory = load_inventory(settings.inventory_file)
            except ValueError as exc:
                raise ConfigError(f"METERSTREAM_INVENTORY_FILE: {exc}") from exc
        self.enrichment = Enrichment(settings.umeter_mapping_file, base_meters=self.inventory)
        self._enrichment_refreshed = 0.0
        self.device_metrics = DeviceMetrics(self.registry, clock, lag=self._consumer_lag,
                                            gateways=self._owned_gateways)
        self.app = make_faust_app(settings)
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.decoder = Decoder(settings.obis_scales, settings.local_timezone)
        self.raw_topic = self._topic(settings.topic_raw)
        self.ticks_topic = self._topic(settings.topic_ticks)

        # Imported here: the agents' modules need this class's attributes, not vice versa.
        from streams.agents import aggregate, decode, vendors

        self.decode_agent = decode.register(self)
        self.aggregate_agent = aggregate.register(self)
        vendors.register(self)
        self._register_pages()

    # -- output ------------------------------------------------------------------------------
    async def produce(self, topic: str, value: bytes, *, key: bytes | None = None,
                      device_id: str | None = None, partition: int | None = None,
                      timestamp: float | None = None,
                      headers: dict[str, bytes] | None = None) -> Awaitable[Any]:
        """Hand one record to the producer; the result resolves when Kafka acknowledged it.

        Goes straight to Faust's producer instead of ``Topic.send``: at one or more records
        per reading, Topic.send's per-message machinery was the largest single cost of a
        worker. Records about a device go to the device's partition (the partition its
        readings are keyed to), computed once per device instead of hashing every key,
        unless `partition` is given.
        """
        if partition is None and device_id is not None:
            partition = self._partition(topic, device_id)
        return await self.app.producer.send(
            topic, key, value, partition, timestamp,
            list(headers.items()) if headers else None)

    def outbox(self) -> Outbox:
        """Collects a batch's records; its confirm() returns once Kafka has them all."""
        return Outbox(self.send_records, self.partition_for, self.wait_for_topic,
                      self.metrics.resent)

    async def send_records(self, topic: str, partition: int, records: list[Record]
                           ) -> list[tuple[list[Record], Awaitable[Any]]]:
        """Hand records for one partition to the producer as record batches; per batch,
        its records and the future that resolves when Kafka acknowledged it.

        The batches are built by the native module (the bytes aiokafka's own builder
        writes, without its per-record Python) and sent through aiokafka's send_batch."""
        producer = self._kafka_producer()
        batch_size = self.app.conf.producer_max_batch_size
        sent: list[tuple[list[Record], Awaitable[Any]]] = []
        first = 0
        while first < len(records):
            batch = _native.RecordBatch(batch_size)
            end = batch.append(records, first)  # a batch always takes its first record
            # Complete: without this the producer would hold it for its linger time, and
            # every confirm() waited that long (aiokafka lingers on batches still open).
            batch.close()
            sent.append((records[first:end],
                         await producer.send_batch(batch, topic, partition=partition)))
            first = end
        return sent

    def partition_for(self, topic: str, key: bytes | None, device_id: str | None
                      ) -> int | None:
        """A record's partition: the device's (the partition its readings are keyed to)
        for records about a device, else the producer's partitioner on the key; None
        while the producer knows no partitions of the topic."""
        if device_id is not None:
            cached = self._partitions.get((topic, device_id))
            if cached is not None:
                return cached
        if self._kafka_producer().client.cluster.partitions_for_topic(topic) is None:
            return None
        if device_id is not None:
            return self._partition(topic, device_id)
        return int(self.app.producer.key_partition(
            topic, key).partition)  # type: ignore[arg-type]  # None: any partition

    async def wait_for_topic(self, topic: str) -> None:
        await self._kafka_producer().client._wait_on_metadata(topic)

    def _kafka_producer(self) -> Any:
        """aiokafka's producer under Faust's (no transactions here, so there is one)."""
        return self.app.producer._ensure_producer()  # type: ignore[attr-defined]

    def _partition(self, topic: str, device_id: str) -> int | None:
        cached = self._partitions.get((topic, device_id))
        if cached is None:
            # The producer's own partitioner (murmur2, like every Kafka client) on the
            # device id, so the result matches the partition of the device's readings.
            cached = int(self.app.producer.key_partition(topic, device_id.encode()).partition)
            if len(self._partitions) > 200_000:
                self._partitions.clear()
            self._partitions[(topic, device_id)] = cached
        return cached

    # -- hooks the agents call ----------------------------------------------------------------
    def enrich_alert(self, alert: dict[str, Any]) -> dict[str, Any]:
        return self.enrichment.annotate(alert["device_id"], alert)

    def refresh_enrichment(self, force: bool = False) -> None:
        """Re-read the global tables the vendor agents fold into (cheap: a few hundred
        small records), at most once per sweep interval."""
        now = time.monotonic()
        if not force and now - self._enrichment_refreshed < self.settings.sweep_interval / 2:
            return
        self._enrichment_refreshed = now
        devices = {k.decode(): orjson.loads(v) for k, v in self.inventory_table.items()}
        customers: dict[str, Any] = {}
        measurements: dict[str, Any] = {}
        for key, value in self.umeter_table.items():
            kind, _, name = key.decode().partition("|")
            (customers if kind == "customer" else measurements)[name] = orjson.loads(value)
        self.enrichment.replace(devices, customers, measurements)

    def meter(self, device_id: str) -> Meter | None:
        """What the inventories say about a meter (None for meters nobody listed)."""
        return self.enrichment.meter(device_id)

    def expected_meters(self) -> dict[str, Meter]:
        return self.enrichment.expected()

    def threshold(self, device_id: str, meter: Meter | None) -> float:
        """An `id:`/`prefix:` setting, else the meter's own (its M-Bus gateway's), else
        the class setting or the default."""
        named = self.thresholds.for_id(device_id)
        if named is not None:
            return named
        if meter is not None and meter.threshold is not None:
            return meter.threshold
        return self.thresholds.for_device(device_id, meter.device_class if meter else None)

    def partition_of(self, device_id: str) -> int | None:
        """The partition of the device's readings, and of its aggregation state."""
        return self._partition(self.settings.topic_reading_batches, device_id)

    def observe_head(self, device_id: str, head: dict[str, Any]) -> None:
        """Refresh a device's metrics from its state head (after a batch or a sweep)."""
        latest = head.get("latest")
        watch = head.get("watch") or {}
        seen = last_seen(head)
        place = self.enrichment.place(device_id)
        meter = self.enrichment.meter(device_id)
        reconciled = head.get("reconciliation")
        self.device_metrics.update(device_id, {
            "partition": head.get("partition"),
            "ean": place.ean if place else None,
            "name": meter.name if meter else None,
            "class": meter.device_class if meter else None,
            "serial": meter.serial if meter else None,
            "mapped": place is not None if self.enrichment.active else None,
            "reconciliation": reconciled,
            "power": latest[3] if latest else None,
            "import": latest[1] if latest else None,
            "export": latest[2] if latest else None,
            "reading": latest[0] / 1e6 if latest else None,
            "seen": seen / 1e6 if seen is not None else None,
            "online": 1 if is_online(head) else 0,
            "threshold": watch.get("threshold"),
        })

    def commit_strictly(self, topic: str) -> None:
        """Never commit `topic`'s partitions past a record that was not processed; such
        records are fetched again (streams.commits), and counted."""
        gaps = self.metrics.offset_gaps.labels(topic)
        cast(FastHandoverTransport, self.app.transport).commit_strictly(topic, gaps.inc)

    async def _on_revoked(self, _sender: Any, *args: Any, signal: Any = None,
                          **_: Any) -> None:
        revoked = args[0] if args else set()
        self.device_metrics.drop_partitions(
            {tp.partition for tp in revoked
             if tp.topic == self.settings.topic_reading_batches})

    def _owned_gateways(self) -> list[dict[str, Any]]:
        """Gateways whose id falls in a readings partition this worker owns, so exactly
        one worker exports each (every worker holds the whole inventory)."""
        try:
            owned = {tp.partition for tp in self.app.consumer.assignment()
                     if tp.topic == self.settings.topic_reading_batches}
        except ConsumerNotStarted:
            return []
        return [g for g in self.enrichment.gateways()
                if self.partition_of(str(g.get("gateway_id"))) in owned]

    def _consumer_lag(self) -> list[tuple[str, int, int]]:
        consumer = self.app.consumer
        sources = {self.settings.topic_raw, self.settings.topic_reading_batches}
        lags: list[tuple[str, int, int]] = []
        try:
            assignment = sorted(consumer.assignment())
        except ConsumerNotStarted:
            return lags  # scraped before the worker joined the group
        for tp in assignment:
            if tp.topic not in sources:
                continue
            end = consumer.highwater(tp)
            if end is None:
                continue  # no fetch position yet right after an assignment
            # Faust keeps the offsets it committed; lag = end offset - committed offset.
            committed = getattr(consumer, "_committed_offset", {}).get(tp) or 0
            lags.append((tp.topic, tp.partition, max(0, int(end) - int(committed))))
        return lags

    async def dead_letter(self, event: Any, body: bytes, reason: str,
                          origin: dict[str, bytes] | None = None) -> None:
        """Park a record the pipeline cannot use in the dead-letter topic, with the reason
        and where it came from in the headers, and go on."""
        message = event.message
        headers = {
            **(origin or {}),
            "error": reason.encode(),
            "origin-topic": str(message.topic).encode(),
            "origin-partition": str(message.partition).encode(),
            "origin-offset": str(message.offset).encode(),
        }
        outbox = self.outbox()
        outbox.add(self.settings.topic_deadletter, body, key=message.key, headers=headers)
        await outbox.confirm()
        self.metrics.deadletters.inc()
        log.warning("dead-lettered %s[%d]@%d (%d bytes): %s", message.topic,
                    message.partition, message.offset, len(body), reason)

    async def reject_reading(self, event: Any, body: bytes, reason: str) -> None:
        """A reading (or a record of readings) the aggregation cannot use."""
        await self.dead_letter(event, body, reason)

    def _register_pages(self) -> None:
        async def healthz(web: Any, _request: Any) -> Any:
            return web.json({"status": "ok", "detail": "worker process alive"})

        async def device_view(web: Any, _request: Any, device_id: str) -> Any:
            return web.json(self.device_snapshot(device_id) or {"error": "unknown device"},
                            status=200 if self.device_snapshot(device_id) else 404)

        self.app.page("/healthz")(healthz)
        routed = self.app.table_route(table=self.heads_table, match_info="device_id")
        self.app.page("/devices/{device_id}")(routed(device_view))

    def device_snapshot(self, device_id: str) -> dict[str, Any] | None:
        """Latest reading and open windows of a device held by this worker."""
        device = self.aggregator.device(device_id)
        head = device.head
        if head["event_time"] is None:
            return None
        latest = head["latest"]
        return {
            "device_id": device_id,
            "event_time": format_timestamp(head["event_time"]),
            "last_arrival": format_timestamp(head["arrival"]) if head["arrival"] else None,
            "latest_reading": dict(zip(Sample._fields, latest, strict=True)) if latest else None,
            "open_windows": self.aggregator.open_windows(device),
        }

    def internal_specs(self) -> list[TopicSpec]:
        """The topics Faust creates for itself, as it would create them: the tables'
        compacted changelogs and the one-partition topic that elects the leader."""
        replication = self.settings.topic_replication
        leader = self.app._leader_assignor._leader_topic_name  # type: ignore[attr-defined]
        return [TopicSpec(table.changelog_topic.get_topic_name(),
                          table.partitions or self.settings.topic_partitions,
                          replication, {"cleanup.policy": "compact"})
                for table in self.app.tables.values()] + [TopicSpec(leader, 1, replication)]

    def _topic(self, name: str) -> Any:
        return self.app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.settings.topic_partitions,
        )
