"""Decoder readings/s next to a bare protobuf ParseFromString loop over the same bodies."""

from __future__ import annotations

import struct
import time
import uuid

from bench.common import REPEATS, Row, median, report
from streams.codec import Decoder
from streams.protos_gen import smartme_realtime_pb2 as pb

SEED = bytes.fromhex(
    "0A5A0A1209E9FCD03B8E9F834111B3D10C1622A22CA1120B08C0C9EAD3A98FE93710051A110A060100010800FF"
    "11333333331FAE3C411A110A060100020800FF1100000000000000001A110A060100010700FF11713D0AD7A3303840"
)


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


def _rate(fn: object, bodies: list[bytes], readings_per_body: int, seconds: float = 1.5) -> float:
    call = fn  # type: ignore[assignment]
    done = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        for body in bodies:
            call(body)  # type: ignore[operator]
        done += len(bodies)
    return done * readings_per_body / (time.perf_counter() - began)


def _parse_only(body: bytes) -> None:
    pb.DeviceDataArray().ParseFromString(body)


def run() -> None:
    decoder = Decoder()
    rows = []
    for label, body, per_body in (("seed body (1 reading, 3 values)", SEED, 1),
                                  ("batch body (100 readings, 6 values)", batch_body(100), 100)):
        ours, ceiling = [], []
        for _ in range(REPEATS):
            ceiling.append(_rate(_parse_only, [body] * 100, per_body))
            ours.append(_rate(decoder.decode, [body] * 100, per_body))
        rows.append(Row(f"decode {label}", median(ours), "readings/s",
                        "ParseFromString", median(ceiling)))
    report("Decoder vs bare protobuf parsing", rows)
