"""Offline-meter detection: thresholds, the inventory of expected meters, and the
online/offline state machine. No Faust in here.

A meter is offline when nothing was received from it for longer than its threshold
(smart-me's own rule: 15 minutes). The decision is made on the wall clock by the sweep,
not on window close, so it also works for meters that never send again, and the state
(online/offline since when) lives in the device's changelog-backed state, so a restart
neither forgets an episode nor reports it twice. Meters from the inventory that were never
seen count from the moment the worker started watching them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.codec import format_timestamp

US = 1_000_000
ONLINE, OFFLINE = "online", "offline"


class ThresholdError(ValueError):
    """A threshold rule that cannot be parsed."""


@dataclass(frozen=True)
class Thresholds:
    """Seconds without data before a meter counts as offline.

    Most specific wins: the exact device id, then the longest matching id prefix, then
    the meter class (e.g. ``mbus``, or a smart-me energy type name), then the default.
    """

    default: float = 900.0
    by_id: Mapping[str, float] = field(default_factory=dict)
    by_prefix: tuple[tuple[str, float], ...] = ()
    by_class: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, default: float, rules: str) -> Thresholds:
        """``id:<uuid>=s``, ``prefix:<start>=s`` and ``class:<name>=s``, comma separated."""
        by_id: dict[str, float] = {}
        by_prefix: dict[str, float] = {}
        by_class: dict[str, float] = {}
        for rule in filter(None, (r.strip() for r in rules.split(","))):
            kind, _, rest = rule.partition(":")
            name, sep, seconds = rest.rpartition("=")
            if not sep or not name:
                raise ThresholdError(f"expected kind:name=seconds, got {rule!r}")
            try:
                value = float(seconds)
            except ValueError:
                raise ThresholdError(f"not a number of seconds in {rule!r}") from None
            target = {"id": by_id, "prefix": by_prefix, "class": by_class}.get(kind)
            if target is None:
                raise ThresholdError(f"unknown rule kind {kind!r} in {rule!r} "
                                     "(use id, prefix or class)")
            target[name.lower()] = value
        ordered = tuple(sorted(by_prefix.items(), key=lambda item: -len(item[0])))
        return cls(default, by_id, ordered, by_class)

    def for_id(self, device_id: str) -> float | None:
        """The `id:` or `prefix:` rule naming this meter, if any."""
        device_id = device_id.lower()
        if device_id in self.by_id:
            return self.by_id[device_id]
        for prefix, seconds in self.by_prefix:
            if device_id.startswith(prefix):
                return seconds
        return None

    def for_device(self, device_id: str, device_class: str | None = None) -> float:
        named = self.for_id(device_id)
        if named is not None:
            return named
        if device_class and device_class.lower() in self.by_class:
            return self.by_class[device_class.lower()]
        return self.default


@dataclass(frozen=True)
class Meter:
    """What is known about an expected meter (inventory file or smart-me inventory)."""

    device_id: str
    device_class: str | None = None
    name: str | None = None
    serial: str | None = None
    threshold: float | None = None  # a per-meter threshold (e.g. from its M-Bus gateway)


def load_inventory(path: Path) -> dict[str, Meter]:
    """CSV (header ``device_id[,class,name,serial]``) or JSON (a list of such objects)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read inventory {path}: {exc}") from exc
    rows: Iterable[Mapping[str, Any]]
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from exc
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of meters")
        rows = data
    else:
        rows = list(csv.DictReader(text.splitlines()))
    meters = {}
    for number, row in enumerate(rows, 1):
        device_id = str(row.get("device_id") or "").strip().lower()
        if not device_id:
            raise ValueError(f"{path}: entry {number} has no device_id")
        meters[device_id] = Meter(device_id, _text(row.get("class")), _text(row.get("name")),
                                  _text(row.get("serial")))
    return meters


def _text(value: Any) -> str | None:
    return str(value).strip() or None if value is not None else None


def last_seen(head: Mapping[str, Any]) -> int | None:
    """When data from the meter last arrived (bridge receive time, else processing)."""
    received = head.get("received") or head.get("arrival")
    return int(received) if received is not None else None


def alert(device_id: str, state: str, *, last: int | None, threshold: float, since: int,
          now: int, meter: Meter | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "device_id": device_id,
        "state": state,
        "last_seen": format_timestamp(last) if last is not None else None,
        "threshold_s": threshold,
        "since": format_timestamp(since),
        "detected_at": format_timestamp(now),
    }
    if meter is not None:
        record.update({k: v for k, v in (("name", meter.name), ("serial", meter.serial),
                                        ("class", meter.device_class)) if v})
    return record


def due(head: Mapping[str, Any], now: int, threshold: float) -> bool:
    """Whether :func:`check` would change this head now (cheap pre-test for the sweep)."""
    watch = head.get("watch")
    if watch is None:
        return True
    if watch["state"] == OFFLINE:
        return bool(watch.get("threshold") != threshold)
    reference = last_seen(head)
    if reference is None:
        reference = watch.get("watched_since", now)
    return bool(now - reference > threshold * US or watch.get("threshold") != threshold)


def check(device_id: str, head: dict[str, Any], now: int, threshold: float,
          meter: Meter | None) -> dict[str, Any] | None:
    """Wall-clock check of one meter; updates ``head["watch"]`` and returns an alert on a
    transition to offline (at most once per episode)."""
    watch = head.setdefault("watch", {"state": ONLINE, "since": now, "threshold": threshold})
    watch["threshold"] = threshold
    reference = last_seen(head)
    if reference is None:
        reference = watch.setdefault("watched_since", now)
    if watch["state"] != OFFLINE and now - reference > threshold * US:
        since = reference + int(threshold * US)
        watch.update(state=OFFLINE, since=since)
        return alert(device_id, OFFLINE, last=last_seen(head), threshold=threshold, since=since,
                     now=now, meter=meter)
    return None


def seen(device_id: str, head: dict[str, Any], now: int, meter: Meter | None,
         threshold: float) -> dict[str, Any] | None:
    """Data arrived: an offline meter is back (one alert), an unknown one starts online."""
    watch = head.get("watch")
    if watch is None:
        head["watch"] = {"state": ONLINE, "since": now, "threshold": threshold}
        return None
    if watch["state"] == OFFLINE:
        watch.update(state=ONLINE, since=now)
        return alert(device_id, ONLINE, last=last_seen(head), threshold=watch["threshold"],
                     since=now, now=now, meter=meter)
    return None


def is_online(head: Mapping[str, Any]) -> bool:
    return bool((head.get("watch") or {}).get("state", ONLINE) == ONLINE)
