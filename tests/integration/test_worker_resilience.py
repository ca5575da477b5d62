"""A broker outage while a worker decodes a backlog: what Kafka did not acknowledge is sent
again once it is back, no reading goes missing from meter.readings, and the log says so
in a few lines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson

from streams import simulate
from streams.config import Settings
from streams.embedded_kafka import EmbeddedKafka
from streams.windows import US
from tests.integration.conftest import (
    Process,
    metric_value,
    produce_raw,
    read_records,
    wait_until,
)

DEVICES = 400
READINGS_PER_DEVICE = 100
PER_BODY = 10


async def _backlog(settings: Settings) -> list[simulate.TraceReading]:
    """Raw bodies in smartme.raw, as the bridge would have put them there."""
    start = int(time.time() // 60 * 60 - 86400) * US
    readings = simulate.Fleet(DEVICES, seed=11).trace(start, READINGS_PER_DEVICE * 60, 60)
    by_device = sorted(readings, key=lambda r: (r.device_id, r.ts_us))
    await produce_raw(settings, list(simulate.bodies(by_device, PER_BODY)))
    return readings


async def _metric_reaches(url: str, name: str, at_least: float) -> bool:
    return (await metric_value(url, name) or 0.0) >= at_least


async def test_broker_outage_mid_decode_loses_no_reading(
    settings: Settings, kafka: EmbeddedKafka, start_process: Callable[[str, Settings], Process]
) -> None:
    settings = settings.replace(worker_produce_timeout=3.0)
    readings = await _backlog(settings)
    worker = start_process("worker", settings)
    metrics = f"http://127.0.0.1:{settings.worker_port}/metrics"
    decoded = "meterstream_readings_decoded_total"
    await wait_until(lambda: _metric_reaches(metrics, decoded, 1), 120, "decoding to begin",
                     worker.log_tail)

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, kafka.stop)
    at_stop = await metric_value(metrics, decoded) or 0.0
    await asyncio.sleep(8)  # well past the produce timeout: in-flight records fail
    await loop.run_in_executor(None, kafka.start)

    assert at_stop < len(readings), "the backlog was decoded before the outage began"
    await wait_until(lambda: _metric_reaches(metrics, decoded, len(readings)), 240,
                     "the whole backlog decoded", worker.log_tail)
    resent = await metric_value(metrics, "meterstream_records_resent_total") or 0.0
    assert resent > 0, f"no record failed during the outage\n{worker.log_tail()}"
    assert worker.proc.poll() is None, f"the worker died\n{worker.log_tail()}"

    records = await read_records(settings.kafka_bootstrap, settings.topic_readings,
                                 count=len(readings), timeout=120)
    seen = {(value["device_id"], value["timestamp_us"])
            for value in (orjson.loads(record.value) for record in records)}
    missing = {(r.device_id, r.ts_us) for r in readings} - seen
    assert not missing, f"{len(missing)} of {len(readings)} readings not in meter.readings"
    # aiokafka repeats its connection errors thousands of times a second while the broker is
    # away (~80,000 lines here unfiltered); the worker log must stay readable.
    lines = worker.log_path.read_text(errors="replace").count("\n")
    assert lines < 500, f"{lines} log lines for one outage\n{worker.log_tail()}"
