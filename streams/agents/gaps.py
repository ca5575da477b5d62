"""Offsets Faust skipped on a partition this worker kept through a rebalance.

faust-streaming acks an event its stream reads while flow control is suspended for a
rebalance without handing it to the agent; the offsets committed on revocation then move
past it, and a partition the worker keeps resumes after it (README, Known issues). The
guard remembers the last offset applied per partition; when the first event after a
rebalance lies beyond it, the agent rewinds the partition and drops events until the
missing one comes again. Applying a reading twice changes nothing, so rewinding is safe.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import NamedTuple


class Verdict(NamedTuple):
    rewind_to: int
    seek: bool  # False: already rewound there, just drop the event


class GapGuard:
    def __init__(self) -> None:
        self.last: dict[Hashable, int] = {}
        self.expect: dict[Hashable, int] = {}
        self.rewound: dict[Hashable, int] = {}

    def assigned(self, partitions: Iterable[Hashable]) -> None:
        """A rebalance ended: check the partitions kept, forget the others."""
        kept = set(partitions)
        for tp in list(self.last):
            if tp in kept:
                self.expect[tp] = self.last[tp] + 1
            else:
                del self.last[tp]
                self.expect.pop(tp, None)
                self.rewound.pop(tp, None)

    def check(self, tp: Hashable, offset: int) -> Verdict | None:
        """None: apply the event. A verdict: it lies beyond a gap; drop it (and seek)."""
        expected = self.expect.get(tp)
        if expected is not None:
            if offset > expected:
                seek = self.rewound.get(tp) != expected
                self.rewound[tp] = expected
                return Verdict(expected, seek)
            del self.expect[tp]
            self.rewound.pop(tp, None)
        self.last[tp] = max(self.last.get(tp, -1), offset)
        return None
