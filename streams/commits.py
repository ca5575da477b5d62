"""Strict commits: a partition is never committed past an offset that was not processed.

Faust's consumer commits, per partition, the end of the first run of consecutive acked
offsets, and in three cases passes over offsets nobody processed, which are then lost
once the partition's next owner starts at that commit: offsets its fetch loop skipped
count as acked (it takes them for compaction or transaction markers); a single offset
missing at the head of the acked ones is passed over (an off-by-one, faust-streaming
issue #606); and while a rebalance waits for the last acks it has forgotten the committed
offset, so any hole at the head is passed over. Besides, on a worker's first assignment
Faust starts fetching before it seeks to the committed offsets, and records of a partition
it fetched before the partition was active are dropped, so the first offset a worker
sees of a partition need not be the committed one (seen in the scale-out test: committed
168, first record seen 173).

Our topics (``smartme.raw``, the reading batches) are neither compacted nor transactional,
so here a partition's commits start at the offset the group had committed when this worker
took the partition (or its first offset, when the group had none) and advance only over
consecutive processed offsets. Acked offsets beyond a missing one are a hole: the records
were never processed, and the consumer fetches them again (:meth:`StrictCommits.
to_refetch`). Records processed twice are harmless (decoding again gives the same
readings; applying a reading again changes nothing).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

Partition = TypeVar("Partition", bound=Hashable)


@dataclass
class Hole:
    first: int  # first offset never processed
    last: int  # last one
    since: float  # when it was seen first
    asked: float | None = None  # when it was last fetched again


class StrictCommits(Generic[Partition]):
    def __init__(self, retry_after: float = 2.0, patience: float = 60.0,
                 slow_retry: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after = retry_after
        self.patience = patience
        self.slow_retry = slow_retry
        self.clock = clock
        # Per partition: every offset below it is processed; the next commit starts there.
        self.resume_at: dict[Partition, int] = {}
        self.holes: dict[Partition, Hole] = {}

    def started(self, offsets: Mapping[Partition, int]) -> None:
        """The group's committed offsets (or a partition's first offset, where it had
        none) as this worker seeks to them, after taking the partitions."""
        for tp, offset in offsets.items():
            # Ahead when our own last commit did not land: below it, we processed all.
            self.resume_at[tp] = max(offset, self.resume_at.get(tp, offset))

    def next_commit(self, tp: Partition, acked: list[int], index: set[int]) -> int | None:
        """The offset to commit for `tp` (None: nothing new), given its acked offsets
        and their index as Faust keeps them; takes what it commits out of both."""
        start = self.resume_at.get(tp)
        if start is None:
            return None  # not started yet: the partition's first offset is not known
        acked.sort()
        below = bisect.bisect_left(acked, start)
        if below:  # processed again after a rewind: committed already
            index.difference_update(acked[:below])
            del acked[:below]
        if not acked:
            return None
        resume = None
        if acked[0] == start:
            run = 1  # the run of consecutive offsets from the start
            while run < len(acked) and acked[run] == start + run:
                run += 1
            index.difference_update(acked[:run])
            del acked[:run]
            self.resume_at[tp] = resume = start + run
        self._note_hole(tp, self.resume_at[tp], acked)
        return resume

    def _note_hole(self, tp: Partition, start: int, acked: list[int]) -> None:
        """Acked offsets left beyond the start: the ones between were never processed."""
        if not acked:
            self.holes.pop(tp, None)
            return
        hole = self.holes.get(tp)
        if hole is None or hole.first != start:
            self.holes[tp] = Hole(start, acked[0] - 1, self.clock())
        else:
            hole.last = acked[0] - 1

    def to_refetch(self, held: Collection[Partition]) -> list[tuple[Partition, Hole]]:
        """Holes of partitions still `held` to fetch again now: each at most every
        `retry_after` seconds (a fetch in flight can undo a rewind), and once a hole is
        older than `patience`, every `slow_retry` seconds (their records were deleted by
        retention, say: the partition stays uncommitted from there, and says so)."""
        now = self.clock()
        due = []
        for tp, hole in self.holes.items():
            every = self.retry_after if now - hole.since < self.patience else self.slow_retry
            if tp in held and (hole.asked is None or now - hole.asked >= every):
                hole.asked = now
                due.append((tp, hole))
        return due

    def forget(self, tps: Collection[Partition]) -> None:
        """Partitions given up: their next owner starts at the committed offset, before
        any hole (their start is kept: they may come back)."""
        for tp in tps:
            self.holes.pop(tp, None)
