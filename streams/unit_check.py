"""``meterstream smartme check-units DEVICE_ID``: are the configured webhook scales right?

smart-me documents the webhook unit of one code only (1-0:1.8.0 in mWh). Its REST API
does carry units (``ActivePowerUnit``, ``CounterReadingUnit``), so the newest realtime
reading of a device from ``meter.readings`` is put next to the device's REST values and the
factor between them is compared with the configured scale per OBIS code.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from streams import obis, smartme
from streams.config import Settings

# REST Device fields in W / Wh after unit conversion, by the OBIS code they correspond to.
_REST_FIELDS = {"1-0:1.7.0*255": "power", "1-0:1.8.0*255": "import", "1-0:2.8.0*255": "export"}
_SCAN = 20_000  # records read back from the end of the device's partition
_TOLERANCE = 0.05  # values move between the two snapshots; energy registers barely do


async def latest_reading(settings: Settings, device_id: str) -> dict[str, Any] | None:
    """The newest record of the device in meter.readings (its partition, read backwards)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        partitions = sorted(cluster.partitions_for_topic(settings.topic_readings) or ())
        if not partitions:
            return None
        key = device_id.encode()
        tp = TopicPartition(settings.topic_readings,
                            partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)])
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, max(0, end - _SCAN))
        found = None
        while await consumer.position(tp) < end:
            for message in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                if message.key == key:
                    found = orjson.loads(message.value)
        return found
    finally:
        await consumer.stop()


def compare(reading: dict[str, Any], rest: dict[str, float | None],
            scales: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for value in reading["values"]:
        field = _REST_FIELDS.get(value["obis"])
        rest_value = rest.get(field) if field else None
        if rest_value is None:
            continue
        configured = obis.scale_for(obis.parse(value["obis"]), scales)
        implied = rest_value / value["value"] if value["value"] else None
        ok = implied is not None and abs(implied - configured) <= _TOLERANCE * abs(configured)
        rows.append({"obis": value["obis"], "webhook_value": value["value"],
                     "rest_value": rest_value, "rest_unit": "W" if field == "power" else "Wh",
                     "implied_scale": implied, "configured_scale": configured, "ok": ok})
    return rows


async def check_units(settings: Settings, device_id: str, out: TextIO | None = None,
                      err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        async with smartme.SmartMeClient(settings) as client:
            device = await client.device(device_id)
        rest: dict[str, float | None] = {
            "power": device.active_power_w(),
            "import": device.counter_reading_wh(),
            "export": (smartme.energy_to_wh(device.get("CounterReadingExport"),
                                            device.counter_reading_unit)
                       if device.get("CounterReadingExport") is not None else None),
        }
    except smartme.SmartMeConfigError as exc:
        print(f"meterstream smartme check-units: {exc}", file=err)
        return 2
    except (smartme.SmartMeError, OSError) as exc:
        print(f"meterstream smartme check-units: {exc}", file=err)
        return 1
    reading = await latest_reading(settings, device_id)
    if reading is None:
        print(f"meterstream smartme check-units: no reading of {device_id} in "
              f"{settings.topic_readings} yet", file=err)
        return 1
    rows = compare(reading, rest, dict(settings.obis_scales))
    print(f"device {device_id} ({device.name}): webhook reading {reading['timestamp']}, "
          f"REST value date {device.value_date}", file=out)
    for row in rows:
        verdict = "ok" if row["ok"] else "CHECK METERSTREAM_OBIS_SCALES"
        implied = f"{row['implied_scale']:.6g}" if row["implied_scale"] is not None else "-"
        print(f"  {row['obis']:<15} webhook {row['webhook_value']:<14.6g} REST "
              f"{row['rest_value']:.6g} {row['rest_unit']:<3} implied scale {implied:<10} "
              f"configured {row['configured_scale']:<8g} {verdict}", file=out)
    if not rows:
        print("  no code in common between the reading and the REST device", file=out)
        return 1
    return 0 if all(row["ok"] for row in rows) else 1
