"""``meterstream requeue-readings``: hand the aggregation the readings an older worker
decoded but had not aggregated yet.

Workers before the reading-batches topic aggregated straight from ``meter.readings``, and
their consumer group (the app id) kept its place there. After an upgrade the aggregation
reads ``meterstream.reading-batches`` only, so whatever lay beyond that place would never
be aggregated. This copies it over, from the group's committed offsets to the end, in the
format the decode agent writes. Run it with the old workers stopped, before the new ones
start; readings it copies twice are harmless (the aggregation skips duplicates).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from streams.agents.decode import batch_values
from streams.config import Settings


@dataclass
class Requeued:
    readings: int
    lines: list[str]


async def requeue_readings(settings: Settings) -> Requeued:
    source, target = settings.topic_readings, settings.topic_reading_batches
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                group_id=settings.app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        # Assigned, never subscribed: the group's committed offsets are read, not moved.
        await consumer._client.force_metadata_update()
        sources = sorted(consumer.partitions_for_topic(source) or ())
        targets = len(consumer.partitions_for_topic(target) or ())
        if not sources or not targets:
            missing = source if not sources else target
            raise RequeueError(f"topic {missing} does not exist")
        tps = [TopicPartition(source, p) for p in sources]
        committed = {tp: await consumer.committed(tp) for tp in tps}
        if all(offset is None for offset in committed.values()):
            return Requeued(0, [f"group {settings.app_id} never committed on {source}: "
                                "nothing to requeue"])
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        starts = {tp: max(committed[tp] or 0, begins[tp]) for tp in tps}
        todo = [tp for tp in tps if starts[tp] < ends[tp]]
        lines = [f"{source}[{tp.partition}]: offsets {starts[tp]}..{ends[tp] - 1}"
                 for tp in todo]
        grouped = await _read(consumer, todo, starts, ends, targets)
    finally:
        await consumer.stop()
    count = sum(len(records) for records in grouped.values())
    await _write(settings.kafka_bootstrap, target, grouped)
    lines.append(f"requeued {count} readings into {target}")
    return Requeued(count, lines)


async def _read(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                starts: dict[TopicPartition, int], ends: dict[TopicPartition, int],
                targets: int) -> dict[int, list[bytes]]:
    """The records between start and end, grouped by their reading-batches partition
    (the device id's, computed as every Kafka client's default partitioner does)."""
    grouped: dict[int, list[bytes]] = {}
    if not tps:
        return grouped
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, starts[tp])
    remaining = set(tps)
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=1000)
        for tp, records in batch.items():
            for record in records:
                if record.offset < ends[tp] and record.key and record.value:
                    partition = (murmur2(record.key) & 0x7FFFFFFF) % targets
                    grouped.setdefault(partition, []).append(record.value)
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
    return grouped


async def _write(bootstrap: str, topic: str, grouped: dict[int, list[bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        deliveries = [await producer.send(topic, value, partition=partition)
                      for partition, records in grouped.items()
                      for value in batch_values(records)]
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()


class RequeueError(RuntimeError):
    """The topics are not there to requeue between."""
