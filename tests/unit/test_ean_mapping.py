"""smart-me device id → EAN: the mapping file, automatic matching, and which one wins."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from streams.config import Settings
from streams.ean_mapping import (
    EanMapping,
    MappingError,
    SmartMeDevice,
    auto_match,
    ean_check_digit_ok,
    load_mapping_file,
)
from streams.umeter import Customer, parse_customer
from tests.conftest import load_json

DEVICE = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"  # smart-me fixture's device id
OTHER = "11111111-2222-3333-4444-555555555555"
EAN = "871687120000000017"  # the customer fixture's EAN (made up; its check digit is off)
EAN_A = "871687120000000011"  # valid GS1 check digits
EAN_B = "871687120000000028"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def customer_with_devices(*devices: dict[str, Any]) -> Customer:
    data = copy.deepcopy(load_json("fixtures/umeter/customer.json"))
    data["addresses"][0]["devices"].extend(devices)
    return parse_customer(data)


def test_check_digits_of_the_constants() -> None:
    assert ean_check_digit_ok(EAN_A) and ean_check_digit_ok(EAN_B)
    assert not ean_check_digit_ok(EAN) and not ean_check_digit_ok("12345")


# -- the file -----------------------------------------------------------------------------------
def test_csv_file_with_comments_extra_columns_and_any_uuid_spelling(tmp_path: Path) -> None:
    path = write(tmp_path, "map.csv", (
        "# which meter measures which connection\n"
        "\n"
        "ean,device_id,note\n"
        f"{EAN_A},{{{DEVICE.upper()}}},main meter\n"
        f"{EAN_B},{OTHER.replace('-', '')},\"garage, solar\"\n"
    ))
    loaded = load_mapping_file(path)
    assert {d: e.ean for d, e in loaded.entries.items()} == {DEVICE: EAN_A, OTHER: EAN_B}
    assert loaded.entries[DEVICE].source == f"{path}:4"
    assert loaded.warnings == ()
    mapping = EanMapping(loaded.entries)
    assert mapping.ean_for(DEVICE.upper()) == EAN_A  # readings use lower case; files may not


def test_json_file(tmp_path: Path) -> None:
    path = write(tmp_path, "map.json", f'{{\n  "{DEVICE}": "{EAN_A}",\n  "{OTHER}": "{EAN_B}"\n}}')
    loaded = load_mapping_file(path)
    assert loaded.entries[OTHER].ean == EAN_B
    assert loaded.entries[OTHER].source == f"{path}:3"


def test_format_is_sniffed_without_a_known_suffix(tmp_path: Path) -> None:
    as_json = write(tmp_path, "mapping", f'{{"{DEVICE}": "{EAN_A}"}}')
    as_csv = write(tmp_path, "mapping.txt", f"device_id,ean\n{DEVICE},{EAN_A}\n")
    assert load_mapping_file(as_json).entries.keys() == load_mapping_file(as_csv).entries.keys()


@pytest.mark.parametrize(("name", "text", "where", "why"), [
    ("m.csv", "device,meter\n", ":1:", "header with columns device_id and ean"),
    ("m.csv", "# only a comment\n", ":1:", "empty mapping file"),
    ("m.csv", f"device_id,ean\n{DEVICE},{EAN_A}\n{OTHER},8.71687E+17\n", ":3:",
     "EAN must be 18 digits, got '8.71687E+17'"),
    ("m.csv", f"device_id,ean\n63000017,{EAN_A}\n", ":2:",
     "'63000017' is not a smart-me device id"),
    ("m.csv", f"device_id,ean\n,{EAN_A}\n", ":2:", "empty device_id"),
    ("m.csv", f"device_id,ean,x\n{DEVICE}\n", ":2:", "expected at least 2 columns, got 1"),
    ("m.csv", f"device_id,ean\n{DEVICE},{EAN_A}\n\n{DEVICE.upper()},{EAN_B}\n", ":4:",
     f"already maps to {EAN_A}"),
    ("m.json", f'{{"{DEVICE}": {EAN_A}}}', ":1:", "must be a string (write EANs as strings)"),
    ("m.json", f'{{\n"{DEVICE}": "{EAN_A}",\n}}', ":3:", "not valid JSON"),
    ("m.json", f'["{DEVICE}", "{EAN_A}"]', ":1:", "expected a JSON object"),
    ("m.json", f'{{"{DEVICE}": "{EAN_A}",\n "{DEVICE}": "{EAN_B}"}}', ":2:", "already maps"),
])
def test_file_errors_name_file_and_line(tmp_path: Path, name: str, text: str, where: str,
                                        why: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(MappingError) as caught:
        load_mapping_file(path)
    assert str(caught.value).startswith(f"{path}{where}")
    assert why in str(caught.value)


def test_missing_file_is_a_mapping_error(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot read the mapping file"):
        load_mapping_file(tmp_path / "absent.csv")


def test_identical_duplicate_lines_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", f"device_id,ean\n{DEVICE},{EAN_A}\n{DEVICE},{EAN_A}\n")
    assert load_mapping_file(path).entries[DEVICE].source == f"{path}:2"


def test_wrong_check_digit_is_a_warning_naming_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", f"device_id,ean\n{DEVICE},{EAN}\n")
    loaded = load_mapping_file(path)
    assert loaded.entries[DEVICE].ean == EAN
    assert loaded.warnings == (f"{path}:2: EAN {EAN} has a wrong GS1 check digit (typo?)",)


# -- automatic matching -------------------------------------------------------------------------
def test_the_published_customer_alone_matches_nothing() -> None:
    # devices[].id is the EAN itself: nothing links it to a smart-me device.
    customer = parse_customer(load_json("fixtures/umeter/customer.json"))
    device = SmartMeDevice.from_json(load_json("fixtures/smartme/device_by_id.json"))
    assert (device.id, device.serial, device.name) == (DEVICE, "63000017", "METER-EXAMPLE")
    assert auto_match([device], [customer]).entries == {}


def test_umeter_device_naming_the_smartme_id_maps_to_its_address_ean() -> None:
    customer = customer_with_devices(
        {"id": "p1-1", "name": f"smart-me {DEVICE.upper()}", "type": "p1"})
    match = auto_match([SmartMeDevice(DEVICE), SmartMeDevice(OTHER)], [customer])
    assert list(match.entries) == [DEVICE]
    entry = match.entries[DEVICE]
    assert entry.ean == EAN
    assert entry.source.startswith("auto: UMeter device 'p1-1' (Home) contains the smart-me id")


def test_umeter_device_naming_the_serial_matches_only_as_a_whole_number() -> None:
    customer = customer_with_devices({"id": "sm-63000017", "name": "kWh meter", "type": "x"})
    assert auto_match([SmartMeDevice(DEVICE, serial="63000017")],
                      [customer]).entries[DEVICE].ean == EAN
    longer = customer_with_devices({"id": "sm-163000017", "name": "x", "type": "x"})
    assert auto_match([SmartMeDevice(DEVICE, serial="63000017")], [longer]).entries == {}
    short = customer_with_devices({"id": "meter 17", "name": "x", "type": "x"})
    assert auto_match([SmartMeDevice(DEVICE, serial="17")], [short]).entries == {}


def test_a_device_named_under_two_eans_is_left_unmapped(caplog: pytest.LogCaptureFixture) -> None:
    data = copy.deepcopy(load_json("fixtures/umeter/customer.json"))
    second = copy.deepcopy(data["addresses"][0])
    second["eEan"]["ean"] = EAN_B
    data["addresses"].append(second)
    for address in data["addresses"]:
        address["devices"].append({"id": "x", "name": f"meter {DEVICE}", "type": "p1"})
    mapping = EanMapping.build(devices=[SmartMeDevice(DEVICE)], customers=[parse_customer(data)])
    assert mapping.ean_for(DEVICE) is None
    assert mapping.warnings == (f"device {DEVICE} matches several EANs ({EAN}, {EAN_B}); "
                                "not mapped",)
    assert "matches several EANs" in caplog.text


# -- combined ------------------------------------------------------------------------------------
def test_the_file_wins_over_automatic_matches(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", f"device_id,ean\n{DEVICE},{EAN_A}\n")
    customer = customer_with_devices({"id": "p1", "name": DEVICE, "type": "p1"},
                                     {"id": "p2", "name": OTHER, "type": "p1"})
    mapping = EanMapping.build(mapping_file=path, customers=[customer],
                               devices=[SmartMeDevice(DEVICE), SmartMeDevice(OTHER)])
    assert mapping.as_dict() == {DEVICE: EAN_A, OTHER: EAN}
    entry = mapping.entry_for(DEVICE)
    assert entry is not None and entry.source == f"{path}:2"
    assert len(mapping.warnings) == 1 and f"overriding {EAN}" in mapping.warnings[0]
    assert mapping.devices_for(EAN) == [OTHER]


def test_unmapped_lists_devices_without_ean_once_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", f'{{"{DEVICE}": "{EAN_A}"}}')
    mapping = EanMapping.from_settings(Settings(umeter_mapping_file=path))
    third = "99999999-8888-7777-6666-555555555555"
    assert mapping.unmapped([OTHER, DEVICE, third, OTHER, "not-a-uuid"]) == [
        OTHER, third, "not-a-uuid"]
    assert DEVICE.upper() in mapping and OTHER not in mapping and len(mapping) == 1


def test_a_bad_file_stops_the_build(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "device_id;ean\n")
    with pytest.raises(MappingError, match=r"m\.csv:1:"):
        EanMapping.from_settings(Settings(umeter_mapping_file=path))
