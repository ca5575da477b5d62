"""What the worker knows about meters beyond their readings: the smart-me inventory,
UMeter customers (EAN, address) and grid-operator measurements, and the mapping between
smart-me devices and EANs. No Faust in here: the worker refreshes an :class:`Enrichment`
from its global tables and asks it questions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from streams.ean_mapping import EanMapping, MappingError, SmartMeDevice
from streams.offline import Meter
from streams.smartme import mbus_offline_threshold
from streams.umeter import LOCAL_TZ, UMeterError, parse_customer

log = logging.getLogger(__name__)

MBUS_GATEWAY = "MBusGateway"


@dataclass(frozen=True)
class Place:
    """The connection a meter belongs to."""

    ean: str
    customer_id: str | None
    address: dict[str, Any]


class Enrichment:
    def __init__(self, mapping_file: Path | None = None,
                 base_meters: Mapping[str, Meter] | None = None) -> None:
        self.mapping_file = mapping_file
        self.base_meters = dict(base_meters or {})
        self.devices: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, dict[str, Any]] = {}
        self.measurements: dict[str, dict[str, Any]] = {}
        self._mapping: EanMapping | None = None
        self._places: dict[str, Place] = {}
        self._meters: dict[str, Meter] = {}

    @property
    def active(self) -> bool:
        """Whether EAN mapping is configured at all (a file or UMeter data)."""
        return self.mapping_file is not None or bool(self.customers)

    # -- updates -------------------------------------------------------------------------------
    def replace(self, devices: Mapping[str, dict[str, Any]], customers: Mapping[str, Any],
                measurements: Mapping[str, Any]) -> None:
        """New contents of the tables; derived views are rebuilt when they changed."""
        if (devices, customers) != (self.devices, self.customers) or self._mapping is None:
            self.devices, self.customers = dict(devices), dict(customers)
            self._rebuild()
        self.measurements = dict(measurements)

    def _rebuild(self) -> None:
        parsed = []
        for record in self.customers.values():
            try:
                parsed.append(parse_customer(record.get("raw", record)))
            except UMeterError as exc:
                log.warning("ignoring an unusable umeter.customer record: %s", exc)
        smartme = [SmartMeDevice.from_json(r.get("raw") or {"Id": r.get("device_id")})
                   for r in self.devices.values()]
        try:
            self._mapping = EanMapping.build(mapping_file=self.mapping_file, devices=smartme,
                                             customers=parsed)
        except MappingError as exc:
            log.error("EAN mapping file unusable, mapping only automatically: %s", exc)
            self._mapping = EanMapping.build(devices=smartme, customers=parsed)
        self._places = {}
        for customer in parsed:
            for address in customer.addresses:
                if address.ean:
                    self._places[address.ean] = Place(address.ean, customer.id, {
                        "street": address.street, "number": address.house_number,
                        "zip": address.zip_code, "city": address.city})
        self._meters = dict(self.base_meters)
        for device_id, record in self.devices.items():
            self._meters.setdefault(device_id, Meter(
                device_id, _class(record), record.get("name"),
                str(record["serial"]) if record.get("serial") is not None else None))
        for gateway in self.gateways():
            interval = gateway.get("readout_interval_seconds")
            for meter in gateway.get("meters", []):
                if meter.get("id") and interval:
                    known = self._meters.get(meter["id"])
                    self._meters[meter["id"]] = Meter(
                        meter["id"], "mbus", (known.name if known else None) or meter.get("name"),
                        known.serial if known else None, mbus_offline_threshold(interval))

    # -- questions -----------------------------------------------------------------------------
    def meter(self, device_id: str) -> Meter | None:
        return self._meters.get(device_id) or self.base_meters.get(device_id)

    def expected(self) -> dict[str, Meter]:
        """Meters that should be sending: inventory file + smart-me inventory (gateways
        themselves excluded: they do not push readings)."""
        meters = dict(self.base_meters)
        for device_id, meter in self._meters.items():
            record = self.devices.get(device_id)
            if record is None or record.get("energy_type_name") != MBUS_GATEWAY:
                meters[device_id] = meter
        return meters

    def place(self, device_id: str) -> Place | None:
        ean = self._mapping.ean_for(device_id) if self._mapping else None
        if ean is None:
            return None
        return self._places.get(ean) or Place(ean, None, {})

    def gateways(self) -> list[dict[str, Any]]:
        return [r["mbus"] for r in self.devices.values() if r.get("mbus")]

    def unmapped(self, device_ids: Iterable[str]) -> list[str]:
        return self._mapping.unmapped(device_ids) if self._mapping else list(device_ids)

    def measured_kwh(self, ean: str, day: date) -> tuple[float | None, float | None] | None:
        record = self.measurements.get(f"{ean}|{day:%Y%m%d}")
        if record is None or record.get("import_kwh") is None:
            return None
        return record.get("import_kwh"), record.get("export_kwh")

    def annotate(self, device_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """A record plus ean, address and customer id (and meter name) when known."""
        extra = self._annotation(device_id, "name" in record)
        return {**record, **extra} if extra else record

    def annotation(self, device_id: str) -> bytes:
        """What :meth:`annotate` adds to a record without a ``name``, as JSON object
        members (``"ean":…,"customer_id":…``; empty when nothing is known)."""
        extra = self._annotation(device_id, False)
        return orjson.dumps(extra)[1:-1] if extra else b""

    def _annotation(self, device_id: str, named: bool) -> dict[str, Any]:
        place = self.place(device_id)
        meter = self.meter(device_id)
        extra: dict[str, Any] = {}
        if place is not None:
            extra = {"ean": place.ean, "customer_id": place.customer_id,
                     "address": place.address}
        if meter is not None and meter.name and not named:
            extra["name"] = meter.name
        return extra


def _class(record: Mapping[str, Any]) -> str | None:
    name = record.get("energy_type_name")
    return str(name).lower() if name else None


def local_day(ts_us: int, zone: ZoneInfo = LOCAL_TZ) -> date:
    return datetime.fromtimestamp(ts_us / 1e6, UTC).astimezone(zone).date()


def day_hours(day: date, zone: ZoneInfo = LOCAL_TZ) -> int:
    """Hours in a local day (23 or 25 on DST changes)."""
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    following = day + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=zone)
    # Same-zone aware datetimes subtract as wall clock; compare them in UTC instead.
    return round((end.astimezone(UTC) - start.astimezone(UTC)).total_seconds() / 3600)
