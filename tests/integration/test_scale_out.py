"""Scale-out on the real broker: two bridges, three workers, six partitions.

A 500-meter fleet's readings (a few % duplicates) are posted for a while through two
bridge processes, alternating between them, to three worker processes of one consumer
group. Once the second worker has aggregated some readings it is killed with SIGKILL; when
the other two export all of its meters it is restarted on its own state dir and port.

Then every accepted body must be in the raw topic and every reading of the trace in the
readings topic, and the final aggregates must equal, field for field except `revision`,
those of a single worker over the same bodies on topics of its own (run alongside), as
well as the straightforward computation over the sorted trace (tests/reference.py). While
the workers run, their /metrics are scraped over and over: a meter may be missing while
its partition moves, but never exported by two workers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streams import simulate
from streams.codec import Decoder
from streams.config import Settings
from streams.embedded_kafka import EmbeddedKafka, free_port
from streams.windows import US
from tests.integration.conftest import (
    AUTH,
    Process,
    bridge_url,
    header,
    metric_value,
    produce_raw,
    read_records,
    unique_settings,
    wait_http_ok,
    wait_until,
)
from tests.integration.test_aggregation import (
    SIZES,
    Trace,
    assert_reference_windows,
    assert_same_windows,
    final_aggregates,
)
from tests.integration.test_monitoring import exported_devices, scrape

DEVICES, MINUTES, CADENCE = 500, 20, 60
PER_BODY = 5  # a meter uploads five minutes of readings at once
PARTITIONS, BRIDGES, WORKERS = 6, 2, 3
FEED_SECONDS = 45.0  # the fleet's bodies are spread over this long
VICTIM = 1  # the worker that is killed and restarted
AGGREGATED = "meterstream_readings_aggregated_total"


async def where_missing(settings: Settings, raw: list[ConsumerRecord],
                        missing: set[tuple[str, int]]) -> str:
    """The raw records holding the missing readings, and the group's committed and end
    offsets of their partitions (stuck, or committed past them?)."""
    decoder = Decoder()
    spots = sorted({(r.partition, r.offset) for r in raw
                    for reading in decoder.decode(r.value)
                    if (reading.device_id, reading.timestamp_us) in missing})
    tps = [TopicPartition(settings.topic_raw, p) for p in sorted({p for p, _ in spots})]
    group = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                             group_id=settings.app_id, enable_auto_commit=False)
    await group.start()
    try:  # no subscription: it reads the group's offsets without joining it
        committed = {tp.partition: await group.committed(tp) for tp in tps}
        ends = {tp.partition: end for tp, end in (await group.end_offsets(tps)).items()}
    finally:
        await group.stop()
    return (f"in raw (partition, offset) {spots}; group committed {committed}, "
            f"end offsets {ends}")


def make_trace() -> Trace:
    fleet = simulate.Fleet(DEVICES, seed=23)
    # The trace ends at the last full hour, so even its hour windows end in the past and
    # the wall-clock sweep finalizes everything soon after the feed.
    end = int(time.time() // 3600 * 3600) * US
    readings = fleet.trace(end - MINUTES * 60 * US, MINUTES * 60, CADENCE)
    arrival = simulate.arrival_order(readings, seed=29, duplicates=0.03)
    return Trace(readings, arrival)


def uploads(arrival: list[simulate.TraceReading]) -> list[bytes]:
    """Bodies in delivery order: a meter uploads once it has PER_BODY readings."""
    pending: dict[str, list[simulate.TraceReading]] = {}
    bodies: list[bytes] = []
    for reading in arrival:
        chunk = pending.setdefault(reading.device_id, [])
        chunk.append(reading)
        if len(chunk) == PER_BODY:
            bodies.append(simulate.body(pending.pop(reading.device_id)))
    bodies += [simulate.body(chunk) for chunk in pending.values()]
    return bodies


async def assigned_raw_partitions(url: str, topic: str) -> set[int]:
    """The raw-topic partitions a worker consumes (from its consumer-lag gauge)."""
    prefix = "meterstream_consumer_lag_records{"
    owned: set[int] = set()
    for line in (await scrape(url)).splitlines():
        if line.startswith(prefix) and f'topic="{topic}"' in line:
            owned.add(int(line.split('partition="')[1].split('"')[0]))
    return owned


def run_settings(kafka: EmbeddedKafka, state_dir: Path) -> Settings:
    return unique_settings(kafka, state_dir).replace(
        topic_partitions=PARTITIONS, window_grace=20, sweep_interval=2.0, window_sizes=SIZES)


async def start_single_worker(kafka: EmbeddedKafka, state_dir: Path, bodies: list[bytes],
                              start_process: Callable[[str, Settings], Process]
                              ) -> tuple[Settings, Process]:
    """One worker over the same bodies, on topics of its own (the bodies go straight into
    its raw topic, keyed like the bridge keys them); returns once it consumes."""
    settings = run_settings(kafka, state_dir)
    await produce_raw(settings, bodies)
    worker = start_process("worker", settings)
    await wait_for_group(settings, [worker], [metrics_url(settings)])
    return settings, worker


async def single_worker_aggregates(settings: Settings, worker: Process, trace: Trace
                                   ) -> dict[bytes, dict[str, Any]]:
    try:
        latest, _ = await final_aggregates(settings, trace, timeout=180)
    except AssertionError as exc:
        raise AssertionError(f"single-worker run: {exc}\n{worker.log_tail()}") from None
    finally:
        worker.kill()
    return latest


def metrics_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.worker_port}/metrics"


async def wait_for_group(settings: Settings, workers: list[Process], urls: list[str]) -> None:
    """Until these workers (all of the group) consume disjoint raw partitions, all of them."""
    owned: list[set[int]] = []

    async def formed() -> bool:
        owned[:] = [await assigned_raw_partitions(url, settings.topic_raw) for url in urls]
        return all(owned) and sum(map(len, owned)) == PARTITIONS \
            and set().union(*owned) == set(range(PARTITIONS))

    def logs() -> str:
        return f"raw partitions per worker: {owned}\n" + "\n".join(
            f"--- {w.log_path.name}:\n{w.log_tail(15)}" for w in workers)

    await wait_until(formed, 120, f"{len(workers)} worker(s) sharing the partitions", logs)


@dataclass
class Ownership:
    """Which worker exports which meter, scraped in rounds for as long as it runs."""

    urls: list[str]
    rounds: int = 0
    full_rounds: int = 0  # every worker answered and exported meters
    transient: int = 0  # overlaps that were gone in the immediate re-scrape
    doubled: list[tuple[int, int, int, list[str]]] = field(default_factory=list)
    latest: list[set[str]] = field(default_factory=list)

    async def snapshot(self) -> list[set[str]]:
        texts = await asyncio.gather(*(scrape(url) for url in self.urls))
        return [exported_devices(text) for text in texts]

    async def check_round(self) -> None:
        sets = await self.snapshot()
        overlaps = {(i, j): sets[i] & sets[j] for i, j in combinations(range(len(sets)), 2)}
        if any(overlaps.values()):
            # One scrape is not atomic across processes: a partition can move between the
            # moments two workers render their answers. A meter really held by two workers
            # stays doubled (only a revocation or a sweep of its partition drops it), so it
            # must still be on both in a second scrape right away.
            again = await self.snapshot()
            for (i, j), devices in overlaps.items():
                confirmed = devices & again[i] & again[j]
                if confirmed:
                    self.doubled.append((self.rounds, i, j, sorted(confirmed)[:5]))
                elif devices:
                    self.transient += 1
            sets = again
        self.rounds += 1
        self.full_rounds += all(sets)
        self.latest = sets

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check_round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def feed(bodies: list[bytes], urls: list[str], seconds: float) -> list[str]:
    """POST every body, alternating between the bridges, spread over `seconds`; a body
    that is not accepted is posted again (what smart-me does). Returns the request ids of
    the 200 answers."""
    accepted: list[str] = []
    semaphore = asyncio.Semaphore(8)
    headers = {**AUTH, "Content-Type": "application/octet-stream"}

    async def post(session: aiohttp.ClientSession, index: int, body: bytes) -> None:
        for attempt in range(10):
            url = urls[(index + attempt) % len(urls)]
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with semaphore, session.post(url, data=body, headers=headers) as response:
                    if response.status == 200:
                        answer = orjson.loads(await response.read())
                        assert answer["status"] == "accepted", answer
                        accepted.append(answer["request_id"])
                        return
            await asyncio.sleep(1)
        raise AssertionError(f"body {index} was never accepted")

    began = time.monotonic()
    async with aiohttp.ClientSession() as session:
        tasks = []
        for index, body in enumerate(bodies):
            await asyncio.sleep(max(0.0, began + index * seconds / len(bodies) - time.monotonic()))
            tasks.append(asyncio.create_task(post(session, index, body)))
        await asyncio.gather(*tasks)
    return accepted


async def test_three_workers_two_bridges_one_sigkill_same_aggregates_no_double_export(
    kafka: EmbeddedKafka, tmp_path: Path, start_process: Callable[[str, Settings], Process]
) -> None:
    trace = make_trace()
    assert len(trace.arrival) > len(trace.readings)  # duplicates are part of the traffic
    bodies = uploads(trace.arrival)
    everyone = {r.device_id for r in trace.readings}
    base = run_settings(kafka, tmp_path / "state-0")
    bridge_settings = [base.replace(bridge_port=free_port()) for _ in range(BRIDGES)]
    worker_settings = [base.replace(state_dir=tmp_path / f"state-{i}", worker_port=free_port())
                       for i in range(WORKERS)]
    metrics_urls = [metrics_url(s) for s in worker_settings]
    ownership = Ownership(metrics_urls)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        # The single-worker run for comparison works its backlog while the scale-out runs.
        single = asyncio.create_task(single_worker_aggregates(
            *await start_single_worker(kafka, tmp_path / "single", bodies, start_process),
            trace))
        tasks.append(single)
        bridges = [start_process("bridge", s) for s in bridge_settings]
        for settings, bridge in zip(bridge_settings, bridges, strict=True):
            try:
                await wait_http_ok(bridge_url(settings, "/readyz"), timeout=60)
            except TimeoutError:
                raise AssertionError(f"bridge not ready:\n{bridge.log_tail()}") from None
        # Workers join one at a time, each rebalance done before the next, so the feed
        # meets a settled group of three (joining is not what this test is about).
        workers: list[Process] = []
        for settings in worker_settings:
            workers.append(start_process("worker", settings))
            await wait_for_group(base, workers, metrics_urls[:len(workers)])

        def logs() -> str:
            return "\n".join(f"--- worker {i}:\n{w.log_tail(15)}" for i, w in enumerate(workers))

        began = time.monotonic()
        monitor = asyncio.create_task(ownership.run(stop))
        tasks.append(monitor)
        feeding = asyncio.create_task(
            feed(bodies, [bridge_url(s) for s in bridge_settings], FEED_SECONDS))
        tasks.append(feeding)

        async def victim_busy() -> bool:
            return (await metric_value(metrics_urls[VICTIM], AGGREGATED) or 0) \
                >= len(trace.arrival) / 10

        await wait_until(victim_busy, 120, "the victim aggregating readings", logs)
        held = set(ownership.latest[VICTIM]) if ownership.latest else set()
        workers[VICTIM].kill()  # SIGKILL: no commit, no flush, no goodbye
        killed_at = time.monotonic()
        assert held, "the victim exported no meters before it was killed"
        assert not feeding.done(), "the feed ended before the kill: nothing ran mid-feed"

        async def taken_over() -> bool:
            survivors = set().union(*(s for i, s in enumerate(ownership.latest) if i != VICTIM))
            return held <= survivors

        await wait_until(taken_over, 120, "the survivors exporting the victim's meters", logs)
        workers[VICTIM] = start_process("worker", worker_settings[VICTIM])  # same state dir
        restarted_at = time.monotonic()
        accepted = await feeding
        fed_at = time.monotonic()
        latest, _ = await final_aggregates(base, trace, timeout=180)

        async def settled() -> bool:
            assert not ownership.doubled, f"exported by two workers: {ownership.doubled[:5]}"
            sets = ownership.latest
            return bool(sets) and all(sets) and sum(map(len, sets)) == len(everyone) \
                and set().union(*sets) == everyone

        await wait_until(settled, 120, "every meter exported by exactly one worker", logs)
        stop.set()
        await monitor
        alone = await single
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(f"killed at {killed_at - began:.0f}s holding {len(held)} meters, restarted at "
          f"{restarted_at - began:.0f}s, feed done at {fed_at - began:.0f}s; "
          f"{ownership.rounds} scrape rounds ({ownership.full_rounds} with three busy "
          f"workers), {ownership.transient} overlaps gone on re-scrape")

    # (c) never exported twice, and the scrapes did see three busy workers.
    assert not ownership.doubled, f"meters exported by two workers: {ownership.doubled[:5]}"
    assert ownership.full_rounds >= 5, (ownership.rounds, ownership.full_rounds)

    # (a) every accepted body is in the raw topic, every reading in the readings topic.
    assert len(accepted) == len(bodies)
    raw = await read_records(base.kafka_bootstrap, base.topic_raw, count=len(accepted),
                             timeout=60)
    missing_bodies = set(accepted) - {header(r, "request-id") for r in raw}
    assert not missing_bodies, f"{len(missing_bodies)} accepted bodies not in {base.topic_raw}"
    decoded = await read_records(base.kafka_bootstrap, base.topic_readings,
                                 count=len(trace.arrival), timeout=60)
    seen: set[tuple[str, int]] = set()
    for record in decoded:
        value = orjson.loads(record.value)
        seen.add((value["device_id"], value["timestamp_us"]))
    missing = {(r.device_id, r.ts_us) for r in trace.readings} - seen
    assert not missing, (f"{len(missing)} readings not in {base.topic_readings}: "
                         f"{await where_missing(base, raw, missing)}")

    # (b) the final aggregates are those of one worker over the same trace, exactly (window
    # contents are a pure function of the sorted readings; only revisions may differ) ...
    assert_same_windows(latest, alone)
    # ... and what the straightforward computation over the sorted trace gives.
    assert_reference_windows(latest, trace, final=True)
