"""`meterstream simulate` against a bridge on the real broker: what it reports is what
landed in Kafka, and the traffic has the shape DESIGN.md promises (growing registers,
retries, late batches)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import defaultdict

import orjson

from streams.codec import Decoder
from streams.config import Settings
from tests.integration.conftest import bridge_url, read_records, running_bridge

IMPORT = "1-0:1.8.0*255"


async def run_simulate(settings: Settings, *args: str) -> dict[str, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams", "simulate", "--url", bridge_url(settings), *args,
        env={**os.environ, **settings.to_env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()[-2000:]
    return dict(orjson.loads(out.splitlines()[-1]))


async def test_simulate_reports_what_landed_with_retries_and_late_batches(
    settings: Settings
) -> None:
    async with running_bridge(settings):
        counts = await run_simulate(settings, "--devices", "12", "--rate", "24",
                                    "--duration", "6", "--duplicates", "0.2",
                                    "--late", "0.15", "--seed", "4")
    assert counts["posted"] == counts["accepted"] > 0
    assert counts["rejected"] == counts["errors"] == 0
    assert counts["duplicates"] > 0 and counts["batches"] > 0

    raw = await read_records(settings.kafka_bootstrap, settings.topic_raw,
                             count=counts["accepted"], timeout=60)
    assert len(raw) == counts["accepted"]
    decoder = Decoder()
    bodies = [decoder.decode(record.value) for record in raw]
    assert sum(map(len, bodies)) == counts["readings"] + counts["duplicates"]
    assert sum(len(b) for b in bodies if len(b) > 1) <= counts["late_readings"]
    assert any(len(b) > 1 for b in bodies), "no buffered upload carried several readings"

    # Registers only grow, whatever order the readings arrived in.
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for body in bodies:
        for reading in body:
            value = next(v.normalised for v in reading.values if v.obis == IMPORT)
            series[reading.device_id][reading.timestamp_us] = value
    assert len(series) == 12
    for device, points in series.items():
        values = [points[ts] for ts in sorted(points)]
        assert values == sorted(values), device
