"""Decoder.records: the compiled decoder's records, or the Python decoder's for the bodies it
leaves to Python, are exactly what the decode agent wrote before there was a compiled one
(`orjson.dumps({**reading.to_dict(), **fields})` after decode and check_plausible), and
every body it rejects is rejected with the same reason."""

from __future__ import annotations

import math
import random
import struct
import time
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import _native, simulate
from streams.codec import DecodeError, Decoder, check_plausible
from streams.protos_gen import smartme_realtime_pb2 as pb
from tests.conftest import vector_cases

FIELDS: dict[str, str | None] = {
    "source": "cloud", "received_at": "2026-11-22T00:00:00Z", "request_id": None}
ZONE = "Europe/Zurich"  # LOCAL timestamps are decoded, not only rejected
EARLIEST_US = 946_684_800_000_000  # 2000-01-01
LATEST_US = 1_893_456_000_000_000  # 2030-01-01
# The datetime range: the Python decoder's bounds for any timestamp.
MIN_US, MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999
SCALE_US = {0: 86_400_000_000, 1: 3_600_000_000, 2: 60_000_000, 3: 1_000_000, 4: 1_000}
CODES = [bytes.fromhex(h) for h in (
    "0100010800FF", "0100020800FF", "0100010700FF", "0100150700FF", "0100290700FF",
    "01003D0700FF", "0100010801FF", "01000C0700FF", "630001010000", "0800010800FF",
    "07000C0300FF", "FFFFFFFFFFFF", "000000000000")]
Outcome = list[tuple[str, int, bytes]] | tuple[str, str]  # records, or (error, reason)


def reference(body: bytes, fields: dict[str, Any] = FIELDS, earliest_us: int = EARLIEST_US,
              latest_us: int = LATEST_US, zone: str = ZONE) -> Outcome:
    """What the decode agent did before: the Python decoder, then one orjson record per
    reading."""
    try:
        readings = Decoder(local_timezone=zone).decode(body)
        check_plausible(readings, earliest_us, latest_us)
    except DecodeError as exc:
        return ("error", exc.reason)
    except (OverflowError, TypeError) as exc:  # bounds or fields the caller got wrong
        return (type(exc).__name__, str(exc))
    return [(r.device_id, r.timestamp_us, orjson.dumps({**r.to_dict(), **fields}))
            for r in readings]


def outcome(decoder: Decoder, body: bytes, fields: dict[str, Any] = FIELDS,
            earliest_us: int = EARLIEST_US, latest_us: int = LATEST_US) -> Outcome:
    try:
        return decoder.records(body, fields, earliest_us, latest_us)
    except DecodeError as exc:
        return ("error", exc.reason)
    except (OverflowError, TypeError) as exc:
        return (type(exc).__name__, str(exc))


def handled(decoder: Decoder, body: bytes, fields: dict[str, Any] = FIELDS) -> bool:
    """Whether the compiled decoder took the body (rather than leaving it to Python)."""
    before = decoder.fallbacks
    outcome(decoder, body, fields)
    return decoder.fallbacks == before


# -- wire-level pieces: fields protobuf's own messages cannot hold (repeats, strays) -------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _body(*items: bytes) -> bytes:
    return b"".join(_field(1, item) for item in items)


def _guid(device: uuid.UUID) -> pb.Guid:
    lo, hi = struct.unpack("<QQ", device.bytes_le)
    return pb.Guid(lo=lo, hi=hi)


DEVICE = uuid.UUID(int=7)


def _item(device: uuid.UUID = DEVICE, stamp: pb.DateTime | None = None,
          values: list[tuple[bytes, float]] | None = None) -> bytes:
    stamp = stamp if stamp is not None else pb.DateTime(value=1_700_000_000, scale=3)
    values = values if values is not None else [(CODES[0], 1.5), (CODES[2], 240.0)]
    return pb.DeviceData(DeviceId=_guid(device), DateTime=stamp, DeviceValues=[
        pb.DeviceValue(Obis=code, Value=value) for code, value in values]).SerializeToString()


# -- the published vectors and simulated traffic ----------------------------------------------
@pytest.mark.parametrize("case", vector_cases(), ids=lambda c: c["name"])
def test_every_vector_gives_the_records_and_errors_of_the_python_path(case: dict) -> None:
    body = bytes.fromhex(case["hex"])
    decoder = Decoder(local_timezone=ZONE)
    wide = (MIN_US, MAX_US)  # the vectors' dates are not all recent
    assert outcome(decoder, body, FIELDS, *wide) == reference(body, FIELDS, *wide)
    if case["ok"]:
        assert decoder.fallbacks == 0, "a well-formed vector was left to Python"
        assert len(decoder.records(body, FIELDS, *wide)) == len(case["readings"])


def test_simulated_traffic_is_decoded_by_the_compiled_decoder() -> None:
    fleet = simulate.Fleet(20, seed=5)
    start_us = int(time.time()) // 60 * 60 * 1_000_000 - 3_600 * 1_000_000
    trace = fleet.trace(start_us, 600, 60)
    decoder = Decoder(local_timezone=ZONE)
    now_us = int(time.time() * 1_000_000)
    bodies = list(simulate.bodies(trace, per_body=10))
    for body in bodies:
        assert outcome(decoder, body, FIELDS, EARLIEST_US, now_us) == reference(
            body, FIELDS, EARLIEST_US, now_us)
    assert decoder.fallbacks == 0
    assert sum(len(decoder.records(b, FIELDS, EARLIEST_US, now_us)) for b in bodies) == len(
        trace)


def test_origin_fields_of_every_shape_are_appended_as_orjson_writes_them() -> None:
    body = _body(_item(), _item(uuid.uuid4(), values=[]))
    for fields in ({}, {"source": "ünïcode \"quoted\" \\ \n\u2028"}, {"n": 5, "f": 0.1},
                   {"source": None, "received_at": None, "request_id": None}):
        decoder = Decoder()
        assert outcome(decoder, body, fields) == reference(body, fields)
        assert decoder.fallbacks == 0


def test_fields_the_compiled_decoder_cannot_append_take_the_python_path() -> None:
    body = _body(_item())
    for fields in ({"device_id": "overridden"}, {"values": None}):
        decoder = Decoder()
        assert outcome(decoder, body, fields) == reference(body, fields)
    with pytest.raises(TypeError):  # not JSON: the same error as before
        Decoder().records(body, {"source": object()}, EARLIEST_US, LATEST_US)  # type: ignore[dict-item]
    assert Decoder().records(b"", {"source": object()}, 0, 1) == []  # type: ignore[dict-item]


def test_timestamps_of_every_scale_and_the_plausibility_bounds() -> None:
    seconds = 1_700_000_000
    for scale, value in ((None, seconds // 86_400), (0, seconds // 86_400),
                         (1, seconds // 3_600), (2, seconds // 60), (3, seconds),
                         (4, seconds * 1_000 + 123), (5, seconds * 10_000_000 + 1_234_567),
                         (5, -9), (5, -10), (5, -11)):
        stamp = pb.DateTime(value=value) if scale is None else pb.DateTime(value=value,
                                                                            scale=scale)
        body = _body(_item(stamp=stamp))
        for kind in (None, 0, 1):
            if kind is not None:
                stamp.kind = kind  # type: ignore[assignment]
                body = _body(_item(stamp=stamp))
            (record,) = reference(body, FIELDS, MIN_US, MAX_US)
            timestamp_us = record[1]
            for earliest, latest in ((MIN_US, MAX_US), (timestamp_us, timestamp_us),
                                     (timestamp_us + 1, MAX_US), (MIN_US, timestamp_us - 1),
                                     (-2**70, 2**70), (2**70, -2**70)):
                decoder = Decoder()
                assert outcome(decoder, body, FIELDS, earliest, latest) == reference(
                    body, FIELDS, earliest, latest)
                inside = earliest <= timestamp_us <= latest
                assert decoder.fallbacks == (0 if inside else 1)


# -- what the compiled decoder leaves to Python -----------------------------------------------
def _stray(number: int, wire: int) -> bytes:
    payload = {0: b"\x05", 1: bytes(8), 2: b"\x01\x02", 5: bytes(4)}.get(wire, b"")
    return _varint(number << 3 | wire) + (_varint(2) if wire == 2 else b"") + payload


UNUSUAL = {
    "LOCAL kind": _body(_item(stamp=pb.DateTime(value=1_700_000_000, scale=3, kind=2))),
    "unknown kind": _body(_item(stamp=pb.DateTime(value=1_700_000_000, scale=3, kind=7))),
    "MINMAX": _body(_item(stamp=pb.DateTime(value=1, scale=15))),
    "unknown scale": _body(_item(stamp=pb.DateTime(value=1, scale=9))),
    "out of range": _body(_item(stamp=pb.DateTime(value=10**12))),
    "days overflowing i64": _body(_item(stamp=pb.DateTime(value=2**62))),
    "implausible": _body(_item(stamp=pb.DateTime(value=0))),
    "DeviceId missing": _body(pb.DeviceData(DateTime=pb.DateTime(value=20_000))
                              .SerializeToString()),
    "DateTime missing": _body(pb.DeviceData(DeviceId=pb.Guid(lo=1)).SerializeToString()),
    "Obis missing": _body(_item() + _field(3, pb.DeviceValue(Value=1.0).SerializeToString())),
    "Value missing": _body(_item() + _field(3, pb.DeviceValue(Obis=CODES[0])
                                            .SerializeToString())),
    "short OBIS": _body(_item(values=[(b"\x01\x00\x01", 1.0)])),
    "long OBIS": _body(_item(values=[(bytes(7), 1.0)])),
    "NaN": _body(_item(values=[(CODES[0], math.nan)])),
    "infinity": _body(_item(values=[(CODES[1], -math.inf)])),
    "DeviceId twice": _body(_item() + _field(1, _guid(uuid.UUID(int=9)).SerializeToString())),
    "DateTime twice": _body(_item() + _field(2, pb.DateTime(scale=2).SerializeToString())),
    "Guid.lo twice": _body(_item() + _field(1, pb.Guid(lo=1).SerializeToString() * 2)),
    "DateTime.value twice": _body(_item(stamp=pb.DateTime()) + _field(
        2, pb.DateTime(value=20_000).SerializeToString() * 2)),
    "Obis twice": _body(_item(values=[]) + _field(3, pb.DeviceValue(
        Obis=CODES[0], Value=2.0).SerializeToString() + pb.DeviceValue(
        Obis=CODES[1]).SerializeToString())),
    "Value twice": _body(_item(values=[]) + _field(3, pb.DeviceValue(
        Obis=CODES[0], Value=2.0).SerializeToString() + pb.DeviceValue(
        Value=3.0).SerializeToString())),
    "items as a varint": _stray(1, 0) + _body(_item()),
    "DeviceId as fixed64": _body(_item() + _stray(1, 1)),
    "Value as fixed32": _body(_item(values=[]) + _field(3, _field(1, CODES[0]) + _stray(2, 5))),
    "unknown group": _body(_item() + _stray(9, 3) + _stray(9, 4)),
    "field number 0": _body(_item()) + b"\x00\x00",
    "non-canonical varint": _body(_item()) + b"\xa0\x80\x00\x01",  # field 20, tag in 3 bytes
    "truncated": _body(_item())[:-3],
    "garbage": b"\xff\xff garbage",
}


@pytest.mark.parametrize("name", UNUSUAL)
def test_unusual_bodies_are_left_to_python_which_decides_as_before(name: str) -> None:
    body = UNUSUAL[name]
    decoder = Decoder(local_timezone=ZONE)
    assert outcome(decoder, body) == reference(body)
    assert decoder.fallbacks == 1


def test_unknown_fields_at_every_level_are_skipped_by_the_compiled_decoder() -> None:
    strays = b"".join(_stray(n, w) for n, w in ((7, 0), (8, 1), (9, 2), (10, 5), (2**29 - 1, 0)))
    value = _field(1, CODES[0]) + strays + b"\x11" + struct.pack("<d", 3.5)
    guid = _guid(uuid.UUID(int=5)).SerializeToString() + strays
    stamp = strays + pb.DateTime(value=1_700_000_000, scale=3).SerializeToString() + strays
    item = _field(1, guid) + strays + _field(2, stamp) + _field(3, value) + strays
    body = strays + _field(1, item) + strays
    decoder = Decoder()
    assert outcome(decoder, body) == reference(body)
    assert decoder.fallbacks == 0


def test_empty_guid_items_and_values_are_decoded() -> None:
    body = _body(_field(1, b"") + _field(2, pb.DateTime(value=20_000).SerializeToString()),
                 _item(values=[]), _item(values=[(CODES[5], 0.0), (CODES[5], -0.0)]))
    decoder = Decoder()
    assert outcome(decoder, body) == reference(body)
    assert decoder.fallbacks == 0


def test_a_scale_configured_as_an_int_is_multiplied_by_python() -> None:
    body = _body(_item(values=[(CODES[0], 1.5), (CODES[2], 2.0)]))
    scales = {"1-0:1.8": 1000, "1-0:1.7.0": 0.5}
    decoder = Decoder(scales=scales)  # type: ignore[arg-type]
    expected = [(d, t, orjson.dumps({**r.to_dict(), **FIELDS})) for (d, t, _), r in zip(
        reference(body), Decoder(scales=scales).decode(body),  # type: ignore[arg-type]
        strict=True)]
    assert outcome(decoder, body) == expected
    assert decoder.fallbacks == 1


def test_the_compiled_decoder_keeps_to_the_datetime_range_whatever_the_bounds() -> None:
    native = _native.RecordDecoder(Decoder()._native_obis, 10)
    widest = (-(2**63), 2**63 - 1)
    for value, scale in ((MAX_US // 1_000_000 + 1, 3), (MIN_US // 1_000 - 1, 4),
                         ((MAX_US + 1) * 10, 5), (MIN_US // SCALE_US[0] - 1, 0)):
        body = _body(_item(stamp=pb.DateTime(value=value, scale=scale)))
        assert native.records(body, b"", *widest) is None, (value, scale)
    for value, scale in ((MAX_US * 10 + 9, 5), (MIN_US // SCALE_US[0], 0)):
        body = _body(_item(stamp=pb.DateTime(value=value, scale=scale)))
        assert native.records(body, b"", *widest) == reference(body, {}, MIN_US, MAX_US)


# -- the OBIS cache ---------------------------------------------------------------------------
def test_the_python_side_is_asked_once_per_obis_code() -> None:
    asked: list[bytes] = []

    class Counting(Decoder):
        def _native_obis(self, raw: bytes) -> tuple[str, str, str | None, float] | None:
            asked.append(raw)
            return super()._native_obis(raw)

    decoder = Counting()
    body = _body(_item(values=[(c, 1.0) for c in CODES[:4]] * 2), _item(values=[(CODES[0], 2)]))
    for _ in range(3):
        assert outcome(decoder, body) == reference(body)
    assert asked == CODES[:4]
    outcome(decoder, _body(_item(values=[(b"\x01\x00", 1.0)])))  # not 6 bytes: not asked
    assert asked == CODES[:4]


def test_the_obis_cache_is_bounded() -> None:
    python = Decoder()

    def info(raw: bytes) -> tuple[str, str, str | None, float] | None:
        return python._native_obis(raw)

    native = _native.RecordDecoder(info, 2)
    extra = orjson.dumps(FIELDS)[1:-1]
    for codes in (CODES[:2], CODES[2:4], CODES[:1], CODES[4:7], CODES[5:7]):
        body = _body(_item(values=[(c, 7.0) for c in codes]))
        got = native.records(body, extra, EARLIEST_US, LATEST_US)
        # More distinct codes in one body than the cache holds: left to Python.
        assert got == (None if len(codes) > 2 else reference(body))


# -- generated bodies -------------------------------------------------------------------------
def _odd(draw: st.DrawFn, plain: bool) -> bool:
    """Whether to make this part of the body unusual: now and then, so that a body is
    often plain but for one or two parts."""
    return not plain and draw(st.sampled_from([False] * 7 + [True]))


@st.composite
def _strays(draw: st.DrawFn, plain: bool) -> bytes:
    """Fields no message of the schema declares (4 and up); unless plain, also known ones
    (a repeat, or a wire-type mismatch)."""
    out = b""
    for number, wire in draw(st.lists(st.tuples(
            st.integers(4, 12) | st.just(2**29 - 1), st.sampled_from([0, 1, 2, 5])),
            max_size=2)):
        if _odd(draw, plain):
            number = draw(st.integers(1, 3))
        payload = {0: _varint(draw(st.integers(0, 2**64 - 1))), 1: draw(st.binary(
            min_size=8, max_size=8)), 5: draw(st.binary(min_size=4, max_size=4))}.get(wire)
        if payload is None:
            data = draw(st.binary(max_size=9))
            payload = _varint(len(data)) + data
        out += _varint(number << 3 | wire) + payload
    return out


def _maybe_strays(plain: bool) -> st.SearchStrategy[bytes]:
    return st.sampled_from([b"", b"", b""]) | _strays(plain)


@st.composite
def _stamp(draw: st.DrawFn, plain: bool) -> bytes:
    scale = draw(st.sampled_from([None, 0, 1, 2, 3, 4, 5]))
    if _odd(draw, plain):
        scale = draw(st.sampled_from([15, 9, 2**31 - 1]))
    kind = draw(st.sampled_from([None, 0, 1]))
    if _odd(draw, plain):
        kind = draw(st.sampled_from([2, 7]))
    factor = SCALE_US.get(scale or 0)
    target = draw(st.integers(EARLIEST_US, LATEST_US))
    value: int | None = target * 10 + draw(st.integers(0, 9)) if scale == 5 else \
        target // (factor or 1)
    if factor is not None and value * factor < EARLIEST_US:
        value += 1  # rounded down out of the window
    if _odd(draw, plain):  # implausible, out of range, absent
        value = draw(st.sampled_from([0, 1, -1, None]) | st.integers(-(2**63), 2**63 - 1))
    stamp = pb.DateTime()
    if value is not None:
        stamp.value = value
    if scale is not None:
        stamp.scale = scale  # type: ignore[assignment]
    if kind is not None:
        stamp.kind = kind  # type: ignore[assignment]
    return stamp.SerializeToString() + draw(_maybe_strays(plain))


@st.composite
def _value(draw: st.DrawFn, plain: bool) -> bytes:
    codes = st.sampled_from(CODES) | st.binary(min_size=6, max_size=6)
    floats = st.floats(allow_nan=False, allow_infinity=False)
    if _odd(draw, plain):
        codes = st.binary(max_size=8) | st.none()
    if _odd(draw, plain):
        floats = st.sampled_from([math.nan, math.inf, -math.inf, None])
    value = pb.DeviceValue()
    if (code := draw(codes)) is not None:
        value.Obis = code
    if (number := draw(floats)) is not None:
        value.Value = number
    return value.SerializeToString() + draw(_maybe_strays(plain))


@st.composite
def _device_data(draw: st.DrawFn, plain: bool) -> bytes:
    device = draw(st.uuids() | st.sampled_from([uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]))
    guid = _guid(device).SerializeToString() + draw(_maybe_strays(plain))
    parts = [_field(1, guid), _field(2, draw(_stamp(plain)))]
    parts += [_field(3, v) for v in draw(st.lists(_value(plain), max_size=7))]
    if not plain:
        parts = draw(st.permutations(parts))
        parts = [p for p in parts if not _odd(draw, plain)]  # now and then one missing
    return b"".join(parts) + draw(_maybe_strays(plain))


@st.composite
def _bodies(draw: st.DrawFn, plain: bool) -> bytes:
    items = draw(st.lists(_device_data(plain), max_size=4))
    return b"".join(_field(1, item) for item in items) + draw(_maybe_strays(plain))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies(plain=False))
def test_generated_bodies_give_the_records_and_errors_of_the_python_path(body: bytes) -> None:
    assert outcome(Decoder(local_timezone=ZONE), body) == reference(body)


@settings(max_examples=150, deadline=None)
@given(_bodies(plain=True))
def test_well_formed_bodies_are_decoded_by_the_compiled_decoder(body: bytes) -> None:
    decoder = Decoder(local_timezone=ZONE)
    assert outcome(decoder, body) == reference(body)
    assert decoder.fallbacks == 0


def test_truncated_and_corrupted_bodies_give_the_outcome_of_the_python_path() -> None:
    rng = random.Random(20261202)  # fixed: a failure must be reproducible
    start_us = 1_700_000_000_000_000
    trace = simulate.Fleet(4, seed=2).trace(start_us, 300, 60)
    bodies = [*simulate.bodies(trace, per_body=3), _body(_item(), _item(uuid.uuid4()))]
    decoder = Decoder(local_timezone=ZONE)
    handled_count = 0
    for _ in range(3000):
        body = bytearray(rng.choice(bodies))
        for _ in range(rng.choice([0, 1, 1, 2, 4])):
            body[rng.randrange(len(body))] = rng.randrange(256)
        cut = rng.choice([len(body), rng.randrange(len(body) + 1)])
        corrupted = bytes(body[:cut])
        before = decoder.fallbacks
        assert outcome(decoder, corrupted) == reference(corrupted), corrupted.hex()
        handled_count += decoder.fallbacks == before
    assert handled_count > 300  # unharmed bodies (and harmless flips) stay on the fast path
