"""The vendor pollers on the real broker, against the fake vendor servers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from streams import simulate
from streams.agents.decode import reading_record
from streams.codec import Decoder
from streams.config import Settings
from streams.topics import ensure_topics, topic_specs
from tests.fakes.smartme_server import HEAT_ID, FakeSmartMe
from tests.fakes.umeter_server import FakeUMeter
from tests.integration.conftest import (
    metric_value,
    read_records,
    running_bridge,
)
from tests.integration.test_monitoring import post_readings, scrape, wait_for
from tests.unit.test_cli_vendors import meterstream

SMARTME_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"  # the fixture device, never sends here
EAN = "871687120000000017"


async def test_inventory_poll_reports_a_never_seen_meter_offline(
    settings: Settings, start_process
) -> None:
    async with FakeSmartMe() as fake:
        vendor = fake.settings()
        settings = settings.replace(
            smartme_base_url=vendor.smartme_base_url, smartme_api_key=vendor.smartme_api_key,
            smartme_poll_interval=2.0, sweep_interval=1.0, offline_threshold=5.0)
        start_process("worker", settings)
        url = f"http://127.0.0.1:{settings.worker_port}/metrics"

        async def offline_metric() -> bool:
            return f'meterstream_device_online{{device_id="{SMARTME_ID}"}} 0.0' in await scrape(url)

        await wait_for(offline_metric, timeout=120, what="offline metric of the meter")
        text = await scrape(url)
    alerts = [orjson.loads(r.value) for r in await read_records(
        settings.kafka_bootstrap, settings.topic_alerts, count=2, timeout=30)]
    offline = [a for a in alerts if a["device_id"] == SMARTME_ID]
    assert offline and offline[0]["state"] == "offline"
    assert offline[0]["last_seen"] is None and offline[0]["name"] == "METER-EXAMPLE"
    # The M-Bus meter with a failed readout raises its own alert.
    assert any(a["device_id"] == HEAT_ID and a["state"].startswith("mbus_") for a in alerts)
    # M-Bus meters are watched with their gateway's interval, not the 5 s default.
    assert f'meterstream_device_offline_threshold_seconds{{device_id="{HEAT_ID}"}} 2700.0' \
        in text
    assert "meterstream_mbus_gateway_readout_interval_seconds" in text
    inventory = await read_records(settings.kafka_bootstrap, settings.topic_smartme_devices,
                                   count=1, timeout=30)
    assert any(r.key == SMARTME_ID.encode() for r in inventory)


async def test_umeter_poll_enriches_aggregates_with_ean_and_address(
    settings: Settings, start_process, tmp_path: Path
) -> None:
    fleet = simulate.Fleet(2, seed=21)
    device, stranger = fleet.device_ids
    mapping = tmp_path / "mapping.csv"
    mapping.write_text(f"device_id,ean\n{device},{EAN}\n")
    async with FakeUMeter() as fake:
        vendor = fake.settings()
        settings = settings.replace(
            umeter_auth_url=vendor.umeter_auth_url, umeter_app_url=vendor.umeter_app_url,
            umeter_meas_url=vendor.umeter_meas_url, umeter_username=vendor.umeter_username,
            umeter_password=vendor.umeter_password, umeter_poll_interval=2.0,
            umeter_mapping_file=mapping, sweep_interval=1.0, window_grace=10,
            window_sizes=(60,))
        start_process("worker", settings)
        url = f"http://127.0.0.1:{settings.worker_port}/metrics"

        async def polled() -> bool:
            return bool(await metric_value(
                url, 'meterstream_vendor_polls_total{outcome="ok",vendor="umeter"}'))

        await wait_for(polled, timeout=120, what="a successful UMeter poll")
        await asyncio.sleep(3)  # folded into the global table, picked up by a sweep
        async with running_bridge(settings):
            await post_readings(settings, fleet, count=10)
        deadline = time.monotonic() + 90
        enriched: list[dict] = []
        while not enriched and time.monotonic() < deadline:
            records = await read_records(settings.kafka_bootstrap, settings.topic_aggregates,
                                         count=1, timeout=10)
            enriched = [orjson.loads(r.value) for r in records
                        if b'"ean"' in r.value]
        code, out, _ = await meterstream(settings, "umeter", "unmapped")
        unmapped = await metric_value(url, "meterstream_devices_unmapped")
    assert code == 0 and stranger in out and device not in out
    assert unmapped == 1  # the stranger
    assert enriched, "no aggregate record carries the EAN"
    record = enriched[0]
    assert record["device_id"] == device and record["ean"] == EAN
    assert record["address"]["street"] == "Voorbeeldstraat"
    assert record["customer_id"] == "5b0d7c1e-2f43-4c8a-9a51-0d1c2e3f4a5b"
    customers = await read_records(settings.kafka_bootstrap, settings.topic_umeter_customer,
                                   count=1, timeout=30)
    assert customers and orjson.loads(customers[0].value)["eans"] == [EAN]


async def publish_reading(settings: Settings, reading: simulate.TraceReading) -> None:
    """Put a reading into meter.readings as the decode agent would (no worker needed)."""
    await ensure_topics(settings.kafka_bootstrap, topic_specs(settings))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for decoded in Decoder().decode(simulate.body([reading])):
            await producer.send_and_wait(settings.topic_readings, reading_record(decoded, {}),
                                         key=decoded.device_id.encode())
    finally:
        await producer.stop()


async def test_check_units_compares_webhook_and_rest_values(settings: Settings) -> None:
    now = int(time.time()) * 1_000_000
    # The fixture device's REST values: 0.742 kW, 5123.456 kWh import, 12.5 kWh export,
    # sent by the webhook in the assumed units (mWh, W).
    good = simulate.TraceReading(SMARTME_ID, now - 60_000_000, 5123.456e6, 12.5e6, 742.0,
                                 (300.0, 242.0, 200.0))
    async with FakeSmartMe() as fake:
        vendor = fake.settings()
        checked = settings.replace(smartme_base_url=vendor.smartme_base_url,
                                   smartme_api_key=vendor.smartme_api_key)
        await publish_reading(settings, good)
        code, out, err = await meterstream(checked, "smartme", "check-units", SMARTME_ID)
        assert code == 0, out + err
        assert "1-0:1.8.0*255" in out and "implied scale 0.001" in out
        # A meter family that sends power in kW: the check points at the setting.
        await publish_reading(settings, good._replace(ts_us=now, power_w=0.742))
        code, out, _ = await meterstream(checked, "smartme", "check-units", SMARTME_ID)
    assert code == 1 and "CHECK METERSTREAM_OBIS_SCALES" in out and "implied scale 1000" in out
