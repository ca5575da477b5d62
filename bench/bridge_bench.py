"""Bridge POST/s and latency at concurrency 64, next to a raw aiokafka producer.

The ceiling is what one Python process gets out of aiokafka with the bridge's own
producer settings (acks=all, idempotent, same linger) doing send_and_wait from 64
concurrent tasks: the bridge cannot be faster than the producer it wraps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer

from bench.codec_bench import SEED
from bench.common import REPEATS, Row, broker, median, percentile, report
from streams.config import Credential, Settings
from streams.embedded_kafka import free_port
from streams.topics import ensure_topics, topic_specs

CONCURRENCY = 64
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))


async def _raw_producer(settings: Settings) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=settings.bridge_linger_ms)
    await producer.start()
    done = 0
    deadline = time.perf_counter() + SECONDS

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await producer.send_and_wait(settings.topic_raw, SEED)
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - began
    await producer.stop()
    return done / elapsed


async def _bridge_load(settings: Settings) -> tuple[float, list[float], int]:
    url = f"http://127.0.0.1:{settings.bridge_port}{settings.bridge_path}"
    cred = settings.bridge_credentials[0]
    auth = aiohttp.helpers.BasicAuth(cred.username, cred.password).encode()
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + SECONDS
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def loop() -> None:
            nonlocal failures
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                async with session.post(url, data=SEED, headers={"Authorization": auth}) as r:
                    await r.read()
                    if r.status != 200:
                        failures += 1
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - began
    return len(latencies) / elapsed, latencies, failures


async def _wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(url)


def run() -> None:
    with broker() as (bootstrap, _), tempfile.TemporaryDirectory() as tmp, \
            Path(tmp, "bridge.log").open("wb") as log:
        suffix = uuid.uuid4().hex[:6]
        settings = Settings(kafka_bootstrap=bootstrap, topic_raw=f"bench.raw.{suffix}",
                            bridge_port=free_port(), log_level="warning",
                            bridge_credentials=(Credential("bench", "bench", "bench"),))
        asyncio.run(ensure_topics(bootstrap, topic_specs(settings)[:1]))
        bridge = subprocess.Popen([sys.executable, "-m", "streams", "bridge"],
                                  env={**os.environ, **settings.to_env()}, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            asyncio.run(_wait_ready(f"http://127.0.0.1:{settings.bridge_port}/readyz"))
            raw, rates, p50s, p99s, failed = [], [], [], [], 0
            for _ in range(REPEATS):
                raw.append(asyncio.run(_raw_producer(settings)))
                rate, latencies, failures = asyncio.run(_bridge_load(settings))
                rates.append(rate)
                p50s.append(percentile(latencies, 0.50) * 1000)
                p99s.append(percentile(latencies, 0.99) * 1000)
                failed += failures
        finally:
            bridge.send_signal(signal.SIGTERM)
            bridge.wait(30)
    note = f"p50 {median(p50s):.1f} ms, p99 {median(p99s):.1f} ms, non-200: {failed}"
    report(f"Bridge at concurrency {CONCURRENCY}, seed payload, {SECONDS:.0f} s per run", [
        Row("bridge POST → 200 (acks=all)", median(rates), "POST/s",
            "raw aiokafka send_and_wait", median(raw), note),
    ])
