"""The native parser of `meter.readings` records (alone, or as the JSON arrays of the
reading-batches topic): readings grouped by device in arrival order, each value where
aggregation expects it, and every unusable item reported with a reason instead of lost."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from streams.codec import format_timestamp
from streams.windows import Aggregator, DeviceReadings, Sample, WindowConfig, reading_parser

A, B = "6513270e-269e-0d37-f2a7-4de452e6b438", "3bd0fce9-9f8e-4183-b3d1-0c1622a22ca1"
T0 = 1_699_999_200_000_000


def reading(device: str, ts: int, received: str | None = "2026-11-22T00:00:00.000+00:00",
            **values: float | None) -> dict[str, Any]:
    codes = {"imp": ("1-0:1.8.0*255", "Wh"), "exp": ("1-0:2.8.0*255", "Wh"),
             "power": ("1-0:1.7.0*255", "W"), "l1": ("1-0:21.7.0*255", "W"),
             "l2": ("1-0:41.7.0*255", "W"), "l3": ("1-0:61.7.0*255", "W")}
    return {"device_id": device, "timestamp": format_timestamp(ts), "timestamp_us": ts,
            "values": [{"obis": codes[name][0], "value": value, "quantity": name,
                        "unit": codes[name][1], "normalised": value}
                       for name, value in values.items()]
                      + [{"obis": "1-0:32.7.0*255", "value": 230.1, "quantity": "voltage",
                          "unit": "V", "normalised": 230.1}],
            "source": "test", "received_at": received, "request_id": "r"}


def parsed(group: DeviceReadings) -> list[Sample]:
    """The samples aggregation took from a group: what it stored for the device."""
    chunks: dict[str, bytes] = {}
    aggregator = Aggregator(WindowConfig(), {}, chunks)
    device = aggregator.device(group.device_id)
    aggregator.apply(device, group, T0)
    device.flush()
    return [Sample(*s) for chunk in chunks.values() for s in orjson.loads(chunk)["samples"]]


def test_readings_are_grouped_by_device_in_order_across_records() -> None:
    first = orjson.dumps([reading(A, T0, imp=1.0), reading(B, T0, power=5.0),
                          reading(A, T0 + 1, imp=2.0)])
    second = orjson.dumps(reading(B, T0 + 7, exp=3.0, received="2026-11-22T00:00:01Z"))
    groups, rejected = reading_parser().group([first, second])
    assert rejected == []
    assert [(g.device_id, len(g), g.last_value) for g in groups] == [(A, 2, 0), (B, 2, 1)]
    assert [g.value_index(i) for g in groups for i in range(len(g))] == [0, 0, 0, 1]
    assert groups[1].received == [("2026-11-22T00:00:00.000+00:00", 1),
                                  ("2026-11-22T00:00:01Z", 1)]
    assert groups[0].received == [("2026-11-22T00:00:00.000+00:00", 2)]
    # Each reading's record comes back as it was sent, byte for byte.
    assert orjson.loads(groups[0].record(1)) == reading(A, T0 + 1, imp=2.0)
    assert groups[1].record(1) == second


def test_values_land_where_aggregation_reads_them_exactly() -> None:
    rng = random.Random(5)
    floats = [rng.uniform(-1e6, 1e6) for _ in range(600)] + [0.1, 1e-7, 1e16, -0.0]
    records = [reading(A, T0 + i, imp=floats[i], exp=floats[i + 1], power=floats[i + 2],
                       l1=floats[i + 3], l2=None, l3=floats[i + 4])
               for i in range(0, len(floats) - 5, 5)]
    (group,), _ = reading_parser().group([orjson.dumps(records)])
    assert parsed(group) == [Sample(r["timestamp_us"], *(v["normalised"] for v in r["values"][:6]))
                             for r in records]


@pytest.mark.parametrize(("value", "why"), [
    (b"{not json", "not a meter.readings record nor a list of them"),
    (b"", "not a meter.readings record nor a list of them"),
    (b"[1, 2", "not a meter.readings record nor a list of them"),
])
def test_a_record_that_is_not_json_is_rejected_whole(value: bytes, why: str) -> None:
    good = orjson.dumps(reading(A, T0, imp=1.0))
    groups, rejected = reading_parser().group([good, value])
    assert [(g.device_id, len(g)) for g in groups] == [(A, 1)]
    ((index, body, reason),) = rejected
    assert (index, body) == (1, value) and reason.startswith(why)


@pytest.mark.parametrize(("item", "why"), [
    (42, "not a meter.readings record"),
    ({"timestamp_us": T0, "values": []}, "not a meter.readings record: no device_id"),
    ({"device_id": 7, "timestamp_us": T0, "values": []}, "not a meter.readings record"),
    ({"device_id": A, "values": []}, "unusable reading: no integer timestamp_us"),
    ({"device_id": A, "timestamp_us": "soon", "values": []}, "unusable reading"),
    ({"device_id": A, "timestamp_us": T0}, "unusable reading: no values"),
    ({"device_id": A, "timestamp_us": T0, "values": [{"value": 1}]},
     "unusable reading: a value without obis"),
    ({"device_id": A, "timestamp_us": T0, "values": [{"obis": "1-0:1.8.0*255"}]},
     "unusable reading: 1-0:1.8.0*255: no normalised value"),
    ({"device_id": A, "timestamp_us": T0,
      "values": [{"obis": "1-0:1.7.0*255", "normalised": "high"}]},
     "unusable reading: 1-0:1.7.0*255: normalised value \"high\" is not a number"),
])
def test_an_unusable_item_is_rejected_alone_with_its_reason(item: Any, why: str) -> None:
    value = orjson.dumps([reading(A, T0, imp=1.0), item, reading(A, T0 + 1, imp=2.0)])
    (group,), rejected = reading_parser().group([value])
    assert len(group) == 2
    ((index, body, reason),) = rejected
    assert index == 0 and orjson.loads(body) == item
    assert reason.startswith(why), reason


def test_unknown_codes_and_fields_are_ignored_and_null_means_absent() -> None:
    record = reading(A, T0, imp=None, power=12.5)
    record["values"].append({"obis": "0-0:96.1.0*255", "text": "serial"})
    record["extra"] = {"anything": [1, 2]}
    (group,), rejected = reading_parser().group([orjson.dumps(record)])
    assert rejected == []
    assert parsed(group) == [Sample(T0, None, None, 12.5)]


def test_a_reading_dated_outside_the_years_1_to_9999_is_unusable() -> None:
    """Window enumeration over such a time would overflow: the reading is dead-lettered."""
    too_late = reading(A, T0, imp=1.0)
    too_late["timestamp_us"] = 9_223_372_036_854_775_000
    (group,), rejected = reading_parser().group([orjson.dumps([reading(A, T0, imp=1.0),
                                                               too_late])])
    assert len(group) == 1
    ((_, _, reason),) = rejected
    assert reason == ("unusable reading: timestamp_us 9223372036854775000 is outside the "
                      "years 1..9999")
