import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from streams.agents.outbox import Outbox, Record

Batches = list[tuple[list[Record], asyncio.Future[Any]]]


class FlakyProducer:
    """Takes records like the producer, in batches of `batch` records; a batch holding a
    value listed in `failures` fails (that many times for that value)."""

    def __init__(self, failures: dict[bytes, int], refuse: bool = False, batch: int = 2
                 ) -> None:
        self.failures = failures
        self.refuse = refuse  # fail at send time instead of at delivery
        self.batch = batch
        self.attempts: list[tuple[str, int, Record]] = []
        self.delivered: list[bytes] = []

    async def send_records(self, topic: str, partition: int, records: list[Record]
                           ) -> Batches:
        sent: Batches = []
        for start in range(0, len(records), self.batch):
            part = records[start:start + self.batch]
            self.attempts += [(topic, partition, record) for record in part]
            delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failing = [r[1] for r in part if self.failures.get(r[1], 0) > 0]
            if failing:
                for value in failing:
                    self.failures[value] -= 1
                error = TimeoutError(f"no ack for {failing!r}")
                if self.refuse:
                    raise error
                delivery.set_exception(error)
            else:
                self.delivered += [r[1] for r in part]
                delivery.set_result(None)
            sent.append((part, delivery))
        return sent


def partition_for(topic: str, key: bytes | None, device_id: str | None) -> int:
    return {"dev-a": 1, "dev-b": 2}.get(device_id or "", 0)


async def no_wait(topic: str) -> None:
    raise AssertionError(f"waited for {topic}: its partitions were known")


def counter() -> Counter:
    return Counter("resent_total", "test", registry=CollectorRegistry())


def test_confirm_sends_unacknowledged_batches_again_until_kafka_has_them(
        caplog: pytest.LogCaptureFixture) -> None:
    producer = FlakyProducer({b"c": 2})
    resent = counter()

    async def batch() -> None:
        outbox = Outbox(producer.send_records, partition_for, no_wait, resent, first_delay=0.01)
        for value in (b"a", b"b", b"c"):
            outbox.add("meter.readings", value, key=b"k", device_id="dev-a", timestamp=1.5)
        assert len(outbox) == 3
        assert producer.attempts == []  # nothing goes out before confirm()
        await outbox.confirm()
        assert len(outbox) == 0

    asyncio.run(batch())
    assert producer.delivered == [b"a", b"b", b"c"]
    # Only the failed batch (c alone) went again, exactly as first sent.
    assert [r[1] for _, _, r in producer.attempts] == [b"a", b"b", b"c", b"c", b"c"]
    assert [(t, p, r) for t, p, r in producer.attempts if r[1] == b"c"] == [
        ("meter.readings", 1, (b"k", b"c", 1500, []))] * 3
    assert resent._value.get() == 2
    assert "did not acknowledge 1 record(s) to meter.readings" in caplog.text


def test_a_batch_the_producer_refuses_outright_is_sent_again_too() -> None:
    producer = FlakyProducer({b"x": 1}, refuse=True)
    resent = counter()

    async def batch() -> None:
        outbox = Outbox(producer.send_records, partition_for, no_wait, resent, first_delay=0.01)
        outbox.add("meter.aggregates", b"x")
        await outbox.confirm()

    asyncio.run(batch())
    assert producer.delivered == [b"x"] and resent._value.get() == 1


def test_records_go_per_partition_in_the_order_they_were_added() -> None:
    producer = FlakyProducer({}, batch=100)

    async def batch() -> None:
        outbox = Outbox(producer.send_records, partition_for, no_wait, counter())
        outbox.add("meter.readings", b"a1", device_id="dev-a")
        outbox.add("meter.readings", b"b1", device_id="dev-b", headers={"source": b"x"})
        outbox.add("meter.readings", b"a2", device_id="dev-a")
        outbox.add("meter.reading-batches", b"p5", partition=5)
        await outbox.confirm()

    asyncio.run(batch())
    assert [(t, p, r[1]) for t, p, r in producer.attempts] == [
        ("meter.readings", 1, b"a1"), ("meter.readings", 1, b"a2"),
        ("meter.readings", 2, b"b1"), ("meter.reading-batches", 5, b"p5")]
    assert producer.attempts[2][2][3] == [("source", b"x")]


def test_nothing_to_confirm_returns_at_once() -> None:
    producer = FlakyProducer({})

    async def batch() -> None:
        await Outbox(producer.send_records, partition_for, no_wait, counter()).confirm()

    asyncio.run(batch())
    assert producer.attempts == []


class Acked:
    """A delivery's result as aiokafka gives it for a record batch: its base offset."""

    def __init__(self, offset: int) -> None:
        self.offset = offset


def test_confirm_tells_the_offset_of_the_last_record_per_partition() -> None:
    offsets = {1: 40, 2: 7}

    async def send_records(topic: str, partition: int, records: list[Record]) -> Batches:
        sent: Batches = []
        for start in range(0, len(records), 2):
            part = records[start:start + 2]
            delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            delivery.set_result(Acked(offsets[partition]))
            offsets[partition] += len(part)
            sent.append((part, delivery))
        return sent

    async def batch() -> dict[tuple[str, int], int]:
        outbox = Outbox(send_records, partition_for, no_wait, counter())
        for value in (b"1", b"2", b"3"):
            outbox.add("changelog", value, device_id="dev-a")
        outbox.add("changelog", None, key=b"gone", device_id="dev-b")  # a tombstone
        return await outbox.confirm()

    assert asyncio.run(batch()) == {("changelog", 1): 42, ("changelog", 2): 7}


def test_records_for_a_topic_not_known_yet_wait_for_its_partitions() -> None:
    producer = FlakyProducer({}, batch=100)
    known: set[str] = set()
    waits: list[str] = []

    def partition_when_known(topic: str, key: bytes | None, device_id: str | None
                             ) -> int | None:
        return 4 if topic in known else None

    async def wait_for_topic(topic: str) -> None:
        waits.append(topic)
        if len(waits) == 1:
            raise TimeoutError("no metadata")  # Kafka slow to answer: asked again
        known.add(topic)

    async def batch() -> None:
        outbox = Outbox(producer.send_records, partition_when_known, wait_for_topic,
                        counter(), first_delay=0.01)
        outbox.add("meterstream.deadletter", b"bad", key=b"k")
        assert len(outbox) == 1
        await outbox.confirm()

    asyncio.run(batch())
    assert waits == ["meterstream.deadletter"] * 2
    assert [(t, p, r[1]) for t, p, r in producer.attempts] == [
        ("meterstream.deadletter", 4, b"bad")]


def test_records_sent_early_are_confirmed_and_sent_again_like_the_rest() -> None:
    producer = FlakyProducer({b"a2": 1}, batch=1)

    async def batch() -> None:
        outbox = Outbox(producer.send_records, partition_for, no_wait, counter(),
                        first_delay=0.01)
        outbox.add("meter.aggregates", b"a1", device_id="dev-a")
        outbox.add("meter.aggregates", b"a2", device_id="dev-a")
        await outbox.send()  # out now, while the caller goes on
        assert len(outbox) == 0 and producer.delivered == [b"a1"]
        outbox.add("meter.aggregates", b"b1", device_id="dev-b")
        await outbox.confirm()  # waits for (and resends) what send() handed over too
        assert await outbox.confirm() == {}  # and only once

    asyncio.run(batch())
    assert sorted(producer.delivered) == [b"a1", b"a2", b"b1"]
    assert [r[1] for _, _, r in producer.attempts] == [b"a1", b"a2", b"b1", b"a2"]
