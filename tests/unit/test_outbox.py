import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from streams.agents.outbox import Outbox


class FlakyProducer:
    """Accepts records like a producer; the first `failures` attempts of a value fail."""

    def __init__(self, failures: dict[bytes, int], refuse: bool = False) -> None:
        self.failures = failures
        self.refuse = refuse  # fail at send time instead of at delivery
        self.attempts: list[tuple[str, bytes, dict[str, Any]]] = []
        self.delivered: list[bytes] = []

    async def produce(self, topic: str, value: bytes, **options: Any) -> asyncio.Future[Any]:
        self.attempts.append((topic, value, options))
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failures.get(value, 0) > 0:
            self.failures[value] -= 1
            error = TimeoutError(f"no ack for {value!r}")
            if self.refuse:
                raise error
            delivery.set_exception(error)
        else:
            self.delivered.append(value)
            delivery.set_result(None)
        return delivery


def counter() -> Counter:
    return Counter("resent_total", "test", registry=CollectorRegistry())


def test_confirm_sends_unacknowledged_records_again_until_kafka_has_them(
        caplog: pytest.LogCaptureFixture) -> None:
    producer = FlakyProducer({b"b": 2})
    resent = counter()

    async def batch() -> None:
        outbox = Outbox(producer.produce, resent, first_delay=0.01)
        for value in (b"a", b"b", b"c"):
            await outbox.send("meter.readings", value, key=b"k", timestamp=1.5)
        assert len(outbox) == 3
        await outbox.confirm()
        assert len(outbox) == 0

    asyncio.run(batch())
    assert sorted(producer.delivered) == [b"a", b"b", b"c"]
    assert [v for _, v, _ in producer.attempts].count(b"b") == 3
    # Sent again exactly as first sent: same topic, key and time stamp.
    assert {(t, tuple(o.items())) for t, v, o in producer.attempts if v == b"b"} == {
        ("meter.readings", (("key", b"k"), ("timestamp", 1.5)))}
    assert resent._value.get() == 2
    assert "did not acknowledge 1 record(s) to meter.readings" in caplog.text


def test_a_record_the_producer_refuses_outright_is_sent_again_too() -> None:
    producer = FlakyProducer({b"x": 1}, refuse=True)
    resent = counter()

    async def batch() -> None:
        outbox = Outbox(producer.produce, resent, first_delay=0.01)
        await outbox.send("meter.aggregates", b"x")
        await outbox.confirm()

    asyncio.run(batch())
    assert producer.delivered == [b"x"] and resent._value.get() == 1


def test_nothing_to_confirm_returns_at_once() -> None:
    producer = FlakyProducer({})

    async def batch() -> None:
        await Outbox(producer.produce, counter()).confirm()

    asyncio.run(batch())
    assert producer.attempts == []
