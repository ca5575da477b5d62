"""The worker's consumer hands a message over as Faust's does (``wait_first(callback,
suspend_flow.wait())`` in its fetch loop), without tasks when the handover need not wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.types import TP, Message

from streams.app import make_faust_app
from streams.config import Settings
from streams.faust_consumer import FastHandoverConsumer


@pytest.fixture
async def consumer() -> Any:
    app = make_faust_app(Settings(kafka_bootstrap="127.0.0.1:1"))
    app.loop = asyncio.get_running_loop()  # as the worker has it
    made = app.consumer  # made, not started: nothing connects
    assert isinstance(made, FastHandoverConsumer)
    return made


async def test_a_handover_that_need_not_wait_runs_at_once(consumer: Any) -> None:
    delivered: list[int] = []

    async def callback(message: int) -> str:
        delivered.append(message)
        return "ok"

    tasks = len(asyncio.all_tasks())
    result = await consumer.wait_first(callback(7), consumer.suspend_flow.wait())
    assert delivered == [7] and result.results == ["ok"] and not result.stopped
    assert len(asyncio.all_tasks()) == tasks  # nothing left behind


async def test_a_handover_that_waits_goes_on_until_it_is_done(consumer: Any) -> None:
    room: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def callback(message: int) -> int:
        steps.append("queued")
        steps.append(await room)  # a full stream buffer
        await asyncio.sleep(0)
        return message * 2

    handover = asyncio.ensure_future(
        consumer.wait_first(callback(21), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    assert steps == ["queued"] and not handover.done()
    room.set_result("room")
    result = await asyncio.wait_for(handover, 1)
    assert steps == ["queued", "room"] and result.results == [42]


async def test_a_suspended_flow_ends_the_wait_and_cancels_the_handover(consumer: Any) -> None:
    cancelled: list[bool] = []

    async def callback(message: int) -> None:
        try:
            await asyncio.get_running_loop().create_future()  # never room
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    handover = asyncio.ensure_future(
        consumer.wait_first(callback(1), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()  # a rebalance starts
    try:
        await asyncio.wait_for(handover, 1)
        await asyncio.sleep(0.01)
    finally:
        consumer.suspend_flow.clear()
    assert cancelled == [True]


async def test_errors_of_the_callback_come_through(consumer: Any) -> None:
    async def at_once(message: int) -> None:
        raise ValueError("bad at once")

    async def later(message: int) -> None:
        await asyncio.sleep(0)
        raise KeyError("bad later")

    with pytest.raises(ValueError, match="bad at once"):
        await consumer.wait_first(at_once(1), consumer.suspend_flow.wait())
    with pytest.raises(KeyError, match="bad later"):
        await consumer.wait_first(later(1), consumer.suspend_flow.wait())


def _message(topic: str, offset: int) -> Any:
    return Message(topic, 0, offset, 0.0, 0, [], b"key", b"body", None, tp=TP(topic, 0))


async def test_a_directly_handed_topic_skips_the_streams_until_done() -> None:
    """Its messages go to the handler, pending (a rebalance waits for them) until the
    handler's owner is done with them; other topics' messages still go to the streams."""
    app = make_faust_app(Settings(kafka_bootstrap="127.0.0.1:1"))
    app.loop = asyncio.get_running_loop()
    handed: list[Any] = []

    async def handler(message: Any) -> None:
        handed.append(message)

    app.topics.add(app.topic("raw"))  # subscribed, by an agent in the worker
    await app.topics._update_indices()  # as subscribing does: acks are on for it
    app.transport.hand_directly("raw", handler)
    streamed: list[Any] = []

    async def streams(message: Any) -> None:  # Faust's conductor, for the other topics
        streamed.append(message)

    consumer = app.transport.create_consumer(
        callback=streams, on_partitions_revoked=None, on_partitions_assigned=None)
    raw, other = _message("raw", 5), _message("other", 9)
    await consumer.callback(raw)
    assert handed == [raw] and raw in consumer._unacked_messages
    consumer.done(raw)
    assert raw.acked and raw not in consumer._unacked_messages
    assert consumer._acked[TP("raw", 0)] == [5]  # Faust commits past it
    await consumer.callback(other)
    assert handed == [raw] and streamed == [other]
