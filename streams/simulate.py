"""Synthetic smart-me traffic: a fleet of meters whose registers only grow (except for an
occasional meter swap), with plausible power, batched webhook bodies, duplicates and late
(buffered) readings. Used by ``meterstream simulate``, the tests and the benchmarks.

Values are produced in the webhook's units as meterstream assumes them by default
(energy registers in mWh, power in W), so the bodies decode to Wh and W.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import random
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from streams.protos_gen import smartme_realtime_pb2 as pb

log = logging.getLogger(__name__)

_OBIS = {
    "import": bytes.fromhex("0100010800FF"),
    "export": bytes.fromhex("0100020800FF"),
    "power": bytes.fromhex("0100010700FF"),
    "l1": bytes.fromhex("0100150700FF"),
    "l2": bytes.fromhex("0100290700FF"),
    "l3": bytes.fromhex("01003D0700FF"),
}


class TraceReading(NamedTuple):
    device_id: str
    ts_us: int
    import_mwh: float
    export_mwh: float
    power_w: float
    phases_w: tuple[float, float, float]


@dataclass
class _Meter:
    device_id: str
    import_mwh: float
    export_mwh: float
    base_w: float
    solar: bool
    rng: random.Random = field(repr=False)

    def step(self, ts_us: int, seconds: float) -> TraceReading:
        hour = (ts_us / 3_600_000_000) % 24
        daily = 0.6 + 0.4 * math.sin((hour - 7) / 24 * 2 * math.pi)
        power = max(0.0, self.base_w * daily * self.rng.uniform(0.7, 1.3))
        produced = 0.0
        if self.solar and 7 <= hour <= 18:
            produced = self.base_w * 1.5 * math.sin((hour - 7) / 11 * math.pi)
        net = power - produced
        if net >= 0:
            self.import_mwh += net * seconds / 3.6
        else:
            self.export_mwh += -net * seconds / 3.6
        split = (0.4, 0.35, 0.25)
        return TraceReading(self.device_id, ts_us, round(self.import_mwh, 1),
                            round(self.export_mwh, 1), round(max(net, 0.0), 2),
                            tuple(round(max(net, 0.0) * s, 2) for s in split))  # type: ignore[arg-type]


class Fleet:
    """Deterministic meters (same seed, same ids and values)."""

    def __init__(self, devices: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.meters = [
            _Meter(str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                   import_mwh=self.rng.uniform(1e6, 5e7), export_mwh=0.0,
                   base_w=self.rng.uniform(200, 3000), solar=self.rng.random() < 0.3,
                   rng=random.Random(self.rng.random()))
            for _ in range(devices)
        ]

    @property
    def device_ids(self) -> list[str]:
        return [m.device_id for m in self.meters]

    def trace(self, start_us: int, seconds: float, cadence: float, jitter: float = 0.2
              ) -> list[TraceReading]:
        """Readings of every meter every `cadence` s (± jitter), in timestamp order."""
        readings = []
        for meter in self.meters:
            ts = start_us + int(self.rng.uniform(0, cadence) * 1e6)
            previous = ts
            while ts < start_us + seconds * 1e6:
                readings.append(meter.step(ts, (ts - previous) / 1e6))
                previous = ts
                ts += int(cadence * self.rng.uniform(1 - jitter, 1 + jitter) * 1e6)
        readings.sort(key=lambda r: (r.ts_us, r.device_id))
        return readings

    def swap_meter(self, index: int) -> None:
        """The next readings of this meter start from a new, low register (a reset)."""
        self.meters[index].import_mwh = self.rng.uniform(0, 1000)

    def now(self, seconds: float) -> list[TraceReading]:
        """One reading per meter stamped with the current time."""
        ts = int(time.time() * 1e6)
        return [m.step(ts, seconds) for m in self.meters]


def arrival_order(readings: list[TraceReading], *, seed: int, duplicates: float = 0.0,
                  late: float = 0.0, max_delay_s: float = 0.0) -> list[TraceReading]:
    """How the webhook might deliver a trace: some readings repeated (retries), some held
    back by up to `max_delay_s` (meters buffering during an outage)."""
    rng = random.Random(seed)
    keyed = []
    for reading in readings:
        delay = rng.uniform(0, max_delay_s) if rng.random() < late else 0.0
        keyed.append((reading.ts_us + delay * 1e6, reading))
        if rng.random() < duplicates:
            keyed.append((reading.ts_us + rng.uniform(0, 60) * 1e6, reading))
    keyed.sort(key=lambda pair: pair[0])
    return [reading for _, reading in keyed]


def body(readings: list[TraceReading]) -> bytes:
    """One webhook body (DeviceDataArray) carrying these readings."""
    message = pb.DeviceDataArray()
    for reading in readings:
        item = message.DeviceDataItems.add()
        lo, hi = struct.unpack("<QQ", uuid.UUID(reading.device_id).bytes_le)
        item.DeviceId.lo, item.DeviceId.hi = lo, hi
        item.DateTime.value = reading.ts_us * 10
        item.DateTime.scale = pb.DateTime.TICKS
        for name, value in (("import", reading.import_mwh), ("export", reading.export_mwh),
                            ("power", reading.power_w), ("l1", reading.phases_w[0]),
                            ("l2", reading.phases_w[1]), ("l3", reading.phases_w[2])):
            item.DeviceValues.add(Obis=_OBIS[name], Value=value)
    return bytes(message.SerializeToString())


def bodies(readings: list[TraceReading], per_body: int) -> Iterator[bytes]:
    """Webhook bodies in delivery order, each with up to `per_body` consecutive readings
    of one device (what a meter's upload, or its buffered load profile, looks like)."""
    pending: list[TraceReading] = []
    for reading in readings:
        if pending and (reading.device_id != pending[0].device_id or len(pending) >= per_body):
            yield body(pending)
            pending = []
        pending.append(reading)
    if pending:
        yield body(pending)


async def simulate(url: str, *, devices: int, rate: float, duration: float,
                   username: str, password: str, duplicates: float = 0.0, late: float = 0.0,
                   seed: int = 1, concurrency: int = 16) -> dict[str, int]:
    """POST live readings at about `rate` readings/s (over the fleet) for `duration` s.

    Each meter reports once per round, one reading per body. A `duplicates` share of
    bodies is posted twice (webhook retries). Each round a `late` share of the meters
    that report live goes quiet for 2-10 rounds and then uploads what it buffered in one
    body (a batch of late readings, like a meter back from an outage). Buffers still held
    at the end are uploaded then. Up to `concurrency` POSTs are in flight at once.
    """
    import aiohttp

    fleet = Fleet(devices, seed)
    rng = random.Random(seed)
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/octet-stream"}
    counts = {"posted": 0, "readings": 0, "accepted": 0, "rejected": 0, "errors": 0,
              "duplicates": 0, "batches": 0, "late_readings": 0}
    interval = devices / rate if rate > 0 else 1.0
    held: dict[str, tuple[int, list[TraceReading]]] = {}  # device → (release round, buffer)
    semaphore = asyncio.Semaphore(concurrency)
    in_flight: set[asyncio.Task[None]] = set()

    async def post(session: aiohttp.ClientSession, chunk: bytes) -> None:
        async with semaphore:
            try:
                async with session.post(url, data=chunk, headers=headers) as response:
                    counts["accepted" if response.status == 200 else "rejected"] += 1
                    if response.status != 200:
                        log.warning("POST answered %d: %s", response.status,
                                    (await response.text())[:200])
            except (aiohttp.ClientError, OSError) as exc:
                counts["errors"] += 1
                log.warning("POST failed: %s", exc)
            counts["posted"] += 1

    def send(session: aiohttp.ClientSession, readings: list[TraceReading]) -> None:
        task = asyncio.create_task(post(session, body(readings)))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    def upload(session: aiohttp.ClientSession, device_id: str) -> None:
        _, buffered = held.pop(device_id)
        send(session, buffered)
        counts["batches"] += 1
        counts["late_readings"] += len(buffered)

    deadline = time.monotonic() + duration
    round_no = 0
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            began = time.monotonic()
            for reading in fleet.now(interval):
                counts["readings"] += 1
                device = reading.device_id
                if device not in held and rng.random() < late:
                    held[device] = (round_no + rng.randint(2, 10), [])
                if device in held:
                    held[device][1].append(reading)
                    if round_no >= held[device][0]:
                        upload(session, device)
                    continue
                send(session, [reading])
                if rng.random() < duplicates:
                    send(session, [reading])
                    counts["duplicates"] += 1
            round_no += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))
        for device in list(held):
            upload(session, device)
        await asyncio.gather(*in_flight)
    return counts
