from __future__ import annotations

from pathlib import Path

import pytest

from streams import offline
from streams.offline import Meter, Thresholds

US = 1_000_000
DEVICE = "3bd0fce9-9f8e-4183-b3d1-0c1622a22ca1"


def test_most_specific_threshold_wins() -> None:
    rules = Thresholds.parse(900, f"class:mbus=3600, prefix:3bd0=600, prefix:3bd0fce9=300,"
                                  f"id:{DEVICE.upper()}=120")
    assert rules.for_device(DEVICE, "mbus") == 120
    assert rules.for_device("3bd0fce9-0000-0000-0000-000000000000", "mbus") == 300
    assert rules.for_device("3bd01111-0000-0000-0000-000000000000") == 600
    assert rules.for_device("ffffffff-0000-0000-0000-000000000000", "MBus") == 3600
    assert rules.for_device("ffffffff-0000-0000-0000-000000000000", "electricity") == 900


@pytest.mark.parametrize("rule", ["mbus=3600", "class:mbus", "kind:x=1", "class:mbus=soon"])
def test_bad_rules_are_rejected(rule: str) -> None:
    with pytest.raises(offline.ThresholdError):
        Thresholds.parse(900, rule)


def test_inventory_from_csv_and_json(tmp_path: Path) -> None:
    csv_file = tmp_path / "meters.csv"
    csv_file.write_text(f"device_id,class,name\n{DEVICE.upper()},mbus,Boiler room\n")
    assert offline.load_inventory(csv_file) == {
        DEVICE: Meter(DEVICE, "mbus", "Boiler room", None)}
    json_file = tmp_path / "meters.json"
    json_file.write_text(f'[{{"device_id": "{DEVICE}", "serial": "63000001"}}]')
    assert offline.load_inventory(json_file)[DEVICE].serial == "63000001"
    json_file.write_text('[{"name": "no id"}]')
    with pytest.raises(ValueError, match="no device_id"):
        offline.load_inventory(json_file)


def test_one_alert_per_episode_offline_then_online() -> None:
    head: dict = {"received": 1_000 * US}
    assert offline.seen(DEVICE, head, 1_000 * US, None, 900) is None
    assert offline.check(DEVICE, head, 1_800 * US, 900, None) is None  # 800 s: fine
    gone = offline.check(DEVICE, head, 2_000 * US, 900, None)
    assert gone is not None and gone["state"] == "offline"
    assert gone["last_seen"] == "1970-01-01T00:16:40Z"
    assert gone["since"] == "1970-01-01T00:31:40Z"  # last seen + threshold
    assert offline.check(DEVICE, head, 9_000 * US, 900, None) is None  # same episode
    assert not offline.is_online(head)
    head["received"] = 9_500 * US
    back = offline.seen(DEVICE, head, 9_500 * US, Meter(DEVICE, name="Kitchen"), 900)
    assert back is not None and (back["state"], back["name"]) == ("online", "Kitchen")
    assert offline.seen(DEVICE, head, 9_600 * US, None, 900) is None


def test_a_never_seen_meter_goes_offline_after_its_threshold() -> None:
    head: dict = {}
    assert offline.check(DEVICE, head, 100 * US, 60, None) is None  # starts watching
    gone = offline.check(DEVICE, head, 161 * US, 60, None)
    assert gone is not None and gone["last_seen"] is None
    assert offline.due({}, 0, 60)
