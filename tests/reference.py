"""A straightforward window computation over a device's sorted readings, written
independently of streams.windows: energy from the interpolated cumulative register
(increases only, so a reset adds nothing), power as an explicit step-function area."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

US = 1_000_000

IMPORT, EXPORT, POWER = 1, 2, 3  # positions in a (ts_us, import, export, power) tuple


def window(readings: Sequence[Sequence[Any]], size: int, start: int) -> dict[str, Any]:
    """`readings`: (ts_us, import_wh|None, export_wh|None, power_w|None), any order."""
    ordered = sorted(readings, key=lambda r: r[0])
    end = start + size * US
    result: dict[str, Any] = {}
    resets = 0
    for name, field in (("import", IMPORT), ("export", EXPORT)):
        points = [(r[0], r[field]) for r in ordered if r[field] is not None]
        cumulative, total = [], 0.0
        for i, (t, v) in enumerate(points):
            if i and v >= points[i - 1][1]:
                total += v - points[i - 1][1]
            elif i and start <= t < end:
                resets += 1
            cumulative.append((t, total))
        if len(points) < 2 or end <= points[0][0] or start >= points[-1][0]:
            result[f"energy_{name}_wh"] = None
            continue
        times = [c[0] for c in cumulative]

        def at(t: int, cum: list[tuple[int, float]] = cumulative, times: list[int] = times
               ) -> float:
            i = bisect.bisect_right(times, t) - 1
            if i >= len(cum) - 1:
                return cum[-1][1]
            (t1, c1), (t2, c2) = cum[i], cum[i + 1]
            return c1 + (c2 - c1) * (t - t1) / (t2 - t1)

        result[f"energy_{name}_wh"] = at(min(end, points[-1][0])) - at(max(start, points[0][0]))
    inside = [r for r in ordered if start <= r[0] < end]
    powers = [(r[0], r[POWER]) for r in inside if r[POWER] is not None]
    if powers:
        area = sum(p * ((powers[i + 1][0] if i + 1 < len(powers) else end) - t)
                   for i, (t, p) in enumerate(powers))
        result["power_mean_w"] = area / (end - powers[0][0])
        result["power_min_w"] = min(p for _, p in powers)
        result["power_max_w"] = max(p for _, p in powers)
        result["power_last_w"] = powers[-1][1]
    result["samples"] = len(inside)
    result["resets"] = resets
    return result


def expected_windows(readings: Sequence[Sequence[Any]], sizes: Sequence[int]
                     ) -> list[tuple[int, int]]:
    """Every (size, start) from the first reading's window to the last reading's."""
    first = min(r[0] for r in readings)
    last = max(r[0] for r in readings)
    keys = []
    for size in sizes:
        step = size * US
        keys += [(size, start) for start in range(first - first % step, last + 1, step)]
    return keys
