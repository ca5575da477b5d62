import pytest

from streams.agents.gaps import GapGuard

TP = ("smartme.raw", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_offsets_that_never_arrived_rewind_the_partition_until_they_come(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard = GapGuard(retry_after=2, clock=clock)
    for offset in range(130, 140):
        assert guard.check(TP, offset) is None
    # 140 and 141 were fetched but never handed to the agent (seen in the scale-out test).
    assert guard.check(TP, 142) == 140
    assert "offsets 140..141 never arrived; rewinding to 140" in caplog.text
    assert guard.check(TP, 143) is None  # already in the queue: processed, no new rewind
    clock.now += 2.5
    assert guard.check(TP, 144) == 140  # the rewind was undone by a fetch in flight: again
    for offset in (140, 141):  # fetched again
        assert guard.check(TP, offset) is None
    assert not guard.holes and "arrived; partition complete again" in caplog.text
    for offset in (142, 143, 144, 145):  # the rest comes twice: no new hole
        assert guard.check(TP, offset) is None
    clock.now += 10
    assert guard.check(TP, 146) is None


def test_a_hole_that_never_fills_is_asked_for_less_often_after_the_patience(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard = GapGuard(retry_after=2, patience=60, slow_retry=30, clock=clock)
    guard.check(TP, 10)
    assert guard.check(TP, 12) == 11
    asked = []
    for offset in range(13, 200):
        clock.now += 1
        asked.append(guard.check(TP, offset))
    # every 2 s for 60 s, then every 30 s (offset 11 deleted by retention, say)
    assert asked[:59].count(11) == 29 and asked[59:].count(11) == 4
    assert "offsets 11..11 still missing after 60 s" in caplog.text


def test_contiguous_offsets_and_redeliveries_never_rewind() -> None:
    guard = GapGuard()
    assert [guard.check(TP, o) for o in (5, 6, 7, 5, 6, 7, 8)] == [None] * 7


def test_partitions_that_moved_away_are_forgotten_and_new_ones_start_anywhere() -> None:
    guard = GapGuard()
    guard.check(TP, 10)
    assert guard.check(TP, 15) == 11
    guard.assigned([])  # another worker takes it, from the committed offset (<= 11)
    assert not guard.holes
    guard.assigned([TP])  # back later, further on: not a gap
    assert guard.check(TP, 500) is None
    assert guard.check(("smartme.raw", 4), 7) is None


def test_a_kept_partition_keeps_its_hole_through_a_rebalance() -> None:
    guard = GapGuard()
    guard.check(TP, 10)
    assert guard.check(TP, 13) == 11
    guard.assigned([TP])  # Faust seeks kept partitions to the committed offset (11)
    assert all(guard.check(TP, o) is None for o in (11, 12, 13, 14))
    assert not guard.holes


def test_events_of_a_partition_no_longer_held_leave_no_trace() -> None:
    guard = GapGuard()
    guard.assigned([TP])
    guard.check(TP, 10)
    guard.assigned([])  # revoked; the batch in hand still holds an event of it
    assert guard.check(TP, 11) is None and TP not in guard.last
    guard.assigned([TP])  # back much later, further on: not a gap
    assert guard.check(TP, 900) is None


def test_a_hole_at_the_head_of_what_was_fetched_is_seen_when_the_start_is_known() -> None:
    other = ("smartme.raw", 2)
    guard = GapGuard()
    guard.assigned([TP, other])
    # The consumer resumes the partition at 40 (its committed offset); 40 and 41 never came.
    assert guard.check(TP, 42, start=40) == 40
    assert guard.check(TP, 40, start=40) is None and guard.check(TP, 41, start=40) is None
    assert not guard.holes
    # Records processed again below the start (a commit that did not land) are no hole.
    assert guard.check(other, 7, start=9) is None and guard.check(other, 8, start=9) is None
