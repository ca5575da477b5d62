from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.agents.decode import COMPACT, batch_values
from streams.app import Pipeline
from streams.protos_gen import smartme_realtime_pb2 as pb
from streams.windows import reading_parser
from tests.agents.conftest import Clock, Outbox, counter, make_pipeline, wait_until

ORIGIN = {"source": b"cloud", "request-id": b"abc123", "received-at": b"2026-11-22T00:00:00Z"}


async def test_body_becomes_one_reading_record_per_device_data(
    pipeline: tuple[Pipeline, Outbox], seed_body: bytes
) -> None:
    app, outbox = pipeline
    async with app.decode_agent.test_context() as agent:
        await agent.put(value=seed_body, headers=ORIGIN)
        await wait_until(lambda: counter(app.metrics.bodies) == 1)
    (sent,) = outbox.of(app.settings.topic_readings)
    assert sent.key == b"3bd0fce9-9f8e-4183-b3d1-0c1622a22ca1"
    assert sent.timestamp == 1571228444.978  # Kafka timestamp = reading time (ms)
    record = orjson.loads(sent.value)
    assert record["timestamp"] == "2019-10-16T12:20:44.978851Z"
    assert record["source"] == "cloud" and record["request_id"] == "abc123"
    assert app.metrics.readings._value.get() == 1
    assert outbox.of(app.settings.topic_deadletter) == []


@pytest.mark.parametrize("compact", [True, False])
async def test_readings_also_go_to_the_aggregation_in_one_record_per_partition(
    tmp_path: Path, clock: Clock, seed_body: bytes, compact: bool
) -> None:
    async for made in make_pipeline(tmp_path, clock, compact_reading_batches=compact):
        await _readings_go_to_the_aggregation(*made, seed_body, compact)


async def _readings_go_to_the_aggregation(app: Pipeline, outbox: Outbox, seed_body: bytes,
                                          compact: bool) -> None:
    moment = pb.DateTime(value=1_700_000_000, scale=3)  # seconds
    items = [pb.DeviceData(DeviceId=pb.Guid(lo=n, hi=n), DateTime=moment) for n in range(1, 41)]
    body = pb.DeviceDataArray(DeviceDataItems=items).SerializeToString()
    async with app.decode_agent.test_context() as agent:
        await agent.put(value=body, headers=ORIGIN)
        await agent.put(value=seed_body, headers=ORIGIN)
        await wait_until(lambda: counter(app.metrics.bodies) == 2)
    readings = outbox.of(app.settings.topic_readings)
    batches = outbox.of(app.settings.topic_reading_batches)
    assert len(readings) == 41
    # Each reading once, in a record on the partition its meter.readings record went to.
    assert len({sent.partition for sent in batches}) == len(batches) > 1
    # Compact records, or (for a rolling upgrade from older workers) JSON arrays.
    assert all(sent.value.startswith(COMPACT if compact else b"[") for sent in batches)
    parser = reading_parser(app.decoder.native)
    batched = [(group.record(i), sent.partition) for sent in batches
               for group in parser.group([sent.value])[0] for i in range(len(group))]
    assert sorted(batched) == sorted((sent.value, sent.partition) for sent in readings)


def test_reading_batches_are_split_below_the_size_limit() -> None:
    records = [b'{"n":%d}' % n for n in range(100)]
    values = list(batch_values(records, limit=64))
    assert all(len(value) <= 64 for value in values) and len(values) > 1
    assert [r for value in values for r in orjson.loads(value)] == [
        orjson.loads(r) for r in records]
    assert list(batch_values([b'"%s"' % (b"x" * 100)], limit=64)) == [b'["%s"]' % (b"x" * 100)]


async def test_bad_body_is_dead_lettered_and_the_stream_goes_on(
    pipeline: tuple[Pipeline, Outbox], seed_body: bytes
) -> None:
    app, outbox = pipeline
    async with app.decode_agent.test_context() as agent:
        await agent.put(value=b"\xff\xff garbage", headers=ORIGIN)
        await agent.put(value=seed_body, headers=ORIGIN)
        await wait_until(lambda: counter(app.metrics.bodies) == 1)
    (letter,) = outbox.of(app.settings.topic_deadletter)
    assert letter.value == b"\xff\xff garbage"
    assert b"not a DeviceDataArray" in letter.headers["error"]
    assert letter.headers["request-id"] == b"abc123"
    assert {"origin-topic", "origin-partition", "origin-offset"} <= set(letter.headers)
    assert len(outbox.of(app.settings.topic_readings)) == 1
    assert app.metrics.deadletters._value.get() == 1


async def test_implausible_timestamps_are_dead_lettered(
    pipeline: tuple[Pipeline, Outbox]
) -> None:
    app, outbox = pipeline
    # A DateTime of 0 days: an unset meter clock, 1970-01-01.
    item = pb.DeviceData(DeviceId=pb.Guid(lo=1, hi=2), DateTime=pb.DateTime(value=0))
    body = pb.DeviceDataArray(DeviceDataItems=[item]).SerializeToString()
    async with app.decode_agent.test_context() as agent:
        await agent.put(value=body)
        await wait_until(lambda: counter(app.metrics.deadletters) == 1)
    (letter,) = outbox.of(app.settings.topic_deadletter)
    assert b"implausible timestamp 1970-01-01T00:00:00Z" in letter.headers["error"]
    assert outbox.of(app.settings.topic_readings) == []
