import pytest

from streams.agents.gaps import GapGuard, Verdict

TP = ("meter.readings", 3)


def test_a_partition_kept_through_a_rebalance_resumes_where_it_was_applied() -> None:
    guard = GapGuard()
    for offset in (960, 961):
        assert guard.check(TP, offset) is None
    guard.assigned([TP])
    # Faust acked 962 unseen and committed 963: rewind once, drop what lies beyond.
    assert guard.check(TP, 963) == Verdict(962, seek=True)
    assert guard.check(TP, 964) == Verdict(962, seek=False)
    for offset in (962, 963, 964):  # fetched again from 962
        assert guard.check(TP, offset) is None
    assert guard.last[TP] == 964


def test_no_gap_no_rewind_and_redelivered_events_are_applied() -> None:
    guard = GapGuard()
    guard.check(TP, 10)
    guard.assigned([TP])
    assert guard.check(TP, 8) is None  # uncommitted events come again: duplicates, fine
    assert guard.check(TP, 9) is None and guard.check(TP, 11) is None


def test_partitions_that_moved_away_are_forgotten() -> None:
    guard = GapGuard()
    guard.check(TP, 10)
    guard.assigned([])  # another worker takes it and goes on
    guard.assigned([TP])  # back later, further on: not a gap
    assert guard.check(TP, 500) is None
    other = ("meter.readings", 4)
    assert guard.check(other, 7) is None  # first event of a new partition: never a gap


def test_an_offset_that_never_comes_back_stops_the_wait_instead_of_stalling(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    guard = GapGuard(give_up=60, clock=lambda: now[0])
    guard.check(TP, 10)
    guard.assigned([TP])
    assert guard.check(TP, 12) == Verdict(11, seek=True)
    now[0] += 59
    assert guard.check(TP, 13) == Verdict(11, seek=False)  # still waiting for 11
    now[0] += 2
    assert guard.check(TP, 14) is None  # 11 is gone (retention): go on from here
    assert "offset 11 did not come back" in caplog.text
    assert guard.check(TP, 15) is None and guard.last[TP] == 15
