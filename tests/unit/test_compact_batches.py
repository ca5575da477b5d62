"""Compact reading-batches records: the decode agent cuts each body by the partitions of its
devices and the aggregation decodes the pieces again. Whatever a body holds, the
aggregation must see exactly the readings it would have read from the JSON records (the
same devices, order, samples and `meter.readings` records for late readings)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.agents.decode import COMPACT, ReadingBatches, compact_values
from streams.codec import Decoder
from streams.protos_gen import smartme_realtime_pb2 as pb
from streams.windows import Aggregator, DeviceReadings, WindowConfig, reading_parser
from tests.unit.test_native_decode import FIELDS, _bodies, _body, _item

EARLIEST_US, LATEST_US = 0, 2**62


def partitions(salt: int, count: int = 3) -> Any:
    return lambda device_id: hash((device_id, salt)) % count


def read(decoder: Decoder, values: list[bytes]) -> list[tuple[str, list[bytes], Any]]:
    groups, rejected = reading_parser(decoder.native).group(values)
    assert rejected == []
    return [(g.device_id, [g.record(i) for i in range(len(g))], g.received) for g in groups]


def stored(groups: list[DeviceReadings]) -> dict[str, bytes]:
    """What aggregation stores after taking the groups (windows of ~300 years: generated
    readings are dated anywhere in years 1 to 9999)."""
    chunks: dict[str, bytes] = {}
    config = WindowConfig(sizes=(10**10,), grace=0, allowed_lateness=10**12, chunk=10**10)
    aggregator = Aggregator(config, {}, chunks)
    for group in groups:
        device = aggregator.device(group.device_id)
        aggregator.apply(device, group, 0)
        device.flush()
    return chunks


@settings(max_examples=150, deadline=None)
@given(st.lists(_bodies(plain=True), min_size=1, max_size=5), st.integers(0, 99))
def test_compact_records_give_the_readings_of_the_json_records(
    bodies: list[bytes], salt: int
) -> None:
    decoder = Decoder()
    partition_of = partitions(salt)
    compact, json = ReadingBatches(), ReadingBatches()
    for body in bodies:
        readings, entries = decoder.records_by_partition(body, FIELDS, EARLIEST_US, LATEST_US,
                                                         partition_of)
        assert entries is not None  # well-formed bodies stay on the compiled path
        compact.add(readings, entries, partition_of)
        json.add(readings, None, partition_of)
    compact_values = dict(compact.values())
    json_values = dict(json.values())
    assert set(compact_values) == set(json_values)  # the same partitions
    for partition, value in compact_values.items():
        assert value.startswith(COMPACT)
        assert read(decoder, [value]) == read(decoder, [json_values[partition]])
        parser = reading_parser(decoder.native)
        assert stored(parser.group([value])[0]) == stored(parser.group(
            [json_values[partition]])[0])


def test_a_body_of_several_partitions_is_cut_into_one_entry_each() -> None:
    devices = [uuid.UUID(int=n) for n in (1, 2, 3)]
    body = _body(_item(devices[0]), _item(devices[1]), _item(devices[0]), _item(devices[2]))
    decoder = Decoder()
    where = {str(devices[0]): 4, str(devices[1]): 1, str(devices[2]): 4}
    readings, entries = decoder.records_by_partition(body, FIELDS, EARLIEST_US, LATEST_US,
                                                     where.__getitem__)
    assert entries is not None
    assert [partition for partition, _ in entries] == [4, 1]
    by_partition = {p: read(decoder, list(compact_values([e]))) for p, e in entries}
    records = [record for _, _, record in readings]
    assert by_partition[4] == [(str(devices[0]), [records[0], records[2]], [(FIELDS[
        "received_at"], 2)]), (str(devices[2]), [records[3]], [(FIELDS["received_at"], 1)])]
    assert by_partition[1] == [(str(devices[1]), [records[1]], [(FIELDS["received_at"], 1)])]


def test_a_body_of_one_partition_travels_whole() -> None:
    body = _body(_item(uuid.UUID(int=5)), _item(uuid.UUID(int=6)))
    (_, entries) = Decoder().records_by_partition(body, FIELDS, EARLIEST_US, LATEST_US,
                                                  lambda _: 2)
    assert entries is not None
    ((partition, entry),) = entries
    assert partition == 2 and entry.endswith(body)
    assert len(entry) < len(body) + len(orjson.dumps(FIELDS)) + 8


def test_bodies_left_to_python_go_as_json_records() -> None:
    local = pb.DateTime(value=1_700_000_000, scale=3, kind=2)  # LOCAL: the zone is Python's
    body = _body(_item(), _item(stamp=local))
    decoder = Decoder()
    readings, entries = decoder.records_by_partition(body, FIELDS, EARLIEST_US, LATEST_US,
                                                     lambda _: 0)
    assert entries is None and decoder.fallbacks == 1
    batches = ReadingBatches()
    batches.add(readings, entries, lambda _: 0)
    ((_, value),) = batches.values()
    assert orjson.loads(value) == [orjson.loads(r) for _, _, r in readings]


def test_compact_values_are_split_below_the_size_limit() -> None:
    entries = [bytes([n]) * 30 for n in range(10)]
    values = list(compact_values(entries, limit=100))
    assert len(values) > 1 and all(len(v) <= 100 for v in values)
    assert b"".join(v[len(COMPACT):] for v in values) == b"".join(entries)
    assert list(compact_values([b"x" * 200], limit=100)) == [COMPACT + b"x" * 200]


def test_an_unreadable_compact_record_is_rejected_whole_and_the_rest_is_read() -> None:
    decoder = Decoder()
    good = _body(_item(uuid.UUID(int=7)))
    _, entries = decoder.records_by_partition(good, FIELDS, EARLIEST_US, LATEST_US,
                                              lambda _: 0)
    assert entries is not None
    (value,) = compact_values([entries[0][1]])
    cut = value[:-3]
    garbled = COMPACT + b"\x05{bad}" + value[len(COMPACT):]
    parser = reading_parser(decoder.native)
    groups, rejected = parser.group([cut, value, garbled])
    assert [(g.device_id, len(g)) for g in groups] == [(str(uuid.UUID(int=7)), 1)]
    assert [(index, body) for index, body, _ in rejected] == [(0, cut), (2, garbled)]
    assert all(reason.startswith("not a readable reading-batches record") for *_, reason
               in rejected)
    # Without a decoder there is no reading compact records, and it says so.
    (_, ((_, _, reason),)) = reading_parser().group([value])
    assert "no decoder" in reason


def test_a_value_whose_scaled_value_overflows_is_absent_on_both_paths() -> None:
    """The record writes an infinite normalised value as null (orjson): the compact path
    must read it as absent too, not as infinity."""
    from tests.unit.test_native_decode import CODES

    decoder = Decoder(scales={"1-0:1.8.0": 1e10})
    stamps = [pb.DateTime(value=1_700_000_000 + 60 * n, scale=3) for n in range(3)]
    body = _body(*(_item(uuid.UUID(int=9), stamp=stamp, values=[(CODES[0], 1e300 * (n + 1)),
                                                                 (CODES[2], 5.0)])
                   for n, stamp in enumerate(stamps)))
    readings, entries = decoder.records_by_partition(body, FIELDS, EARLIEST_US, LATEST_US,
                                                     lambda _: 0)
    assert entries is not None
    assert orjson.loads(readings[0][2])["values"][0]["normalised"] is None
    parser = reading_parser(decoder.native)
    compact = parser.group(list(compact_values([entries[0][1]])))[0]
    json = parser.group([b"[" + b",".join(r for *_, r in readings) + b"]"])[0]
    assert windows(compact) == windows(json)
    assert all(energy is None for _, energy in windows(compact))


def windows(groups: list[DeviceReadings]) -> list[tuple[bytes, float | None]]:
    """Every window the groups' readings give (a sweep long after them finalizes all)."""
    aggregator = Aggregator(WindowConfig(sizes=(60,)), {}, {})
    out = []
    for group in groups:
        device = aggregator.device(group.device_id)
        emitted = list(aggregator.apply(device, group, 0).emitted)
        emitted += aggregator.sweep(device, 2**62).emitted
        out += [(w.json, w.energy_import_wh) for w in emitted]
    return out
