"""Aggregation agent: readings (+ wall-clock ticks) → ``meter.aggregates``.

The readings come from the internal reading-batches topic: the ``meter.readings`` records,
as JSON arrays, one per readings partition per decode batch (see
:mod:`streams.agents.decode`). A record holding a single reading object is accepted too.

Faust glue around :mod:`streams.windows` (the window math and the parsing of the reading
records are native). Per batch of events the agent groups readings by device, applies
them (one state read and one write per device per batch; the window records go to the
producer every few dozen devices, so that Kafka takes them in meanwhile), sweeps the
quiet devices of every partition a tick arrived for, sends the rest, waits until Kafka
acknowledged every window record, then writes the new state and waits until its changelog
records are in Kafka too, and only then lets Faust ack the batch. A crash can therefore
lose state changes but never records, and never state for committed readings: after a
restart the uncommitted readings are applied again, and since window contents are a
pure function of the readings, anything re-emitted is identical to what was emitted.

Ticks are records on an internal topic with as many partitions as ``meter.readings``.
Faust assigns equal-numbered partitions of co-subscribed topics to the same worker, so
the tick for partition p reaches the worker that owns the devices of partition p, and
table writes made while handling it go to the right changelog partition.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from faust.stores.memory import Store as MemoryStore
from faust.streams import _current_event, current_event
from faust.types import TP
from rocksdict import WriteBatch

from streams import offline, reconcile
from streams.agents.outbox import Outbox
from streams.windows import (
    US,
    Aggregator,
    Device,
    DeviceReadings,
    Outcome,
    reading_parser,
)

if TYPE_CHECKING:
    from streams.app import Pipeline

log = logging.getLogger(__name__)

_BATCH_WINDOW = 0.05
# Window records are handed to the producer every this many devices of a batch, so that
# Kafka takes them in while the rest of the batch is computed.
_SEND_EVERY = 64
# Ticks carry this key as well as their own topic, so they are recognisable wherever an
# event comes from (Faust's test_context gives every event the same topic name).
TICK_KEY = b"\x00meterstream-tick"


class TableStore(MutableMapping[str, bytes]):
    """A Faust table of raw bytes seen as a mapping of str → bytes.

    Reads go to the table's local store (RocksDB) of the current event's partition, as
    Faust's own table access does. Writes are held (and read back) until
    :func:`save_state` has their changelog records acknowledged and then writes them into
    the local store, one RocksDB write batch per partition. Faust's
    per-write path (a RocksDB write, a future per changelog record through its producer
    buffer, sensors, and a RocksDB write of the persisted offset per acknowledged record)
    was the largest cost of a busy worker in a profile.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        # (partition, key, value or None for a deletion), in the order written
        self.changes: list[tuple[int, bytes, bytes | None]] = []
        self._unwritten: dict[bytes, bytes | None] = {}

    def __getitem__(self, key: str) -> bytes:
        raw_key = key.encode()
        if raw_key in self._unwritten:
            value = self._unwritten[raw_key]
            if value is None:
                raise KeyError(key)
            return value
        raw: bytes = self.table.data[raw_key]
        return raw

    def __setitem__(self, key: str, value: bytes) -> None:
        raw_key = key.encode()
        self._unwritten[raw_key] = value
        self.changes.append((_event_partition(), raw_key, value))

    def __delitem__(self, key: str) -> None:
        self[key]  # a KeyError for a key that is not there, as a mapping must
        raw_key = key.encode()
        self._unwritten[raw_key] = None
        self.changes.append((_event_partition(), raw_key, None))  # a tombstone

    def __iter__(self) -> Iterator[str]:
        return (key.decode() for key in self.table)

    def __len__(self) -> int:
        return len(self.table)

    def write_local(self, changes: list[tuple[int, bytes, bytes | None]]) -> None:
        """Write changes into the table's local store: one write batch per partition."""
        store = self.table.data
        if isinstance(store, MemoryStore):  # tests, and METERSTREAM_STORE=memory://
            for _, key, value in changes:
                if value is None:
                    store.pop(key, None)
                else:
                    store[key] = value
        else:
            # As Faust applies changelog batches at recovery.
            batches: dict[int, Any] = {}
            for partition, key, value in changes:
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = (WriteBatch(raw_mode=True)
                                                  if store.use_rocksdict else _PlainBatch())
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            for partition, batch in batches.items():
                db = store._db_for_partition(partition)
                if isinstance(batch, _PlainBatch):
                    batch.apply(db)
                else:
                    db.write(batch)
        for _, key, _ in changes:
            self._unwritten.pop(key, None)


class _PlainBatch:
    """Puts and deletes for a RocksDB driver other than rocksdict (python-rocksdb)."""

    def __init__(self) -> None:
        self.operations: list[tuple[bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.operations.append((key, value))

    def delete(self, key: bytes) -> None:
        self.operations.append((key, None))

    def apply(self, db: Any) -> None:
        for key, value in self.operations:
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)


class JsonTableStore(MutableMapping[str, Any]):
    """A :class:`TableStore` whose values are JSON documents."""

    def __init__(self, raw: TableStore) -> None:
        self.raw = raw

    def __getitem__(self, key: str) -> Any:
        return orjson.loads(self.raw[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self.raw[key] = orjson.dumps(value)

    def __delitem__(self, key: str) -> None:
        del self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


def _event_partition() -> int:
    """The table partition being written: the current event's, as Faust would pick."""
    event = current_event()
    if event is None:
        raise RuntimeError("table state written outside of an event")
    return int(event.message.partition)


async def save_state(outbox: Outbox, stores: Iterable[TableStore]) -> None:
    """Send the stores' changelog records, wait until Kafka has them all, then write the
    changes into RocksDB and record the changelogs' persisted offsets the way Faust does
    after each acknowledged write. In that order: a worker that dies in between restores
    the changes from the changelog at its restart (Faust replays it from the persisted
    offset), whereas local state ahead of an unsent changelog would never reach it."""
    tables = {}
    pending = []
    for store in stores:
        topic = store.table.changelog_topic.get_topic_name()
        tables[topic] = store.table
        changes, store.changes = store.changes, []
        pending.append((store, changes))
        for partition, key, value in changes:
            outbox.add(topic, value, key=key, partition=partition)
    acknowledged = await outbox.confirm()
    for store, changes in pending:
        store.write_local(changes)
    for (topic, partition), offset in acknowledged.items():
        tables[topic].data.set_persisted_offset(TP(topic, partition), offset)


@contextlib.contextmanager
def as_current(event: Any) -> Iterator[None]:
    """Make `event` Faust's current event while touching a device's state.

    Faust picks the RocksDB partition for table reads, and the changelog partition for
    table writes, from the *current* event. In a ``take_events`` batch that is the last
    event of the batch, which may belong to another partition than the device at hand.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


@functools.lru_cache(maxsize=1024)
def _parse_received(text: str) -> int | None:
    # Cached: every reading of a body carries the body's arrival time.
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(moment.timestamp() * US)


@dataclass
class Batch:
    """Everything one batch of events changes: its window records go out as it goes,
    the rest at its end."""

    now: int
    outbox: Outbox
    # (device id, what applying its readings or sweeping it gave), in processing order
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    duplicates: int = 0
    revisions: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)
    devices: dict[str, Device] = field(default_factory=dict)
    touched: list[tuple[Device, Any]] = field(default_factory=list)
    # (the device's readings, position of the late one, why)
    late: list[tuple[DeviceReadings, int, str]] = field(default_factory=list)
    queued: int = 0  # outcomes whose records are in the outbox

    def add(self, device_id: str, outcome: Outcome) -> None:
        if outcome.records:
            self.outcomes.append((device_id, outcome))
        self.duplicates += outcome.duplicates
        self.revisions += outcome.revisions


def register(pipeline: Pipeline) -> Any:
    settings = pipeline.settings
    metrics = pipeline.metrics
    app = pipeline.app
    # Values are orjson bytes (the app's default serializers are raw).
    heads_table = app.Table("aggregate-heads", key_type=bytes, value_type=bytes,
                            partitions=settings.topic_partitions)
    chunks_table = app.Table("aggregate-chunks", key_type=bytes, value_type=bytes,
                             partitions=settings.topic_partitions)
    stores = (TableStore(heads_table), TableStore(chunks_table))
    aggregator = Aggregator(settings.window_config(), JsonTableStore(stores[0]), stores[1])
    parser = reading_parser(pipeline.decoder.native)
    pipeline.aggregator = aggregator
    pipeline.heads_table = heads_table
    source = app.topic(settings.topic_reading_batches, settings.topic_ticks, key_type=bytes,
                       value_type=bytes, key_serializer="raw", value_serializer="raw")

    @functools.cache
    def window_counter(size: int, kind: str) -> Any:
        return metrics.windows.labels(str(size), kind)

    def now_us() -> int:
        return int(pipeline.clock() * US)

    async def send_windows(batch: Batch) -> None:
        """Hand the window records of the outcomes so far to the producer."""
        kinds: collections.Counter[tuple[int, str]] = collections.Counter()
        # Per device, not per window: the native side made the records and the summaries.
        for device_id, outcome in batch.outcomes[batch.queued:]:
            batch.outbox.add_device_batch(settings.topic_aggregates, device_id,
                                          outcome.records)
            for size, kind, count in outcome.counts:  # kind "interim": AGGREGATE_INTERIM
                kinds[(size, kind)] += count
            for size, start_us, import_wh, export_wh in outcome.newest:
                pipeline.device_metrics.window(device_id, size, start_us, import_wh, export_wh)
        batch.queued = len(batch.outcomes)
        for (size, kind), count in kinds.items():
            window_counter(size, kind).inc(count)
        await batch.outbox.send()

    async def send_outcome(batch: Batch) -> None:
        await send_windows(batch)
        outbox = batch.outbox
        for readings, position, reason in batch.late:
            original = orjson.loads(readings.record(position))
            device = readings.device_id
            outbox.add(
                settings.topic_late, orjson.dumps({**original, "late_reason": reason}),
                key=device.encode(), device_id=device,
                timestamp=int(original["timestamp_us"]) / US)
            log.info("late reading %s at %s: %s", device, original.get("timestamp"), reason)
        for alert in batch.alerts:
            enriched = pipeline.enrich_alert(alert)
            outbox.add(
                settings.topic_alerts, orjson.dumps(enriched),
                key=alert["device_id"].encode(), device_id=alert["device_id"])
            metrics.alerts.labels(alert["state"]).inc()
            log.warning("alert for meter %s: %s %s", alert["device_id"], alert["state"].upper(),
                        {k: v for k, v in alert.items() if k not in ("device_id", "state")})
        metrics.late.inc(len(batch.late))
        metrics.duplicates.inc(batch.duplicates)
        metrics.revisions.inc(batch.revisions)
        # Records first, state second: see the module docstring.
        await outbox.confirm()

    def device_state(device_id: str, event: Any) -> Device:
        """A device's state, read from the partition of `event` (see as_current); its
        window records carry what enrichment knows of it."""
        with as_current(event):
            return aggregator.device(device_id, pipeline.enrichment.annotation(device_id))

    def apply_readings(batch: Batch, readings: DeviceReadings, event: Any) -> None:
        device_id = readings.device_id
        device = device_state(device_id, event)
        head = device.head
        head["partition"] = event.message.partition
        for text, count in readings.received:
            received = _parse_received(text)
            if received is not None:
                lag = max(0, batch.now - received) / US
                for _ in range(count):
                    metrics.processing_lag.observe(lag)
                head["received"] = max(head.get("received") or 0, received)
        with as_current(event):
            outcome = aggregator.apply(device, readings, batch.now)
        batch.late += [(readings, position, reason) for position, reason in outcome.late]
        batch.add(device_id, outcome)
        meter = pipeline.meter(device_id)
        back = offline.seen(device_id, head, batch.now, meter,
                            pipeline.threshold(device_id, meter))
        if back is not None:
            batch.alerts.append(back)
        batch.touched.append((device, event))
        batch.devices[device_id] = device
        pipeline.observe_head(device_id, head)

    def sweep_partition(batch: Batch, tick: Any) -> None:
        """Wall-clock duties for one partition: finalize quiet devices' windows, detect
        offline meters, start watching never-seen inventory meters, refresh metrics."""
        partition = tick.message.partition
        now = batch.now
        began = time.perf_counter()
        pipeline.refresh_enrichment()
        enrichment = pipeline.enrichment
        present: set[str] = set()
        for key, raw in list(heads_table.items()):
            head = orjson.loads(raw)
            if head.get("partition") != partition:
                continue
            device_id = key.decode()
            present.add(device_id)
            device = batch.devices.get(device_id)
            current = device.head if device is not None else head
            meter = pipeline.meter(device_id)
            threshold = pipeline.threshold(device_id, meter)
            if not (aggregator.due(current, now) or offline.due(current, now, threshold)
                    or reconcile.pending(current, device_id, enrichment)):
                pipeline.observe_head(device_id, current)
                continue
            if device is None:
                # The device lives in the tick's partition: its state is read from there.
                device = device_state(device_id, tick)
                batch.devices[device_id] = device
                batch.touched.append((device, tick))
            with as_current(tick):
                batch.add(device_id, aggregator.sweep(device, now))
            gone = offline.check(device_id, device.head, now, threshold, meter)
            if gone is not None:
                batch.alerts.append(gone)
            mismatches, latest = reconcile.reconcile(device.head, device_id, enrichment,
                                                     settings.reconcile_tolerance)
            batch.alerts += mismatches
            if latest is not None:
                device.head["reconciliation"] = [latest[0].isoformat(), latest[1]]
            device.mark_head()
            pipeline.observe_head(device_id, device.head)
        for device_id, meter in pipeline.expected_meters().items():
            if device_id in present or device_id in batch.devices:
                continue
            if pipeline.partition_of(device_id) != partition:
                continue
            device = device_state(device_id, tick)
            device.head["partition"] = partition
            offline.check(device_id, device.head, now, pipeline.threshold(device_id, meter),
                          meter)
            batch.devices[device_id] = device
            batch.touched.append((device, tick))
            present.add(device_id)
            pipeline.observe_head(device_id, device.head)
        pipeline.device_metrics.keep_partitions(partition, present)
        metrics.sweep_duration.observe(time.perf_counter() - began)

    pipeline.commit_strictly(settings.topic_reading_batches)

    async def aggregate(stream: Any) -> None:
        async for events in stream.take_events(settings.aggregate_batch, within=_BATCH_WINDOW):
            records, ticks = [], []
            for event in events:
                if event.message.topic == settings.topic_ticks or event.key == TICK_KEY:
                    ticks.append(event)
                else:
                    records.append(event)
            groups, rejected = parser.group([event.value or b"" for event in records])
            for index, body, reason in rejected:
                await pipeline.reject_reading(records[index], body, reason)
            batch = Batch(now=now_us(), outbox=pipeline.outbox())
            for number, readings in enumerate(groups, 1):
                apply_readings(batch, readings, records[readings.last_value])
                if number % _SEND_EVERY == 0:
                    await send_windows(batch)
                    await asyncio.sleep(0)  # the producer's sender runs: they go out now
            for tick in ticks:
                sweep_partition(batch, tick)
            await send_outcome(batch)
            for device_id, outcome in batch.outcomes:
                device = batch.devices.get(device_id)
                if device is None:
                    continue
                for start_us, import_wh, export_wh in outcome.finals_of(reconcile.HOUR):
                    reconcile.fold(device.head, reconcile.HOUR, start_us, import_wh, export_wh)
            for device, event in batch.touched:
                with as_current(event):
                    device.flush()
            if batch.touched:
                await save_state(pipeline.outbox(), stores)
            metrics.aggregated.inc(sum(len(readings) for readings in groups))
            metrics.ticks.inc(len(ticks))

    async def tick() -> None:
        for partition in range(settings.topic_partitions):
            await pipeline.ticks_topic.send(key=TICK_KEY, value=b"", partition=partition)

    app.timer(settings.sweep_interval, on_leader=True)(tick)
    return app.agent(source, name="aggregate")(aggregate)
