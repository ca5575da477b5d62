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

Topics can be committed strictly (:meth:`FastHandoverTransport.commit_strictly`, the
rules in :mod:`streams.commits`): never past an offset that was not processed; offsets
never processed while later ones were are fetched again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any, cast

from faust.transport.drivers.aiokafka import Consumer, Transport
from faust.types import TP
from mode.services import WaitResults

from streams.commits import StrictCommits

log = logging.getLogger(__name__)


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
        self._strict = transport.strict
        self._commits: StrictCommits[TP] = StrictCommits()

        async def callback(message: Any) -> Any:
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

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic not in self._strict:
            return super()._new_offset(tp)
        return self._commits.next_commit(tp, self._acked[tp], self._acked_index[tp])

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic not in self._strict:  # a skip on a strict topic is no marker
            await super()._add_gap(tp, offset_from, offset_to)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # Faust forgets the acked offsets it has not committed yet before it waits for the
        # last acks and commits: they are processed, so the next commit starts past them.
        for tp in revoked:
            if tp.topic in self._strict:
                self._new_offset(tp)
        self._commits.forget(revoked)
        await super().on_partitions_revoked(revoked)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        starts = {tp: offset for tp, offset in committed.items()
                  if tp.topic in self._strict and offset is not None and offset >= 0}
        fresh = [tp for tp in committed if tp.topic in self._strict and tp not in starts]
        if fresh:  # nothing committed yet: the partition starts at its first offset
            starts.update(await self.earliest_offsets(*fresh))
        self._commits.started(starts)
        return committed

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True
                           ) -> bool:
        done: bool = await super().force_commit(
            topics, start_new_transaction=start_new_transaction)
        if self.flow_active and self._commits.holes:  # not while a rebalance is under way
            for tp, hole in self._commits.to_refetch(self.assignment()):
                log.error("%s: offsets %d..%d are not known to be processed; fetching them again",
                          tp, hole.first, hole.last)
                self._strict[tp.topic]()
                try:
                    await self.seek_wait({tp: hole.first})
                except Exception as exc:  # e.g. the partition went in a rebalance meanwhile
                    log.warning("%s: could not seek to %d (%s: %s); asking again later",
                                tp, hole.first, type(exc).__name__, exc)
        return done

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
        # Strictly committed topics, each with what to call when a hole is fetched again.
        self.strict: dict[str, Callable[[], None]] = {}

    def hand_directly(self, topic: str, handler: Handler) -> None:
        """Messages of `topic` go to `handler` instead of Faust's streams (an agent must
        still subscribe to it: Faust fetches only what agents subscribe to)."""
        self.direct[topic] = handler

    def commit_strictly(self, topic: str, on_refetch: Callable[[], None] = lambda: None
                        ) -> None:
        """Never commit `topic`'s partitions past an offset that was not processed, and
        fetch such offsets again (for a topic neither compacted nor transactional)."""
        self.strict[topic] = on_refetch


def _close(coros: tuple[Any, ...]) -> None:
    """Close coroutines that will never run (else Python warns they were never awaited)."""
    for coro in coros:
        if asyncio.iscoroutine(coro):
            coro.close()
