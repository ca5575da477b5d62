"""Strict commits (streams.commits): the rules, without Faust (the consumer's use of them:
tests/unit/test_faust_consumer.py)."""

from streams.commits import StrictCommits

TP = ("smartme.raw", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _commit(commits: StrictCommits[tuple[str, int]], acked: list[int]) -> int | None:
    return commits.next_commit(TP, acked, set(acked))


def test_commits_advance_over_consecutive_processed_offsets_only() -> None:
    commits: StrictCommits[tuple[str, int]] = StrictCommits()
    assert _commit(commits, [5, 6]) is None  # where the partition starts is not known yet
    commits.started({TP: 5})
    acked = [8, 5, 6, 9]
    assert commits.next_commit(TP, acked, set(acked)) == 7
    assert acked == [8, 9]  # kept for later: 7 is missing
    assert commits.holes[TP].first == 7 and commits.holes[TP].last == 7
    acked.insert(0, 7)
    assert commits.next_commit(TP, acked, set(acked)) == 10
    assert acked == [] and not commits.holes


def test_a_start_only_moves_forward_and_offsets_below_it_are_done() -> None:
    commits: StrictCommits[tuple[str, int]] = StrictCommits()
    commits.started({TP: 20})
    commits.started({TP: 12})  # our commit of 20 did not land; the group says 12
    assert commits.resume_at[TP] == 20
    acked = [12, 13, 19, 20, 21]  # 12..19 processed again
    assert commits.next_commit(TP, acked, set(acked)) == 22 and not commits.holes
    commits.started({TP: 40})  # another worker went on meanwhile
    assert commits.resume_at[TP] == 40


def test_holes_are_fetched_again_often_at_first_then_every_slow_retry() -> None:
    clock = Clock()
    commits: StrictCommits[tuple[str, int]] = StrictCommits(
        retry_after=2, patience=60, slow_retry=30, clock=clock)
    commits.started({TP: 10})
    acked = [12, 13]
    assert commits.next_commit(TP, acked, set(acked)) is None
    refetched = []
    for _ in range(200):
        refetched += [hole.first for _, hole in commits.to_refetch({TP})]
        clock.now += 1
    # every 2 s for 60 s, then every 30 s (records deleted by retention, say)
    assert refetched == [10] * (30 + 4)
    assert commits.to_refetch(set()) == []  # not for a partition no longer held
    commits.forget([TP])
    assert not commits.holes and commits.resume_at[TP] == 10
