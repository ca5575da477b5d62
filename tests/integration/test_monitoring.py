"""Worker and bridge metrics on the real broker: promtool-clean, and no stale or
duplicate device series when partitions move between workers."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from streams import simulate
from streams.config import Settings
from streams.embedded_kafka import free_port
from streams.windows import US
from tests.integration.conftest import (
    AUTH,
    bridge_url,
    running_bridge,
)

_DEVICE = re.compile(r'^meterstream_device_online\{device_id="([^"]+)"\} ', re.M)


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(url) as response:
                return await response.text()
        except (aiohttp.ClientError, OSError):
            return ""


async def device_view(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, (url, response.status, await response.text())
        return dict(await response.json())


def exported_devices(text: str) -> set[str]:
    return set(_DEVICE.findall(text))


async def post_readings(settings: Settings, fleet: simulate.Fleet, count: int = 3) -> None:
    now = int(time.time()) * US
    readings = fleet.trace(now - count * 60 * US, count * 60, 60, jitter=0.0)
    async with aiohttp.ClientSession() as session:
        for body in simulate.bodies(readings, 10):
            async with session.post(bridge_url(settings), data=body, headers=AUTH) as response:
                assert response.status == 200


async def wait_for(predicate, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install Debian's prometheus package (make test does)"
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)


async def test_scraped_worker_and_bridge_metrics_pass_promtool(
    settings: Settings, start_process
) -> None:
    settings = settings.replace(sweep_interval=1.0)
    start_process("worker", settings)
    fleet = simulate.Fleet(5, seed=5)
    worker_url = f"http://127.0.0.1:{settings.worker_port}/metrics"
    async with running_bridge(settings):
        await post_readings(settings, fleet)
        await wait_for(lambda: _has_all(worker_url, set(fleet.device_ids)), what="devices")
        bridge_text = await scrape(bridge_url(settings, "/metrics"))
    worker_text = await scrape(worker_url)
    # The whole scrape, Faust's PrometheusMonitor and the process collectors included.
    for name, text in (("worker", worker_text), ("bridge", bridge_text)):
        result = promtool_check(text)
        assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
            f"promtool complains about the {name}'s metrics:\n{result.stdout}{result.stderr}")
    assert 'meterstream_bridge_requests_total{code="200",source="test"}' in bridge_text
    for histogram in ("request_duration_seconds", "produce_duration_seconds", "body_bytes"):
        assert _sample(bridge_text, f"meterstream_bridge_{histogram}_count") > 0, histogram
    assert "meterstream_device_power_watts" in worker_text
    assert 'meterstream_devices{state="online"} 5.0' in worker_text
    assert _sample(worker_text, "meterstream_faust_messages_received_total") > 0
    assert "# TYPE meterstream_faust_events_runtime_seconds histogram" in worker_text


def _sample(text: str, name: str) -> float:
    """The value of an unlabelled sample in an exposition text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def _has_all(url: str, devices: set[str]) -> bool:
    return devices <= exported_devices(await scrape(url))


async def test_devices_move_with_their_partitions_between_workers(
    settings: Settings, start_process, tmp_path: Path
) -> None:
    settings = settings.replace(sweep_interval=1.0, worker_session_timeout=6.0)
    first = start_process("worker", settings)
    second_settings = settings.replace(worker_port=free_port(),
                                       state_dir=tmp_path / "state-b")
    url_a = f"http://127.0.0.1:{settings.worker_port}/metrics"
    url_b = f"http://127.0.0.1:{second_settings.worker_port}/metrics"
    fleet = simulate.Fleet(24, seed=9)
    everyone = set(fleet.device_ids)
    async with running_bridge(settings):
        await post_readings(settings, fleet)
        await wait_for(lambda: _has_all(url_a, everyone), what="first worker exports all")

        second = start_process("worker", second_settings)

        async def split() -> bool:
            a = exported_devices(await scrape(url_a))
            b = exported_devices(await scrape(url_b))
            return bool(a) and bool(b) and not a & b and a | b == everyone

        await wait_for(split, timeout=180, what="devices split between the two workers")
        # Stays split: no device shows up on both over several scrapes.
        for _ in range(6):
            a = exported_devices(await scrape(url_a))
            b = exported_devices(await scrape(url_b))
            assert not a & b, f"exported twice: {a & b}"
            await asyncio.sleep(0.5)
        # Either worker answers GET /devices/{id} for any meter (forwarded to its owner).
        for device in (next(iter(a)), next(iter(b))):
            for base in (url_a, url_b):
                view = await device_view(base.replace("/metrics", f"/devices/{device}"))
                assert view["device_id"] == device and view["latest_reading"], view

        second.kill()  # its partitions come back to the first worker
        await wait_for(lambda: _has_all(url_a, everyone), timeout=180,
                       what="first worker takes every device back")
    assert first.proc.poll() is None
    assert uuid.UUID(next(iter(everyone)))  # ids are the decoder's UUID form
