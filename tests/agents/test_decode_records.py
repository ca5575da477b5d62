"""The decode agent's records, whichever decoder (compiled or Python) took a body, are those
of one reading_record per reading: same value, key, Kafka timestamp, partition, headers."""

from __future__ import annotations

from typing import Any

from streams.agents.decode import reading_record
from streams.app import Pipeline
from streams.codec import Decoder
from streams.protos_gen import smartme_realtime_pb2 as pb
from streams.windows import reading_parser
from tests.agents.conftest import Outbox, counter, wait_until

ORIGIN = {"source": b"cloud", "request-id": b"abc123", "received-at": b"2026-11-22T00:00:00Z"}


def _item(device: int, seconds: int, kind: int = 0) -> pb.DeviceData:
    return pb.DeviceData(
        DeviceId=pb.Guid(lo=device, hi=device * 7),
        DateTime=pb.DateTime(value=seconds * 1_000 + 1, scale=4, kind=kind),  # ms
        DeviceValues=[pb.DeviceValue(Obis=bytes.fromhex("0100010800FF"), Value=seconds / 3),
                      pb.DeviceValue(Obis=bytes.fromhex("0100010700FF"), Value=-0.0)])


def _body(*items: pb.DeviceData) -> bytes:
    return pb.DeviceDataArray(DeviceDataItems=list(items)).SerializeToString()


async def test_records_of_both_decoders_are_those_of_one_reading_record_per_reading(
    pipeline: tuple[Pipeline, Outbox]
) -> None:
    app, outbox = pipeline
    moment = 1_799_990_000
    bodies = [
        # Devices interleaved in one body, over several partitions.
        _body(*(_item(device, moment + n) for n, device in enumerate([1, 2, 2, 1, 3, 1, 4]))),
        _body(_item(5, moment, kind=2)),  # LOCAL: decoded by the Python decoder
        b"\x0a\x02garbage",
        _body(*(_item(device, moment + 60) for device in range(1, 30))),
    ]
    async with app.decode_agent.test_context() as agent:
        for body in bodies:
            await agent.put(value=body, headers=ORIGIN)
        await wait_until(lambda: counter(app.metrics.bodies) == 3)
    assert app.decoder.fallbacks == 2  # the LOCAL body and the garbage

    readings = [r for body in bodies[:2] + bodies[3:]
                for r in Decoder(app.settings.obis_scales, app.settings.local_timezone)
                .decode(body)]
    sent = outbox.of(app.settings.topic_readings)

    def by_partition(rows: list[tuple[Any, ...]]) -> dict[int, list[tuple[Any, ...]]]:
        grouped: dict[int, list[tuple[Any, ...]]] = {}
        for row in rows:
            grouped.setdefault(row[-1], []).append(row)
        return grouped

    # In order within a partition (the outbox sends partition by partition).
    assert by_partition([(s.key, s.value, s.timestamp, s.headers, s.partition)
                         for s in sent]) == by_partition([(
        r.device_id.encode(), reading_record(r, ORIGIN),
        int(r.timestamp_us / 1_000_000 * 1000) / 1000,
        {"source": b"cloud", "request-id": b"abc123"}, app.partition_of(r.device_id),
    ) for r in readings])
    # Each partition's batch records: its devices' readings' records, in order (compact
    # records for the bodies of the compiled decoder, JSON for the others).
    batched: dict[tuple[int, str], list[bytes]] = {}
    parser = reading_parser(app.decoder.native)
    for batch in outbox.of(app.settings.topic_reading_batches):
        assert batch.partition is not None
        groups, rejected = parser.group([batch.value])
        assert rejected == []
        for group in groups:
            batched.setdefault((batch.partition, group.device_id), []).extend(
                group.record(i) for i in range(len(group)))
    expected: dict[tuple[int, str], list[bytes]] = {}
    for s in sent:
        assert s.partition is not None
        expected.setdefault((s.partition, s.key.decode()), []).append(s.value)
    assert batched == expected and len({p for p, _ in batched}) > 1
    (letter,) = outbox.of(app.settings.topic_deadletter)
    assert letter.value == b"\x0a\x02garbage"
