"""Decode agent: ``smartme.raw`` bodies → ``meter.readings`` records (or the dead letter).

One JSON record per DeviceData, key = device id (so one device's readings stay on one
partition), Kafka timestamp = reading time. A body that cannot be decoded goes to the
dead-letter topic unchanged, with the reason and its origin (topic, partition, offset)
in the headers; the agent carries on with the next body.

The same readings also go, per batch, to the internal reading-batches topic, one record
(or a few) per partition of the devices' readings: the aggregation agent consumes those.
Faust delivers at most ~15k events/s to an agent on these machines (measured: a batch
of 2,000 readings took 50 ms just to arrive), so one event per reading capped a worker
well below the readings it could aggregate. A reading-batches record is

* compact (``streams._native``'s ``COMPACT`` magic, then entries): per body, the JSON
  members its records carry (source, received_at, request_id) and the body's items of
  that partition, verbatim protobuf, each length-prefixed (varint). The aggregation
  decodes them again with the same compiled decoder: a tenth of the bytes of the JSON
  records, and far cheaper to read;
* or JSON, an array of the ``meter.readings`` records, for the bodies the compiled decoder
  left to the Python one (and from ``meterstream requeue-readings``).

In the worker, raw bodies do not pass through the agent's stream: the consumer hands them
straight from Faust's fetch loop to a queue this module decodes in batches
(:mod:`streams.faust_consumer`), and marks each done once Kafka has its records. Faust's
per-message stream machinery (conductor, stream, buffer, sensors) was a quarter of the
worker's CPU per reading with 10-reading bodies. The agent still subscribes the worker to
the raw topic (Faust fetches only what agents subscribe to), and decodes whatever reaches
its stream the same way (under ``test_context``).
"""

from __future__ import annotations

import asyncio
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from streams.codec import DecodeError, Reading, ReadingRecord, reading_json
from streams.faust_consumer import FastHandoverConsumer, FastHandoverTransport

if TYPE_CHECKING:
    from streams.app import Pipeline

_BATCH_WINDOW = 0.05  # seconds the decoder waits to fill a batch
# Largest reading-batches value before it is split: well below the topic's limit.
BATCH_RECORD_BYTES = 64 * 1024
COMPACT = b"\x01MSB"  # native/src/readings.rs


def header_map(headers: Any) -> dict[str, bytes]:
    """Kafka headers as a dict, whatever shape the client handed them over in."""
    if not headers:
        return {}
    items: Iterable[tuple[str, Any]] = (
        headers.items() if isinstance(headers, Mapping) else headers
    )
    return {str(k): (v if isinstance(v, bytes) else str(v).encode()) for k, v in items}


def reading_record(reading: Reading, origin: Mapping[str, bytes]) -> bytes:
    """The ``meter.readings`` value: the reading plus where and when it came in."""
    return reading_json(reading, origin_fields(origin))


def origin_fields(headers: Mapping[str, bytes]) -> dict[str, str | None]:
    """Where and when a body came in, as its readings' records carry it."""
    return {name: headers.get(header, b"").decode(errors="replace") or None
            for name, header in (("source", "source"), ("received_at", "received-at"),
                                 ("request_id", "request-id"))}


def batch_values(records: list[bytes], limit: int = BATCH_RECORD_BYTES) -> Iterator[bytes]:
    """JSON arrays of the given JSON records, each at most `limit` bytes unless a single
    record is larger."""
    chunk: list[bytes] = []
    size = 2
    for record in records:
        if chunk and size + len(record) + 1 > limit:
            yield b"[" + b",".join(chunk) + b"]"
            chunk, size = [], 2
        chunk.append(record)
        size += len(record) + 1
    if chunk:
        yield b"[" + b",".join(chunk) + b"]"


def compact_values(entries: list[bytes], limit: int = BATCH_RECORD_BYTES) -> Iterator[bytes]:
    """Compact reading-batches values of the given entries, each at most `limit` bytes
    unless a single entry is larger."""
    chunk: list[bytes] = []
    size = len(COMPACT)
    for entry in entries:
        if chunk and size + len(entry) > limit:
            yield COMPACT + b"".join(chunk)
            chunk, size = [], len(COMPACT)
        chunk.append(entry)
        size += len(entry)
    if chunk:
        yield COMPACT + b"".join(chunk)


@dataclass
class ReadingBatches:
    """What one decode batch adds to the reading-batches topic, per partition: compact
    entries and JSON records, in the order of the readings."""

    pieces: dict[int, list[tuple[bool, bytes]]] = field(default_factory=dict)

    def add(self, readings: list[ReadingRecord], entries: list[tuple[int, bytes]] | None,
            partition_of: Callable[[str], int]) -> None:
        """A body's readings: its compact entries, or (None) its JSON records."""
        if entries is not None:
            for partition, entry in entries:
                self.pieces.setdefault(partition, []).append((True, entry))
            return
        # A body's readings are mostly one device's, in a row.
        last_device = None
        batch: list[tuple[bool, bytes]] = []
        for device_id, _, record in readings:
            if device_id != last_device:
                last_device = device_id
                batch = self.pieces.setdefault(partition_of(device_id), [])
            batch.append((False, record))

    def values(self) -> Iterator[tuple[int, bytes]]:
        """(partition, value) of every record to send: each run of compact entries as
        compact values, each run of JSON records as JSON arrays."""
        for partition, pieces in self.pieces.items():
            for compact, run in itertools.groupby(pieces, key=operator.itemgetter(0)):
                parts = [part for _, part in run]
                for value in (compact_values(parts) if compact else batch_values(parts)):
                    yield partition, value


def register(pipeline: Pipeline) -> Any:
    settings = pipeline.settings
    decoder = pipeline.decoder
    metrics = pipeline.metrics
    min_us = _year_start_us(settings.min_reading_year)
    pipeline.commit_strictly(settings.topic_raw)

    def partition_of(device_id: str) -> int:
        return pipeline.partition_of(device_id) or 0

    # Without it the decoder returns no compact entries: the batches go as JSON.
    cut_by_partition = partition_of if settings.compact_reading_batches else None

    async def decode_bodies(events: Sequence[Any]) -> None:
        """Decode a batch of raw bodies; returns once Kafka has every record they gave."""
        outbox = pipeline.outbox()
        batches = ReadingBatches()
        for event in events:
            body = event.value if event.value is not None else b""
            origin = header_map(event.headers)
            try:
                latest_us = int((pipeline.clock() + settings.max_clock_skew) * 1_000_000)
                readings, entries = decoder.records_by_partition(
                    body, origin_fields(origin), min_us, latest_us, cut_by_partition)
            except DecodeError as exc:
                await pipeline.dead_letter(event, body, exc.reason, origin)
                continue
            passthrough: dict[str, bytes] = {
                k: origin[k] for k in ("source", "request-id") if k in origin}
            outbox.add_device_records(settings.topic_readings, readings, passthrough)
            batches.add(readings, entries, partition_of)
            metrics.bodies.inc()
            metrics.readings.inc(len(readings))
        for partition, value in batches.values():
            outbox.add(settings.topic_reading_batches, value, partition=partition)
        await outbox.confirm()  # only then may Faust ack (and commit) the raw bodies

    async def decode(stream: Any) -> None:
        # What reaches the agent's stream: raw bodies when the transport cannot hand them
        # over directly (tests' test_context), nothing otherwise.
        async for events in stream.take_events(settings.decode_batch, within=_BATCH_WINDOW):
            await decode_bodies(events)

    transport = pipeline.app.transport
    if isinstance(transport, FastHandoverTransport):
        bodies = DirectBodies(settings.decode_batch)
        transport.hand_directly(settings.topic_raw, bodies.put)

        async def decode_direct() -> None:
            consumer = cast(FastHandoverConsumer, pipeline.app.consumer)
            while True:
                messages = await bodies.take()
                await decode_bodies([_Body(message) for message in messages])
                for message in messages:
                    consumer.done(message)

        pipeline.app.task(decode_direct)
    # The agent subscribes the worker to the raw topic either way.
    return pipeline.app.agent(pipeline.raw_topic, name="decode")(decode)


class DirectBodies:
    """Raw messages handed over past Faust's streams (streams.faust_consumer), taken in
    batches: whatever arrived while the previous batch was decoded, up to `batch`."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        # Bounded: a full queue holds the fetch loop up, as a full stream buffer does.
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * batch)

    async def put(self, message: Any) -> None:
        await self._queue.put(message)

    async def take(self) -> list[Any]:
        queue = self._queue
        messages = [await queue.get()]
        while len(messages) < self.batch and not queue.empty():
            messages.append(queue.get_nowait())
        return messages


class _Body:
    """A directly handed raw message, seen as the event the decoding expects."""

    __slots__ = ("headers", "message", "value")

    def __init__(self, message: Any) -> None:
        self.value = message.value
        self.headers = message.headers
        self.message = message


def _year_start_us(year: int) -> int:
    return int(datetime(year, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
