"""`meterstream requeue-readings` on the real broker: what an older worker's group had not
aggregated in meter.readings reaches the aggregation's input, once, on the right partition."""

from __future__ import annotations

import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from streams import simulate
from streams.agents.decode import reading_record
from streams.codec import Decoder
from streams.config import Settings
from streams.topics import ensure_topics, topic_specs
from streams.windows import US
from tests.integration.conftest import read_records
from tests.unit.test_cli_vendors import meterstream


async def test_requeue_copies_what_the_old_group_left_in_meter_readings(
    settings: Settings
) -> None:
    code, out, err = await meterstream(settings, "requeue-readings")
    assert code == 2 and "does not exist" in err
    await ensure_topics(settings.kafka_bootstrap, topic_specs(settings))
    fleet = simulate.Fleet(12, seed=5)
    start = int(time.time() // 60 * 60 - 3600) * US
    readings = [r for b in simulate.bodies(fleet.trace(start, 600, 60), 1)
                for r in Decoder().decode(b)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(settings.topic_readings, reading_record(r, {}),
                                    key=r.device_id.encode()) for r in readings]
        placed = [await delivery for delivery in sent]
    finally:
        await producer.stop()
    # Nothing committed yet: a new installation has nothing to requeue.
    code, out, _ = await meterstream(settings, "requeue-readings")
    assert code == 0 and "nothing to requeue" in out
    # The old workers' group aggregated up to offset 4 of partition 0 and 7 of partition 1,
    # and never got to partition 2.
    done = {0: 4, 1: 7}
    group = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                             group_id=settings.app_id, enable_auto_commit=False)
    await group.start()
    try:
        tps = {p: TopicPartition(settings.topic_readings, p) for p in done}
        group.assign(list(tps.values()))
        await group.commit({tps[p]: offset for p, offset in done.items()})
    finally:
        await group.stop()
    left = {(m.partition, m.offset) for m in placed if m.offset >= done.get(m.partition, 0)}
    assert 0 < len(left) < len(readings)
    code, out, err = await meterstream(settings, "requeue-readings")
    assert code == 0, out + err
    assert f"requeued {len(left)} readings" in out
    batches = await read_records(settings.kafka_bootstrap, settings.topic_reading_batches,
                                 count=1, timeout=30)
    requeued = [(record.partition, item) for record in batches
                for item in orjson.loads(record.value)]
    expected = {orjson.dumps(orjson.loads(reading_record(r, {}))) for r, m in
                zip(readings, placed, strict=True) if (m.partition, m.offset) in left}
    assert {orjson.dumps(item) for _, item in requeued} == expected
    assert len(requeued) == len(expected)  # each once
    for partition, item in requeued:  # the partition the aggregation holds the device on
        assert partition == (murmur2(item["device_id"].encode()) & 0x7FFFFFFF) % 3
