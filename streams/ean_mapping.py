"""Which EAN (Dutch grid connection) a smart-me device measures.

Reconciling our readings against UMeter's grid-operator data needs smart-me device id →
EAN. Two sources, the explicit one winning:

1. **The mapping file** (``METERSTREAM_UMETER_MAPPING_FILE``), written by the operator:

   * CSV with a header naming the columns ``device_id`` and ``ean`` (more columns are
     allowed and ignored; blank lines and lines starting with ``#`` are skipped), or
   * a JSON object ``{"<device_id>": "<ean>", ...}`` (EANs as strings: 18-digit JSON
     numbers lose digits in many tools).

   The format is chosen by the suffix (``.csv``/``.json``), else by the first character.
   ``device_id`` is the smart-me device id (a UUID, any case, with or without braces);
   ``ean`` has 18 digits. Errors name ``file:line``. A GS1 check-digit mismatch is only a
   warning: it catches typing errors, but an EAN is what UMeter says it is.

2. **Automatic matching** against UMeter customer data. Rule: a smart-me device matches a
   UMeter device when the UMeter device's ``id`` or ``name`` contains

   * the smart-me device id (UUID, case-insensitive), or
   * the smart-me serial number as a whole number of at least 6 digits,

   and then maps to the EAN of the address whose ``devices[]`` lists that UMeter device.
   A smart-me device matching devices of two different EANs is ambiguous and left unmapped.
   In the only known customer response UMeter's ``devices[].id`` is the EAN itself and the
   name is a free text like "Main elec meter", so automatic matching works only when the
   customer labelled the device with the smart-me id or serial in UMeter: in practice the
   mapping file is usually needed.

Several devices may map to the same EAN (e.g. separate meters behind one connection).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.config import Settings
from streams.umeter import Customer

log = logging.getLogger(__name__)

_EAN_RE = re.compile(r"\d{18}")
_MIN_SERIAL_DIGITS = 6  # shorter numbers occur by chance in ids and names


class MappingError(ValueError):
    """The mapping file cannot be used; the message starts with ``file:line``."""


@dataclass(frozen=True)
class MappingEntry:
    """One device → EAN pair and where it came from (``file:line`` or ``auto: why``)."""

    device_id: str
    ean: str
    source: str


@dataclass(frozen=True)
class SmartMeDevice:
    """What automatic matching needs to know about a smart-me device."""

    id: str
    serial: str | None = None
    name: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SmartMeDevice:
        """From smart-me's REST ``Device`` object (``Id``, ``Serial``, ``Name``)."""
        serial = data.get("Serial")
        name = data.get("Name")
        return cls(
            id=str(data["Id"]),
            serial=None if serial is None or isinstance(serial, bool) else str(serial),
            name=name if isinstance(name, str) else None,
        )


def normalise_device_id(device_id: str) -> str:
    """The canonical form the decoder emits: lower-case UUID with hyphens.

    Raises ValueError for text that is not a UUID.
    """
    return str(uuid.UUID(device_id.strip()))


def ean_check_digit_ok(ean: str) -> bool:
    """GS1 mod-10 check digit of an 18-digit EAN (GSRN)."""
    if not _EAN_RE.fullmatch(ean):
        return False
    digits = [int(c) for c in ean]
    total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits[:-1])))
    return (10 - total % 10) % 10 == digits[-1]


@dataclass(frozen=True)
class MappingFile:
    entries: dict[str, MappingEntry]
    warnings: tuple[str, ...] = ()


# -- the file ---------------------------------------------------------------------------------
def load_mapping_file(path: Path) -> MappingFile:
    """Read a CSV or JSON mapping file; raises MappingError naming ``file:line``."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets like to add a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path}: cannot read the mapping file: {exc}") from None
    is_json = path.suffix.lower() == ".json" or (
        path.suffix.lower() != ".csv" and text.lstrip().startswith("{"))
    rows = _json_rows(path, text) if is_json else _csv_rows(path, text)
    entries: dict[str, MappingEntry] = {}
    warnings: list[str] = []
    for line, raw_id, raw_ean in rows:
        entry = _entry(path, line, raw_id, raw_ean, warnings)
        earlier = entries.get(entry.device_id)
        if earlier is not None and earlier.ean != entry.ean:
            raise MappingError(f"{path}:{line}: device {entry.device_id} already maps to "
                               f"{earlier.ean} ({earlier.source})")
        entries.setdefault(entry.device_id, entry)
    return MappingFile(entries, tuple(warnings))


def _entry(path: Path, line: int, raw_id: str, raw_ean: str, warnings: list[str]) -> MappingEntry:
    if not raw_id.strip():
        raise MappingError(f"{path}:{line}: empty device_id")
    try:
        device_id = normalise_device_id(raw_id)
    except ValueError:
        raise MappingError(f"{path}:{line}: device_id {raw_id.strip()!r} is not a smart-me "
                           "device id (a UUID)") from None
    ean = raw_ean.strip()
    if not _EAN_RE.fullmatch(ean):
        raise MappingError(f"{path}:{line}: EAN must be 18 digits, got {ean!r}")
    if not ean_check_digit_ok(ean):
        warnings.append(f"{path}:{line}: EAN {ean} has a wrong GS1 check digit (typo?)")
    return MappingEntry(device_id, ean, f"{path}:{line}")


def _csv_rows(path: Path, text: str) -> list[tuple[int, str, str]]:
    rows: list[tuple[int, str, str]] = []
    columns: tuple[int, int] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = next(csv.reader([line]))
        if columns is None:
            columns = _csv_header(path, number, cells)
            continue
        id_col, ean_col = columns
        if len(cells) <= max(id_col, ean_col):
            raise MappingError(f"{path}:{number}: expected at least {max(columns) + 1} "
                               f"columns, got {len(cells)}")
        rows.append((number, cells[id_col], cells[ean_col]))
    if columns is None:
        raise MappingError(f"{path}:1: empty mapping file (expected a `device_id,ean` header)")
    return rows


def _csv_header(path: Path, number: int, cells: list[str]) -> tuple[int, int]:
    names = [c.strip().lower() for c in cells]
    if "device_id" not in names or "ean" not in names:
        raise MappingError(f"{path}:{number}: expected a header with columns device_id and "
                           f"ean, got {','.join(cells)!r}")
    return names.index("device_id"), names.index("ean")


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, so duplicate keys stay visible."""


def _json_rows(path: Path, text: str) -> list[tuple[int, str, str]]:
    try:
        pairs = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as exc:
        raise MappingError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(pairs, _Pairs):
        raise MappingError(f"{path}:1: expected a JSON object {{device_id: ean}}, "
                           f"got a JSON {type(pairs).__name__}")
    rows = []
    offset = 0
    for key, value in pairs:
        line, offset = _line_of(text, key, offset)
        if not isinstance(value, str):
            hint = " (write EANs as strings)" if isinstance(value, int | float) else ""
            raise MappingError(f"{path}:{line}: EAN of {key!r} must be a string{hint}, "
                               f"got {json.dumps(value)[:40]}")
        rows.append((line, str(key), value))
    return rows


def _line_of(text: str, key: str, start: int) -> tuple[int, int]:
    """Line of a key in the JSON text, searching on from ``start`` (pairs come in document
    order), and where to search for the next one; json.loads reports no positions."""
    for quoted in (json.dumps(key, ensure_ascii=False), json.dumps(key)):
        position = text.find(quoted, start)
        if position >= 0:
            return text.count("\n", 0, position) + 1, position + len(quoted)
    return text.count("\n", 0, start) + 1, start


# -- automatic matching -----------------------------------------------------------------------
@dataclass(frozen=True)
class AutoMatch:
    entries: dict[str, MappingEntry]
    ambiguous: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _mentions(text: str, device: SmartMeDevice) -> str | None:
    """Why ``text`` names the smart-me device, or None."""
    lowered = text.lower()
    if device.id.strip().lower() in lowered:
        return f"contains the smart-me id {device.id}"
    serial = (device.serial or "").strip()
    if len(serial) >= _MIN_SERIAL_DIGITS and serial.isdigit() and \
            re.search(rf"(?<!\d){serial}(?!\d)", lowered):
        return f"contains the smart-me serial {serial}"
    return None


def auto_match(devices: Iterable[SmartMeDevice], customers: Iterable[Customer]) -> AutoMatch:
    """Apply the matching rule of this module's docstring."""
    candidates = [(address.ean, umeter_device, address.title or address.id or "?")
                  for customer in customers for address in customer.addresses if address.ean
                  for umeter_device in address.devices]
    entries: dict[str, MappingEntry] = {}
    ambiguous: dict[str, tuple[str, ...]] = {}
    for device in devices:
        try:
            device_id = normalise_device_id(device.id)
        except ValueError:
            continue  # not a smart-me id: nothing a reading could be keyed by
        found: dict[str, str] = {}
        for ean, umeter_device, place in candidates:
            for text in (umeter_device.id, umeter_device.name or ""):
                why = _mentions(text, device)
                if why is not None and ean is not None:
                    found.setdefault(ean, f"auto: UMeter device {umeter_device.id!r} "
                                          f"({place}) {why}")
        if len(found) == 1:
            ean, source = next(iter(found.items()))
            entries[device_id] = MappingEntry(device_id, ean, source)
        elif found:
            ambiguous[device_id] = tuple(sorted(found))
    return AutoMatch(entries, ambiguous)


# -- the combined mapping ---------------------------------------------------------------------
class EanMapping:
    """Device id → EAN; explicit (file) entries win over automatic ones."""

    def __init__(self, explicit: Mapping[str, MappingEntry] | None = None,
                 automatic: Mapping[str, MappingEntry] | None = None,
                 warnings: Iterable[str] = ()) -> None:
        self._entries: dict[str, MappingEntry] = dict(automatic or {})
        notes = list(warnings)
        for device_id, entry in (explicit or {}).items():
            auto = self._entries.get(device_id)
            if auto is not None and auto.ean != entry.ean:
                notes.append(f"device {device_id}: {entry.source} maps it to {entry.ean}, "
                             f"overriding {auto.ean} ({auto.source})")
            self._entries[device_id] = entry
        self.warnings = tuple(notes)

    @classmethod
    def build(cls, *, mapping_file: Path | None = None, devices: Iterable[SmartMeDevice] = (),
              customers: Iterable[Customer] = ()) -> EanMapping:
        """File entries plus automatic matches; raises MappingError for a bad file."""
        loaded = load_mapping_file(mapping_file) if mapping_file else MappingFile({})
        matched = auto_match(devices, customers)
        warnings = list(loaded.warnings) + [
            f"device {device_id} matches several EANs ({', '.join(eans)}); not mapped"
            for device_id, eans in matched.ambiguous.items()
        ]
        mapping = cls(loaded.entries, matched.entries, warnings)
        for warning in mapping.warnings:
            log.warning("EAN mapping: %s", warning)
        return mapping

    @classmethod
    def from_settings(cls, settings: Settings, *, devices: Iterable[SmartMeDevice] = (),
                      customers: Iterable[Customer] = ()) -> EanMapping:
        return cls.build(mapping_file=settings.umeter_mapping_file, devices=devices,
                         customers=customers)

    def _lookup(self, device_id: str) -> MappingEntry | None:
        try:
            return self._entries.get(normalise_device_id(device_id))
        except ValueError:
            return None

    def ean_for(self, device_id: str) -> str | None:
        entry = self._lookup(device_id)
        return entry.ean if entry else None

    def entry_for(self, device_id: str) -> MappingEntry | None:
        return self._lookup(device_id)

    def devices_for(self, ean: str) -> list[str]:
        return sorted(d for d, e in self._entries.items() if e.ean == ean)

    def unmapped(self, device_ids: Iterable[str]) -> list[str]:
        """The given device ids without an EAN, in order, without duplicates."""
        return list(dict.fromkeys(d for d in device_ids if self._lookup(d) is None))

    def as_dict(self) -> dict[str, str]:
        return {d: e.ean for d, e in sorted(self._entries.items())}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, device_id: object) -> bool:
        return isinstance(device_id, str) and self._lookup(device_id) is not None

    def __repr__(self) -> str:
        return f"EanMapping({len(self._entries)} devices)"
