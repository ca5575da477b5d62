"""OBIS codes (IEC 62056-61): parsing, display form, quantity names, units and scales.

smart-me sends each value with its OBIS code as six raw bytes A,B,C,D,E,F. The code tells
the quantity (C), whether it is an instantaneous value (D=7) or a cumulative register
(D=8), and the tariff (E). The *unit* of the webhook value is not part of the payload and
is documented by smart-me for one code only (1-0:1.8.0 in mWh); the factors that turn raw
values into the normalised unit are therefore configuration (``DEFAULT_SCALES`` are the
documented and assumed defaults, see the README's "Units" section).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

# Codes the aggregation relies on (display form without the F group).
ENERGY_IMPORT = "1-0:1.8.0"
ENERGY_EXPORT = "1-0:2.8.0"
POWER_IMPORT = "1-0:1.7.0"
POWER_PHASES = {"l1": "1-0:21.7.0", "l2": "1-0:41.7.0", "l3": "1-0:61.7.0"}

_MEDIA = {
    0: "abstract", 1: "electricity", 4: "hca", 5: "cooling", 6: "heat", 7: "gas",
    8: "water_cold", 9: "water_hot", 16: "oil", 17: "compressed_air", 18: "nitrogen",
}

# Electricity (A=1), instantaneous values (D=7): C -> (quantity, unit).
_INSTANT = {
    1: ("active_power_import", "W"), 2: ("active_power_export", "W"),
    3: ("reactive_power_import", "var"), 4: ("reactive_power_export", "var"),
    9: ("apparent_power_import", "VA"), 10: ("apparent_power_export", "VA"),
    11: ("current", "A"), 12: ("voltage", "V"), 13: ("power_factor", "1"),
    14: ("frequency", "Hz"), 16: ("active_power_net", "W"),
    21: ("active_power_import_l1", "W"), 41: ("active_power_import_l2", "W"),
    61: ("active_power_import_l3", "W"), 22: ("active_power_export_l1", "W"),
    42: ("active_power_export_l2", "W"), 62: ("active_power_export_l3", "W"),
    31: ("current_l1", "A"), 51: ("current_l2", "A"), 71: ("current_l3", "A"),
    32: ("voltage_l1", "V"), 52: ("voltage_l2", "V"), 72: ("voltage_l3", "V"),
    33: ("power_factor_l1", "1"), 53: ("power_factor_l2", "1"), 73: ("power_factor_l3", "1"),
    91: ("current_neutral", "A"),
}

# Electricity (A=1), registers (D=8): C -> (quantity, unit).
_REGISTER = {
    1: ("active_energy_import", "Wh"), 2: ("active_energy_export", "Wh"),
    3: ("reactive_energy_import", "varh"), 4: ("reactive_energy_export", "varh"),
    5: ("reactive_energy_q1", "varh"), 6: ("reactive_energy_q2", "varh"),
    7: ("reactive_energy_q3", "varh"), 8: ("reactive_energy_q4", "varh"),
    9: ("apparent_energy_import", "VAh"), 10: ("apparent_energy_export", "VAh"),
    15: ("active_energy_absolute", "Wh"), 16: ("active_energy_net", "Wh"),
}

# Factor from the webhook's raw value to the unit above. Only 1-0:1.8.0 in mWh is
# documented (smart-me's parsing example); the other registers are ASSUMED to use the
# same milli-unit, and instantaneous values are ASSUMED to arrive in their base unit.
DEFAULT_SCALES: Mapping[str, float] = {f"1-0:{c}.8": 0.001 for c in _REGISTER}


class ObisError(ValueError):
    """An OBIS code that is not six bytes or not in A-B:C.D.E*F form."""


@dataclass(frozen=True, slots=True)
class ObisCode:
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> ObisCode:
        if len(raw) != 6:
            raise ObisError(f"OBIS code must be 6 bytes, got {len(raw)}")
        return cls(*raw)

    def __str__(self) -> str:
        return f"{self.a}-{self.b}:{self.c}.{self.d}.{self.e}*{self.f}"

    @property
    def short(self) -> str:
        """A-B:C.D.E, the form used in configuration and the README."""
        return f"{self.a}-{self.b}:{self.c}.{self.d}.{self.e}"


_TEXT = re.compile(r"^(\d+)-(\d+):(\d+)\.(\d+)(?:\.(\d+))?(?:\*(\d+))?$")
_HEX = re.compile(r"^[0-9A-Fa-f]{12}$")


def parse(text: str) -> ObisCode:
    """Parse ``A-B:C.D.E*F`` (E and F optional: 0 and 255) or 12 hex characters."""
    text = text.strip()
    if _HEX.match(text):
        return ObisCode.from_bytes(bytes.fromhex(text))
    match = _TEXT.match(text)
    if not match:
        raise ObisError(f"not an OBIS code: {text!r}")
    a, b, c, d, e, f = match.groups()
    groups = [int(a), int(b), int(c), int(d), int(e or 0), int(f or 255)]
    if any(g > 255 for g in groups):
        raise ObisError(f"OBIS value group above 255 in {text!r}")
    return ObisCode(*groups)


def normalise_scale_key(text: str) -> str:
    """Canonical key for a scale entry: A-B:C.D, A-B:C.D.E or A-B:C.D.E*F as written."""
    match = _TEXT.match(text.strip())
    if not match:
        raise ObisError(f"not an OBIS scale key: {text!r}")
    a, b, c, d, e, f = match.groups()
    key = f"{int(a)}-{int(b)}:{int(c)}.{int(d)}"
    if e is not None:
        key += f".{int(e)}"
        if f is not None:
            key += f"*{int(f)}"
    return key


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    unit: str | None


@lru_cache(maxsize=4096)
def quantity(code: ObisCode) -> Quantity:
    """Quantity name and normalised unit of a code (unit None when not known)."""
    if code.a == 1:
        table = _INSTANT if code.d == 7 else _REGISTER if code.d == 8 else None
        if table is not None and code.c in table:
            name, unit = table[code.c]
            if code.d == 8 and code.e:
                name = f"{name}_t{code.e}"
            return Quantity(name, unit)
    if code.a == 99 and code.c == 12:
        return Quantity("switch_state", None)
    medium = _MEDIA.get(code.a, f"medium_{code.a}")
    return Quantity(f"{medium}_{code.c}_{code.d}_{code.e}", None)


def scale_for(code: ObisCode, scales: Mapping[str, float]) -> float:
    """The configured factor for a code: the most specific key wins, default 1."""
    base = f"{code.a}-{code.b}:{code.c}.{code.d}"
    for key in (f"{base}.{code.e}*{code.f}", f"{base}.{code.e}", base):
        if key in scales:
            return scales[key]
    return 1.0
