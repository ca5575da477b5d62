"""Window math (the native implementation behind streams.windows): each semantic rule, and
random out-of-order traces against a reference computed independently (interpolated
cumulative registers over the sorted readings)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import format_timestamp
from streams.windows import US, Aggregator, Outcome, Sample, WindowConfig
from tests import reference

T0 = 1_699_999_200 * US  # 2023-11-14T22:00:00Z, aligned to the hour
MIN = 60 * US
CONFIG = WindowConfig(sizes=(60, 900, 3600), grace=300, allowed_lateness=6 * 3600)


class Run:
    """Feeds samples one at a time like the agent does and keeps the latest record per
    window (what a compacted meter.aggregates topic would hold)."""

    def __init__(self, config: WindowConfig = CONFIG) -> None:
        self.heads: dict[str, Any] = {}
        self.chunks: dict[str, bytes] = {}
        self.aggregator = Aggregator(config, self.heads, self.chunks)
        self.latest: dict[tuple[int, str], dict[str, Any]] = {}
        self.records: list[dict[str, Any]] = []
        self.late: list[Sample] = []
        self.duplicates = 0

    @property
    def store(self) -> dict[str, Any]:
        """Every stored key and value (heads and chunks), as copies."""
        return {**orjson.loads(orjson.dumps(self.heads)),
                **{k: orjson.loads(v) for k, v in self.chunks.items()}}

    def feed(self, *samples: Sample, arrival: int | None = None) -> Outcome:
        device = self.aggregator.device("dev")
        outcome = self.aggregator.apply(device, samples, arrival or max(s.ts for s in samples))
        device.flush()
        self._collect(outcome, samples)
        return outcome

    def sweep(self, now: int) -> Outcome:
        device = self.aggregator.device("dev")
        outcome = self.aggregator.sweep(device, now)
        device.flush()
        self._collect(outcome, ())
        return outcome

    def _collect(self, outcome: Outcome, samples: tuple[Sample, ...]) -> list[dict[str, Any]]:
        records = [orjson.loads(window.json) for window in outcome.emitted]
        self.records += records
        self.late += [samples[position] for position, _ in outcome.late]
        self.duplicates += outcome.duplicates
        for record in records:
            self.latest[(record["size"], record["window_start"])] = record
        return records

    def window(self, size: int, start: int) -> dict[str, Any]:
        return self.latest[(size, format_timestamp(start))]


def s(minute: float, imp: float | None = None, exp: float | None = None,
      power: float | None = None, **phases: float) -> Sample:
    return Sample(T0 + int(minute * MIN), imp, exp, power, phases.get("l1"), phases.get("l2"),
                  phases.get("l3"))


# -- reference -------------------------------------------------------------------------------
def assert_matches_reference(run: Run, samples: list[Sample]) -> None:
    assert run.latest, "nothing was emitted"
    readings = [(x.ts, x.imp, x.exp, x.power) for x in samples]
    for (size, _), record in run.latest.items():
        want = reference.window(readings, size, _parse(record["window_start"]))
        for key, value in want.items():
            got = record[key]
            if value is None or isinstance(value, int):
                assert got == value, (key, record)
            else:
                assert got == pytest.approx(value, rel=1e-6, abs=1e-9), (key, record)


def _parse(text: str) -> int:
    from datetime import datetime

    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp()) * US + moment.microsecond


# -- rules -------------------------------------------------------------------------------------
def test_windows_are_epoch_aligned_and_start_inclusive() -> None:
    run = Run()
    run.feed(s(0, imp=100.0), s(1, imp=160.0), s(10, imp=160.0))
    first = run.window(60, T0)
    assert first["window_start"] == "2023-11-14T22:00:00Z"
    assert first["window_end"] == "2023-11-14T22:01:00Z"
    assert first["energy_import_wh"] == pytest.approx(60.0)
    assert first["samples"] == 1  # the 22:21:00 reading belongs to the next window
    assert first["first_reading"] == first["last_reading"] == "2023-11-14T22:00:00Z"
    assert run.window(60, T0 + MIN)["samples"] == 1


def test_a_gap_spreads_energy_linearly_over_every_window_it_spans() -> None:
    run = Run()
    run.feed(s(0, imp=0.0), s(30, imp=300.0), s(40, imp=300.0))
    for minute in range(30):
        window = run.window(60, T0 + minute * MIN)
        assert window["energy_import_wh"] == pytest.approx(10.0)
        assert window["samples"] == (1 if minute == 0 else 0)
    quarter = run.window(900, T0)
    assert quarter["energy_import_wh"] == pytest.approx(150.0)


def test_a_register_decrease_is_a_reset_not_negative_energy() -> None:
    run = Run()
    run.feed(s(0, imp=1000.0), s(1, imp=1060.0), s(2, imp=5.0), s(3, imp=65.0),
             s(20, imp=65.0))
    assert run.window(60, T0)["energy_import_wh"] == pytest.approx(60.0)
    reset_window = run.window(60, T0 + MIN)
    assert reset_window["energy_import_wh"] == 0.0
    assert reset_window["resets"] == 0
    assert run.window(60, T0 + 2 * MIN)["resets"] == 1  # counted where the low value is
    assert run.window(60, T0 + 2 * MIN)["energy_import_wh"] == pytest.approx(60.0)
    assert run.window(900, T0)["energy_import_wh"] == pytest.approx(120.0)
    assert run.window(900, T0)["resets"] == 1


def test_duplicates_change_nothing() -> None:
    run = Run()
    run.feed(s(0, imp=0.0, power=100.0), s(1, imp=10.0, power=200.0))
    before = dict(run.store)
    outcome = run.feed(s(1, imp=10.0, power=200.0), s(0, imp=0.0, power=100.0))
    assert outcome.duplicates == 2 and outcome.emitted == []
    assert run.store == before


def test_out_of_order_within_grace_gives_final_windows_without_revisions() -> None:
    run = Run()
    run.feed(s(0, imp=0.0), s(2, imp=20.0))
    run.feed(s(1, imp=5.0))  # late by a minute, window not final yet
    run.feed(s(12, imp=20.0))
    assert run.window(60, T0)["energy_import_wh"] == pytest.approx(5.0)
    assert run.window(60, T0 + MIN)["energy_import_wh"] == pytest.approx(15.0)
    assert all(r["revision"] == 0 for r in run.records)


def test_late_within_allowed_lateness_revises_the_final_windows() -> None:
    run = Run()
    run.feed(s(0, imp=0.0), s(2, imp=20.0), s(60, imp=20.0))
    assert run.window(60, T0)["energy_import_wh"] == pytest.approx(10.0)
    outcome = run.feed(s(1, imp=15.0))
    revised = run.window(60, T0)
    assert revised["revision"] == 1 and revised["final"] is True
    assert revised["energy_import_wh"] == pytest.approx(15.0)
    assert run.window(60, T0 + MIN)["energy_import_wh"] == pytest.approx(5.0)
    # Both minutes and the quarter (one more sample) change; the hour is not final yet.
    assert outcome.revisions == 3
    assert run.window(900, T0)["revision"] == 1
    assert run.window(900, T0)["energy_import_wh"] == pytest.approx(20.0)  # unchanged total


def test_too_late_readings_are_reported_not_applied() -> None:
    run = Run()
    run.feed(s(0, imp=0.0), s(7 * 60, imp=100.0))
    before = dict(run.store)
    outcome = run.feed(s(30, imp=50.0))  # 6.5 h behind the device's event time
    assert [position for position, _ in outcome.late] == [0]
    assert run.late == [s(30, imp=50.0)]
    assert "allowed lateness" in outcome.late[0][1]
    assert outcome.emitted == []
    after = run.store
    # Only the arrival moved: the device did send something.
    assert after["dev"].pop("arrival") != before["dev"].pop("arrival")
    assert after == before


def test_readings_without_a_register_do_not_break_its_energy() -> None:
    run = Run()
    run.feed(s(0, imp=0.0, power=50.0), s(1, power=70.0), s(2, imp=40.0, power=90.0),
             s(20, power=0.0))
    assert run.window(60, T0)["energy_import_wh"] == pytest.approx(20.0)
    assert run.window(60, T0 + MIN)["energy_import_wh"] == pytest.approx(20.0)
    assert run.window(60, T0 + MIN)["power_mean_w"] == 70.0
    assert run.window(60, T0 + 2 * MIN)["energy_export_wh"] is None  # never reported


def test_a_single_reading_gives_power_but_no_energy() -> None:
    run = Run()
    run.feed(s(0.5, imp=123.0, power=250.0, l1=80.0, l2=90.0, l3=80.0))
    assert run.records == []  # not final yet
    run.sweep(now=T0 + 30 * MIN)
    window = run.window(60, T0)
    assert window["energy_import_wh"] is None
    assert (window["power_mean_w"], window["power_min_w"], window["power_last_w"]) == (
        250.0, 250.0, 250.0)
    assert window["phases"]["l2"] == {"mean_w": 90.0, "min_w": 90.0, "max_w": 90.0,
                                      "last_w": 90.0}
    assert window["samples"] == 1


def test_power_mean_is_time_weighted_over_the_windows_own_samples() -> None:
    run = Run()
    run.feed(s(0, power=100.0), s(0.25, power=300.0), s(0.5, power=100.0), s(20))
    window = run.window(60, T0)
    # 100 W for 15 s, 300 W for 15 s, 100 W for 30 s
    assert window["power_mean_w"] == pytest.approx(150.0)
    assert (window["power_min_w"], window["power_max_w"], window["power_last_w"]) == (
        100.0, 300.0, 100.0)


def test_quiet_device_windows_are_finalized_by_the_wall_clock_sweep() -> None:
    run = Run()
    run.feed(s(0, imp=0.0), s(0.5, imp=10.0), arrival=T0 + MIN)
    assert run.sweep(now=T0 + 3 * MIN).emitted == []  # still within grace
    outcome = run.sweep(now=T0 + 61 * MIN)
    assert {(w.size, w.start_us) for w in outcome.emitted} == {(60, T0), (900, T0)}
    assert {(r["size"], r["window_start"]) for r in run.records} == {
        (60, "2023-11-14T22:00:00Z"), (900, "2023-11-14T22:00:00Z")}
    assert run.window(60, T0)["energy_import_wh"] == pytest.approx(10.0)
    later = run.sweep(now=T0 + 70 * MIN)
    assert [w.size for w in later.emitted] == [3600]
    # It sends again: the interval across the silence revises the swept window.
    run.feed(s(90, imp=100.0), arrival=T0 + 91 * MIN)
    assert run.window(60, T0)["revision"] == 1


def test_interim_updates_only_when_enabled() -> None:
    run = Run(WindowConfig(sizes=(60,), emit_interim=True))
    run.feed(s(0, imp=0.0, power=10.0))
    assert [(r["final"], r["revision"]) for r in run.records] == [(False, 0)]


def test_state_stays_bounded_however_long_a_device_sends() -> None:
    run = Run(WindowConfig(sizes=(60, 900, 3600), grace=300, allowed_lateness=3600, chunk=900))
    sizes = []
    for minute in range(0, 3 * 24 * 60, 5):
        run.feed(s(minute, imp=minute * 2.0, power=100.0))
        if minute % 720 == 0:
            sizes.append(len(run.store))
    # (lateness + largest window) / chunk + the chunk being written + the head
    assert max(sizes[2:]) <= (3600 + 3600) // 900 + 3
    assert sizes[-1] == sizes[-2]


# -- random traces ---------------------------------------------------------------------------
@st.composite
def traces(draw: st.DrawFn) -> list[Sample]:
    count = draw(st.integers(1, 60))
    gaps = draw(st.lists(st.integers(1, 40 * 60), min_size=count, max_size=count))
    samples, ts, imp, exp = [], T0, 1000.0, 50.0
    for gap in gaps:
        ts += gap * US
        if draw(st.integers(0, 30)) == 0:
            imp = draw(st.floats(0, 10))  # a meter swap
        else:
            imp += draw(st.floats(0, 50))
        exp += draw(st.sampled_from([0.0, 0.0, 1.5]))
        samples.append(Sample(
            ts,
            imp if draw(st.booleans()) or not samples else None,
            exp if draw(st.integers(0, 3)) else None,
            draw(st.one_of(st.none(), st.floats(0, 5000))),
        ))
    return samples


@settings(max_examples=150, deadline=None)
@given(traces(), st.randoms(use_true_random=False), st.integers(0, 3))
def test_shuffled_traces_with_duplicates_equal_the_sorted_computation(
    trace: list[Sample], rng: random.Random, duplicates: int
) -> None:
    arrival = trace + rng.sample(trace, min(duplicates, len(trace)))
    # Shuffle within 2 h so nothing exceeds the 6 h allowed lateness.
    arrival.sort(key=lambda x: x.ts + rng.randint(0, 2 * 3600) * US)
    run = Run()
    for sample in arrival:
        run.feed(sample)
    run.sweep(now=max(x.ts for x in trace) + 24 * 3600 * US)
    assert run.duplicates == min(duplicates, len(trace))
    assert run.late == []
    assert_matches_reference(run, trace)
    assert all(r["final"] for r in run.records)


@settings(max_examples=150, deadline=None)
@given(traces(), st.randoms(use_true_random=False))
def test_what_is_emitted_does_not_depend_on_how_readings_are_batched(
    trace: list[Sample], rng: random.Random
) -> None:
    """A worker restarted after a crash applies the same readings in the same order, but
    cut into other batches; every (window, revision) it emits must be what was emitted
    before. One reading per batch against random batch cuts."""
    arrival = sorted(trace, key=lambda x: x.ts + rng.randint(0, 2 * 3600) * US)
    single, batched = Run(), Run()
    for sample in arrival:
        single.feed(sample, arrival=sample.ts)
    position = 0
    while position < len(arrival):
        cut = arrival[position:position + rng.randint(1, 8)]
        batched.feed(*cut, arrival=max(x.ts for x in cut))
        position += len(cut)
    assert batched.records == single.records
