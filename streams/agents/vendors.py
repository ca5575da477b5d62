"""The vendor side of a worker: leader-only pollers of the smart-me inventory and of
UMeter, the agents that fold what they publish into global tables (every worker holds a
full copy: enrichment needs any meter's data wherever its readings are processed), and
M-Bus meter alerts.

Pollers run in timers, which cannot write tables, so they publish to the compacted
topics (``smartme.devices``, ``umeter.customer``, ``umeter.measurements``) and agents do
the folding. Vendor errors are logged and counted; they never stop the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from streams import smartme, umeter
from streams.enrichment import MBUS_GATEWAY

if TYPE_CHECKING:
    from streams.app import Pipeline

log = logging.getLogger(__name__)


def _loads(raw: bytes | None) -> dict[str, Any]:
    return orjson.loads(raw) if raw else {}


def smartme_configured(pipeline: Pipeline) -> bool:
    try:
        smartme.auth_from_settings(pipeline.settings)
    except smartme.SmartMeConfigError:
        return False
    return pipeline.settings.smartme_poll_interval > 0


def register(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    app = pipeline.app
    metrics = pipeline.metrics
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
                           "value_serializer": "raw"}
    inventory = app.GlobalTable("smartme-inventory", key_type=bytes, value_type=bytes,
                                partitions=settings.topic_partitions)
    umeter_data = app.GlobalTable("umeter-data", key_type=bytes, value_type=bytes,
                                  partitions=settings.topic_partitions)
    pipeline.inventory_table = inventory
    pipeline.umeter_table = umeter_data

    async def fold_inventory(stream: Any) -> None:
        async for event in stream.events():
            record = _loads(event.value)
            previous = _loads(inventory.get(event.key))
            inventory[event.key] = event.value
            for alert in map(pipeline.enrich_alert, mbus_alerts(record, previous,
                                                                  pipeline.clock())):
                await pipeline.produce(settings.topic_alerts, orjson.dumps(alert),
                                       key=alert["device_id"].encode(),
                                       device_id=alert["device_id"])
                metrics.alerts.labels(alert["state"]).inc()
                log.warning("M-Bus meter %s: %s", alert["device_id"], alert["state"])

    async def fold_umeter(stream: Any) -> None:
        async for event in stream.events():
            kind = "customer" if event.message.topic == settings.topic_umeter_customer \
                else "measurement"
            umeter_data[f"{kind}|".encode() + (event.key or b"")] = event.value

    app.agent(app.topic(settings.topic_smartme_devices, **raw), name="fold-inventory")(
        fold_inventory)
    app.agent(app.topic(settings.topic_umeter_customer, settings.topic_umeter_measurements,
                        **raw), name="fold-umeter")(fold_umeter)

    async def guarded(vendor: str, poll: Callable[[], Awaitable[None]]) -> None:
        """One poll; whatever goes wrong is logged and counted, never raised: an exception
        escaping a Faust timer ends the timer, and the worker would never poll again."""
        began = time.time()
        try:
            await poll()
        except (smartme.SmartMeError, umeter.UMeterError, OSError) as exc:
            metrics.vendor_polls.labels(vendor, "error").inc()
            log.error("%s poll failed: %s", vendor, exc)
            return
        except Exception:
            metrics.vendor_polls.labels(vendor, "error").inc()
            log.exception("%s poll failed unexpectedly", vendor)
            return
        metrics.vendor_polls.labels(vendor, "ok").inc()
        metrics.vendor_last_success.labels(vendor).set(began)

    async def publish_inventory() -> None:
        records = await fetch_inventory(pipeline)
        for key, record in records:
            await pipeline.produce(settings.topic_smartme_devices, orjson.dumps(record),
                                   key=key.encode(), device_id=key)
        log.info("smart-me inventory: %d devices", len(records))

    async def publish_umeter() -> None:
        customer, days = await fetch_umeter(pipeline)
        await pipeline.produce(settings.topic_umeter_customer, orjson.dumps(customer[1]),
                               key=customer[0].encode())
        for key, record in days:
            await pipeline.produce(settings.topic_umeter_measurements, orjson.dumps(record),
                                   key=key.encode())

    async def poll_smartme() -> None:
        await guarded("smartme", publish_inventory)

    async def poll_umeter() -> None:
        await guarded("umeter", publish_umeter)

    pipeline.pollers = {"smartme": poll_smartme, "umeter": poll_umeter}
    if smartme_configured(pipeline):
        app.timer(settings.smartme_poll_interval, on_leader=True)(poll_smartme)
    else:
        log.info("smart-me inventory poll off (no smart-me credentials or interval 0)")
    if settings.umeter_username:
        app.timer(settings.umeter_poll_interval, on_leader=True)(poll_umeter)
    else:
        log.info("UMeter poll off (METERSTREAM_UMETER_USERNAME not set)")


async def fetch_inventory(pipeline: Pipeline) -> list[tuple[str, dict[str, Any]]]:
    """The smart-me devices as inventory records; M-Bus gateways carry their meters."""
    records = []
    async with smartme.SmartMeClient(pipeline.settings) as client:
        for device in await client.devices():
            key, record = smartme.inventory_record(device)
            if record.get("energy_type_name") == MBUS_GATEWAY:
                try:
                    gateway = await client.mbus_gateway(device.id)
                    record["mbus"] = smartme.mbus_gateway_metrics(gateway)
                except smartme.SmartMeError as exc:
                    log.warning("M-Bus gateway %s: %s", device.id, exc)
            records.append((key, record))
    return records


async def fetch_umeter(pipeline: Pipeline) -> tuple[tuple[str, dict[str, Any]],
                                                    list[tuple[str, dict[str, Any]]]]:
    """The customer and, per EAN, yesterday's and today's measurements (grid-operator
    data usually arrives the next day, so yesterday is asked again until it is there)."""
    now = datetime.now(UTC)
    today = now.astimezone(umeter.LOCAL_TZ).date()
    days: list[tuple[str, dict[str, Any]]] = []
    async with umeter.UMeterClient.from_settings(pipeline.settings) as client:
        customer = await client.customer()
        for ean in customer.eans:
            for day in (today - timedelta(days=1), today):
                try:
                    measured = await client.measurements(ean, date=_yyyymmdd(day))
                except umeter.UMeterError as exc:
                    log.warning("UMeter measurements %s %s: %s", ean, day, exc)
                    continue
                days.append(umeter.measurement_record(measured, polled_at=now))
    return umeter.customer_record(customer, polled_at=now), days


def _yyyymmdd(day: date) -> str:
    return f"{day:%Y%m%d}"


def mbus_alerts(record: dict[str, Any], previous: dict[str, Any], now: float
                ) -> list[dict[str, Any]]:
    """One alert per M-Bus meter whose readout state turned bad (CRC error, failed
    readout) or good again since the previous inventory record of its gateway."""
    gateway = record.get("mbus") or {}
    before = {m.get("id"): m for m in (previous.get("mbus") or {}).get("meters", [])}
    alerts = []
    for meter in gateway.get("meters", []):
        meter_id = meter.get("id")
        if not meter_id:
            continue
        was = bool(before.get(meter_id, {}).get("alert"))
        if bool(meter.get("alert")) == was:
            continue
        alerts.append({
            "device_id": meter_id,
            "state": f"mbus_{(meter.get('state_name') or 'unknown').lower()}",
            "gateway_id": gateway.get("gateway_id"),
            "gateway_name": gateway.get("name"),
            "name": meter.get("name"),
            "detected_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        })
    return alerts
