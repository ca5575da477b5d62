"""How the pipeline hands an outbox's records to aiokafka: whole record batches that the
producer sends at once instead of holding them for its linger time (an agent waits for
them before Faust may ack its events), split at the producer's batch size."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.producer.message_accumulator import MessageBatch
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.structs import TopicPartition

from streams.agents.outbox import Record
from streams.app import Pipeline
from tests.agents.conftest import Outbox


class Producer:
    """aiokafka's producer as far as send_batch goes: it queues each batch the way its
    accumulator does, as a MessageBatch with the producer's linger time."""

    def __init__(self, linger: float) -> None:
        self.linger = linger
        self.queued: list[MessageBatch] = []

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        self.queued.append(MessageBatch(TopicPartition(topic, partition), batch, 60, self.linger))
        return self.queued[-1].future


async def test_record_batches_go_out_without_lingering(
        pipeline: tuple[Pipeline, Outbox]) -> None:
    app_pipeline, _ = pipeline
    producer = Producer(linger=30.0)
    app_pipeline._kafka_producer = lambda: producer  # type: ignore[method-assign]
    app_pipeline.app.conf.producer_max_batch_size = 4096
    records: list[Record] = [(b"m%d" % n, b"x" * 300, 1_800_000_000_000 + n, [])
                             for n in range(40)]

    sent = await Pipeline.send_records(app_pipeline, "meter.aggregates", 2, records)

    assert len(sent) == len(producer.queued) > 1  # 12 kB of records in 4 kB batches
    assert [record for part, _ in sent for record in part] == records
    for batch, (part, delivery) in zip(producer.queued, sent, strict=True):
        # None: the sender takes the batch on its next round, not after 30 s
        assert batch.remaining_linger() is None
        assert batch.future is delivery
        decoded = list(DefaultRecordBatch(bytearray(batch.get_data_buffer())))
        assert [(r.key, r.timestamp) for r in decoded] == [(r[0], r[2]) for r in part]
    await asyncio.sleep(0)
