"""Per-device window aggregation: exact, late-data aware, idempotent. No Faust in here.

The window math runs in the native module (``native/src/windows.rs``): it is the work a
worker does for every reading, and in Python it capped a worker far below the readings it
should take. This module is its typed front: configuration, the state store, and the
record types. ``tests/windows_model.py`` holds the same rules in plain Python; a property
test compares the two on random traces.

The contents of a window are a pure function of the device's readings in timestamp
order, so instead of accumulating running sums the state keeps the readings of the recent
past (the allowed lateness plus one chunk) and computes a window when it is emitted. That
makes the result independent of arrival order and of restarts: a late reading simply
lands in its place and the windows it touches are computed again.

State per device lives in two key spaces:

* ``device`` → a small *head* (a JSON object): event time, last arrival, the last value of
  each register, pending (not yet final) windows, the chunk index and the register
  anchors; the agent keeps its own keys there too (offline watch, reconciliation);
* ``device|chunk_start`` → one *chunk* (JSON text): the readings whose timestamp falls in
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

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from streams import _native
from streams._native import DeviceReadings, Outcome, Window
from streams.obis import ENERGY_EXPORT, ENERGY_IMPORT, POWER_IMPORT, POWER_PHASES

__all__ = ["US", "Aggregator", "Device", "DeviceReadings", "Outcome", "Sample", "Window",
           "WindowConfig", "reading_parser"]

US = 1_000_000


@dataclass(frozen=True)
class WindowConfig:
    sizes: tuple[int, ...] = (60, 900, 3600)  # seconds
    grace: int = 300
    allowed_lateness: int = 6 * 3600
    chunk: int = 900
    emit_interim: bool = False

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) <= 0:
            raise ValueError("window sizes must be positive seconds")
        if self.allowed_lateness < self.grace:
            raise ValueError("allowed lateness must be at least the grace period")


class Sample(NamedTuple):
    """One reading reduced to what aggregation uses (µs timestamp, Wh, W)."""

    ts: int
    imp: float | None = None
    exp: float | None = None
    power: float | None = None
    l1: float | None = None
    l2: float | None = None
    l3: float | None = None


# The OBIS codes (as `meter.readings` writes them) aggregation reads, by their position in
# a sample's values (Sample's fields after ts).
_CODES = {f"{ENERGY_IMPORT}*255": 0, f"{ENERGY_EXPORT}*255": 1, f"{POWER_IMPORT}*255": 2,
          **{f"{code}*255": i for i, code in enumerate(POWER_PHASES.values(), start=3)}}


def reading_parser(decoder: _native.RecordDecoder | None = None) -> _native.ReadingParser:
    """Parses reading-batches records (`meter.readings` records, lists of them, and the
    compact records whose bodies `decoder` decodes) into samples grouped by device."""
    return _native.ReadingParser(_CODES, decoder)


class Device:
    """One device's head and lazily loaded chunks; writes go back on :meth:`flush`."""

    def __init__(self, device_id: str, heads: MutableMapping[str, Any],
                 chunks: MutableMapping[str, bytes], annotation: bytes = b"") -> None:
        self.id = device_id
        self._heads = heads
        self._chunks = chunks
        self.native = _native.Device(device_id, heads.get(device_id), chunks.get, annotation)

    @property
    def head(self) -> dict[str, Any]:
        return self.native.head

    def mark_head(self) -> None:
        self.native.mark_head()

    def flush(self) -> None:
        puts, deletes, head = self.native.take_writes()
        for key, raw in puts:
            self._chunks[key] = raw
        for key in deletes:
            self._chunks.pop(key, None)
        if head:
            self._heads[self.id] = self.native.head


class Aggregator:
    """Applies readings and wall-clock sweeps to devices whose heads (JSON values) and
    chunks (JSON text) live in the given stores."""

    def __init__(self, config: WindowConfig, heads: MutableMapping[str, Any],
                 chunks: MutableMapping[str, bytes]) -> None:
        self.config = config
        self.heads = heads
        self.chunks = chunks
        self._native = _native.Windows(list(config.sizes), config.grace,
                                       config.allowed_lateness, config.chunk,
                                       config.emit_interim)

    def device(self, device_id: str, annotation: bytes = b"") -> Device:
        """A device's state; `annotation`: JSON members (``"k":v,...``) its window records
        carry after their own (see :meth:`streams.enrichment.Enrichment.annotation`)."""
        return Device(device_id, self.heads, self.chunks, annotation)

    def apply(self, device: Device, samples: DeviceReadings | Iterable[Sample],
              arrival_us: int) -> Outcome:
        """Apply readings that arrived at `arrival_us`. The outcome's ``late`` entries are
        (position in `samples`, reason)."""
        if not isinstance(samples, DeviceReadings):
            samples = list(samples)
        return self._native.apply(device.native, samples, arrival_us)

    def due(self, head: dict[str, Any], now_us: int) -> bool:
        """Whether the quiet-device rule would finalize something for this head now."""
        return self._native.due(head, now_us)

    def sweep(self, device: Device, now_us: int) -> Outcome:
        """Finalize windows of a device that went quiet (wall-clock rule)."""
        return self._native.sweep(device.native, now_us)

    def open_windows(self, device: Device) -> list[dict[str, Any]]:
        """The device's pending windows as interim (not final) records."""
        return [orjson.loads(window.json) for window in self._native.open_windows(device.native)]
