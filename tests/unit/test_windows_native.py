"""The native window aggregation against the plain-Python model (tests/windows_model.py),
operation by operation on random traces: the same records (byte for byte), the same late
readings with the same reasons, the same counters and the same stored state. Traces mix
duplicates (also conflicting ones), register resets, missing registers, phases, readings
later than the allowed lateness, wall-clock sweeps (also on a device whose readings were
just applied, before its state is written, as the agent does), readings before 1970, random
batch cuts and window configurations; the native side takes its readings as tuples or
parsed from `meter.readings` records, as the agent gives them."""

from __future__ import annotations

import random
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.windows import US, Aggregator, Sample, WindowConfig, reading_parser
from tests import windows_model

T0 = 1_699_999_200 * US
BEFORE_1970 = -3_000_000_000 * US  # 1874
CODES = ("1-0:1.8.0*255", "1-0:2.8.0*255", "1-0:1.7.0*255", "1-0:21.7.0*255",
         "1-0:41.7.0*255", "1-0:61.7.0*255")
DEVICES = ("dev-a", "dev-b")


@st.composite
def configs(draw: st.DrawFn) -> WindowConfig:
    sizes = draw(st.lists(st.sampled_from([30, 60, 120, 300, 900, 3600]), min_size=1,
                          max_size=4))
    grace = draw(st.sampled_from([0, 60, 300]))
    lateness = draw(st.sampled_from([grace, 3600, 6 * 3600]))
    chunk = draw(st.sampled_from([300, 900, 3600]))
    return WindowConfig(sizes=tuple(sizes), grace=grace, allowed_lateness=max(lateness, grace),
                        chunk=chunk, emit_interim=draw(st.booleans()))


def _value(rng: random.Random, present: float) -> float | None:
    return None if rng.random() > present else round(rng.uniform(0, 5000), rng.randint(0, 3))


def trace(rng: random.Random, count: int, base: int = T0) -> list[Sample]:
    samples: list[Sample] = []
    ts, imp, exp = base + rng.randint(0, 3600) * US, 1000.0, 50.0
    for _ in range(count):
        ts += rng.choice([1, 15, 60, 60, 60, 300, 900, 3 * 3600]) * US
        imp = rng.uniform(0, 10) if rng.random() < 0.04 else imp + rng.uniform(0, 50)
        exp += rng.choice([0.0, 0.0, 1.5])
        samples.append(Sample(
            ts,
            imp if rng.random() < 0.8 else None,
            exp if rng.random() < 0.5 else None,
            _value(rng, 0.7), _value(rng, 0.2), _value(rng, 0.2), _value(rng, 0.1)))
    return samples


class Both:
    """The model and the native implementation, fed the same operations."""

    def __init__(self, config: WindowConfig) -> None:
        self.model_store: dict[str, Any] = {}
        self.model = windows_model.Aggregator(config, self.model_store)
        self.heads: dict[str, Any] = {}
        self.chunks: dict[str, bytes] = {}
        self.native = Aggregator(config, self.heads, self.chunks)

    def apply(self, device_id: str, samples: list[Sample], arrival: int, parsed: bool,
              sweep: int | None) -> None:
        model_device = self.model.device(device_id)
        expected = self.model.apply(model_device, samples, arrival)
        native_device = self.native.device(device_id)
        got = self.native.apply(native_device, as_readings(device_id, samples)
                                if parsed else samples, arrival)
        assert [samples[i] for i, _ in got.late] == [s for s, _ in expected.late]
        assert [reason for _, reason in got.late] == [reason for _, reason in expected.late]
        if sweep is not None:  # the same device objects, state not yet written
            self._same(expected, got, check_state=False)
            expected = self.model.sweep(model_device, sweep)
            got = self.native.sweep(native_device, sweep)
        model_device.flush()
        native_device.flush()
        self._same(expected, got)

    def sweep(self, device_id: str, now: int) -> None:
        model_device = self.model.device(device_id)
        native_device = self.native.device(device_id)
        assert self.native.due(native_device.head, now) == self.model.due(
            model_device.head, now)
        expected = self.model.sweep(model_device, now)
        model_device.flush()
        got = self.native.sweep(native_device, now)
        native_device.flush()
        self._same(expected, got)

    def _same(self, expected: windows_model.Outcome, got: Any, check_state: bool = True
              ) -> None:
        assert [w.json for w in got.emitted] == [orjson.dumps(r) for r in expected.emitted]
        for window, record in zip(got.emitted, expected.emitted, strict=True):
            assert (window.device_id, window.size, window.revision, window.final) == (
                record["device_id"], record["size"], record["revision"], record["final"])
            assert window.key == (f"{record['device_id']}|{record['size']}|"
                                  f"{record['window_start']}").encode()
        assert [(key, value) for key, value, _, _ in got.records] == [
            (w.key, w.json) for w in got.emitted]
        for size in {record["size"] for record in expected.emitted}:
            assert got.finals_of(size) == [
                (w.start_us, w.energy_import_wh, w.energy_export_wh)
                for w in got.emitted if w.final and w.size == size]
        assert (got.duplicates, got.conflicting_duplicates, got.revisions, got.finals) == (
            expected.duplicates, expected.conflicting_duplicates, expected.revisions,
            expected.finals)
        if check_state:
            self.same_state()

    def same_state(self) -> None:
        model_heads = {k: v for k, v in self.model_store.items() if "|" not in k}
        model_chunks = {k: v for k, v in self.model_store.items() if "|" in k}
        assert orjson.dumps(self.heads) == orjson.dumps(model_heads)
        # The same chunks but for how each remembers a window's content: the model
        # (the earlier Python implementation) by a blake2 digest, the native side by a
        # fingerprint; that both tell changed windows alike shows in the emitted records.
        assert {k: without_digests(orjson.loads(v)) for k, v in self.chunks.items()} == {
            k: without_digests(v) for k, v in model_chunks.items()}
        for raw in self.chunks.values():
            assert all(digest.startswith("x") for _, digest in
                       orjson.loads(raw)["windows"].values())
        for device_id in self.heads:
            assert self.native.open_windows(self.native.device(device_id)) == list(
                self.model.open_windows(self.model.device(device_id)))


def without_digests(chunk: dict[str, Any]) -> dict[str, Any]:
    return {**chunk, "windows": {k: revision for k, (revision, _) in chunk["windows"].items()}}


def as_readings(device_id: str, samples: list[Sample]) -> Any:
    """The samples as the agent hands them over: parsed from `meter.readings` records."""
    records = [{"device_id": device_id, "timestamp_us": s.ts,
                "values": [{"obis": code, "normalised": value}
                           for code, value in zip(CODES, s[1:], strict=True)
                           if value is not None]} for s in samples]
    (group,), rejected = reading_parser().group([orjson.dumps(records)])
    assert rejected == [] and len(group) == len(samples)
    return group


@settings(max_examples=120, deadline=None)
@given(configs(), st.randoms(use_true_random=False), st.integers(1, 80),
       st.sampled_from([T0, BEFORE_1970]))
def test_native_equals_the_model_on_random_operations(
    config: WindowConfig, rng: random.Random, count: int, base: int
) -> None:
    both = Both(config)
    readings = [(device, sample) for device in DEVICES for sample in trace(rng, count, base)]
    readings += rng.sample(readings, len(readings) // 10)  # retries: exact duplicates
    for device, sample in rng.sample(readings, len(readings) // 20):  # conflicting ones
        readings.append((device, sample._replace(power=(sample.power or 0.0) + 1.0)))
    # Arrival order: shuffled within up to 8 h, so some are later than the allowed lateness.
    readings.sort(key=lambda item: item[1].ts + rng.randint(0, 8 * 3600) * US)
    clock = base
    position = 0
    while position < len(readings):
        cut = readings[position:position + rng.randint(1, 12)]
        position += len(cut)
        clock = max(clock, *(s.ts for _, s in cut)) + rng.randint(0, 120) * US
        for device in DEVICES:
            samples = [s for d, s in cut if d == device]
            if samples:
                sweep = clock + rng.choice([0, 600, 7200]) * US if rng.random() < 0.2 else None
                both.apply(device, samples, clock, parsed=rng.random() < 0.5, sweep=sweep)
        if rng.random() < 0.3:
            clock += rng.choice([10, 300, 3600, 8 * 3600]) * US
            for device in DEVICES:
                both.sweep(device, clock)
    for device in DEVICES:
        both.sweep(device, clock + 48 * 3600 * US)


def test_window_content_equals_the_model_on_edge_windows() -> None:
    """Single samples, empty windows, resets at the edges, neighbours from anchors."""
    config = WindowConfig()
    native = Aggregator(config, {}, {})._native
    rng = random.Random(7)
    for _ in range(3000):
        samples = sorted(trace(rng, rng.randint(0, 6)), key=lambda s: s.ts)
        start = T0 + rng.randint(-2, 40) * 60 * US
        size = rng.choice([60, 900, 3600])
        inside = [s for s in samples if start <= s.ts < start + size * US]
        before = tuple(next((s for s in reversed(samples) if s.ts < start and s[i] is not None),
                            None) for i in (1, 2))
        after = tuple(next((s for s in samples if s.ts >= start + size * US
                            and s[i] is not None), None) for i in (1, 2))
        expected = windows_model.window_content("dev", size, start, [list(s) for s in inside],
                                                (before[0] and list(before[0]),
                                                 before[1] and list(before[1])),
                                                (after[0] and list(after[0]),
                                                 after[1] and list(after[1])))
        text, digest = native.window_content("dev", size, start, inside,
                                             (before[0], before[1]), (after[0], after[1]))
        assert text == orjson.dumps(expected)
        assert digest == windows_model.digest(expected)


def test_state_from_before_the_fingerprints_keeps_its_revisions() -> None:
    """Chunks written by earlier versions remember windows by blake2 digests: a window
    whose content a late reading leaves alone is still not re-emitted, a changed one gets
    the next revision, exactly as the earlier implementation decides."""
    config = WindowConfig(sizes=(60,), grace=0, allowed_lateness=3600)
    model_store: dict[str, Any] = {}
    model = windows_model.Aggregator(config, model_store)
    arrival = T0 + 3600 * US
    device = model.device("dev")
    first = model.apply(device, [Sample(T0, 100.0), Sample(T0 + 600 * US, 200.0)], arrival)
    device.flush()
    assert len(first.emitted) == 10  # the minutes between the two readings, all final
    heads = {k: v for k, v in model_store.items() if "|" not in k}
    chunks = {k: orjson.dumps(v) for k, v in model_store.items() if "|" in k}
    assert not any(digest.startswith("x") for raw in chunks.values()
                   for _, digest in orjson.loads(raw)["windows"].values())
    native = Aggregator(config, heads, chunks)

    # On the register's straight line: only the minute holding the reading changes.
    late = [Sample(T0 + 300 * US, 150.0)]
    expected = model.apply(model.device("dev"), late, arrival)
    native_device = native.device("dev")
    got = native.apply(native_device, late, arrival)
    native_device.flush()

    assert [w.json for w in got.emitted] == [orjson.dumps(r) for r in expected.emitted]
    assert [(w.start_us, w.revision) for w in got.emitted] == [(T0 + 300 * US, 1)]
