"""Kafka record batches built by the native module: byte for byte what aiokafka's own
builder writes for the same records (its reader decodes them, CRC included), split at the
producer's batch size the way aiokafka splits."""

from __future__ import annotations

import random

from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from streams import _native
from streams.agents.outbox import Record


def aiokafka_batches(records: list[Record], batch_size: int) -> list[bytes]:
    built, builder = [], BatchBuilder(batch_size, 0)
    for key, value, timestamp_ms, headers in records:
        while builder.append(timestamp=timestamp_ms, key=key, value=value,
                             headers=headers) is None:
            built.append(bytes(builder._build()))
            builder = BatchBuilder(batch_size, 0)
    built.append(bytes(builder._build()))
    return built


def native_batches(records: list[Record], batch_size: int) -> list[bytes]:
    built, first = [], 0
    while first < len(records):
        batch = _native.RecordBatch(batch_size)
        end = batch.append(records, first)
        assert end > first and batch.record_count() == end - first
        built.append(batch._build())
        assert batch.closed() and batch._build() == built[-1]  # asked again on a retry
        first = end
    return built


def random_records(rng: random.Random, count: int) -> list[Record]:
    def blob() -> bytes | None:
        return None if rng.random() < 0.1 else rng.randbytes(rng.choice([0, 3, 100, 5000]))

    base = 1_764_000_000_000
    return [(blob(), blob(), base + rng.randint(-10**6, 10**9),
             [(rng.choice(["source", "request-id", "é"]), rng.randbytes(5))
              for _ in range(rng.randint(0, 2))])
            for _ in range(count)]


def test_batches_are_those_aiokafka_builds() -> None:
    rng = random.Random(20261202)
    for batch_size in (256 * 1024, 16 * 1024, 100):
        records = random_records(rng, 300)
        assert native_batches(records, batch_size) == aiokafka_batches(records, batch_size)


def test_aiokafka_reads_them_back_with_a_valid_crc() -> None:
    records = random_records(random.Random(5), 50)
    (raw,) = native_batches(records, 10**7)
    batch = DefaultRecordBatch(raw)
    assert batch.validate_crc()
    got = [(r.key, r.value, r.timestamp, list(r.headers)) for r in batch]
    assert got == records


def test_a_record_without_a_timestamp_gets_the_current_time() -> None:
    batch = _native.RecordBatch(1024)
    assert batch.append([(b"k", b"v", None, [])], 0) == 1
    (record,) = list(DefaultRecordBatch(batch._build()))
    import time

    assert abs(record.timestamp - time.time() * 1000) < 60_000


def test_producer_state_is_written_into_the_header() -> None:
    batch = _native.RecordBatch(1024)
    batch.append([(b"k", b"v", 1, [])], 0)
    batch._set_producer_state(7, 3, 11)
    parsed = DefaultRecordBatch(batch._build())
    assert (parsed.producer_id, parsed.producer_epoch, parsed.base_sequence) == (7, 3, 11)
