"""Offline episodes survive a worker crash on the real broker: the restarted worker does
not report the episode again, and reports the meter's return exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from streams import simulate
from streams.config import Settings
from tests.integration.conftest import metric_value, read_records, running_bridge
from tests.integration.test_monitoring import post_readings, wait_for

TICKS = "meterstream_sweep_ticks_total"


async def alert_states(settings: Settings, count: int) -> list[str]:
    records = await read_records(settings.kafka_bootstrap, settings.topic_alerts,
                                 count=count, timeout=60, settle=2)
    return [orjson.loads(r.value)["state"] for r in records]


async def test_an_offline_episode_is_reported_once_across_a_sigkill_restart(
    settings: Settings, start_process: Any
) -> None:
    settings = settings.replace(offline_threshold=5.0, sweep_interval=1.0,
                                worker_session_timeout=6.0)
    url = f"http://127.0.0.1:{settings.worker_port}/metrics"
    fleet = simulate.Fleet(1, seed=11)
    device = fleet.device_ids[0]
    async with running_bridge(settings):
        worker = start_process("worker", settings)
        await post_readings(settings, fleet, count=2)
        assert await alert_states(settings, 1) == ["offline"], worker.log_tail()
        await asyncio.sleep(3)  # well past the batch that recorded the episode
        worker.kill()  # SIGKILL

        worker = start_process("worker", settings)  # same state dir and group

        async def swept_a_while() -> bool:
            return (await metric_value(url, TICKS) or 0) >= 2 * settings.topic_partitions

        await wait_for(swept_a_while, timeout=120, what="the restarted worker sweeping")
        states = await alert_states(settings, 1)
        assert states == ["offline"], f"episode reported again:\n{worker.log_tail()}"
        # Its offline state came back with the table, not just its absence of alerts.
        assert await metric_value(url, f'meterstream_device_online{{device_id="{device}"}}') \
            == 0.0

        await post_readings(settings, fleet, count=1)
        assert await alert_states(settings, 2) == ["offline", "online"]
