"""A day of a 50-meter fleet through bridge → decode → aggregate on the real broker.

The trace has duplicates, readings held back by up to two hours and one meter swap. The
final aggregates are compared with a straightforward computation over the sorted trace,
and a run whose worker is killed with SIGKILL halfway must end with the same aggregates.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from streams import simulate
from streams.config import Settings
from streams.embedded_kafka import EmbeddedKafka
from streams.windows import US
from tests import reference
from tests.integration.conftest import (
    AUTH,
    Process,
    bridge_url,
    metric_value,
    read_records,
    running_bridge,
    unique_settings,
)

DEVICES, HOURS, CADENCE = 50, 24, 300
SIZES = (60, 900, 3600)


@dataclass
class Trace:
    readings: list[simulate.TraceReading]  # the truth, sorted, unique
    arrival: list[simulate.TraceReading]  # what the webhook delivers

    @property
    def expected(self) -> dict[str, list[tuple[int, Any, Any, Any]]]:
        by_device: dict[str, list[tuple[int, Any, Any, Any]]] = {}
        for r in self.readings:
            # The same arithmetic as the decoder's default scales (mWh × 0.001 → Wh).
            by_device.setdefault(r.device_id, []).append(
                (r.ts_us, r.import_mwh * 0.001, r.export_mwh * 0.001, r.power_w))
        return by_device


def make_trace() -> Trace:
    fleet = simulate.Fleet(DEVICES, seed=7)
    start = int(time.time() // 3600 * 3600 - 2 * 86400) * US
    readings = fleet.trace(start, HOURS * 3600, CADENCE)
    # One meter swap: device 0's register starts again from a low value halfway.
    swapped = fleet.device_ids[0]
    middle = start + HOURS * 3600 * US // 2
    offset = next(r.import_mwh for r in readings if r.device_id == swapped and r.ts_us > middle)
    readings = [r._replace(import_mwh=round(r.import_mwh - offset + 500.0, 1))
                if r.device_id == swapped and r.ts_us > middle else r for r in readings]
    arrival = simulate.arrival_order(readings, seed=11, duplicates=0.02, late=0.05,
                                     max_delay_s=7200)
    return Trace(readings, arrival)


def run_settings(kafka: EmbeddedKafka, state_dir: Path) -> Settings:
    return unique_settings(kafka, state_dir).replace(window_grace=20, sweep_interval=2.0,
                                                     window_sizes=SIZES)


async def feed(settings: Settings, trace: Trace) -> None:
    async with running_bridge(settings), aiohttp.ClientSession() as session:
        semaphore = asyncio.Semaphore(16)

        async def post(body: bytes) -> None:
            async with semaphore, session.post(bridge_url(settings), data=body,
                                               headers=AUTH) as response:
                assert response.status == 200

        # One device per body, as meters upload; the bridge keys each body by its device,
        # so a device's readings keep their delivery order through Kafka.
        await asyncio.gather(*(post(b) for b in simulate.bodies(trace.arrival, 50)))


async def final_aggregates(settings: Settings, trace: Trace, timeout: float = 240
                           ) -> tuple[dict[bytes, dict[str, Any]], list[Any]]:
    """The latest record per key once every expected window is there and final."""
    wanted = {f"{device}|{size}|{reference_start(start)}".encode()
              for device, readings in trace.expected.items()
              for size, start in reference.expected_windows(readings, SIZES)}
    deadline = time.monotonic() + timeout
    while True:
        records = await read_records(settings.kafka_bootstrap, settings.topic_aggregates,
                                     count=len(wanted), timeout=30, settle=3)
        latest: dict[bytes, dict[str, Any]] = {}
        for record in records:
            value = orjson.loads(record.value)
            if record.key not in latest or value["revision"] >= latest[record.key]["revision"]:
                latest[record.key] = value
        if wanted <= latest.keys() and all(latest[k]["final"] for k in wanted):
            await asyncio.sleep(5)  # a straggling sweep or revision would show up now
            again = await read_records(settings.kafka_bootstrap, settings.topic_aggregates,
                                       count=len(records), timeout=30, settle=2)
            if len(again) == len(records):
                return latest, records
        assert time.monotonic() < deadline, (
            f"{len(wanted - latest.keys())} of {len(wanted)} windows missing")


def assert_reference_windows(latest: dict[bytes, dict[str, Any]], trace: Trace, *,
                             final: bool = False) -> None:
    """Every expected window, and nothing else, as the straightforward computation over
    the sorted trace gives it (energy to 1e-6 relative); `final`: each one marked final."""
    checked = 0
    for device, readings in trace.expected.items():
        for size, start in reference.expected_windows(readings, SIZES):
            got = latest[f"{device}|{size}|{reference_start(start)}".encode()]
            if final:
                assert got["final"] is True, got
            for key, value in reference.window(readings, size, start).items():
                if value is None or isinstance(value, int):
                    assert got[key] == value, (key, got)
                else:
                    assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (key, got)
            checked += 1
    assert checked == len(latest)  # and nothing beyond the expected windows


def assert_same_windows(latest: dict[bytes, dict[str, Any]],
                        expected: dict[bytes, dict[str, Any]]) -> None:
    """The same windows with the same content; only `revision` may differ."""
    assert latest.keys() == expected.keys()
    differing = [(k, f, latest[k].get(f), w.get(f)) for k, w in expected.items()
                 for f in w.keys() | latest[k].keys()
                 if f != "revision" and latest[k].get(f) != w.get(f)]
    assert not differing, f"{len(differing)} differences, e.g. {differing[:5]}"


def reference_start(start_us: int) -> str:
    from streams.codec import format_timestamp

    return format_timestamp(start_us)


@pytest.fixture(scope="module")
def trace() -> Trace:
    return make_trace()


async def run_pipeline(kafka: EmbeddedKafka, state_dir: Path, trace: Trace,
                       kill_halfway: bool) -> tuple[dict[bytes, dict[str, Any]], list[Any],
                                                    Settings]:
    settings = run_settings(kafka, state_dir)
    await feed(settings, trace)  # everything is in smartme.raw before the worker starts
    metrics_url = f"http://127.0.0.1:{settings.worker_port}/metrics"
    worker = Process("worker", settings, state_dir.parent / "worker-1.log")
    try:
        if kill_halfway:
            deadline = time.monotonic() + 180
            while (await metric_value(metrics_url, "meterstream_readings_aggregated_total")
                   or 0) < len(trace.arrival) / 2:
                assert time.monotonic() < deadline, worker.log_tail()
                await asyncio.sleep(0.2)
            worker.kill()  # SIGKILL: no commit, no flush, no goodbye
            worker = Process("worker", settings, state_dir.parent / "worker-2.log")
        latest, records = await final_aggregates(settings, trace)
    finally:
        worker.kill()
    return latest, records, settings


@pytest.fixture(scope="module")
async def uninterrupted(kafka: EmbeddedKafka, trace: Trace,
                        tmp_path_factory: pytest.TempPathFactory
                        ) -> tuple[dict[bytes, dict[str, Any]], list[Any], Settings]:
    return await run_pipeline(kafka, tmp_path_factory.mktemp("run-a") / "state", trace,
                              kill_halfway=False)


async def test_final_aggregates_equal_the_computation_over_the_sorted_trace(
    uninterrupted: tuple[dict[bytes, dict[str, Any]], list[Any], Settings], trace: Trace
) -> None:
    latest, records, settings = uninterrupted
    assert_reference_windows(latest, trace)
    resets = sum(w["resets"] for w in latest.values() if w["size"] == 3600)
    assert resets == 1
    # The held-back readings did correct windows that were already final.
    assert any(r["revision"] > 0 for r in (orjson.loads(x.value) for x in records))
    metrics = f"http://127.0.0.1:{settings.worker_port}/metrics"
    del metrics  # the worker is gone by now; the counters were checked via the records


async def test_sigkill_halfway_then_restart_ends_with_identical_aggregates(
    uninterrupted: tuple[dict[bytes, dict[str, Any]], list[Any], Settings], trace: Trace,
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    expected, _, _ = uninterrupted
    latest, records, _ = await run_pipeline(kafka, tmp_path / "state", trace,
                                            kill_halfway=True)
    assert_same_windows(latest, expected)
    # Re-emitted after the crash is fine, but only with identical content.
    seen: dict[tuple[bytes, int], bytes] = {}
    for record in records:
        revision = orjson.loads(record.value)["revision"]
        previous = seen.setdefault((record.key, revision), record.value)
        assert previous == record.value, record.key
