"""Daily reconciliation: the energy of a meter's final hourly windows, per local day, next
to the grid operator's measurements for the meter's EAN (from UMeter). No Faust in here.

Days follow the grid operator's calendar (Europe/Amsterdam; UMeter's data is local
time), which is why hourly windows are used: local days begin on whole UTC hours.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from streams.enrichment import Enrichment, day_hours, local_day

HOUR = 3600
KEEP_DAYS = 4


def fold(head: dict[str, Any], size: int, start_us: int, import_wh: float | None,
         export_wh: float | None) -> None:
    """Remember a final hourly window's energy (a revision replaces its hour)."""
    if size != HOUR:
        return
    day = local_day(start_us).isoformat()
    days = head.setdefault("days", {})
    days.setdefault(day, {})[str(start_us)] = [import_wh, export_wh]
    for old in sorted(days)[:-KEEP_DAYS]:
        del days[old]


def totals(head: dict[str, Any], day: date) -> tuple[float, float] | None:
    """(import, export) kWh of a complete local day (every hour final and known)."""
    hours = head.get("days", {}).get(day.isoformat(), {})
    if len(hours) < day_hours(day) or any(v[0] is None for v in hours.values()):
        return None
    return (sum(v[0] for v in hours.values()) / 1000,
            sum((v[1] or 0.0) for v in hours.values()) / 1000)


def _reconciled(head: dict[str, Any]) -> dict[str, float | None]:
    """Day → the grid operator's kWh it was reconciled against (older state: a list of
    days, whose figure is unknown and so counts as changed once)."""
    done = head.get("reconciled", {})
    return dict.fromkeys(done) if isinstance(done, list) else dict(done)


def pending(head: dict[str, Any], device_id: str, enrichment: Enrichment
            ) -> list[tuple[date, float, float]]:
    """Days ready to reconcile: complete here, measured by the grid operator, and not yet
    reconciled against this figure. Grid-operator data for a day often arrives in parts
    over the next day, so a day is reconciled again whenever its figure changes."""
    place = enrichment.place(device_id)
    if place is None:
        return []
    done = _reconciled(head)
    ready = []
    for day_text in sorted(head.get("days", {})):
        day = date.fromisoformat(day_text)
        ours = totals(head, day)
        theirs = enrichment.measured_kwh(place.ean, day)
        if ours is None or theirs is None or theirs[0] is None:
            continue
        if day_text in done and done[day_text] == float(theirs[0]):
            continue
        ready.append((day, ours[0], float(theirs[0])))
    return ready


def reconcile(head: dict[str, Any], device_id: str, enrichment: Enrichment, tolerance: float
              ) -> tuple[list[dict[str, Any]], tuple[date, float] | None]:
    """Reconcile the ready days; returns mismatch alerts and the latest (day, ratio)."""
    alerts = []
    latest = None
    for day, ours, theirs in pending(head, device_id, enrichment):
        difference = ours - theirs
        ratio = difference / theirs if theirs else (0.0 if not difference else float("inf"))
        done = _reconciled(head)
        done[day.isoformat()] = theirs
        head["reconciled"] = {d: done[d] for d in sorted(done)[-KEEP_DAYS:]}
        latest = (day, ratio)
        if abs(ratio) > tolerance:
            place = enrichment.place(device_id)
            alerts.append({
                "device_id": device_id,
                "state": "reconciliation_mismatch",
                "day": day.isoformat(),
                "ours_kwh": ours,
                "grid_operator_kwh": theirs,
                "difference_ratio": ratio,
                "tolerance": tolerance,
                "ean": place.ean if place else None,
            })
    return alerts, latest
