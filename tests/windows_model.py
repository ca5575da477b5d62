"""The window aggregation as a plain-Python model: the executable specification that the
compiled implementation (native/src/windows.rs, behind streams.windows) is compared with,
rule for rule, on random traces (tests/unit/test_windows_native.py). It was the worker's
implementation until the window math moved into the native module; keep both in step.
No Faust in here.

The contents of a window are a pure function of the device's readings in timestamp
order, so instead of accumulating running sums this module keeps the readings of the
recent past (the allowed lateness plus one chunk) and computes a window when it is
emitted. That makes the result independent of arrival order and of restarts: a late
reading simply lands in its place and the windows it touches are computed again.

State per device lives in two key spaces of a :class:`Store`:

* ``device`` → a small *head*: event time, last arrival, the last value of each register,
  pending (not yet final) windows, the chunk index and the register anchors.
* ``device|chunk_start`` → one *chunk*: the readings whose timestamp falls in
  ``[chunk_start, chunk_start + chunk)`` plus the revision and digest of every final
  window that starts in it.

An in-order reading touches one head and one chunk, so the bytes written per reading do
not grow with how long a device has been sending; the readings kept are bounded by the
allowed lateness.

Semantics (documented in the README, "Window aggregates"):

* tumbling windows aligned to the UTC epoch, start-inclusive;
* energy of a register (import 1-0:1.8.0, export 1-0:2.8.0): for consecutive readings
  carrying it, the increase is spread linearly over the interval between them and each
  window gets the overlapping part; a decrease is a reset (no energy, counted in the
  window of the lower reading); ``None`` when no interval overlaps the window;
* power (1-0:1.7.0 and per phase): over the window's own samples, each holding until the
  next sample or the window end; mean is time-weighted over [first sample, window end);
* a window is final once the device's event time passed ``end + grace``, or once the
  device has been quiet for ``grace`` of wall-clock time and ``end + grace`` is past;
* a reading older than ``event time - allowed lateness`` is too late; others revise the
  final windows they change (``revision`` + 1, only when the content changed);
* a reading whose timestamp was already applied is a duplicate and changes nothing.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import operator
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.codec import format_timestamp
from streams.windows import US, Sample, WindowConfig

# Field positions in a stored sample (a JSON list, compact on the changelog).
TS, IMP, EXP, POW, L1, L2, L3 = range(7)
_REGISTERS = (("import", IMP), ("export", EXP))
_BOTH = (IMP, EXP)
_PHASES = (("l1", L1), ("l2", L2), ("l3", L3))


@dataclass
class Outcome:
    emitted: list[dict[str, Any]] = field(default_factory=list)
    late: list[tuple[Sample, str]] = field(default_factory=list)
    duplicates: int = 0
    conflicting_duplicates: int = 0
    revisions: int = 0
    finals: int = 0

    def merge(self, other: Outcome) -> None:
        self.emitted += other.emitted
        self.late += other.late
        self.duplicates += other.duplicates
        self.conflicting_duplicates += other.conflicting_duplicates
        self.revisions += other.revisions
        self.finals += other.finals


# -- pure window computation ------------------------------------------------------------------
# Every meter's windows share the same few boundaries: format each once.
_boundary = functools.lru_cache(maxsize=16384)(format_timestamp)


def window_content(device_id: str, size_s: int, start: int, samples: list[list[Any]],
                   before: tuple[list[Any] | None, list[Any] | None],
                   after: tuple[list[Any] | None, list[Any] | None]) -> dict[str, Any]:
    """A window's aggregate from its samples (sorted) and, for the import and the export
    register, the last sample carrying it before the window and the first one at/after
    its end."""
    end = start + size_s * US
    energy_import, import_resets = _energy(IMP, start, end, samples, before[0], after[0])
    energy_export, export_resets = _energy(EXP, start, end, samples, before[1], after[1])
    mean, low, high, last = _power(POW, end, samples) or _NO_POWER
    content: dict[str, Any] = {
        "device_id": device_id,
        "size": size_s,
        "window_start": _boundary(start),
        "window_end": _boundary(end),
        "energy_import_wh": energy_import,
        "energy_export_wh": energy_export,
        "power_mean_w": mean,
        "power_min_w": low,
        "power_max_w": high,
        "power_last_w": last,
    }
    phases = {}
    for name, index in _PHASES:
        stats = _power(index, end, samples)
        if stats is not None:
            phases[name] = {"mean_w": stats[0], "min_w": stats[1], "max_w": stats[2],
                            "last_w": stats[3]}
    if phases:
        content["phases"] = phases
    content["samples"] = len(samples)
    content["resets"] = import_resets + export_resets
    if samples:
        first = format_timestamp(samples[0][TS])
        content["first_reading"] = first
        content["last_reading"] = first if len(samples) == 1 else format_timestamp(
            samples[-1][TS])
    else:
        content["first_reading"] = content["last_reading"] = None
    return content


def _energy(index: int, start: int, end: int, samples: list[list[Any]],
            before: list[Any] | None, after: list[Any] | None) -> tuple[float | None, int]:
    energy: float | None = None
    resets = 0
    previous = before
    # One pass over the samples carrying the register, `after` last: this runs for every
    # register of every emitted window, the hottest loop of a worker.
    for sample in (*samples, after) if after is not None else samples:
        if sample[index] is None:
            continue
        if previous is not None:
            b_ts = sample[TS]
            a_ts = previous[TS]
            overlap = (b_ts if b_ts < end else end) - (a_ts if a_ts > start else start)
            increase = sample[index] - previous[index]
            if increase < 0:
                if start <= b_ts < end:
                    resets += 1
                increase = 0.0
            if overlap > 0:
                energy = (energy or 0.0) + increase * overlap / (b_ts - a_ts)
        previous = sample
    return energy, resets


_NO_POWER = (None, None, None, None)


def _power(index: int, end: int, samples: list[list[Any]]
           ) -> tuple[float, float, float, float] | None:
    """Time-weighted mean, min, max and last of a field (None: no sample carries it)."""
    weighted = 0.0
    first_ts = last_ts = 0
    low: Any = None
    high: Any = None
    last: Any = None
    for sample in samples:
        value = sample[index]
        if value is None:
            continue
        ts = sample[TS]
        if last is None:
            first_ts, low, high = ts, value, value
        else:
            weighted += last * (ts - last_ts)
            if value < low:
                low = value
            elif value > high:
                high = value
        last, last_ts = value, ts
    if last is None:
        return None
    weighted += last * (end - last_ts)
    return weighted / (end - first_ts), low, high, last


def digest(content: dict[str, Any]) -> str:
    return hashlib.blake2b(orjson.dumps(content, option=orjson.OPT_SORT_KEYS),
                           digest_size=8).hexdigest()


def align(ts: int, size_us: int) -> int:
    return ts - ts % size_us


# -- per-device state ---------------------------------------------------------------------------
class Device:
    """One device's head and lazily loaded chunks; writes go back on :meth:`flush`."""

    def __init__(self, device_id: str, config: WindowConfig, store: MutableMapping[str, Any]):
        self.id = device_id
        self.config = config
        self.store = store
        self.chunk_us = config.chunk * US
        head = store.get(device_id)
        self.head: dict[str, Any] = head if head is not None else {
            "event_time": None, "arrival": None, "chunks": [], "pending": {},
            "anchors": {"import": None, "export": None}, "latest": None,
        }
        self._chunks: dict[int, dict[str, Any]] = {}
        self._dirty: set[int] = set()
        self._deleted: set[int] = set()
        self._head_dirty = head is None

    # chunks -----------------------------------------------------------------------------
    def _key(self, start: int) -> str:
        return f"{self.id}|{start}"

    def chunk(self, start: int, create: bool = False) -> dict[str, Any] | None:
        if start in self._chunks:
            return self._chunks[start]
        data = self.store.get(self._key(start)) if start in self.head["chunks"] else None
        if data is None:
            if not create:
                return None
            data = {"samples": [], "windows": {}}
            bisect.insort(self.head["chunks"], start)
            self._head_dirty = True
        self._chunks[start] = data
        return data

    def touch(self, start: int) -> None:
        self._dirty.add(start)

    def _samples(self, start: int) -> list[list[Any]]:
        chunk = self._chunks.get(start)
        if chunk is None:
            chunk = self.chunk(start)
            assert chunk is not None
        samples: list[list[Any]] = chunk["samples"]
        return samples

    def samples_between(self, lo: int, hi: int) -> list[list[Any]]:
        """Samples with lo <= ts < hi, in order."""
        starts = self.head["chunks"]
        found: list[list[Any]] = []
        for position in range(max(0, bisect.bisect_right(starts, lo) - 1), len(starts)):
            start = starts[position]
            if start >= hi:
                break
            samples = self._samples(start)
            found += samples[bisect.bisect_left(samples, lo, key=_ts):
                             bisect.bisect_left(samples, hi, key=_ts)]
        return found

    def before(self, ts: int, index: int | None) -> list[Any] | None:
        """The last sample before ts carrying field `index` (any sample for None), among
        the samples still kept (no anchors)."""
        starts = self.head["chunks"]
        for position in range(bisect.bisect_left(starts, ts) - 1, -1, -1):
            samples = self._samples(starts[position])
            for i in range(bisect.bisect_left(samples, ts, key=_ts) - 1, -1, -1):
                if index is None or samples[i][index] is not None:
                    return samples[i]
        return None

    def registers_before(self, ts: int, imp: bool = True, exp: bool = True
                         ) -> tuple[list[Any] | None, list[Any] | None]:
        """For the import and the export register (where asked for), the last sample
        before ts carrying it, or the register's anchor once the samples that far back
        were pruned."""
        found_imp, found_exp, imp, exp = self._scan_registers(ts, imp, exp, backward=True)
        return (self._anchor(IMP) if imp else found_imp,
                self._anchor(EXP) if exp else found_exp)

    def registers_after(self, ts: int, imp: bool = True, exp: bool = True
                        ) -> tuple[list[Any] | None, list[Any] | None]:
        """For the import and the export register (where asked for), the first sample at
        or after ts carrying it."""
        found_imp, found_exp, _, _ = self._scan_registers(ts, imp, exp, backward=False)
        return found_imp, found_exp

    def _scan_registers(self, ts: int, imp: bool, exp: bool, backward: bool
                        ) -> tuple[list[Any] | None, list[Any] | None, bool, bool]:
        """The nearest samples before ts (backward) or at/after it carrying each asked-for
        register, and which of the registers were not found.

        Runs several times per reading (the windows a reading touches, then every emitted
        window's neighbours): a plain loop that stops as soon as both are found."""
        found_imp = found_exp = None
        starts = self.head["chunks"]
        if backward:
            position, step, stop = bisect.bisect_left(starts, ts) - 1, -1, -1
        else:
            position, step, stop = max(0, bisect.bisect_right(starts, ts) - 1), 1, len(starts)
        while (imp or exp) and position != stop:
            samples = self._samples(starts[position])
            cut = bisect.bisect_left(samples, ts, key=_ts)
            for i in range(cut - 1, -1, -1) if backward else range(cut, len(samples)):
                sample = samples[i]
                if imp and sample[IMP] is not None:
                    found_imp, imp = sample, False
                if exp and sample[EXP] is not None:
                    found_exp, exp = sample, False
                if not (imp or exp):
                    break
            position += step
        return found_imp, found_exp, imp, exp

    def _anchor(self, index: int) -> list[Any] | None:
        anchor = self.head["anchors"]["import" if index == IMP else "export"]
        if anchor is None:
            return None
        sample: list[Any] = [anchor[0], None, None, None, None, None, None]
        sample[index] = anchor[1]
        return sample

    def flush(self) -> None:
        for start in self._dirty - self._deleted:
            self.store[self._key(start)] = self._chunks[start]
        for start in self._deleted:
            self.store.pop(self._key(start), None)
        if self._dirty or self._deleted:
            self._head_dirty = True
        if self._head_dirty:
            self.store[self.id] = self.head
        self._dirty.clear()
        self._deleted.clear()
        self._head_dirty = False

    def mark_head(self) -> None:
        self._head_dirty = True

    def delete_chunk(self, start: int) -> None:
        self.head["chunks"].remove(start)
        self._chunks.pop(start, None)
        self._deleted.add(start)
        self._head_dirty = True


_ts = operator.itemgetter(TS)  # a sample's timestamp, as a C-level key for bisect


class Aggregator:
    """Applies readings and wall-clock sweeps to devices held in a :class:`Store`."""

    def __init__(self, config: WindowConfig, store: MutableMapping[str, Any]) -> None:
        self.config = config
        self.store = store
        self.sizes_us = [s * US for s in config.sizes]
        # Windows are settled in (size, start) order whatever order the sizes were given in.
        self._settle_sizes = sorted(set(self.sizes_us))
        self._labels = {size_us: str(size_us // US) for size_us in self._settle_sizes}
        self.grace_us = config.grace * US
        self.lateness_us = config.allowed_lateness * US

    def device(self, device_id: str) -> Device:
        return Device(device_id, self.config, self.store)

    # -- readings ----------------------------------------------------------------------------
    def apply(self, device: Device, samples: Iterable[Sample], arrival_us: int) -> Outcome:
        outcome = Outcome()
        head = device.head
        for sample in samples:
            ts = sample.ts
            event_time = head["event_time"]
            if event_time is not None and ts < event_time - self.lateness_us:
                outcome.late.append((sample, (
                    f"older than the device's event time {format_timestamp(event_time)} minus "
                    f"the allowed lateness ({self.config.allowed_lateness} s)")))
                continue
            if not self._insert(device, sample, outcome):
                continue
            if event_time is None or ts > event_time:
                head["event_time"] = event_time = ts
            latest = head["latest"]
            if latest is None or ts >= latest[TS]:
                head["latest"] = list(sample)
            # Settled after every reading, not once per batch: what is emitted (a window's
            # revision 0, each revision) then depends only on the device's readings in
            # arrival order, never on how a consumer happened to batch them, so a replay
            # after a crash re-emits exactly what was emitted before.
            self._settle(device, self._touched_windows(device, sample), event_time, outcome)
        head["arrival"] = arrival_us
        device.mark_head()
        self._prune(device)
        return outcome

    def _insert(self, device: Device, sample: Sample, outcome: Outcome) -> bool:
        ts = sample.ts
        chunk_start = ts - ts % device.chunk_us
        chunk = device.chunk(chunk_start, create=True)
        assert chunk is not None
        samples = chunk["samples"]
        position = bisect.bisect_left(samples, ts, key=_ts)
        if position < len(samples) and samples[position][TS] == ts:
            outcome.duplicates += 1
            if list(samples[position]) != list(sample):
                outcome.conflicting_duplicates += 1
            return False
        samples.insert(position, list(sample))
        device.touch(chunk_start)
        return True

    def _touched_windows(self, device: Device, sample: Sample) -> list[tuple[int, int]]:
        """Windows whose content can change when `sample` joins the timeline, in (size,
        start) order."""
        ts = sample.ts
        lo = hi = ts
        imp, exp = sample[IMP] is not None, sample[EXP] is not None
        if imp or exp:
            for previous in device.registers_before(ts, imp, exp):
                if previous is not None and previous[TS] < lo:
                    lo = previous[TS]
            for following in device.registers_after(ts + 1, imp, exp):
                if following is not None and following[TS] > hi:
                    hi = following[TS]
        return [(size_us, start) for size_us in self._settle_sizes
                for start in range(lo - lo % size_us, hi + 1, size_us)]

    def _settle(self, device: Device, windows: list[tuple[int, int]], event_time: int | None,
                outcome: Outcome) -> None:
        """Revise changed final windows, finalize what is due, keep the rest pending."""
        pending = device.head["pending"]
        for size_us, start in windows:
            if self._meta(device, size_us, start) is not None:
                self._emit(device, size_us, start, outcome, revise=True)
            elif event_time is not None and start + size_us + self.grace_us <= event_time:
                self._emit(device, size_us, start, outcome)
            else:
                starts = pending.get(self._labels[size_us])
                if starts is None:
                    pending[self._labels[size_us]] = [start]
                elif start not in starts:
                    bisect.insort(starts, start)
                if self.config.emit_interim:
                    outcome.emitted.append(self._record(device, size_us, start, 0, final=False))
        if event_time is not None:
            self._finalize_due(device, event_time, outcome)

    def _finalize_due(self, device: Device, watermark: int, outcome: Outcome) -> None:
        pending = device.head["pending"]
        emptied = []
        for size_s, starts in pending.items():
            size_us = int(size_s) * US
            while starts and starts[0] + size_us + self.grace_us <= watermark:
                self._emit(device, size_us, starts.pop(0), outcome)
            if not starts:
                emptied.append(size_s)
        for size_s in emptied:
            del pending[size_s]
        device.mark_head()

    # -- emission ----------------------------------------------------------------------------
    def _meta(self, device: Device, size_us: int, start: int) -> list[Any] | None:
        chunk = device.chunk(start - start % device.chunk_us)
        return None if chunk is None else chunk["windows"].get(f"{size_us // US}:{start}")

    def _emit(self, device: Device, size_us: int, start: int, outcome: Outcome,
              revise: bool = False) -> None:
        content = self.content(device, size_us, start)
        fingerprint = digest(content)
        chunk_start = start - start % device.chunk_us
        chunk = device.chunk(chunk_start, create=True)
        assert chunk is not None
        key = f"{size_us // US}:{start}"
        meta = chunk["windows"].get(key)
        if meta is not None and meta[1] == fingerprint:
            return  # a late reading that changes nothing here (or a replay after restart)
        revision = 0 if meta is None else meta[0] + 1
        chunk["windows"][key] = [revision, fingerprint]
        device.touch(chunk_start)
        if revision:
            outcome.revisions += 1
        else:
            outcome.finals += 1
        content["revision"] = revision
        content["final"] = True
        outcome.emitted.append(content)

    def _record(self, device: Device, size_us: int, start: int, revision: int, final: bool
                ) -> dict[str, Any]:
        return {**self.content(device, size_us, start), "revision": revision, "final": final}

    def content(self, device: Device, size_us: int, start: int) -> dict[str, Any]:
        end = start + size_us
        return window_content(device.id, size_us // US, start, device.samples_between(start, end),
                              device.registers_before(start), device.registers_after(end))

    # -- wall clock --------------------------------------------------------------------------
    def due(self, head: dict[str, Any], now_us: int) -> bool:
        """Whether the quiet-device rule would finalize something for this head now."""
        if not head["pending"] or head["arrival"] is None:
            return False
        if now_us - head["arrival"] < self.grace_us:
            return False
        return any(starts and starts[0] + int(size_s) * US + self.grace_us <= now_us
                   for size_s, starts in head["pending"].items())

    def sweep(self, device: Device, now_us: int) -> Outcome:
        """Finalize windows of a device that went quiet (wall-clock rule)."""
        outcome = Outcome()
        if self.due(device.head, now_us):
            self._finalize_due(device, now_us, outcome)
        return outcome

    # -- bounded state -----------------------------------------------------------------------
    def _prune(self, device: Device) -> None:
        """Drop chunks no accepted reading can reach again (see the module docstring)."""
        head = device.head
        if head["event_time"] is None or not head["chunks"]:
            return
        cutoff = head["event_time"] - self.lateness_us
        if head["chunks"][0] + device.chunk_us > cutoff - max(self.sizes_us):
            return  # nothing old enough yet; skip the search
        oldest_needed = cutoff
        for index in (None, IMP, EXP):
            # An anchor is kept on its own; only samples still in chunks hold chunks back.
            previous = device.before(cutoff, index)
            if previous is not None:
                oldest_needed = min(oldest_needed, previous[TS])
        keep_from = min(align(oldest_needed, size_us) for size_us in self.sizes_us)
        for start in list(head["chunks"]):
            if start + device.chunk_us > keep_from:
                break
            chunk = device.chunk(start)
            assert chunk is not None
            for name, index in _REGISTERS:
                for sample in reversed(chunk["samples"]):
                    if sample[index] is not None:
                        head["anchors"][name] = [sample[TS], sample[index]]
                        break
            device.delete_chunk(start)

    # -- inspection --------------------------------------------------------------------------
    def open_windows(self, device: Device) -> Iterator[dict[str, Any]]:
        for size_s, starts in device.head["pending"].items():
            for start in starts:
                yield self._record(device, int(size_s) * US, start, 0, final=False)
