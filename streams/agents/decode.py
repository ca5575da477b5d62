"""Decode agent: ``smartme.raw`` bodies → ``meter.readings`` records (or the dead letter).

One JSON record per DeviceData, key = device id (so one device's readings stay on one
partition), Kafka timestamp = reading time. A body that cannot be decoded goes to the
dead-letter topic unchanged, with the reason and its origin (topic, partition, offset)
in the headers; the agent carries on with the next body.

The same records also go, per batch, to the internal reading-batches topic as JSON
arrays, one per partition of the device's readings: the aggregation agent consumes those.
Faust delivers at most ~15k events/s to an agent on these machines (measured: a batch
of 2,000 readings took 50 ms just to arrive), so one event per reading capped a worker
well below the readings it could aggregate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from streams.codec import DecodeError, Reading, ReadingRecord, reading_json

if TYPE_CHECKING:
    from streams.agents.outbox import Outbox
    from streams.app import Pipeline

_BATCH_WINDOW = 0.05  # seconds the decoder waits to fill a batch
# Largest reading-batches value before it is split: well below the topic's limit.
BATCH_RECORD_BYTES = 64 * 1024


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


def queue_readings(outbox: Outbox, topic: str, readings: list[ReadingRecord],
                   headers: dict[str, bytes], grouped: dict[int, list[bytes]],
                   partition_of: Callable[[str], int | None]) -> None:
    """Queue a body's records for `topic` and collect them in `grouped`, per partition of
    their device's reading batches."""
    outbox.add_device_records(topic, readings, headers)
    # Per reading only what cannot be done per device: a body's readings are mostly one
    # device's, in a row.
    last_device = None
    batch: list[bytes] = []
    for device_id, _, record in readings:
        if device_id != last_device:
            last_device = device_id
            batch = grouped.setdefault(partition_of(device_id) or 0, [])
        batch.append(record)


def register(pipeline: Pipeline) -> Any:
    settings = pipeline.settings
    decoder = pipeline.decoder
    metrics = pipeline.metrics
    min_us = _year_start_us(settings.min_reading_year)
    check_offsets = pipeline.offset_check(settings.topic_raw)

    async def decode(stream: Any) -> None:
        async for events in stream.take_events(settings.decode_batch, within=_BATCH_WINDOW):
            outbox = pipeline.outbox()
            grouped: dict[int, list[bytes]] = {}
            for event in events:
                await check_offsets(event)
                body = event.value if event.value is not None else b""
                origin = header_map(event.headers)
                try:
                    latest_us = int((pipeline.clock() + settings.max_clock_skew) * 1_000_000)
                    readings = decoder.records(body, origin_fields(origin), min_us, latest_us)
                except DecodeError as exc:
                    await pipeline.dead_letter(event, body, exc.reason, origin)
                    continue
                passthrough: dict[str, bytes] = {
                    k: origin[k] for k in ("source", "request-id") if k in origin}
                queue_readings(outbox, settings.topic_readings, readings, passthrough, grouped,
                               pipeline.partition_of)
                metrics.bodies.inc()
                metrics.readings.inc(len(readings))
            for partition, records in grouped.items():
                for value in batch_values(records):
                    outbox.add(settings.topic_reading_batches, value, partition=partition)
            await outbox.confirm()  # only then may Faust ack (and commit) the raw bodies

    return pipeline.app.agent(pipeline.raw_topic, name="decode")(decode)


def _year_start_us(year: int) -> int:
    return int(datetime(year, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
