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


class Broker:
    """What the consumer's Kafka calls answer in these tests (nothing is connected; the
    methods are set on the class bound to this object, so they take no consumer)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.committed: int | None = 0
        self.earliest = 0
        self.seeks: list[dict[Any, int]] = []
        monkeypatch.setattr(Consumer, "seek_to_committed", self._seek_to_committed)
        monkeypatch.setattr(Consumer, "earliest_offsets", self._earliest_offsets)
        monkeypatch.setattr(Consumer, "seek_wait", self._seek_wait)
        monkeypatch.setattr(Consumer, "assignment", lambda _: {RAW})

    async def _seek_to_committed(self) -> dict[Any, int | None]:
        return {RAW: self.committed}

    async def _earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.earliest for tp in tps}

    async def _seek_wait(self, partitions: dict[Any, int]) -> None:
        self.seeks.append(dict(partitions))


@pytest.fixture
async def strict(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A consumer committing the "raw" topic strictly; its messages are handed directly
    (as the worker's raw bodies are)."""
    app = make_faust_app(Settings(kafka_bootstrap="127.0.0.1:1"))
    app.loop = asyncio.get_running_loop()
    app.topics.add(app.topic("raw"))
    await app.topics._update_indices()

    async def nothing(*_: Any) -> None:
        return None

    app.transport.hand_directly("raw", nothing)
    app.transport.commit_strictly("raw")
    consumer = app.transport.create_consumer(
        callback=nothing, on_partitions_revoked=nothing, on_partitions_assigned=nothing)
    consumer.broker = Broker(monkeypatch)
    return consumer


async def _take(consumer: Any, committed: int | None) -> None:
    """The partition is assigned: Faust seeks to the group's committed offset."""
    consumer.broker.committed = committed
    await consumer.seek_to_committed()


async def _fetch(consumer: Any, offsets: range) -> dict[int, Any]:
    """Hand messages of "raw" over as the fetch loop does; by offset."""
    messages = {offset: _message("raw", offset) for offset in offsets}
    for message in messages.values():
        await consumer.callback(message)
    return messages


def _done(consumer: Any, messages: dict[int, Any], offsets: Any = None) -> None:
    for offset in (messages if offsets is None else offsets):
        consumer.done(messages[offset])


def _commits(consumer: Any) -> dict[Any, int]:
    """What Faust's next commit would commit (the offsets it picks, before it commits)."""
    return consumer._filter_committable_offsets(list(consumer._acked))


def _land(consumer: Any, commits: dict[Any, int]) -> None:
    consumer._committed_offset.update(commits)  # as a commit that landed does


async def test_a_strict_topic_is_never_committed_past_a_record_not_processed(
        strict: Any) -> None:
    await _take(strict, 100)
    messages = await _fetch(strict, range(100, 110))
    _done(strict, messages, [100, 101, 102, 104, 105, 106])  # 103 is still being processed
    assert _commits(strict) == {RAW: 103}
    _land(strict, {RAW: 103})
    # The head is missing now: Faust passes over a single missing head offset (#606).
    _done(strict, messages, [107])
    assert _commits(strict) == {}
    _done(strict, messages, [103])
    assert _commits(strict) == {RAW: 108}


async def test_offsets_the_fetch_loop_skipped_are_not_taken_for_markers(strict: Any) -> None:
    await _take(strict, 0)
    messages = await _fetch(strict, range(0, 3))
    # The fetch loop got 5 after 2: Faust takes 3 and 4 for compaction or transaction
    # markers and counts them as acked. On a strict topic they are records to fetch again.
    await strict._add_gap(RAW, 3, 5)
    messages |= await _fetch(strict, range(5, 8))
    _done(strict, messages)
    assert _commits(strict) == {RAW: 3}
    _land(strict, {RAW: 3})
    _done(strict, await _fetch(strict, range(3, 5)))  # fetched again
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


async def test_nothing_is_committed_before_the_partition_start_is_known(strict: Any) -> None:
    """On a worker's first assignment Faust fetches before it seeks to the committed
    offsets, and drops records of partitions not active yet: the first record seen of a
    partition (173 in the scale-out test) need not be the committed one (168)."""
    messages = await _fetch(strict, range(173, 180))
    _done(strict, messages)
    assert _commits(strict) == {}
    await _take(strict, 168)
    assert _commits(strict) == {}
    _done(strict, await _fetch(strict, range(168, 173)))
    assert _commits(strict) == {RAW: 180}


async def test_a_partition_nothing_was_committed_for_starts_at_its_first_offset(
        strict: Any) -> None:
    strict.broker.earliest = 40  # retention deleted what came before
    await _take(strict, None)
    _done(strict, await _fetch(strict, range(40, 45)))
    assert _commits(strict) == {RAW: 45}


async def test_a_rebalance_does_not_make_it_forget_a_hole(strict: Any) -> None:
    """Faust forgets a revoked partition's committed offset before it waits for the last
    acks (and commits them): the hole at the head must still hold the commit back."""
    await _take(strict, 0)
    messages = await _fetch(strict, range(0, 6))
    _done(strict, messages, [0, 1])
    _land(strict, _commits(strict))
    await strict.on_partitions_revoked({RAW})
    _done(strict, messages, [3, 4, 5])  # 2 never made it (cancelled as the flow stopped)
    assert _commits(strict) == {}


async def test_acks_not_committed_yet_still_count_after_a_revoke(strict: Any) -> None:
    """Faust drops the acked offsets it has not committed yet when partitions are revoked,
    then waits for the last acks and commits: those offsets were processed all the same."""
    await _take(strict, 0)
    messages = await _fetch(strict, range(0, 8))
    _done(strict, messages, range(0, 6))
    await strict.on_partitions_revoked({RAW})
    _done(strict, messages, [6, 7])  # still in the queue when the rebalance began
    assert _commits(strict) == {RAW: 8}


async def test_commits_resume_where_the_group_committed_after_a_rebalance(
        strict: Any) -> None:
    await _take(strict, 0)
    _done(strict, await _fetch(strict, range(0, 4)))
    _land(strict, _commits(strict))
    # Revoked; another worker processed and committed up to 50; then it came back.
    await strict.on_partitions_revoked({RAW})
    await _take(strict, 50)
    _done(strict, await _fetch(strict, range(50, 53)))
    assert _commits(strict) == {RAW: 53}


async def test_records_processed_again_below_the_last_commit_are_no_hole(
        strict: Any) -> None:
    await _take(strict, 0)
    _done(strict, await _fetch(strict, range(0, 4)))
    assert _commits(strict) == {RAW: 4}  # picked, but the commit did not land
    await strict.on_partitions_revoked({RAW})
    await _take(strict, 2)
    _done(strict, await _fetch(strict, range(2, 6)))
    assert _commits(strict) == {RAW: 6}


async def test_a_commit_fetches_the_records_of_a_hole_again(
        strict: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def faust_commit(self: Any, topics: Any = None, **_: Any) -> bool:
        _land(self, _commits(self))
        return True

    monkeypatch.setattr(Consumer, "force_commit", faust_commit)
    await _take(strict, 10)
    messages = await _fetch(strict, range(10, 20))
    _done(strict, messages, [10, 11, 14, 15])  # 12 and 13 never reached the decoder
    strict.flow_active = True
    await strict.force_commit()
    assert strict._committed_offset[RAW] == 12 and strict.broker.seeks == [{RAW: 12}]
    await strict.force_commit()  # again at once: the rewind may still be under way
    assert strict.broker.seeks == [{RAW: 12}]
    _done(strict, messages, [12, 13])
    await strict.force_commit()
    assert strict._committed_offset[RAW] == 16 and len(strict.broker.seeks) == 1


async def test_a_refetch_that_cannot_seek_is_asked_again_later(
        strict: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def faust_commit(self: Any, topics: Any = None, **_: Any) -> bool:
        return True

    async def gone(partitions: dict[Any, int]) -> None:
        raise RuntimeError("No current assignment for partition")

    monkeypatch.setattr(Consumer, "force_commit", faust_commit)
    monkeypatch.setattr(Consumer, "seek_wait", gone)
    await _take(strict, 0)
    _done(strict, await _fetch(strict, range(3, 5)))
    strict._new_offset(RAW)  # a commit notices the hole
    strict.flow_active = True
    assert await strict.force_commit() is True  # Faust's commit goes on
    assert "could not seek to 0" in caplog.text and strict._commits.holes
