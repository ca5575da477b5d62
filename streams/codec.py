"""smart-me webhook bodies (protobuf DeviceDataArray) → readings.

A body is decoded all or nothing: one bad item makes the whole body a :class:`DecodeError`
(with a reason naming the item), so the body lands intact in the dead-letter topic and
can be replayed once the cause is understood.

Conventions (documented in the README):

* device id: the .NET ``Guid`` byte order (``lo`` then ``hi``, little-endian) → UUID.
* timestamp: bcl.DateTime = offset from 1970-01-01 in units of ``scale`` (absent = DAYS);
  TICKS (100 ns) are floored to microseconds; kind UNSPECIFIED is read as UTC (smart-me
  documents UTC), LOCAL is converted from the configured zone; the MINMAX scale
  (DateTime.MinValue / MaxValue) is not a reading time and is rejected.
* values: the OBIS code in ``A-B:C.D.E*F`` form, the raw double, the quantity name and
  the value normalised by the configured per-OBIS scale.

:meth:`Decoder.records` goes from a body straight to the ``meter.readings`` record values.
The compiled decoder (``streams._native``, native/src/decode.rs) writes them for the
plain, well-formed body and hands every other body back to the Python decoder here, which
is the reference: records and error reasons are the same whichever side decoded a body.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import orjson

from streams import _native, obis
from streams.protos_gen import smartme_realtime_pb2 as pb

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)

# DateTime scale → microseconds per unit; TICKS (5) is handled separately (÷10).
_SCALE_US = {0: 86_400_000_000, 1: 3_600_000_000, 2: 60_000_000, 3: 1_000_000, 4: 1_000}
_TICKS, _MINMAX = 5, 15
_UNSPECIFIED, _UTC, _LOCAL = 0, 1, 2
_GUID = struct.Struct("<QQ")
# The datetime range (years 1..9999) in microseconds relative to the Unix epoch.
_MIN_US = (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
_MAX_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // timedelta(
    microseconds=1)
_CACHE_LIMIT = 100_000
# The keys of a reading's JSON object: extra fields must not collide with them.
_READING_KEYS = frozenset(("device_id", "timestamp", "timestamp_us", "values"))

# A ``meter.readings`` value with what the agent needs next to it: (device id, reading time
# in µs since the Unix epoch, the record's JSON bytes).
ReadingRecord = tuple[str, int, bytes]


class DecodeError(ValueError):
    """The body is not a usable DeviceDataArray; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Value(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: a body can carry thousands of values
    # and a frozen dataclass's __init__ costs several times more per instance.
    obis: str
    value: float
    quantity: str
    unit: str | None
    normalised: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "obis": self.obis,
            "value": self.value,
            "quantity": self.quantity,
            "unit": self.unit,
            "normalised": self.normalised,
        }


class Reading(NamedTuple):
    device_id: str
    timestamp_us: int  # microseconds since the Unix epoch, UTC
    values: tuple[Value, ...]

    @property
    def timestamp(self) -> datetime:
        return EPOCH + timedelta(microseconds=self.timestamp_us)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "timestamp": format_timestamp(self.timestamp_us),
            "timestamp_us": self.timestamp_us,
            "values": [v.to_dict() for v in self.values],
        }


def format_timestamp(timestamp_us: int) -> str:
    """ISO-8601 UTC with a ``Z``; microseconds only when not zero."""
    # A naive datetime's isoformat() is exactly that shape (without an offset), and 2.5×
    # faster than strftime: it runs several times per window record.
    return (_EPOCH_NAIVE + timedelta(microseconds=timestamp_us)).isoformat() + "Z"


@dataclass(frozen=True, slots=True)
class _ObisInfo:
    text: str
    quantity: str
    unit: str | None
    scale: float


class Decoder:
    """Decodes bodies with a given scale table and local time zone (reusable, caching)."""

    def __init__(
        self,
        scales: Mapping[str, float] | None = None,
        local_timezone: str = "UTC",
    ) -> None:
        self._scales = dict(obis.DEFAULT_SCALES if scales is None else scales)
        self._zone = ZoneInfo(local_timezone)
        self._obis_cache: dict[bytes, _ObisInfo] = {}
        self._guid_cache: dict[tuple[int, int], str] = {}
        self._native = _native.RecordDecoder(self._native_obis, _CACHE_LIMIT)
        self.fallbacks = 0  # bodies the compiled decoder left to this one

    @property
    def native(self) -> _native.RecordDecoder:
        """The compiled decoder (the aggregation decodes compact reading batches with it)."""
        return self._native

    def records(self, body: bytes, fields: dict[str, str | None], earliest_us: int,
                latest_us: int, *, native: bool = True) -> list[ReadingRecord]:
        """The body's readings as ``meter.readings`` values: each reading's JSON object
        (:meth:`Reading.to_dict`) followed by `fields`, one per DeviceData in payload order.

        Raises :class:`DecodeError` exactly as :meth:`decode` and then
        :func:`check_plausible` with the given bounds would. `native=False` skips the
        compiled decoder (the reference, for tests and benchmarks).
        """
        return self.records_by_partition(body, fields, earliest_us, latest_us, None,
                                         native=native)[0]

    def records_by_partition(
        self, body: bytes, fields: dict[str, str | None], earliest_us: int, latest_us: int,
        partition_of: Callable[[str], int] | None, *, native: bool = True,
    ) -> tuple[list[ReadingRecord], list[tuple[int, bytes]] | None]:
        """:meth:`records`, and (given `partition_of`, for a body the compiled decoder
        decoded) the body cut into compact reading-batches entries, one per partition of
        its devices: see :mod:`streams.agents.decode`. None instead of entries: this body
        goes to the reading batches as its JSON records."""
        if native and _READING_KEYS.isdisjoint(fields):
            try:
                extra = orjson.dumps(fields)[1:-1]
            except orjson.JSONEncodeError:
                extra = None  # the reference path raises it, or has no reading to write
            lo, hi = earliest_us, latest_us
            if not (_MIN_US <= lo <= _MAX_US and _MIN_US <= hi <= _MAX_US):
                # Clamped to the datetime range: the same outcome, and they fit an i64.
                lo, hi = min(max(lo, _MIN_US), _MAX_US + 1), max(min(hi, _MAX_US), _MIN_US - 1)
            if extra is not None and partition_of is not None:
                split = self._native.records_by_partition(body, extra, lo, hi, partition_of)
                if split is not None:
                    return split
            elif extra is not None:
                fast = self._native.records(body, extra, lo, hi)
                if fast is not None:
                    return fast, None
            self.fallbacks += 1
        readings = self.decode(body)
        check_plausible(readings, earliest_us, latest_us)
        return [(r.device_id, r.timestamp_us, reading_json(r, fields)) for r in readings], None

    def decode(self, body: bytes) -> list[Reading]:
        message = pb.DeviceDataArray()
        try:
            message.ParseFromString(body)
        except Exception as exc:  # any parser failure means the bytes are not the schema
            raise DecodeError(f"not a DeviceDataArray protobuf: {exc}") from exc
        return [self._item(index, item) for index, item in enumerate(message.DeviceDataItems)]

    def _item(self, index: int, item: Any) -> Reading:
        if not item.HasField("DeviceId"):
            raise DecodeError(f"item {index}: DeviceId missing")
        if not item.HasField("DateTime"):
            raise DecodeError(f"item {index}: DateTime missing")
        try:
            timestamp_us = self._timestamp_us(item.DateTime)
            values = self._values(item.DeviceValues)
        except DecodeError as exc:
            raise DecodeError(f"item {index}: {exc.reason}") from None
        return Reading(self._device_id(item.DeviceId), timestamp_us, values)

    def _values(self, device_values: Any) -> tuple[Value, ...]:
        # The hot loop of the decoder: locals and one cache lookup per value.
        cache = self._obis_cache
        values: list[Value] = []
        append = values.append
        for device_value in device_values:
            code = device_value.Obis
            info = cache.get(code)
            if info is None:
                if not device_value.HasField("Obis"):
                    raise DecodeError("DeviceValue without Obis")
                info = self._obis(code)
            raw = device_value.Value
            # An absent Value reads as 0.0: only then is asking HasField worth its cost.
            if not raw and not device_value.HasField("Value"):
                raise DecodeError("DeviceValue without Value")
            if raw - raw != 0.0:  # NaN or ±inf
                raise DecodeError(f"{info.text}: value {raw} is not a finite number")
            append(Value(info.text, raw, info.quantity, info.unit, raw * info.scale))
        return tuple(values)

    def _device_id(self, guid: Any) -> str:
        key = (guid.lo, guid.hi)
        text = self._guid_cache.get(key)
        if text is None:
            if len(self._guid_cache) >= _CACHE_LIMIT:
                self._guid_cache.clear()
            text = str(uuid.UUID(bytes_le=_GUID.pack(*key)))
            self._guid_cache[key] = text
        return text

    def _timestamp_us(self, stamp: Any) -> int:
        value, scale, kind = stamp.value, stamp.scale, stamp.kind
        if scale == _TICKS:
            micros = value // 10  # sub-microsecond ticks are floored away
        elif scale in _SCALE_US:
            micros = value * _SCALE_US[scale]
        elif scale == _MINMAX:
            raise DecodeError(
                f"DateTime is DateTime.{'MaxValue' if value > 0 else 'MinValue'} "
                "(MINMAX scale), not a reading time"
            )
        else:
            raise DecodeError(f"DateTime scale {scale} is not a bcl TimeSpanScale")
        if kind in (_UNSPECIFIED, _UTC):
            if not _MIN_US <= micros <= _MAX_US:
                raise DecodeError(f"DateTime value {value} (scale {scale}) is out of range")
            return int(micros)
        try:
            if kind == _LOCAL:
                local = (_EPOCH_NAIVE + timedelta(microseconds=micros)).replace(tzinfo=self._zone)
                delta = local.astimezone(UTC) - EPOCH
                return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        except OverflowError:
            raise DecodeError(f"DateTime value {value} (scale {scale}) is out of range") from None
        raise DecodeError(f"DateTime kind {kind} is not a bcl DateTimeKind")

    def _obis(self, raw: bytes) -> _ObisInfo:
        info = self._obis_cache.get(raw)
        if info is None:
            try:
                code = obis.ObisCode.from_bytes(raw)
            except obis.ObisError as exc:
                raise DecodeError(str(exc)) from None
            kind = obis.quantity(code)
            info = _ObisInfo(str(code), kind.name, kind.unit, obis.scale_for(code, self._scales))
            if len(self._obis_cache) < _CACHE_LIMIT:
                self._obis_cache[raw] = info
        return info

    def _native_obis(self, raw: bytes) -> tuple[str, str, str | None, float] | None:
        """What the compiled decoder needs about an OBIS code, or None to leave values
        with this code to :meth:`decode` (it raises the error)."""
        try:
            info = self._obis(raw)
        except DecodeError:
            return None
        # A scale configured as another number type is multiplied by Python alone, so
        # that its conversion (and its errors) stay Python's.
        if type(info.scale) is not float:
            return None
        return info.text, info.quantity, info.unit, info.scale


def reading_json(reading: Reading, fields: Mapping[str, str | None]) -> bytes:
    """A reading's JSON object followed by `fields`: a ``meter.readings`` value."""
    return orjson.dumps({**reading.to_dict(), **fields})


def check_plausible(readings: list[Reading], earliest_us: int, latest_us: int) -> None:
    """Reject a body whose readings are dated outside [earliest, latest] (clock faults)."""
    for index, reading in enumerate(readings):
        if not earliest_us <= reading.timestamp_us <= latest_us:
            raise DecodeError(
                f"item {index}: implausible timestamp {format_timestamp(reading.timestamp_us)} "
                f"(accepted {format_timestamp(earliest_us)} .. {format_timestamp(latest_us)})"
            )


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def first_device_key(body: bytes) -> bytes | None:
    """The first DeviceData's device id (UUID text) read from the first bytes of a body,
    without decoding it; None when the body does not start like a DeviceDataArray.

    The bridge keys raw records with it, so one device's bodies stay in one partition and
    its readings keep their order through decoding even when a backlog is replayed.
    """
    try:
        if not body or body[0] != 0x0A:  # field 1 (DeviceDataItems), length-delimited
            return None
        length, pos = _varint(body, 1)
        end = min(pos + length, len(body))
        while pos < end:
            tag, pos = _varint(body, pos)
            if tag == 0x0A:  # DeviceData field 1 (DeviceId), length-delimited
                size, pos = _varint(body, pos)
                guid = body[pos:pos + size]
                if len(guid) == 18 and guid[0] == 0x09 and guid[9] == 0x11:
                    lo = int.from_bytes(guid[1:9], "little")
                    hi = int.from_bytes(guid[10:18], "little")
                    return str(uuid.UUID(bytes_le=_GUID.pack(lo, hi))).encode()
                return None
            wire = tag & 7
            if wire == 2:
                size, pos = _varint(body, pos)
                pos += size
            elif wire == 0:
                _, pos = _varint(body, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                return None
    except (IndexError, ValueError):
        return None
    return None
