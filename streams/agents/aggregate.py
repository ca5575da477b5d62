"""Aggregation agent: readings (+ wall-clock ticks) → ``meter.aggregates``.

The readings come from the internal reading-batches topic: the ``meter.readings`` records,
as JSON arrays, one per readings partition per decode batch (see
:mod:`streams.agents.decode`). A record holding a single reading object is accepted too.

Faust glue around :mod:`streams.windows`. Per batch of events the agent groups readings
by device, applies them (one state read and one write per device per batch), sweeps the
quiet devices of every partition a tick arrived for, sends the window records, waits
until Kafka acknowledged them, then writes the new state and waits until its changelog
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
from faust.streams import _current_event, current_event
from faust.types import TP

from streams import offline, reconcile
from streams.agents.outbox import Outbox
from streams.windows import US, Aggregator, Device, Outcome, Sample

if TYPE_CHECKING:
    from streams.app import Pipeline

log = logging.getLogger(__name__)

_BATCH_WINDOW = 0.05
# Ticks carry this key as well as their own topic, so they are recognisable wherever an
# event comes from (Faust's test_context gives every event the same topic name).
TICK_KEY = b"\x00meterstream-tick"


class TableStore(MutableMapping[str, Any]):
    """A Faust table (raw bytes) seen as a mapping of str → JSON value.

    Reads and writes go to the table's local store (RocksDB) of the current event's
    partition, as Faust's own table access does; the changelog records of the writes are
    kept in :attr:`changes` for the agent to send with its batch (:func:`save_state`).
    Faust's per-write path (a future per record through its producer buffer, sensors, and
    a RocksDB write of the persisted offset per acknowledged record) was ~10% of a busy
    worker in a profile.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.changes: list[tuple[int, bytes, bytes | None]] = []

    def __getitem__(self, key: str) -> Any:
        return orjson.loads(self.table.data[key.encode()])

    def __setitem__(self, key: str, value: Any) -> None:
        raw_key, raw = key.encode(), orjson.dumps(value)
        self.table.data[raw_key] = raw
        self.changes.append((_event_partition(), raw_key, raw))

    def __delitem__(self, key: str) -> None:
        raw_key = key.encode()
        del self.table.data[raw_key]
        self.changes.append((_event_partition(), raw_key, None))  # a tombstone

    def __iter__(self) -> Iterator[str]:
        return (key.decode() for key in self.table)

    def __len__(self) -> int:
        return len(self.table)


def _event_partition() -> int:
    """The table partition being written: the current event's, as Faust would pick."""
    event = current_event()
    if event is None:
        raise RuntimeError("table state written outside of an event")
    return int(event.message.partition)


async def save_state(outbox: Outbox, stores: Iterable[TableStore]) -> None:
    """Send the stores' changelog records, wait until Kafka has them all, then record
    the changelogs' persisted offsets the way Faust does after each acknowledged write
    (a restarted worker replays its changelogs from there)."""
    tables = {}
    for store in stores:
        topic = store.table.changelog_topic.get_topic_name()
        tables[topic] = store.table
        changes, store.changes = store.changes, []
        for partition, key, value in changes:
            outbox.add(topic, value, key=key, partition=partition)
    for (topic, partition), offset in (await outbox.confirm()).items():
        tables[topic].data.set_persisted_offset(TP(topic, partition), offset)


class SplitStore(MutableMapping[str, Any]):
    """Heads (``device``) and chunks (``device|start``) in two tables, so a sweep can
    iterate the small heads without reading chunks."""

    def __init__(self, heads: TableStore, chunks: TableStore) -> None:
        self.heads, self.chunks = heads, chunks

    def _of(self, key: str) -> TableStore:
        return self.chunks if "|" in key else self.heads

    def __getitem__(self, key: str) -> Any:
        return self._of(key)[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._of(key)[key] = value

    def __delitem__(self, key: str) -> None:
        del self._of(key)[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.heads
        yield from self.chunks

    def __len__(self) -> int:
        return len(self.heads) + len(self.chunks)


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


def _received_us(record: dict[str, Any]) -> int | None:
    text = record.get("received_at")
    if not text:
        return None
    return _parse_received(text)


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
    """Everything one batch of events changes, sent and written at its end."""

    now: int
    outcome: Outcome = field(default_factory=Outcome)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    devices: dict[str, Device] = field(default_factory=dict)
    touched: list[tuple[Device, Any]] = field(default_factory=list)
    late: list[tuple[dict[str, Any], Sample, str]] = field(default_factory=list)
    rejected: list[tuple[Any, bytes, str]] = field(default_factory=list)


def group_readings(event: Any, by_device: dict[str, list[tuple[Any, dict[str, Any]]]]
                   ) -> Iterator[tuple[bytes, str]]:
    """Add the readings of a record (one reading or a JSON array of them) to `by_device`;
    yield (bytes, reason) for what is not a reading."""
    try:
        value = orjson.loads(event.value)
    except (orjson.JSONDecodeError, TypeError) as exc:
        yield event.value or b"", f"not a meter.readings record nor a list of them: {exc}"
        return
    for record in value if isinstance(value, list) else [value]:
        try:
            by_device.setdefault(record["device_id"], []).append((event, record))
        except (KeyError, TypeError) as exc:
            yield orjson.dumps(record), f"not a meter.readings record: {exc!r}"


def aggregate_key(record: dict[str, Any]) -> bytes:
    return f"{record['device_id']}|{record['size']}|{record['window_start']}".encode()


def register(pipeline: Pipeline) -> Any:
    settings = pipeline.settings
    metrics = pipeline.metrics
    app = pipeline.app
    # Values are orjson bytes (the app's default serializers are raw).
    heads_table = app.Table("aggregate-heads", key_type=bytes, value_type=bytes,
                            partitions=settings.topic_partitions)
    chunks_table = app.Table("aggregate-chunks", key_type=bytes, value_type=bytes,
                             partitions=settings.topic_partitions)
    heads = TableStore(heads_table)
    stores = (heads, TableStore(chunks_table))
    store = SplitStore(*stores)
    aggregator = Aggregator(settings.window_config(), store)
    pipeline.aggregator = aggregator
    pipeline.heads_table = heads_table
    source = app.topic(settings.topic_reading_batches, settings.topic_ticks, key_type=bytes,
                       value_type=bytes, key_serializer="raw", value_serializer="raw")

    @functools.cache
    def window_counter(size: int, kind: str) -> Any:
        return metrics.windows.labels(str(size), kind)

    def now_us() -> int:
        return int(pipeline.clock() * US)

    async def send_outcome(batch: Batch) -> None:
        outcome = batch.outcome
        outbox = pipeline.outbox()
        kinds: collections.Counter[tuple[int, str]] = collections.Counter()
        for record in outcome.emitted:
            enriched = pipeline.enrich_aggregate(record)
            start_s = _window_start_s(record)
            outbox.add(
                settings.topic_aggregates, orjson.dumps(enriched), key=aggregate_key(record),
                device_id=record["device_id"], timestamp=start_s)
            if not record["final"]:  # METERSTREAM_AGGREGATE_INTERIM
                kinds[(record["size"], "interim")] += 1
                continue
            kinds[(record["size"], "revision" if record["revision"] else "final")] += 1
            pipeline.device_metrics.window(
                record["device_id"], record["size"], int(start_s * US),
                record["energy_import_wh"], record["energy_export_wh"])
        for (size, kind), count in kinds.items():
            window_counter(size, kind).inc(count)
        for original, sample, reason in batch.late:
            device = str(original["device_id"])
            outbox.add(
                settings.topic_late, orjson.dumps({**original, "late_reason": reason}),
                key=device.encode(), device_id=device, timestamp=sample.ts / US)
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
        metrics.duplicates.inc(outcome.duplicates)
        metrics.revisions.inc(outcome.revisions)
        # Records first, state second: see the module docstring.
        await outbox.confirm()

    def apply_readings(batch: Batch, device_id: str,
                       items: list[tuple[Any, dict[str, Any]]]) -> None:
        event = items[-1][0]
        with as_current(event):
            device = aggregator.device(device_id)
        head = device.head
        head["partition"] = event.message.partition
        samples = []
        records: dict[int, dict[str, Any]] = {}
        for item_event, record in items:
            try:
                samples.append(Sample.from_reading(record))
            except (KeyError, TypeError, ValueError) as exc:
                batch.rejected.append((item_event, orjson.dumps(record),
                                       f"unusable reading: {exc}"))
                continue
            records[samples[-1].ts] = record
            received = _received_us(record)
            if received is not None:
                metrics.processing_lag.observe(max(0, batch.now - received) / US)
                head["received"] = max(head.get("received") or 0, received)
        with as_current(event):
            outcome = aggregator.apply(device, samples, batch.now)
        batch.late += [(records[sample.ts], sample, reason) for sample, reason in outcome.late]
        batch.outcome.merge(outcome)
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
                with as_current(tick):
                    device = aggregator.device(device_id)
                batch.devices[device_id] = device
                batch.touched.append((device, tick))
            with as_current(tick):
                batch.outcome.merge(aggregator.sweep(device, now))
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
            with as_current(tick):
                device = aggregator.device(device_id)
            device.head["partition"] = partition
            offline.check(device_id, device.head, now, pipeline.threshold(device_id, meter),
                          meter)
            batch.devices[device_id] = device
            batch.touched.append((device, tick))
            present.add(device_id)
            pipeline.observe_head(device_id, device.head)
        pipeline.device_metrics.keep_partitions(partition, present)
        metrics.sweep_duration.observe(time.perf_counter() - began)

    check_offsets = pipeline.offset_check(settings.topic_reading_batches)

    async def aggregate(stream: Any) -> None:
        async for events in stream.take_events(settings.aggregate_batch, within=_BATCH_WINDOW):
            by_device: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
            ticks = []
            for event in events:
                await check_offsets(event)
                if event.message.topic == settings.topic_ticks or event.key == TICK_KEY:
                    ticks.append(event)
                    continue
                for body, reason in group_readings(event, by_device):
                    await pipeline.reject_reading(event, body, reason)
            batch = Batch(now=now_us())
            for device_id, items in by_device.items():
                apply_readings(batch, device_id, items)
            for tick in ticks:
                sweep_partition(batch, tick)
            for event, body, reason in batch.rejected:
                await pipeline.reject_reading(event, body, reason)
            await send_outcome(batch)
            for record in batch.outcome.emitted:
                device = batch.devices.get(record["device_id"])
                if device is not None and record["final"]:
                    reconcile.fold(device.head, record, int(_window_start_s(record) * US))
            for device, event in batch.touched:
                with as_current(event):
                    device.flush()
            if batch.touched:
                await save_state(pipeline.outbox(), stores)
            metrics.aggregated.inc(sum(len(items) for items in by_device.values()))
            metrics.ticks.inc(len(ticks))

    async def tick() -> None:
        for partition in range(settings.topic_partitions):
            await pipeline.ticks_topic.send(key=TICK_KEY, value=b"", partition=partition)

    app.timer(settings.sweep_interval, on_leader=True)(tick)
    return app.agent(source, name="aggregate")(aggregate)


def _window_start_s(record: dict[str, Any]) -> float:
    return _epoch_seconds(record["window_start"])


@functools.lru_cache(maxsize=8192)
def _epoch_seconds(text: str) -> float:
    # Cached: every meter's windows start at the same few instants, parsed 3 times each.
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
