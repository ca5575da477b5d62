"""A real Prometheus with the project's own rules, scraping a bridge and a worker on the
real broker: MeterOffline fires and resolves with the meter.alerts records, and every
query of the Grafana dashboard returns data."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from streams import simulate
from streams.config import Settings
from streams.embedded_kafka import free_port
from streams.windows import US
from tests.conftest import ROOT
from tests.dashboards import dashboard_queries
from tests.integration.conftest import AUTH, bridge_url, read_records, running_bridge
from tests.integration.test_monitoring import wait_for


def prometheus_config(tmp_path: Path, settings: Settings) -> Path:
    """deploy/prometheus/prometheus.yml with loopback targets and a 1 s cadence."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config.pop("alerting", None)
    config["rule_files"] = [str(ROOT / "deploy" / "prometheus" / "alerts.yml")]
    targets = {"meterstream-bridge": [f"127.0.0.1:{settings.bridge_port}"],
               "meterstream-worker": [f"127.0.0.1:{settings.worker_port}"]}
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": targets[job["job_name"]]}]}
        for job in config["scrape_configs"] if job["job_name"] in targets]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    def __init__(self, config: Path, tmp_path: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus missing: install Debian's prometheus package (make test does)"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp_path / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    async def get(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(
                self.url + path, params=params) as response:
            return await response.json()

    async def firing(self, alert: str) -> dict[str, dict[str, Any]]:
        data = await self.get("/api/v1/alerts")
        return {a["labels"].get("device_id", ""): a for a in data["data"]["alerts"]
                if a["labels"]["alertname"] == alert and a["state"] == "firing"}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def send(settings: Settings, readings: list[simulate.TraceReading]) -> None:
    async with aiohttp.ClientSession() as session:
        for body in simulate.bodies(readings, 20):
            async with session.post(bridge_url(settings), data=body, headers=AUTH) as response:
                assert response.status == 200


async def test_meter_offline_fires_and_resolves_and_the_dashboard_has_data(
    settings: Settings, start_process, tmp_path: Path
) -> None:
    settings = settings.replace(offline_threshold=8.0, sweep_interval=1.0, window_grace=5)
    fleet = simulate.Fleet(2, seed=33)
    steady, flaky = fleet.device_ids
    start_process("worker", settings)
    prometheus = Prometheus(prometheus_config(tmp_path, settings), tmp_path)
    try:
        async with running_bridge(settings):
            now = int(time.time()) * US
            # Two hours of history for both (every window size gets final windows), then
            # only `steady` keeps sending.
            await send(settings, fleet.trace(now - 2 * 3600 * US, 2 * 3600, 60, jitter=0.0))

            active = [fleet.meters[0]]

            async def keep_sending(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    await send(settings, [m.step(int(time.time() * US), 2.0) for m in active])
                    await asyncio.sleep(2)

            stop = asyncio.Event()
            sender = asyncio.create_task(keep_sending(stop))
            try:
                async def flaky_firing() -> bool:
                    return flaky in await prometheus.firing("MeterOffline")

                await wait_for(flaky_firing, timeout=120, what="MeterOffline firing")
                assert steady not in await prometheus.firing("MeterOffline")

                await asyncio.sleep(3)  # two scrapes within every rate() window
                failures = []
                for title, query in dashboard_queries(
                        ROOT / "deploy" / "grafana" / "dashboards" / "meterstream.json", steady):
                    answer = await prometheus.get("/api/v1/query", query=query)
                    if answer.get("status") != "success":
                        failures.append(f"{title}: {answer.get('error')} ({query})")
                    elif not answer["data"]["result"]:
                        failures.append(f"{title}: empty ({query})")
                assert not failures, "\n".join(failures)

                # The flaky meter sends again (and keeps sending): the record says so and
                # the alert resolves (after the rule's keep_firing_for, which bridges
                # partition moves).
                active.append(fleet.meters[1])

                async def resolved() -> bool:
                    return flaky not in await prometheus.firing("MeterOffline")

                await wait_for(resolved, timeout=240, what="MeterOffline resolved")
            finally:
                stop.set()
                await sender
        records = [orjson.loads(r.value) for r in await read_records(
            settings.kafka_bootstrap, settings.topic_alerts, count=2, timeout=30)]
        states = [r["state"] for r in records if r["device_id"] == flaky]
        assert states == ["offline", "online"], records
    finally:
        prometheus.stop()
