"""The worker's consumer hands a message over as Faust's does (``wait_first(callback,
suspend_flow.wait())`` in its fetch loop), without tasks when the handover need not wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import Consumer
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


RAW = TP("raw", 0)


@pytest.fixture
async def strict() -> Any:
    """A consumer committing the "raw" topic strictly; its messages are handed directly
    (as the worker's raw bodies are), other topics go to no stream here."""
    app = make_faust_app(Settings(kafka_bootstrap="127.0.0.1:1"))
    app.loop = asyncio.get_running_loop()
    app.topics.add(app.topic("raw"))
    await app.topics._update_indices()

    async def nothing(*_: Any) -> None:
        return None

    app.transport.hand_directly("raw", nothing)
    app.transport.commit_strictly("raw")
    return app.transport.create_consumer(
        callback=nothing, on_partitions_revoked=nothing, on_partitions_assigned=nothing)


async def _fetch(consumer: Any, offsets: range) -> dict[int, Any]:
    """Hand messages of "raw" over as the fetch loop does; by offset."""
    messages = {offset: _message("raw", offset) for offset in offsets}
    for message in messages.values():
        await consumer.callback(message)
    return messages


def _commits(consumer: Any) -> dict[Any, int]:
    """What Faust's next commit would commit (the offsets it picks, before it commits)."""
    return consumer._filter_committable_offsets(list(consumer._acked))


def _land(consumer: Any, commits: dict[Any, int]) -> None:
    consumer._committed_offset.update(commits)  # as a commit that landed does


async def test_a_strict_topic_is_never_committed_past_a_record_not_processed(
        strict: Any) -> None:
    messages = await _fetch(strict, range(100, 110))
    for offset in [100, 101, 102, 104, 105, 106]:  # 103 is still being processed
        strict.done(messages[offset])
    assert _commits(strict) == {RAW: 103}
    _land(strict, {RAW: 103})
    # The head is missing now: Faust passes over a single missing head offset (#606).
    strict.done(messages[107])
    assert _commits(strict) == {}
    strict.done(messages[103])
    assert _commits(strict) == {RAW: 108}


async def test_offsets_the_fetch_loop_skipped_are_not_taken_for_markers(strict: Any) -> None:
    messages = await _fetch(strict, range(0, 3))
    # The fetch loop got 5 after 2: Faust takes 3 and 4 for compaction or transaction
    # markers and counts them as acked. On a strict topic they are records to fetch again.
    await strict._add_gap(RAW, 3, 5)
    messages |= await _fetch(strict, range(5, 8))
    for message in messages.values():
        strict.done(message)
    assert _commits(strict) == {RAW: 3}
    _land(strict, {RAW: 3})
    refetched = await _fetch(strict, range(3, 5))  # the gap guard's rewind
    for message in refetched.values():
        strict.done(message)
    assert _commits(strict) == {RAW: 8}


async def test_a_topic_not_strict_keeps_fausts_rule(strict: Any) -> None:
    """Compacted topics (the inventories) do have gaps: Faust's rule stays for them."""
    strict.app.topics.add(strict.app.topic("compacted"))
    await strict.app.topics._update_indices()
    tp = TP("compacted", 0)
    for offset in (0, 1, 5):
        strict.ack(_message("compacted", offset))
    await strict._add_gap(tp, 2, 4)
    assert _commits(strict) == {tp: 6}


async def test_a_rebalance_does_not_make_it_forget_a_hole(strict: Any) -> None:
    """Faust forgets a revoked partition's committed offset before it waits for the last
    acks (and commits them): the hole at the head must still hold the commit back."""
    messages = await _fetch(strict, range(0, 6))
    for offset in (0, 1):
        strict.done(messages[offset])
    _land(strict, _commits(strict))
    await strict.on_partitions_revoked({RAW})
    for offset in (3, 4, 5):  # 2 never made it (e.g. cancelled as the flow was suspended)
        strict.done(messages[offset])
    assert _commits(strict) == {}


async def test_acks_not_committed_yet_still_count_after_a_revoke(strict: Any) -> None:
    """Faust drops the acked offsets it has not committed yet when partitions are revoked,
    then waits for the last acks and commits: those offsets were processed all the same."""
    messages = await _fetch(strict, range(0, 8))
    for offset in range(0, 6):
        strict.done(messages[offset])
    await strict.on_partitions_revoked({RAW})
    for offset in (6, 7):  # still in the queue when the rebalance began
        strict.done(messages[offset])
    assert _commits(strict) == {RAW: 8}


def _group_committed(monkeypatch: pytest.MonkeyPatch, offset: int) -> None:
    """The committed offset the broker answers when Faust seeks to it."""
    async def committed(_: Any) -> dict[Any, int]:
        return {RAW: offset}

    monkeypatch.setattr(Consumer, "seek_to_committed", committed)


async def test_commits_resume_where_the_group_committed_after_a_rebalance(
        strict: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for message in (await _fetch(strict, range(0, 4))).values():
        strict.done(message)
    _land(strict, _commits(strict))
    # Revoked; another worker processed and committed up to 50; then it came back.
    await strict.on_partitions_revoked({RAW})
    _group_committed(monkeypatch, 50)
    assert await strict.seek_to_committed() == {RAW: 50}
    for message in (await _fetch(strict, range(50, 53))).values():
        strict.done(message)
    assert _commits(strict) == {RAW: 53}


async def test_records_processed_again_below_the_last_commit_are_no_hole(
        strict: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for message in (await _fetch(strict, range(0, 4))).values():
        strict.done(message)
    assert _commits(strict) == {RAW: 4}  # picked, but the commit did not land
    await strict.on_partitions_revoked({RAW})
    _group_committed(monkeypatch, 2)
    await strict.seek_to_committed()
    for message in (await _fetch(strict, range(2, 6))).values():
        strict.done(message)
    assert _commits(strict) == {RAW: 6}
