"""Cost of a worker's /metrics scrape per device: what the worker serves
(DeviceMetrics.exposition) next to prometheus_client's generate_latest on the same
registry, which renders the same bytes.

Between two timed scrapes the state moves as in a worker scraped every 15 s: a meter
sends a reading once a minute (README's sizing; also once a second, the worst case),
a sweep rebuilds every device's view from its stored state (new objects, equal values),
and a quarter of the 60 s windows and a few of the 900 s and 3600 s ones close.
"""

from __future__ import annotations

import gc
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from faust.sensors.prometheus import FaustMetrics
from prometheus_client import CollectorRegistry, generate_latest

from bench.common import REPEATS, Row, median, report
from streams.metrics import DeviceMetrics, WorkerMetrics
from streams.worker import _GC_THRESHOLDS

T0 = 1_800_000_000.0
SCRAPE_INTERVAL = 15.0
SIZES = (60, 900, 3600)


class Worker:
    """A worker registry holding `devices` meters, moved on by `advance`."""

    def __init__(self, devices: int, reading_interval: float, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.reading_interval = reading_interval
        self.now = T0
        self.registry = CollectorRegistry()
        worker = WorkerMetrics(self.registry)
        self.metrics = DeviceMetrics(
            self.registry, lambda: self.now,
            lag=lambda: [("meter.reading-batches", p, p * 3) for p in range(12)],
            gateways=list)
        faust = FaustMetrics.create(self.registry, "meterstream_faust")
        for partition in range(12):
            faust.messages_received_per_topics_partition.labels(
                "meter.reading-batches", partition).set(partition * 1000)
        for size in SIZES:
            for kind in ("final", "revision", "interim"):
                worker.windows.labels(str(size), kind).inc()
        self.state: dict[str, dict[str, Any]] = {}
        for index in range(devices):
            device_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            mapped = index % 3 != 0
            self.state[device_id] = {
                "partition": index % 12,
                "ean": f"8716{index:014d}" if mapped else None,
                "name": f"Meter {index}, Hauptstrasse" if index % 2 else None,
                "class": "smartme" if index % 4 else "mbus",
                "serial": f"{63000000 + index}" if index % 2 else None,
                "mapped": mapped,
                "reconciliation": ["2027-01-01", self.rng.uniform(-0.01, 0.01)] if mapped
                else None,
                "import": self.rng.uniform(0, 5e6),
                "online": 1 if index % 50 else 0,
                "threshold": 600.0 if index % 4 else 2700.0,
            }
            self._read(device_id)
            for size in SIZES:
                self._close_window(device_id, size)
        self.advance()

    def advance(self) -> None:
        """One scrape interval later."""
        self.now += SCRAPE_INTERVAL
        for device_id, state in self.state.items():
            if self.rng.random() < SCRAPE_INTERVAL / self.reading_interval:
                self._read(device_id)
            # What a sweep does: every view again, from the state as stored.
            self.metrics.update(device_id, orjson.loads(orjson.dumps(state)))
            for size in SIZES:
                if self.rng.random() < SCRAPE_INTERVAL / size:
                    self._close_window(device_id, size)

    def _read(self, device_id: str) -> None:
        state, rng = self.state[device_id], self.rng
        state["seen"] = self.now - rng.uniform(0, 5)
        state["reading"] = state["seen"] - rng.uniform(0, 1)
        state["power"] = rng.uniform(-3000, 10000)
        state["import"] += rng.uniform(0, 3)
        state["export"] = rng.uniform(0, 1e5) if state["partition"] % 5 == 0 else 0.0

    def _close_window(self, device_id: str, size: int) -> None:
        start = (self.now // size - 1) * size
        self.metrics.window(device_id, size, int(start * 1e6),
                            self.rng.uniform(0, size / 36), self.rng.uniform(0, 1) or None)


def per_device(worker: Worker, scrape: Callable[[], Any], seconds: float = 2.0) -> float:
    """CPU nanoseconds per device of one scrape (CPU time: steadier than wall time on a
    shared machine), the state moving between scrapes."""
    spent, scrapes = 0.0, 0
    began = time.process_time()
    while time.process_time() - began < seconds or scrapes < 3:
        worker.advance()
        start = time.process_time()
        scrape()
        spent += time.process_time() - start
        scrapes += 1
    return spent / scrapes / len(worker.state) * 1e9


def run() -> None:
    # A worker's collector settings (streams.worker): a scrape allocates a lot.
    thresholds = gc.get_threshold()
    gc.set_threshold(*_GC_THRESHOLDS)
    try:
        rows = []
        for devices in (500, 5000):
            for interval in (60.0, 1.0):
                rows.append(_row(Worker(devices, interval)))
    finally:
        gc.set_threshold(*thresholds)
    report("Worker scrape vs prometheus_client's generate_latest (same bytes)", rows)


def _row(worker: Worker) -> Row:
    ours, stock = [], []
    for _ in range(REPEATS):
        stock.append(per_device(worker, lambda: generate_latest(worker.registry)))
        ours.append(per_device(worker, worker.metrics.exposition))
    devices = len(worker.state)
    return Row(f"/metrics, {devices:,} devices, a reading each {worker.reading_interval:.0f} s",
               median(ours), "ns/device", "generate_latest", median(stock),
               f"({len(worker.metrics.exposition()) / devices:,.0f} B/device)")


if __name__ == "__main__":
    run()
