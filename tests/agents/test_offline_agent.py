from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from streams.agents.aggregate import TICK_KEY
from streams.app import Pipeline
from streams.codec import format_timestamp
from tests.agents.conftest import Clock, Outbox, counter, make_pipeline, wait_until

DEVICE = "6513270e-269e-0d37-f2a7-4de452e6b438"
NEVER = "11111111-2222-4333-8444-555555555555"
T0 = 1_800_000_000.0


def reading(at: float, power: float = 100.0) -> bytes:
    ts_us = int(at * 1_000_000)
    return orjson.dumps({
        "device_id": DEVICE, "timestamp": format_timestamp(ts_us), "timestamp_us": ts_us,
        "values": [{"obis": "1-0:1.7.0*255", "value": power, "normalised": power},
                   {"obis": "1-0:1.8.0*255", "value": 5e6, "normalised": 5000.0}],
        "received_at": format_timestamp(ts_us), "source": "t", "request_id": "r",
    })


def alerts(outbox: Outbox, app: Pipeline) -> list[dict[str, Any]]:
    return [orjson.loads(s.value) for s in outbox.of(app.settings.topic_alerts)]


def scrape(app: Pipeline) -> dict[str, float]:
    samples = {}
    for line in generate_latest(app.registry).decode().splitlines():
        if line.startswith("meterstream_device") or line.startswith("meterstream_devices"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@pytest.fixture
async def watched(tmp_path: Path, clock: Clock) -> Any:
    inventory = tmp_path / "meters.csv"
    inventory.write_text(f"device_id,class,name\n{NEVER},mbus,Never seen\n")
    async for pipeline in make_pipeline(tmp_path, clock, offline_threshold=600,
                                        offline_thresholds="class:mbus=1200",
                                        inventory_file=inventory):
        yield pipeline


async def test_silence_past_the_threshold_alerts_once_and_data_brings_it_back(
    watched: tuple[Pipeline, Outbox], clock: Clock
) -> None:
    app, outbox = watched
    async with app.aggregate_agent.test_context() as agent:
        clock.now = T0
        await agent.put(key=DEVICE.encode(), value=reading(T0))
        await wait_until(lambda: counter(app.metrics.aggregated) == 1)
        assert scrape(app)[f'meterstream_device_online{{device_id="{DEVICE}"}}'] == 1.0
        clock.now = T0 + 700  # past the 600 s threshold
        for n in (1, 2, 3):  # three sweeps, one episode
            await agent.put(key=TICK_KEY, value=b"", partition=0)
            await wait_until(lambda n=n: counter(app.metrics.ticks) == n)
        (gone,) = alerts(outbox, app)
        assert (gone["device_id"], gone["state"], gone["threshold_s"]) == (DEVICE, "offline", 600)
        assert gone["last_seen"] == format_timestamp(int(T0 * 1e6))
        metrics = scrape(app)
        assert metrics[f'meterstream_device_online{{device_id="{DEVICE}"}}'] == 0.0
        assert metrics[f'meterstream_device_seconds_since_last_seen{{device_id="{DEVICE}"}}'] \
            == 700.0
        clock.now = T0 + 800
        await agent.put(key=DEVICE.encode(), value=reading(T0 + 790))
        await wait_until(lambda: counter(app.metrics.aggregated) == 2)
    assert [a["state"] for a in alerts(outbox, app)] == ["offline", "online"]
    assert scrape(app)[f'meterstream_device_online{{device_id="{DEVICE}"}}'] == 1.0


async def test_inventory_meters_never_seen_are_reported_after_their_class_threshold(
    watched: tuple[Pipeline, Outbox], clock: Clock
) -> None:
    app, outbox = watched
    partition = app.partition_of(NEVER)
    async with app.aggregate_agent.test_context() as agent:
        clock.now = T0
        await agent.put(key=TICK_KEY, value=b"", partition=partition)
        await wait_until(lambda: counter(app.metrics.ticks) == 1)
        assert alerts(outbox, app) == []
        clock.now = T0 + 1300  # mbus class: 1200 s
        await agent.put(key=TICK_KEY, value=b"", partition=partition)
        await wait_until(lambda: counter(app.metrics.ticks) == 2)
    (gone,) = alerts(outbox, app)
    assert (gone["device_id"], gone["state"], gone["last_seen"], gone["name"]) == (
        NEVER, "offline", None, "Never seen")
    assert scrape(app)['meterstream_devices{state="offline"}'] == 1.0


async def test_a_revoked_partition_stops_exporting_its_devices(
    watched: tuple[Pipeline, Outbox], clock: Clock
) -> None:
    app, _ = watched
    async with app.aggregate_agent.test_context() as agent:
        clock.now = T0
        await agent.put(key=DEVICE.encode(), value=reading(T0), partition=2)
        await wait_until(lambda: counter(app.metrics.aggregated) == 1)
    assert f'meterstream_device_power_watts{{device_id="{DEVICE}"}}' in scrape(app)
    from faust.types import TP

    await app._on_revoked(app.app, {TP(app.settings.topic_reading_batches, 2)})
    assert not any(DEVICE in name for name in scrape(app))


async def test_id_and_prefix_rules_beat_the_gateway_threshold_which_beats_class_rules(
    tmp_path: Path, clock: Clock
) -> None:
    from streams.offline import Meter

    rules = "id:aaaaaaaa-0000-0000-0000-000000000001=120,prefix:bbbb=300,class:mbus=60"
    async for app, _ in make_pipeline(tmp_path, clock, offline_thresholds=rules):
        def gateway_meter(device_id: str) -> Meter:  # 3 readout intervals of its gateway
            return Meter(device_id, device_class="mbus", threshold=2700.0)

        named = "aaaaaaaa-0000-0000-0000-000000000001"
        prefixed = "bbbbbbbb-0000-0000-0000-000000000002"
        other = "cccccccc-0000-0000-0000-000000000003"
        assert app.threshold(named, gateway_meter(named)) == 120
        assert app.threshold(prefixed, gateway_meter(prefixed)) == 300
        assert app.threshold(other, gateway_meter(other)) == 2700
        assert app.threshold(other, Meter(other, device_class="mbus")) == 60
        assert app.threshold(other, None) == 900
