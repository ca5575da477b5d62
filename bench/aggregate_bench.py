"""Readings/s through decode + aggregate in one worker process on the real broker
(RocksDB state, changelogs on), next to a raw aiokafka consume + protobuf decode loop over
the same raw records: the floor cost of merely reading and parsing them in Python.

Also reports the state kept per device (latest value of every changelog key).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import METRICS_POLL, REPEATS, Row, broker, median, report
from streams import simulate
from streams.codec import Decoder, first_device_key
from streams.config import Settings
from streams.embedded_kafka import free_port
from streams.topics import ensure_topics, topic_specs
from streams.windows import US

DEVICES = int(os.environ.get("BENCH_DEVICES", "500"))
# 10 h of one-a-minute readings per meter: longer than the allowed lateness (6 h), so the
# state figure is a meter's steady state, and 300k readings, so that the start and the end
# of the run (small first batches, the last batches' waits for Kafka) weigh little in the
# rate. With 200 (3.3 h, 100k readings, ~5 s) both were off: state 23.6 KiB per meter
# instead of ~50, and the worker waiting a third of the run.
READINGS_PER_DEVICE = int(os.environ.get("BENCH_READINGS_PER_DEVICE", "600"))
PER_BODY = 10  # a meter's buffered upload


def _settings(bootstrap: str, state: Path, partitions: int = 6) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    base = Settings(kafka_bootstrap=bootstrap, app_id=f"bench-{suffix}", state_dir=state,
                    topic_partitions=partitions, worker_port=free_port(), log_level="warning",
                    worker_session_timeout=6.0)
    return base.replace(**{n: f"{v}.{suffix}" for n, v in base.all_topics.items()})


def _trace() -> list[simulate.TraceReading]:
    fleet = simulate.Fleet(DEVICES, seed=3)
    start = int(time.time() // 3600 * 3600 - 3 * 86400) * US
    return fleet.trace(start, READINGS_PER_DEVICE * 60, 60, jitter=0.1)


async def produce_raw(settings: Settings, readings: list[simulate.TraceReading]) -> int:
    await ensure_topics(settings.kafka_bootstrap, topic_specs(settings))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                linger_ms=20)
    await producer.start()
    by_device: dict[str, list[simulate.TraceReading]] = {}
    for reading in readings:
        by_device.setdefault(reading.device_id, []).append(reading)
    bodies = 0
    # Interleave devices in time like live traffic: the i-th upload of every meter, then
    # the next, each upload carrying PER_BODY readings.
    longest = max(len(r) for r in by_device.values())
    for step in range(0, longest, PER_BODY):
        for device_readings in by_device.values():
            chunk = device_readings[step:step + PER_BODY]
            if chunk:
                payload = simulate.body(chunk)
                await producer.send(settings.topic_raw, payload, key=first_device_key(payload))
                bodies += 1
    await producer.stop()
    return bodies


async def ceiling(settings: Settings, expected: int) -> float:
    """Consume every raw record with aiokafka and decode it: no Faust, no state, no output."""
    decoder = Decoder()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(settings.topic_raw, p)
               for p in consumer.partitions_for_topic(settings.topic_raw) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        readings = 0
        began = time.perf_counter()
        deadline = time.monotonic() + 300
        while readings < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                for record in records:
                    readings += len(decoder.decode(record.value))
        return readings / (time.perf_counter() - began)
    finally:
        await consumer.stop()


async def _metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    """One sample's value, from a scrape restricted to it (a full scrape of 500 devices
    every second would be a part of the worker's time the figure then misses)."""
    try:
        async with session.get(url, params={"name[]": name}) as response:
            for line in (await response.text()).splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except aiohttp.ClientError:
        pass
    return 0.0


async def worker_rate(settings: Settings, expected: int, log: Path, tree: Path | None = None
                      ) -> tuple[float, float, float]:
    """Start a worker on the backlog; readings/s from its first to its last aggregation,
    its RSS, and the CPU time it spent per reading meanwhile (µs; steadier than the rate
    on a shared machine). `tree`: a checkout whose code the worker runs instead of this
    one (see bench.compare)."""
    env = {**os.environ, **settings.to_env()}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)  # ahead of the installed (editable) package
    process = subprocess.Popen([sys.executable, "-m", "streams", "worker"], env=env,
                               cwd=tree, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{settings.worker_port}/metrics"
    try:
        async with aiohttp.ClientSession() as session:
            first_at = None
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                done = await _metric(session, url, "meterstream_readings_aggregated_total")
                if done and first_at is None:
                    first_at, first_done = time.perf_counter(), done
                    first_cpu = _cpu_seconds(process.pid)
                if done >= expected:
                    assert first_at is not None
                    elapsed = time.perf_counter() - first_at
                    cpu = _cpu_seconds(process.pid) - first_cpu
                    rss = _rss_mib(process.pid)
                    return (done - first_done) / elapsed, rss, cpu / (done - first_done) * 1e6
                if process.poll() is not None:
                    raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
                await asyncio.sleep(METRICS_POLL)
        raise TimeoutError("worker did not finish the backlog")
    finally:
        process.terminate()
        process.wait(60)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def state_bytes(settings: Settings) -> float:
    """Bytes of state per device: the latest value of every key of both changelogs."""
    latest: dict[bytes, int] = {}
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        for table in ("aggregate-heads", "aggregate-chunks"):
            topic = f"{settings.app_id}-{table}-changelog"
            cluster = await consumer._client.fetch_all_metadata()
            tps = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        if record.value is None:
                            latest.pop(record.key, None)
                        else:
                            latest[record.key] = len(record.key) + len(record.value)
    finally:
        await consumer.stop()
    return sum(latest.values()) / DEVICES


def run() -> None:
    readings = _trace()
    rates, ceilings, rss, per_device, cpu = [], [], [], [], []
    with broker() as (bootstrap, _), tempfile.TemporaryDirectory() as tmp:
        for repeat in range(REPEATS):
            settings = _settings(bootstrap, Path(tmp) / f"state{repeat}")
            asyncio.run(produce_raw(settings, readings))
            ceilings.append(asyncio.run(ceiling(settings, len(readings))))
            rate, mib, cpu_us = asyncio.run(worker_rate(settings, len(readings),
                                                        Path(tmp) / f"worker{repeat}.log"))
            rates.append(rate)
            cpu.append(cpu_us)
            print(f"  run {repeat + 1}: {rate:,.0f} readings/s, {cpu_us:.0f} µs CPU per reading "
                  f"(busy {rate * cpu_us / 1e6:.0%})", flush=True)
            rss.append(mib)
            per_device.append(asyncio.run(state_bytes(settings)))
    # The share of the run the worker's CPU was busy: below 1 it waited (for its input or
    # for Kafka's acknowledgements); its threads together can exceed 1.
    busy = [rate * cpu_us / 1e6 for rate, cpu_us in zip(rates, cpu, strict=True)]
    note = (f"{DEVICES} devices × {READINGS_PER_DEVICE} readings, {PER_BODY} per body; "
            f"worker CPU {median(cpu):.0f} µs/reading, busy {median(busy):.0%} of the run; "
            f"RSS {median(rss):.0f} MiB; "
            f"state {median(per_device) / 1024:.1f} KiB/device")
    report("Decode + aggregate, one worker process, RocksDB + changelogs, 3 window sizes", [
        Row("worker: raw → readings → windows", median(rates), "readings/s",
            "aiokafka consume + decode", median(ceilings), note),
    ])
