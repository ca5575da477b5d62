"""``meterstream tail TOPIC``: print a topic's records as JSON lines (for humans and demos)."""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition


def record_line(message: Any) -> bytes:
    value = message.value or b""
    try:
        shown: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        shown = value.hex()
    return orjson.dumps({
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "timestamp_ms": message.timestamp,
        "key": message.key.decode(errors="replace") if message.key else None,
        "headers": {k: v.decode(errors="replace") for k, v in message.headers or ()},
        "value": shown,
    })


async def tail(bootstrap: str, topic: str, *, count: int | None, follow: bool,
               idle_seconds: float) -> int:
    """Read from the beginning of every partition (no consumer group, nothing committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        # A consumer without subscriptions has no topic metadata yet; refresh it (for all
        # topics) so partitions_for_topic can answer.
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            print(f"meterstream tail: topic {topic} does not exist", file=sys.stderr)
            return 2
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        deadline = time.monotonic() + idle_seconds
        out = sys.stdout.buffer
        while follow or time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for message in records:
                    out.write(record_line(message) + b"\n")
                    seen += 1
                    if count is not None and seen >= count:
                        out.flush()
                        return 0
            out.flush()
            if not follow and not batch:
                ends = await consumer.end_offsets(tps)
                if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                    break  # read everything there is
        return 0
    finally:
        await consumer.stop()

