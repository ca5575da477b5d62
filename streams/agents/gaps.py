"""Offsets that never reached an agent on a partition this worker holds.

Seen in the scale-out test (README, Known issues): on a raw partition, offsets 140 and 141
were never handed to the decode agent while 139 and 142 onwards were, around a rebalance;
Faust never acked them, so the committed offset stayed at 140 for good, but nothing
fetched them again either, and their readings were missing until the next rebalance.

The guard expects the offsets of a partition to arrive contiguously while this worker
holds it (our topics have no transaction markers and are not compacted). When one
arrives beyond the next expected offset, the agent processes it as usual and rewinds the
partition to the first missing offset; events that come twice are harmless (decoding
again yields the same readings, applying a reading again changes nothing). A rewind can be
undone by a fetch still in flight, so until the missing offsets have come the guard asks
again every `retry_after` seconds, and after `patience` seconds (logged) every
`slow_retry` seconds. It never stops asking: the partition is not committed past the
missing offsets (streams.faust_consumer, strict commits), so a restart or the next owner
would read them again, but until then their records would wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Hole:
    first: int  # first missing offset
    end: int  # last missing offset
    since: float
    asked: float  # when the last rewind was asked for
    slow: bool = False  # past the guard's patience


class GapGuard:
    def __init__(self, retry_after: float = 2.0, patience: float = 60.0,
                 slow_retry: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after = retry_after
        self.patience = patience
        self.slow_retry = slow_retry
        self.clock = clock
        self.last: dict[Hashable, int] = {}
        self.holes: dict[Hashable, _Hole] = {}
        self.held: set[Hashable] | None = None  # None: no assignment seen, track every one

    def assigned(self, partitions: Iterable[Hashable]) -> None:
        """A rebalance ended: keep what is known of kept partitions, forget the others
        (their next owner starts at the committed offset, before any missing one)."""
        kept = self.held = set(partitions)
        for tp in list(self.last):
            if tp not in kept:
                del self.last[tp]
                self.holes.pop(tp, None)

    def check(self, tp: Hashable, offset: int, start: int | None = None) -> int | None:
        """Note an event's offset; returns the offset to rewind the partition to, if any.
        `start`: the first offset of the partition not processed yet, when the consumer
        knows it (so a hole at the head of what this worker fetched is seen too)."""
        if self.held is not None and tp not in self.held:
            return None  # the end of a batch taken before the partition moved away
        now = self.clock()
        last = self.last.get(tp)
        if last is None and start is not None:
            last = start - 1
        hole = self.holes.get(tp)
        if hole is not None and hole.first <= offset <= hole.end:
            hole.first = offset + 1
            if hole.first > hole.end:
                del self.holes[tp]
                log.warning("%s: the missing offsets arrived; partition complete again", tp)
                hole = None
        if last is not None and offset > last + 1:
            if hole is None:
                hole = self.holes[tp] = _Hole(last + 1, offset - 1, now, now)
            else:
                hole.end = offset - 1
                hole.asked = now
            self.last[tp] = offset
            log.error("%s: offsets %d..%d never arrived; rewinding to %d",
                      tp, last + 1, offset - 1, hole.first)
            return hole.first
        self.last[tp] = offset if last is None else max(last, offset)
        if hole is None:
            return None
        if not hole.slow and now - hole.since >= self.patience:
            hole.slow = True
            log.error("%s: offsets %d..%d still missing after %.0f s; the partition is not "
                      "committed past them; asking every %.0f s", tp, hole.first, hole.end,
                      self.patience, self.slow_retry)
        if now - hole.asked < (self.slow_retry if hole.slow else self.retry_after):
            return None
        hole.asked = now
        return hole.first
