"""Decoder readings/s next to a bare protobuf ParseFromString loop over the same bodies:
bodies → Readings (the CLI's path), and bodies → ``meter.readings`` records
(:meth:`Decoder.records`, the decode agent's path) by the compiled decoder and by the
Python one it falls back to. Then the decode agent's whole per-reading work without Kafka
(records, outbox, partition grouping) next to the compiled decoder alone."""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Callable

from bench.common import REPEATS, Row, median, report
from streams import simulate
from streams.agents.decode import ReadingBatches, origin_fields
from streams.agents.outbox import Outbox
from streams.codec import Decoder
from streams.protos_gen import smartme_realtime_pb2 as pb

SEED = bytes.fromhex(
    "0A5A0A1209E9FCD03B8E9F834111B3D10C1622A22CA1120B08C0C9EAD3A98FE93710051A110A060100010800FF"
    "11333333331FAE3C411A110A060100020800FF1100000000000000001A110A060100010700FF11713D0AD7A3303840"
)
ORIGIN = {"source": b"cloud", "request-id": b"abc123", "received-at": b"2026-11-22T00:00:00Z"}
EARLIEST_US, LATEST_US = 946_684_800_000_000, 2**62  # the vectors are from 2019
AGENT_DEVICES, PER_BODY = 500, 10  # as bench/aggregate_bench.py's backlog


def batch_body(items: int) -> bytes:
    """A UserRegistration-style body: many devices, each with energy, power and phases."""
    message = pb.DeviceDataArray()
    for i in range(items):
        data = message.DeviceDataItems.add()
        lo, hi = struct.unpack("<QQ", uuid.UUID(int=i + 1).bytes_le)
        data.DeviceId.lo, data.DeviceId.hi = lo, hi
        data.DateTime.value = 17_000_000_000_000_000 + i * 10_000_000
        data.DateTime.scale = pb.DateTime.TICKS
        for code, value in (("0100010800FF", 1.5e6 + i), ("0100020800FF", 0.0),
                            ("0100010700FF", 240.0), ("0100150700FF", 80.0),
                            ("0100290700FF", 80.0), ("01003D0700FF", 80.0)):
            data.DeviceValues.add(Obis=bytes.fromhex(code), Value=value)
    return message.SerializeToString()


def _rate(fn: Callable[[bytes], object], bodies: list[bytes], readings_per_call: int,
          seconds: float = 1.5) -> float:
    done = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        for body in bodies:
            fn(body)
        done += len(bodies)
    return done * readings_per_call / (time.perf_counter() - began)


def _parse_only(body: bytes) -> None:
    pb.DeviceDataArray().ParseFromString(body)


def _decoder_rows() -> list[Row]:
    decoder = Decoder()
    fields = origin_fields(ORIGIN)

    def native(body: bytes) -> object:
        return decoder.records(body, fields, EARLIEST_US, LATEST_US)

    def python(body: bytes) -> object:
        return decoder.records(body, fields, EARLIEST_US, LATEST_US, native=False)

    rows = []
    for label, body, per_body in (("seed body (1×3 values)", SEED, 1),
                                  ("batch body (100×6 values)", batch_body(100), 100)):
        paths: dict[str, list[float]] = {"decode": [], "records compiled": [],
                                         "records Python": []}
        ceiling = []
        for _ in range(REPEATS):
            ceiling.append(_rate(_parse_only, [body] * 100, per_body))
            paths["decode"].append(_rate(decoder.decode, [body] * 100, per_body))
            paths["records compiled"].append(_rate(native, [body] * 100, per_body))
            paths["records Python"].append(_rate(python, [body] * 100, per_body))
        assert decoder.fallbacks == 0, "the compiled decoder left a benchmark body to Python"
        for path, rates in paths.items():
            rows.append(Row(f"{path}, {label}", median(rates), "readings/s",
                            "ParseFromString", median(ceiling)))
    return rows


def _agent_bodies() -> list[bytes]:
    """One upload of PER_BODY readings per meter, as a meter's buffered upload."""
    start_us = int(time.time() // 3600 * 3600 - 3 * 86400) * 1_000_000
    trace = simulate.Fleet(AGENT_DEVICES, seed=3).trace(start_us, PER_BODY * 60, 60)
    by_device: dict[str, list[simulate.TraceReading]] = {}
    for reading in trace:
        by_device.setdefault(reading.device_id, []).append(reading)
    return [simulate.body(readings[:PER_BODY]) for readings in by_device.values()]


def _agent_loop(decoder: Decoder, bodies: list[bytes], native: bool) -> Callable[[], None]:
    """One batch of the decode agent's loop (streams/agents/decode.py) minus Kafka and
    Faust: partitions come from a dict as the producer's cached ones do."""
    cached: dict[tuple[str, str], int] = {}

    def partition(topic: str, device_id: str) -> int:
        found = cached.get((topic, device_id))
        if found is None:
            found = cached[(topic, device_id)] = hash(device_id) % 6
        return found

    def partition_for(topic: str, key: bytes | None, device_id: str | None) -> int:
        return partition(topic, device_id or "")

    def partition_of(device_id: str) -> int:
        return partition("meter.reading-batches", device_id)

    async def never(topic: str) -> None:
        raise AssertionError(topic)

    passthrough = {k: ORIGIN[k] for k in ("source", "request-id")}

    def loop() -> None:
        outbox = Outbox(None, partition_for, never, None)  # type: ignore[arg-type]
        batches = ReadingBatches()
        for body in bodies:
            readings, entries = decoder.records_by_partition(
                body, origin_fields(ORIGIN), EARLIEST_US, LATEST_US, partition_of, native=native)
            outbox.add_device_records("meter.readings", readings, passthrough)
            batches.add(readings, entries, partition_of)
        for number, value in batches.values():
            outbox.add("meter.reading-batches", value, partition=number)

    return loop


def _agent_rows() -> list[Row]:
    decoder = Decoder()
    bodies = _agent_bodies()
    readings = sum(len(decoder.decode(body)) for body in bodies)
    fields = origin_fields(ORIGIN)
    compiled, python = _agent_loop(decoder, bodies, True), _agent_loop(decoder, bodies, False)

    def records_only(_: bytes) -> None:
        for body in bodies:
            decoder.records(body, fields, EARLIEST_US, LATEST_US)

    loops: dict[str, list[float]] = {"agent loop, compiled decoder": [],
                                     "agent loop, Python decoder": []}
    ceiling = []
    for _ in range(REPEATS):
        ceiling.append(_rate(records_only, [b""], readings))
        loops["agent loop, compiled decoder"].append(_rate(lambda _: compiled(), [b""],
                                                           readings))
        loops["agent loop, Python decoder"].append(
            _rate(lambda _: python(), [b""], readings))
    note = f"({len(bodies)} bodies of {PER_BODY} readings)"
    return [Row(name, median(rates), "readings/s", "records alone", median(ceiling), note)
            for name, rates in loops.items()]


def run() -> None:
    report("Decoder vs bare protobuf parsing", _decoder_rows())
    report("Decode agent's per-reading work, no Kafka, vs the compiled decoder alone",
           _agent_rows())
