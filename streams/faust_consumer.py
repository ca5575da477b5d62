"""Faust's aiokafka consumer, handing fetched messages to the agents' streams without four
tasks per message.

Faust's fetch loop hands every message over as ``wait_first(callback(message),
suspend_flow.wait())``: it must stop waiting when a rebalance suspends the flow while a
stream's buffer is full. mode's ``wait_first`` wraps each of the two, and the consumer's
stopped and crashed events, in a task, waits for the first, and cancels the other three:
~47 µs per message in a micro-benchmark, paid for every body a meter posts. Handing a
message over mostly completes without waiting (the stream's buffer has room), so this
consumer first runs the callback directly; only if it has to wait does the callback go
on in a task, waited for the general way.

A topic can also be taken past Faust's streams altogether (:meth:`FastHandoverTransport.
hand_directly`): its messages go to a handler instead of through the conductor, a stream,
its buffer and their sensors, which cost ~10 µs per reading with 10-reading bodies
(alternating runs of the worker bench: 0.75 of the CPU per reading). Faust still fetches
them, owns the partitions and commits what the handler's owner acks
(:meth:`FastHandoverConsumer.done`); a rebalance still waits for those acks.

Topics can be committed strictly (:meth:`FastHandoverTransport.commit_strictly`): never
past an offset that was not acked. Faust's own rule commits past unacked offsets in three
cases, each of which loses records when the partition's next owner starts at that commit:
offsets its fetch loop skipped count as acked (it takes them for compaction or
transaction markers); a single missing offset at the head of the acked ones is passed
over (an off-by-one, faust-streaming issue #606); and while a rebalance waits for the
last acks it has forgotten the committed offset, so any hole at the head is passed over.
Our topics are neither compacted nor transactional: a missing offset is a record still to
be processed (the agents' gap guard fetches it again), so the commit waits for it.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any, cast

from faust.transport.drivers.aiokafka import Consumer, Transport
from faust.types import TP
from faust.utils.functional import consecutive_numbers
from mode.services import WaitResults


class _Continued:
    """Awaiting it runs a started coroutine on from the point where it yielded `yielded`,
    passing on to it whatever the awaiting task sends or throws, as ``await`` would have."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # handed on, as await hands it on
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _continue(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _Continued(coro, yielded)


# Takes a message of a topic handed directly; returns once it holds it (it may wait for
# room: that holds up the fetch loop, as a full stream buffer does).
Handler = Callable[[Any], Awaitable[None]]


class FastHandoverConsumer(Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        streams = self.callback
        transport = cast("FastHandoverTransport", self.transport)
        direct = transport.direct
        self._strict = strict = transport.strict
        # Per strictly committed partition: every offset below it is processed, so the
        # next commit must start there (set from the committed offset at each seek to it,
        # or the first offset fetched when there is none).
        self._resume_at: dict[TP, int] = {}
        resume_at = self._resume_at

        async def callback(message: Any) -> Any:
            if message.topic in strict and message.tp not in resume_at:
                resume_at[message.tp] = message.offset
            handler = direct.get(message.topic)
            if handler is None:
                return await streams(message)
            # Pending until done(): a rebalance waits for it before it commits.
            self.track_message(message)
            await handler(message)
            return None

        self.callback = callback

    def done(self, message: Any) -> None:
        """A directly handed message is processed: Faust may commit past it."""
        self.ack(message)
        self.app.sensors.on_message_out(message.tp, message.offset, message)

    def commit_start(self, tp: TP) -> int | None:
        """Where the next commit of a strictly committed partition must start: every
        offset below it is processed (None before anything of it was fetched)."""
        return self._resume_at.get(tp)

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic not in self._strict:
            return super()._new_offset(tp)
        acked = self._acked[tp]
        if not acked:
            return None
        acked.sort()
        index = self._acked_index[tp]
        start = self._resume_at.get(tp)
        if start is not None:
            # Offsets below it were processed again (after a rewind): committed already.
            below = bisect.bisect_left(acked, start)
            if below:
                index.difference_update(acked[:below])
                del acked[:below]
            if not acked or acked[0] != start:
                return None  # the next offset to commit is not processed yet
        run = next(consecutive_numbers(acked))
        del acked[:len(run)]
        index.difference_update(run)
        self._resume_at[tp] = resume = run[-1] + 1
        return resume

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # Faust forgets the acked offsets it has not committed yet before it waits for the
        # last acks and commits: they are processed, so the next commit starts past them.
        for tp in revoked:
            if tp.topic in self._strict:
                self._new_offset(tp)
        await super().on_partitions_revoked(revoked)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic not in self._strict:  # a skip on a strict topic is no marker
            await super()._add_gap(tp, offset_from, offset_to)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        resume_at = self._resume_at
        for tp, offset in committed.items():
            if tp.topic in self._strict and offset is not None and offset >= 0:
                # Ahead when our last commit did not land: below it, we processed all.
                resume_at[tp] = max(offset, resume_at.get(tp, offset))
        return committed

    # mode's signature, timeout included (the fetch loop passes none)
    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:  # noqa: ASYNC109
        first = coros[0] if coros else None
        if (timeout is not None or not asyncio.iscoroutine(first) or self.suspend_flow.is_set()
                or self._stopped.is_set() or self._crashed.is_set()):
            return await super().wait_first(*coros, timeout=timeout)
        rest = coros[1:]
        try:
            yielded = first.send(None)
        except StopIteration as done:
            _close(rest)
            return WaitResults([first], [done.value], False)
        except BaseException:
            _close(rest)
            raise
        return await super().wait_first(
            asyncio.ensure_future(_continue(first, yielded)), *rest)


class FastHandoverTransport(Transport):
    """Faust's aiokafka transport (``kafka://``), with the consumer above."""

    Consumer = FastHandoverConsumer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct: dict[str, Handler] = {}
        self.strict: set[str] = set()

    def hand_directly(self, topic: str, handler: Handler) -> None:
        """Messages of `topic` go to `handler` instead of Faust's streams (an agent must
        still subscribe to it: Faust fetches only what agents subscribe to)."""
        self.direct[topic] = handler

    def commit_strictly(self, topic: str) -> None:
        """Never commit `topic`'s partitions past an offset that was not acked (for a
        topic that is neither compacted nor written in transactions)."""
        self.strict.add(topic)


def _close(coros: tuple[Any, ...]) -> None:
    """Close coroutines that will never run (else Python warns they were never awaited)."""
    for coro in coros:
        if asyncio.iscoroutine(coro):
            coro.close()
