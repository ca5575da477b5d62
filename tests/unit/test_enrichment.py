from __future__ import annotations

from datetime import date
from pathlib import Path

import orjson
import pytest

from streams import reconcile
from streams.agents.vendors import mbus_alerts
from streams.enrichment import Enrichment, day_hours, local_day
from streams.smartme import Device, inventory_record
from streams.windows import Aggregator, Sample, WindowConfig
from tests.conftest import load_json

SMARTME_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
EAN = "871687120000000017"
CUSTOMER = "5b0d7c1e-2f43-4c8a-9a51-0d1c2e3f4a5b"


def enrichment(tmp_path: Path, measured: dict | None = None) -> Enrichment:
    mapping = tmp_path / "mapping.csv"
    mapping.write_text(f"device_id,ean\n{SMARTME_ID},{EAN}\n")
    device_key, device = inventory_record(Device.from_json(
        load_json("fixtures/smartme/device_by_id.json")))
    result = Enrichment(mapping)
    result.replace({device_key: device}, {CUSTOMER: {"raw": load_json(
        "fixtures/umeter/customer.json")}}, measured or {})
    return result


def test_records_get_ean_address_customer_and_name(tmp_path: Path) -> None:
    known = enrichment(tmp_path)
    record = known.annotate(SMARTME_ID, {"device_id": SMARTME_ID, "size": 60})
    assert record["ean"] == EAN and record["customer_id"] == CUSTOMER
    assert record["address"]["street"] == "Voorbeeldstraat"
    assert set(record["address"]) == {"street", "number", "zip", "city"}
    assert record["name"] == "METER-EXAMPLE"
    assert known.meter(SMARTME_ID).device_class == "electricity"
    other = "11111111-2222-4333-8444-555555555555"
    assert known.annotate(other, {"device_id": other}) == {"device_id": other}
    assert known.unmapped([SMARTME_ID, other]) == [other]


def test_window_records_carry_the_annotation_after_their_own_keys(tmp_path: Path) -> None:
    """The native window code appends the device's annotation to every record it writes:
    the record is then what annotate() makes of it."""
    known = enrichment(tmp_path)
    aggregator = Aggregator(WindowConfig(sizes=(60,)), {}, {})
    emitted = []
    for device_id in (SMARTME_ID, "11111111-2222-4333-8444-555555555555"):
        device = aggregator.device(device_id, known.annotation(device_id))
        samples = [Sample(60_000_000 * m, imp=10.0 * m) for m in range(10)]
        emitted += aggregator.apply(device, samples, 0).emitted
    for window in emitted:
        plain = Aggregator(WindowConfig(sizes=(60,)), {}, {})
        device = plain.device(window.device_id)
        (bare,) = [w for w in plain.apply(device, [Sample(60_000_000 * m, imp=10.0 * m)
                                                   for m in range(10)], 0).emitted
                   if w.start_us == window.start_us]
        assert window.json == orjson.dumps(known.annotate(window.device_id,
                                                          orjson.loads(bare.json)))
    assert any(b'"ean"' in w.json for w in emitted)
    assert known.annotation("11111111-2222-4333-8444-555555555555") == b""


def test_mbus_meters_get_their_gateways_threshold_and_gateways_are_not_expected() -> None:
    gateway = {"device_id": "gw", "energy_type_name": "MBusGateway", "mbus": {
        "gateway_id": "gw", "readout_interval_seconds": 3600,
        "meters": [{"id": "m1", "name": "HEAT", "alert": False}]}}
    known = Enrichment()
    known.replace({"gw": gateway}, {}, {})
    assert known.meter("m1").threshold == 3 * 3600 and known.meter("m1").device_class == "mbus"
    assert set(known.expected()) == {"m1"}


def test_mbus_alerts_only_on_a_change_of_readout_health() -> None:
    def gateway(alert: bool) -> dict:
        return {"mbus": {"gateway_id": "gw", "name": "CELLAR", "meters": [
            {"id": "m1", "name": "HEAT", "alert": alert,
             "state_name": "CRCError" if alert else "LastReadoutOk"}]}}

    (bad,) = mbus_alerts(gateway(True), gateway(False), 0)
    assert (bad["device_id"], bad["state"], bad["gateway_name"]) == ("m1", "mbus_crcerror",
                                                                     "CELLAR")
    assert mbus_alerts(gateway(True), gateway(True), 0) == []
    assert mbus_alerts(gateway(False), gateway(True), 0)[0]["state"] == "mbus_lastreadoutok"


def test_local_days_follow_the_grid_operator_calendar() -> None:
    assert day_hours(date(2026, 3, 29)) == 23 and day_hours(date(2026, 10, 25)) == 25
    assert local_day(1_795_129_200_000_000) == date(2026, 11, 20)  # 23:00 UTC = 00:00 CET


def _day_head(day_start_us: int, hours: int, wh: float) -> dict:
    head: dict = {}
    for hour in range(hours):
        start = day_start_us + hour * 3_600_000_000
        reconcile.fold(head, 3600, start, wh, 0.0)
    return head


@pytest.mark.parametrize(("measured_kwh", "alerts"), [(24.0, 0), (20.0, 1)])
def test_a_complete_day_is_reconciled_once(tmp_path: Path, measured_kwh: float,
                                           alerts: int) -> None:
    day_start = 1_795_129_200_000_000  # 2026-11-20 00:00 Europe/Amsterdam
    known = enrichment(tmp_path, {f"{EAN}|20261120": {"import_kwh": measured_kwh,
                                                      "export_kwh": 0.0}})
    head = _day_head(day_start, 23, 1000.0)
    assert reconcile.pending(head, SMARTME_ID, known) == []  # 23 of 24 hours
    head = _day_head(day_start, 24, 1000.0)
    found, latest = reconcile.reconcile(head, SMARTME_ID, known, tolerance=0.05)
    assert len(found) == alerts
    assert latest == (date(2026, 11, 20), pytest.approx((24.0 - measured_kwh) / measured_kwh))
    if alerts:
        assert found[0]["ean"] == EAN and found[0]["state"] == "reconciliation_mismatch"
    assert reconcile.reconcile(head, SMARTME_ID, known, tolerance=0.05) == ([], None)


def test_a_day_is_reconciled_again_when_the_grid_operator_figure_changes(
    tmp_path: Path
) -> None:
    day_start = 1_795_129_200_000_000  # 2026-11-20 00:00 Europe/Amsterdam
    head = _day_head(day_start, 24, 1000.0)  # 24 kWh here
    partial = enrichment(tmp_path, {f"{EAN}|20261120": {"import_kwh": 6.0, "export_kwh": 0.0}})
    (alert,), _ = reconcile.reconcile(head, SMARTME_ID, partial, tolerance=0.05)
    assert alert["grid_operator_kwh"] == 6.0  # the morning after: a quarter of the day
    later = tmp_path / "later"
    later.mkdir()
    complete = enrichment(later, {f"{EAN}|20261120": {"import_kwh": 24.0, "export_kwh": 0.0}})
    assert reconcile.reconcile(head, SMARTME_ID, complete, tolerance=0.05) == (
        [], (date(2026, 11, 20), 0.0))
    assert reconcile.reconcile(head, SMARTME_ID, complete, tolerance=0.05) == ([], None)


def test_reconciled_days_of_older_state_are_checked_once_more(tmp_path: Path) -> None:
    head = _day_head(1_795_129_200_000_000, 24, 1000.0)
    head["reconciled"] = ["2026-11-20"]  # what earlier versions stored
    known = enrichment(tmp_path, {f"{EAN}|20261120": {"import_kwh": 24.0, "export_kwh": 0.0}})
    assert reconcile.reconcile(head, SMARTME_ID, known, tolerance=0.05)[1] is not None
    assert head["reconciled"] == {"2026-11-20": 24.0}
