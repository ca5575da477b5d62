from __future__ import annotations

import contextlib
import math
import random
import struct
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import DecodeError, Decoder, check_plausible, format_timestamp
from streams.protos_gen import smartme_realtime_pb2 as pb
from tests.conftest import vector_cases

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEVICE = uuid.UUID("3bd0fce9-9f8e-4183-b3d1-0c1622a22ca1")


def _guid(device: uuid.UUID) -> pb.Guid:
    lo, hi = struct.unpack("<QQ", device.bytes_le)
    return pb.Guid(lo=lo, hi=hi)


def _body(*items: pb.DeviceData) -> bytes:
    return pb.DeviceDataArray(DeviceDataItems=list(items)).SerializeToString()


def _item(stamp: pb.DateTime, values: list[tuple[bytes, float]] | None = None) -> pb.DeviceData:
    pairs = values if values is not None else [(bytes.fromhex("0100010800FF"), 1.0)]
    return pb.DeviceData(
        DeviceId=_guid(DEVICE), DateTime=stamp,
        DeviceValues=[pb.DeviceValue(Obis=o, Value=v) for o, v in pairs],
    )


@pytest.mark.parametrize("case", vector_cases(), ids=lambda c: c["name"])
def test_every_published_vector_decodes_as_expected(case: dict) -> None:
    body = bytes.fromhex(case["hex"])
    if not case["ok"]:
        with pytest.raises(DecodeError):
            Decoder().decode(body)
        return
    readings = [r.to_dict() for r in Decoder().decode(body)]
    assert len(readings) == len(case["readings"])
    for got, want in zip(readings, case["readings"], strict=True):
        assert got["device_id"] == want["device_id"]
        assert got["timestamp"] == want["timestamp"]
        assert [(v["obis"], v["value"]) for v in got["values"]] == [
            (v["obis"], v["value"]) for v in want["values"]
        ]


def test_seed_example_is_normalised_to_watt_hours_and_watts(seed_body: bytes) -> None:
    (reading,) = Decoder().decode(seed_body)
    values = {v.obis: v for v in reading.values}
    energy = values["1-0:1.8.0*255"]
    assert energy.quantity == "active_energy_import"
    assert energy.unit == "Wh"
    assert energy.normalised == pytest.approx(1879.5832)  # the seed: 1879583.2 mWh
    power = values["1-0:1.7.0*255"]
    assert (power.quantity, power.unit, power.normalised) == ("active_power_import", "W", 24.19)


def test_configured_scale_overrides_the_default(seed_body: bytes) -> None:
    (reading,) = Decoder(scales={"1-0:1.8": 1.0, "1-0:1.7.0": 1000.0}).decode(seed_body)
    values = {v.obis: v.normalised for v in reading.values}
    assert values["1-0:1.8.0*255"] == 1879583.2
    assert values["1-0:1.7.0*255"] == pytest.approx(24190.0)
    assert values["1-0:2.8.0*255"] == 0.0  # not configured: factor 1


@pytest.mark.parametrize(
    ("scale", "value", "expected"),
    [
        (None, 19_675, EPOCH + timedelta(days=19_675)),  # absent scale means DAYS
        (pb.DateTime.DAYS, 19_675, EPOCH + timedelta(days=19_675)),
        (pb.DateTime.HOURS, 472_200, EPOCH + timedelta(hours=472_200)),
        (pb.DateTime.MINUTES, 28_332_013, EPOCH + timedelta(minutes=28_332_013)),
        (pb.DateTime.SECONDS, 1_700_000_000, EPOCH + timedelta(seconds=1_700_000_000)),
        (pb.DateTime.MILLISECONDS, 1_700_000_000_123, datetime(2023, 11, 14, 22, 13, 20, 123000,
                                                                tzinfo=UTC)),
        (pb.DateTime.TICKS, 17_000_000_001_234_567, datetime(2023, 11, 14, 22, 13, 20, 123456,
                                                              tzinfo=UTC)),
    ],
)
def test_every_datetime_scale(scale: int | None, value: int, expected: datetime) -> None:
    stamp = pb.DateTime(value=value) if scale is None else pb.DateTime(value=value, scale=scale)
    (reading,) = Decoder().decode(_body(_item(stamp)))
    assert reading.timestamp == expected


def test_ticks_below_a_microsecond_are_truncated_not_rounded() -> None:
    stamp = pb.DateTime(value=17_000_000_000_000_009, scale=pb.DateTime.TICKS)
    (reading,) = Decoder().decode(_body(_item(stamp)))
    assert reading.timestamp.microsecond == 0


@pytest.mark.parametrize(("value", "name"), [(1, "MaxValue"), (-1, "MinValue")])
def test_minmax_scale_is_rejected_with_the_reason(value: int, name: str) -> None:
    stamp = pb.DateTime(value=value, scale=pb.DateTime.MINMAX)
    with pytest.raises(DecodeError, match=f"DateTime.{name}"):
        Decoder().decode(_body(_item(stamp)))


def test_unspecified_and_utc_kinds_are_utc_local_uses_the_configured_zone() -> None:
    seconds = 1_700_000_000  # 22:13:20 wall time
    def decode(kind: int, zone: str = "UTC") -> datetime:
        stamp = pb.DateTime(value=seconds, scale=pb.DateTime.SECONDS, kind=kind)
        return Decoder(local_timezone=zone).decode(_body(_item(stamp)))[0].timestamp

    expected_utc = EPOCH + timedelta(seconds=seconds)
    assert decode(pb.DateTime.UNSPECIFIED) == expected_utc
    assert decode(pb.DateTime.UTC, "Europe/Zurich") == expected_utc
    # 22:13:20 in Zurich (CET, UTC+1 in November) is 21:13:20 UTC.
    assert decode(pb.DateTime.LOCAL, "Europe/Zurich") == expected_utc - timedelta(hours=1)


def test_unknown_scale_and_kind_numbers_are_rejected() -> None:
    with pytest.raises(DecodeError, match="scale 9"):
        Decoder().decode(_body(_item(pb.DateTime(value=1, scale=9))))
    with pytest.raises(DecodeError, match="kind 7"):
        Decoder().decode(_body(_item(pb.DateTime(value=1, kind=7))))


def test_out_of_range_timestamp_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="out of range"):
        Decoder().decode(_body(_item(pb.DateTime(value=10**12))))  # 10^12 days


def test_unknown_fields_at_every_level_are_skipped(seed_body: bytes) -> None:
    def unknown(field: int) -> bytes:  # a varint field nobody declared
        return bytes([field << 3]) + b"\x2a"

    stamp = pb.DateTime(value=1_700_000_000, scale=pb.DateTime.SECONDS).SerializeToString()
    value = pb.DeviceValue(Obis=bytes.fromhex("0100010700FF"), Value=5.0).SerializeToString()
    guid = _guid(DEVICE).SerializeToString()

    def sub(field: int, payload: bytes) -> bytes:
        return bytes([(field << 3) | 2, len(payload)]) + payload

    item = (sub(1, guid + unknown(9)) + sub(2, stamp + unknown(9)) + sub(3, value + unknown(9))
            + unknown(12))
    body = sub(1, item) + unknown(7)
    (reading,) = Decoder().decode(body)
    assert reading.device_id == str(DEVICE)
    assert reading.values[0].value == 5.0


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (pb.DeviceData(DateTime=pb.DateTime(value=1)), "item 0: DeviceId missing"),
        (pb.DeviceData(DeviceId=_guid(DEVICE)), "item 0: DateTime missing"),
        (pb.DeviceData(DeviceId=_guid(DEVICE), DateTime=pb.DateTime(value=1),
                       DeviceValues=[pb.DeviceValue(Value=1.0)]), "without Obis"),
        (pb.DeviceData(DeviceId=_guid(DEVICE), DateTime=pb.DateTime(value=1),
                       DeviceValues=[pb.DeviceValue(Obis=bytes(6))]), "without Value"),
        (pb.DeviceData(DeviceId=_guid(DEVICE), DateTime=pb.DateTime(value=1),
                       DeviceValues=[pb.DeviceValue(Obis=b"\x01\x00\x01", Value=1.0)]),
         "6 bytes"),
        (pb.DeviceData(DeviceId=_guid(DEVICE), DateTime=pb.DateTime(value=1),
                       DeviceValues=[pb.DeviceValue(Obis=bytes(6), Value=math.nan)]),
         "not a finite number"),
    ],
)
def test_incomplete_items_are_rejected_with_a_reason(item: pb.DeviceData, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        Decoder().decode(_body(item))


def test_plausibility_window_rejects_clock_faults() -> None:
    (reading,) = Decoder().decode(_body(_item(pb.DateTime(value=0))))  # 1970-01-01
    start_2000 = 946_684_800_000_000
    with pytest.raises(DecodeError, match="implausible timestamp 1970-01-01T00:00:00Z"):
        check_plausible([reading], start_2000, start_2000 * 2)
    check_plausible([reading], 0, 1)


def test_timestamp_format_has_microseconds_only_when_present() -> None:
    assert format_timestamp(1_700_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert format_timestamp(1_700_000_000_000_001) == "2023-11-14T22:13:20.000001Z"


# -- property and fuzz tests ----------------------------------------------------------------
_SCALE_US = {0: 86_400_000_000, 1: 3_600_000_000, 2: 60_000_000, 3: 1_000_000, 4: 1_000}
_MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999


@st.composite
def _stamp(draw: st.DrawFn) -> tuple[pb.DateTime, int]:
    scale = draw(st.sampled_from([0, 1, 2, 3, 4, 5]))
    if scale == 5:
        value = draw(st.integers(0, _MAX_US * 10))
        expected = value // 10
    else:
        value = draw(st.integers(0, _MAX_US // _SCALE_US[scale]))
        expected = value * _SCALE_US[scale]
    kind = draw(st.sampled_from([0, 1]))
    return pb.DateTime(value=value, scale=scale, kind=kind), expected


_values = st.lists(
    st.tuples(st.binary(min_size=6, max_size=6),
              st.floats(allow_nan=False, allow_infinity=False)),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.uuids(), _stamp(), _values), max_size=5))
def test_round_trip_of_random_device_data_arrays(items: list) -> None:
    message = pb.DeviceDataArray()
    for device, (stamp, _), values in items:
        data = message.DeviceDataItems.add()
        data.DeviceId.CopyFrom(_guid(device))
        data.DateTime.CopyFrom(stamp)
        for code, value in values:
            data.DeviceValues.add(Obis=code, Value=value)
    readings = Decoder().decode(message.SerializeToString())
    assert len(readings) == len(items)
    for reading, (device, (_, expected_us), values) in zip(readings, items, strict=True):
        assert reading.device_id == str(device)
        assert reading.timestamp_us == expected_us
        assert [v.value for v in reading.values] == [value for _, value in values]
        assert [v.obis for v in reading.values] == [
            "{}-{}:{}.{}.{}*{}".format(*code) for code, _ in values
        ]


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_ever_raise_decode_error(body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        Decoder().decode(body)


def test_mutated_seed_bodies_only_ever_raise_decode_error(seed_body: bytes) -> None:
    decoder = Decoder()
    rng = random.Random(20261122)  # fixed: a failure must be reproducible
    for _ in range(3000):
        body = bytearray(seed_body)
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        cut = rng.choice([len(body), rng.randrange(len(body) + 1)])
        with contextlib.suppress(DecodeError):
            decoder.decode(bytes(body[:cut]))


def test_first_device_key_reads_the_id_without_decoding(seed_body: bytes) -> None:
    from streams.codec import first_device_key

    assert first_device_key(seed_body) == b"3bd0fce9-9f8e-4183-b3d1-0c1622a22ca1"
    second = uuid.uuid4()
    body = _body(_item(pb.DateTime(value=1)), pb.DeviceData(DeviceId=_guid(second)))
    assert first_device_key(body) == str(DEVICE).encode()  # the first item decides
    # DateTime before DeviceId in the item still works.
    item = pb.DeviceData(DateTime=pb.DateTime(value=5)).SerializeToString() + \
        b"\x0a\x12" + _guid(second).SerializeToString()
    assert first_device_key(b"\x0a" + bytes([len(item)]) + item) == str(second).encode()
    for junk in (b"", b"garbage", seed_body[:5], b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"):
        assert first_device_key(junk) is None


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_first_device_key_never_raises(body: bytes) -> None:
    from streams.codec import first_device_key

    first_device_key(body)
