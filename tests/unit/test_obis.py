from __future__ import annotations

import pytest

from streams import obis


def test_bytes_and_text_forms_agree() -> None:
    code = obis.ObisCode.from_bytes(bytes.fromhex("0100010800FF"))
    assert str(code) == "1-0:1.8.0*255"
    assert code.short == "1-0:1.8.0"
    assert obis.parse("1-0:1.8.0*255") == code
    assert obis.parse("1-0:1.8.0") == code  # F defaults to 255
    assert obis.parse("1-0:1.8") == code  # E defaults to 0
    assert obis.parse("0100010800ff") == code


@pytest.mark.parametrize("text", ["", "1-0", "1-0:1", "a-b:c.d", "1-0:1.8.0*256", "0100010800"])
def test_malformed_codes_are_rejected(text: str) -> None:
    with pytest.raises(obis.ObisError):
        obis.parse(text)


@pytest.mark.parametrize(
    ("text", "name", "unit"),
    [
        ("1-0:1.8.0", "active_energy_import", "Wh"),
        ("1-0:1.8.2", "active_energy_import_t2", "Wh"),
        ("1-0:2.8.0", "active_energy_export", "Wh"),
        ("1-0:1.7.0", "active_power_import", "W"),
        ("1-0:41.7.0", "active_power_import_l2", "W"),
        ("1-0:72.7.0", "voltage_l3", "V"),
        ("1-0:31.7.0", "current_l1", "A"),
        ("99-0:12.0.0", "switch_state", None),
        ("6-0:1.0.0", "heat_1_0_0", None),
        ("1-0:200.7.0", "electricity_200_7_0", None),
    ],
)
def test_quantity_names_and_units(text: str, name: str, unit: str | None) -> None:
    assert obis.quantity(obis.parse(text)) == obis.Quantity(name, unit)


def test_most_specific_scale_key_wins() -> None:
    scales = {"1-0:1.8": 0.001, "1-0:1.8.1": 0.5, "1-0:1.8.2*255": 2.0}
    assert obis.scale_for(obis.parse("1-0:1.8.0"), scales) == 0.001
    assert obis.scale_for(obis.parse("1-0:1.8.1"), scales) == 0.5
    assert obis.scale_for(obis.parse("1-0:1.8.2*255"), scales) == 2.0
    assert obis.scale_for(obis.parse("1-0:1.7.0"), scales) == 1.0


def test_default_scales_cover_the_documented_energy_register() -> None:
    assert obis.scale_for(obis.parse("1-0:1.8.0"), obis.DEFAULT_SCALES) == 0.001
    assert obis.scale_for(obis.parse("1-0:2.8.0"), obis.DEFAULT_SCALES) == 0.001
    assert obis.scale_for(obis.parse("1-0:1.7.0"), obis.DEFAULT_SCALES) == 1.0
