"""Outbox.add_device_records queues exactly what one add() per record would."""

from __future__ import annotations

import asyncio
import random

from streams.agents.outbox import Outbox, Record
from tests.unit.test_outbox import FlakyProducer, counter

DEVICES = ["dev-a", "dev-b", "dev-c", "dev-new"]


def _records(rng: random.Random, count: int) -> list[tuple[str, int, bytes]]:
    stamps = [0, 1, -1, 999, 1_000, 1_571_228_444_978_851, 1_700_000_000_000_000,
              253_402_300_799_999_999, -62_135_596_800_000_000, 1_699_999_999_999_999]
    records = []
    device = rng.choice(DEVICES)
    for index in range(count):
        if rng.random() < 0.3:  # mostly runs of one device, as in a body
            device = rng.choice(DEVICES)
        stamp = rng.choice(stamps) if rng.random() < 0.5 else rng.randrange(-(2**60), 2**60)
        records.append((device, stamp, b"r%d" % index))
    return records


def _sent(fill: object) -> tuple[list[tuple[str, int, Record]], int]:
    """What the producer got once the outbox was filled by `fill` and confirmed."""
    producer = FlakyProducer({}, batch=1000)
    known: set[str] = set()

    def partition_for(topic: str, key: bytes | None, device_id: str | None) -> int | None:
        # A device whose topic metadata is not known yet waits at confirm() (unplaced).
        if device_id == "dev-new" and topic not in known:
            return None
        return {"dev-a": 1, "dev-b": 2}.get(device_id or "", 0)

    async def wait_for_topic(topic: str) -> None:
        known.add(topic)

    async def run() -> int:
        outbox = Outbox(producer.send_records, partition_for, wait_for_topic, counter())
        fill(outbox)  # type: ignore[operator]
        queued = len(outbox)
        await outbox.confirm()
        return queued

    queued = asyncio.run(run())
    return producer.attempts, queued


def test_bulk_add_queues_what_one_add_per_record_queues() -> None:
    rng = random.Random(7)
    for _ in range(50):
        records = _records(rng, rng.randrange(0, 30))
        headers = rng.choice([None, {}, {"source": b"cloud", "request-id": b"r1"}])

        def one_by_one(outbox: Outbox, records: list[tuple[str, int, bytes]] = records,
                       headers: dict[str, bytes] | None = headers) -> None:
            outbox.add("meter.reading-batches", b"before", partition=3)
            for device_id, timestamp_us, value in records:
                outbox.add("meter.readings", value, key=device_id.encode(),
                           device_id=device_id, timestamp=timestamp_us / 1_000_000,
                           headers=headers)

        def in_bulk(outbox: Outbox, records: list[tuple[str, int, bytes]] = records,
                    headers: dict[str, bytes] | None = headers) -> None:
            outbox.add("meter.reading-batches", b"before", partition=3)
            outbox.add_device_records("meter.readings", records, headers)

        assert _sent(in_bulk) == _sent(one_by_one)


def test_bulk_add_of_nothing_queues_nothing() -> None:
    assert _sent(lambda outbox: outbox.add_device_records("t", [])) == ([], 0)


def test_a_devices_ready_records_go_to_its_partition_as_one_add_each_would() -> None:
    records = [(b"dev-a|60|x", b"v1", 1500, []), (b"dev-a|60|y", b"v2", None, [])]

    def in_bulk(outbox: Outbox) -> None:
        outbox.add_device_batch("meter.aggregates", "dev-a", records)
        outbox.add_device_batch("meter.aggregates", "dev-new", records[:1])  # unplaced

    def one_by_one(outbox: Outbox) -> None:
        for key, value, timestamp_ms, _ in records:
            outbox.add("meter.aggregates", value, key=key, device_id="dev-a",
                       timestamp=timestamp_ms / 1000 if timestamp_ms else None)
        outbox.add("meter.aggregates", b"v1", key=b"dev-a|60|x", device_id="dev-new",
                   timestamp=1.5)

    sent, queued = _sent(in_bulk)
    assert (sent, queued) == _sent(one_by_one)
    assert [(p, r) for _, p, r in sent] == [(1, records[0]), (1, records[1]),
                                            (0, records[0])]
