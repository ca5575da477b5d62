"""Readings/s through decode + aggregate with 1, 2 and 3 worker processes of one consumer
group on the real broker (6 partitions, RocksDB state, changelogs on), each worker count
on the same backlog. The 1-worker figure is the baseline, so the ratio is the speed-up.

For every run the workers start first, on empty topics of their own, and the backlog is
produced once they share the partitions: a rebalance while they work (a worker joining
late) would otherwise be part of the figure. The rate is measured from the first
aggregation to the last reading aggregated, summing the workers'
``meterstream_readings_aggregated_total``.

On a 2-core machine that also runs the broker, more worker processes compete for the
same two cores: the ratio shows how much of the machine the workers can use, not what
more cores would give.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from bench.aggregate_bench import DEVICES, _metric, _settings, produce_raw
from bench.common import METRICS_POLL, REPEATS, Row, broker, median, report
from streams import simulate
from streams.config import Settings
from streams.embedded_kafka import free_port
from streams.windows import US

READINGS = int(os.environ.get("BENCH_SCALE_READINGS", "40000"))
WORKER_COUNTS = (1, 2, 3)
PARTITIONS = 6
AGGREGATED = "meterstream_readings_aggregated_total"


def _trace() -> list[simulate.TraceReading]:
    per_device = max(1, READINGS // DEVICES)
    start = int(time.time() // 3600 * 3600 - 3 * 86400) * US
    return simulate.Fleet(DEVICES, seed=3).trace(start, per_device * 60, 60, jitter=0.1)


@contextlib.contextmanager
def _workers(settings: Settings, count: int, tmp: Path) -> Iterator[list[str]]:
    """`count` worker processes of one group, each with its own state dir and port;
    yields their /metrics URLs and stops them all (SIGTERM, in parallel) afterwards."""
    processes, urls = [], []
    try:
        for index in range(count):
            own = settings.replace(state_dir=tmp / f"state{index}", worker_port=free_port())
            log = (tmp / f"worker{index}.log").open("wb")
            processes.append((subprocess.Popen(
                [sys.executable, "-m", "streams", "worker"],
                env={**os.environ, **own.to_env()}, stdout=log, stderr=subprocess.STDOUT), log))
            urls.append(f"http://127.0.0.1:{own.worker_port}/metrics")
        yield urls
    finally:
        for process, _ in processes:
            process.terminate()
        for process, log in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


async def _raw_partitions(session: aiohttp.ClientSession, url: str, topic: str) -> set[int]:
    """The raw-topic partitions a worker consumes, from its consumer-lag gauge."""
    owned = set()
    with contextlib.suppress(aiohttp.ClientError, OSError):
        async with session.get(url) as response:
            for line in (await response.text()).splitlines():
                if line.startswith("meterstream_consumer_lag_records{") \
                        and f'topic="{topic}"' in line:
                    owned.add(int(line.split('partition="')[1].split('"')[0]))
    return owned


async def _wait_group(session: aiohttp.ClientSession, urls: list[str], topic: str,
                      tmp: Path) -> None:
    """Until every worker holds raw partitions, together all of them, twice in a row."""
    deadline = time.monotonic() + 180
    stable = 0
    while stable < 2:
        owned = [await _raw_partitions(session, url, topic) for url in urls]
        formed = all(owned) and sum(map(len, owned)) == PARTITIONS
        stable = stable + 1 if formed else 0
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text(errors="replace")[-1500:]
                             for p in sorted(tmp.glob("worker*.log")))
            raise TimeoutError(f"workers did not share the partitions: {owned}\n{logs}")
        await asyncio.sleep(0.5)


async def scale_rate(bootstrap: str, readings: list[simulate.TraceReading], count: int,
                     tmp: Path) -> float:
    """Readings/s of `count` workers on the backlog, first to last aggregation."""
    settings = _settings(bootstrap, tmp / "state", PARTITIONS)
    with _workers(settings, count, tmp) as urls:
        async with aiohttp.ClientSession() as session:
            await _wait_group(session, urls, settings.topic_raw, tmp)
            producing = asyncio.create_task(produce_raw(settings, readings))
            first_at, first_done = None, 0.0
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                done = sum(await asyncio.gather(
                    *(_metric(session, url, AGGREGATED) for url in urls)))
                now = time.perf_counter()
                if done and first_at is None:
                    first_at, first_done = now, done
                if done >= len(readings):
                    assert first_at is not None
                    await producing
                    return (done - first_done) / (now - first_at)
                if producing.done():
                    producing.result()  # raises if producing failed
                await asyncio.sleep(METRICS_POLL)
            raise TimeoutError(f"{count} workers did not finish the backlog")


def run() -> None:
    readings = _trace()
    rates: dict[int, list[float]] = {count: [] for count in WORKER_COUNTS}
    with broker() as (bootstrap, _), tempfile.TemporaryDirectory() as tmp:
        for repeat in range(REPEATS):
            # Alternate the order, so a machine getting busier does not favour one count.
            order = WORKER_COUNTS if repeat % 2 == 0 else WORKER_COUNTS[::-1]
            for count in order:
                workdir = Path(tmp) / f"run{repeat}-{count}"
                workdir.mkdir()
                rate = asyncio.run(scale_rate(bootstrap, readings, count, workdir))
                rates[count].append(rate)
                print(f"  run {repeat + 1}, {count} worker(s): {rate:,.0f} readings/s",
                      flush=True)
    baseline = median(rates[1])
    note = (f"{len(readings):,} readings of {DEVICES} devices, {PARTITIONS} partitions, "
            f"{os.cpu_count()} CPUs: on 2 cores the ratio (speed-up), not the absolute, "
            "is the point")
    report("Scale-out: decode + aggregate, N worker processes of one group, same backlog", [
        Row(f"{count} worker process{'es' if count > 1 else ''}", median(rates[count]),
            "readings/s", "1 worker", baseline, note if count == WORKER_COUNTS[-1] else "")
        for count in WORKER_COUNTS
    ])
