"""``meterstream umeter unmapped``: meters without an EAN, read from Kafka.

The meters are those the pipeline holds state for (the keys of the aggregation's heads
changelog, one per device) plus the smart-me inventory; the mapping is the same one the
workers use: the mapping file, then automatic matching against UMeter's customer data.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.config import Settings
from streams.enrichment import Enrichment


async def read_latest(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    """Latest value per key of a (compacted) topic; empty when the topic does not exist."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    latest: dict[bytes, bytes] = {}
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        if not tps:
            return latest
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    if record.key is None:
                        continue
                    if record.value is None:
                        latest.pop(record.key, None)
                    else:
                        latest[record.key] = record.value
        return latest
    finally:
        await consumer.stop()


def _decoded(raw: dict[bytes, bytes]) -> dict[str, Any]:
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


async def unmapped(settings: Settings, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    bootstrap = settings.kafka_bootstrap
    heads = await read_latest(bootstrap, f"{settings.app_id}-aggregate-heads-changelog")
    inventory = _decoded(await read_latest(bootstrap, settings.topic_smartme_devices))
    customers = _decoded(await read_latest(bootstrap, settings.topic_umeter_customer))
    enrichment = Enrichment(settings.umeter_mapping_file)
    enrichment.replace(inventory, customers, {})
    known = sorted({k.decode() for k in heads} | set(inventory))
    missing = enrichment.unmapped(known)
    for device_id in missing:
        record = inventory.get(device_id, {})
        print(f"{device_id}  {record.get('name') or ''}  {record.get('serial') or ''}".rstrip(),
              file=out)
    print(f"{len(missing)} of {len(known)} meters have no EAN", file=sys.stderr)
    return 0
