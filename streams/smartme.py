"""smart-me REST API: an async client and pure transforms of what it returns (no Faust).

What the client does, and why:

* **Auth** comes from the settings, strongest first: API key (``Authorization: ApiKey <key>``),
  OAuth2 client credentials (``client_secret_post`` to the token URL; the token is cached until
  ``expires_in`` minus a margin), and HTTP Basic, which smart-me marks obsolete and will remove —
  it still works here but logs a deprecation warning once per client.
* **A 401** with OAuth2 drops the token and re-authenticates once (tokens can be revoked before
  they expire); a second 401, or any 401 with a static credential, is a :class:`SmartMeAuthError`.
* **Transient failures** (429, 5xx including Cloudflare's 524, timeouts, connection errors) are
  retried with exponential backoff and full jitter; a ``Retry-After`` is waited out. POST is
  not idempotent, so it is only retried on 429 (a rate-limited request was not processed).
* **Secrets** (API key, client secret, password, access tokens) never appear in log lines,
  exception text or reprs; server text quoted in an error is redacted as well.
* **Parsing** is tolerant: the wire JSON is PascalCase (the OpenAPI document says camelCase),
  both are accepted; integer enums get names, unknown numbers stay numbers, unknown fields stay
  in ``raw``. Unit conversion to W / Wh accepts exactly W/kW/MW and Wh/kWh/MWh and refuses
  anything else rather than guessing (``"KW"`` is not a unit smart-me documents).

The base URL is the current API host without the ``/api`` prefix (OpenAPI 2026 paths); set
``METERSTREAM_SMARTME_BASE_URL`` to ``https://smart-me.com/api`` for the old layout.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import email.utils
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from types import TracebackType
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from streams import obis
from streams.config import PREFIX, ConfigError, Settings
from streams.obis import ObisCode, ObisError

log = logging.getLogger(__name__)

USER_AGENT: Final = "meterstream (smart-me REST client)"
# smart-me's own offline rule: a meter is offline after 15 minutes without data.
OFFLINE_FLOOR_SECONDS: Final = 15 * 60
# Observed client-credentials tokens live 3600 s; without expires_in assume a short life.
DEFAULT_TOKEN_LIFETIME: Final = 300.0
TOKEN_MARGIN: Final = 60.0
_MAX_ERROR_SNIPPET: Final = 200


# -- errors -------------------------------------------------------------------------------------
class SmartMeError(Exception):
    """Base of every error of this module. Its text never contains a secret."""


class SmartMeConfigError(SmartMeError, ConfigError):
    """The settings do not allow talking to smart-me; the text names the variables."""


class SmartMeAuthError(SmartMeError):
    """smart-me refused the credentials (after one re-authentication where possible)."""


class SmartMeHTTPError(SmartMeError):
    """A request failed: an error status, or transient failures beyond the retry budget."""

    def __init__(self, message: str, *, method: str, path: str, status: int | None,
                 attempts: int) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status
        self.attempts = attempts


class SmartMeTimeoutError(SmartMeHTTPError):
    """Every attempt of a request timed out (or could not connect)."""


class SmartMeParseError(SmartMeError, ValueError):
    """A response is not the JSON shape smart-me documents."""


class SmartMeUnitError(SmartMeError, ValueError):
    """A unit string that cannot be converted to W / Wh without guessing."""


# -- enumerations (integer values on the wire; names from smart-me's OpenAPI document) -----------
class MeterEnergyType(IntEnum):
    """``DeviceEnergyType``; smart-me's names carry a ``MeterType`` prefix (also accepted)."""

    Unknown = 0
    Electricity = 1
    Water = 2
    Gas = 3
    Heat = 4
    HCA = 5
    AllMeters = 6
    Temperature = 7
    MBusGateway = 8
    RS485Gateway = 9
    CustomDevice = 10
    CompressedAir = 11
    SolarLog = 12
    VirtualMeter = 13
    WMBusGateway = 14  # only in the 2019 swagger (by position); absent from the 2026 document


class MeterSubType(IntEnum):
    Unknown = 0
    Cold = 1
    Heat = 2
    ChargingStation = 3
    Electricity = 4
    Water = 5
    Gas = 6
    ElectricityHeat = 7
    Temperature = 8
    VirtualBattery = 9


class MeterFamilyType(IntEnum):
    """Hardware family. smart-me documents descriptions only; these names are ours."""

    Unknown = 0  # all M-Bus meters, S0 meters, ...
    ConnectPlug = 1
    SinglePhaseDin = 2
    SinglePhaseDinWithSwitch = 3
    MBusGatewayV1 = 4
    RS485GatewayV1 = 5
    KamstrupModule = 6
    ThreePhase80A = 7
    ThreePhase32AWithSwitch = 8
    ThreePhaseTransformer = 9
    LandisGyrModule = 10
    FnnOpticalModule = 11
    ThreePhase80AWifiV2 = 12
    ThreePhase80AMobile = 14
    SinglePhase80AWifiV2 = 16
    SinglePhase32AWifiV2 = 17
    SinglePhase80AGprs = 18
    SinglePhase32AGprs = 19
    ThreePhaseTransformerMobile = 21
    ThreePhaseNimbus = 65
    MithralHallChargingStationV1 = 70
    RestApiMeter = 1001
    VirtualBillingMeter = 1002


class MBusReadoutInterval(IntEnum):
    """``MBusReadoutIntervall`` (smart-me's spelling of the member names kept)."""

    Intervall_2s = 0
    Intervall_10s = 1
    Intervall_1min = 2
    Intervall_5min = 3
    Intervall_15min = 4
    Intervall_30min = 5
    Intervall_60min = 6
    Intervall_6hours = 7
    Intervall_12hours = 8
    Intervall_24hours = 9


class MBusGatewayState(IntEnum):
    LastReadoutOk = 0
    SearchInProgress = 1
    FailedOnOneOrMoreMeter = 2
    TooManySearchErrors = 3


class MBusMeterState(IntEnum):
    LastReadoutOk = 0
    LastReadoutFailed = 1
    ReadoutStarted = 2
    CRCError = 3


class MBusMeterEnergyType(IntEnum):
    """An M-Bus meter's ``energyType``: not the same numbering as :class:`MeterEnergyType`."""

    Unknown = 0
    Electricity = 1
    Water = 2
    Gas = 3
    Heat = 4
    HCA = 5
    Temperature = 6
    CompressedAir = 8
    SolarLog = 9


class MBusMeterEnergySubType(IntEnum):
    Unknown = 0
    Cold = 1
    Heat = 2
    Electricity = 3
    Water = 4
    Gas = 5
    ElectricityHeat = 6
    Temperature = 7


class MBusAddressingMode(IntEnum):
    Invalid = 0
    Primary = 1
    Secondary = 2


class MBusBaudrate(IntEnum):
    Baud300 = 0
    Baud2400 = 1
    Baud9600 = 2
    Baud19200 = 3


class RegistrationType(IntEnum):
    """``RealtimeApiRegistrationType`` of a webhook registration."""

    Disabled = 0
    SingleMeterRegistration = 1
    UserRegistration = 2


_READOUT_SECONDS: Final[Mapping[MBusReadoutInterval, int]] = {
    MBusReadoutInterval.Intervall_2s: 2,
    MBusReadoutInterval.Intervall_10s: 10,
    MBusReadoutInterval.Intervall_1min: 60,
    MBusReadoutInterval.Intervall_5min: 300,
    MBusReadoutInterval.Intervall_15min: 900,
    MBusReadoutInterval.Intervall_30min: 1800,
    MBusReadoutInterval.Intervall_60min: 3600,
    MBusReadoutInterval.Intervall_6hours: 6 * 3600,
    MBusReadoutInterval.Intervall_12hours: 12 * 3600,
    MBusReadoutInterval.Intervall_24hours: 24 * 3600,
}
ALERT_METER_STATES: Final = frozenset({MBusMeterState.LastReadoutFailed, MBusMeterState.CRCError})
# Older APIs accepted (and SensorCentral sent) enum *names*; these prefixes are smart-me's.
_ENUM_PREFIXES: Final = ("metertype", "metersubtype", "meterfamilytype")

E = TypeVar("E", bound=IntEnum)


def parse_enum(cls: type[E], value: Any) -> E | int | None:
    """An enum member; an unknown number stays a number (smart-me adds members over time)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return _enum_from_text(cls, value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        return None
    try:
        return cls(value)
    except ValueError:
        return value


def _enum_from_text(cls: type[E], text: str) -> E | int | None:
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return parse_enum(cls, int(text))
    by_name = {member.name.lower(): member for member in cls}
    lowered = text.lower()
    for prefix in ("", *_ENUM_PREFIXES):
        if lowered.startswith(prefix) and lowered[len(prefix):] in by_name:
            return by_name[lowered[len(prefix):]]
    return None


def enum_name(value: IntEnum | int | None) -> str | None:
    """The member name, or None for an unknown number (or no value)."""
    return value.name if isinstance(value, IntEnum) else None


def enum_number(value: IntEnum | int | None) -> int | None:
    return None if value is None else int(value)


def enum_label(value: IntEnum | int | None) -> str:
    """Human form: the name, else the bare number, else ``-``."""
    if value is None:
        return "-"
    return enum_name(value) or str(int(value))


# -- units and dates ----------------------------------------------------------------------------
_POWER_FACTORS: Final = {"W": 1.0, "kW": 1e3, "MW": 1e6}
_ENERGY_FACTORS: Final = {"Wh": 1.0, "kWh": 1e3, "MWh": 1e6}


def power_to_watts(value: float, unit: str | None) -> float:
    """``ActivePower`` in W. Exactly W/kW/MW; anything else (``"KW"``, ``"m3/h"``) refuses."""
    return value * _factor(unit, _POWER_FACTORS, "ActivePowerUnit", "W")


def energy_to_wh(value: float, unit: str | None) -> float:
    """``CounterReading`` in Wh. Exactly Wh/kWh/MWh; anything else (``"m3"``) refuses."""
    return value * _factor(unit, _ENERGY_FACTORS, "CounterReadingUnit", "Wh")


def _factor(unit: str | None, factors: Mapping[str, float], name: str, target: str) -> float:
    if unit is not None and unit in factors:
        return factors[unit]
    accepted = "/".join(factors)
    raise SmartMeUnitError(f"{name} {unit!r} cannot be converted to {target} "
                           f"(accepted exactly: {accepted})")


_DATE_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d+))?(Z|z|[+-]\d{2}:?\d{2})?$"
)


def parse_datetime(text: str) -> datetime:
    """ISO-8601 as smart-me sends it (7 fractional digits, ``Z``) → aware UTC datetime.

    The 7th digit (100 ns .NET ticks) is truncated: Python has microseconds. A value without a
    zone is read as UTC, the zone smart-me documents for its timestamps.
    """
    match = _DATE_TIME.match(text.strip())
    if not match:
        raise SmartMeParseError(f"not an ISO-8601 date-time: {text[:40]!r}")
    day, clock, fraction, zone = match.groups()
    if clock.count(":") == 1:
        clock += ":00"
    micros = (fraction or "")[:6].ljust(6, "0")
    if zone is None or zone in ("Z", "z"):
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}.{micros}{zone}")
    except ValueError as exc:
        raise SmartMeParseError(f"not a valid date-time: {text[:40]!r} ({exc})") from None
    return parsed.astimezone(UTC)


def format_datetime(value: datetime | None) -> str | None:
    """ISO-8601 UTC with ``Z`` (microseconds), the form used in the records we produce."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- tolerant JSON access -----------------------------------------------------------------------
class _Fields:
    """Case-insensitive view of one JSON object: the wire is PascalCase, the spec camelCase."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._values = {key.lower(): value for key, value in data.items()}

    def get(self, name: str) -> Any:
        return self._values.get(name.lower())

    def text(self, name: str) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        return value if isinstance(value, str) else str(value)

    def number(self, name: str) -> float | None:
        value = self.get(name)
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return None
        return None

    def integer(self, name: str) -> int | None:
        number = self.number(name)
        return int(number) if number is not None and number.is_integer() else None

    def flag(self, name: str) -> bool | None:
        value = self.get(name)
        return value if isinstance(value, bool) else None

    def date(self, name: str) -> datetime | None:
        """Tolerant: an unparseable date is None (the text stays in ``raw``)."""
        value = self.get(name)
        if not isinstance(value, str) or not value.strip():
            return None
        try:
            return parse_datetime(value)
        except SmartMeParseError:
            log.debug("smart-me %s is not a date-time; kept only in raw", name)
            return None

    def enum(self, name: str, cls: type[E]) -> E | int | None:
        return parse_enum(cls, self.get(name))


def _object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise SmartMeParseError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _extra(raw: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in raw.items() if key.lower() not in known}


def _known(*names: str) -> frozenset[str]:
    return frozenset(name.lower() for name in names)


# -- devices ------------------------------------------------------------------------------------
# Every property of the OpenAPI 2026 ``Device`` schema; anything else is reported as extra.
DEVICE_FIELDS: Final = _known(
    "Id", "Name", "Serial", "DeviceEnergyType", "MeterSubType", "FamilyType",
    "ActivePower", "ActivePowerL1", "ActivePowerL2", "ActivePowerL3", "ActivePowerUnit",
    "CounterReading", "CounterReadingUnit", "CounterReadingT1", "CounterReadingT2",
    "CounterReadingT3", "CounterReadingT4", "CounterReadingImport", "CounterReadingExport",
    "SwitchOn", "SwitchPhaseL1On", "SwitchPhaseL2On", "SwitchPhaseL3On",
    "Voltage", "VoltageL1", "VoltageL2", "VoltageL3", "Current", "CurrentL1", "CurrentL2",
    "CurrentL3", "PowerFactor", "PowerFactorL1", "PowerFactorL2", "PowerFactorL3",
    "Temperature", "ActiveTariff", "DigitalOutput1", "DigitalOutput2", "AnalogOutput1",
    "AnalogOutput2", "DigitalInput1", "DigitalInput2", "ValueDate",
    "AdditionalMeterSerialNumber", "FlowRate", "ChargingStationState",
)


@dataclass(frozen=True)
class Device:
    """One ``Device`` of ``GET /Devices[/{id}]``; ``raw`` is the object exactly as received."""

    id: str
    name: str | None
    serial: int | str | None
    energy_type: MeterEnergyType | int | None
    sub_type: MeterSubType | int | None
    family_type: MeterFamilyType | int | None
    active_power: float | None
    active_power_unit: str | None
    counter_reading: float | None
    counter_reading_unit: str | None
    value_date: datetime | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> Device:
        raw = _object(data, "smart-me device")
        fields = _Fields(raw)
        device_id = fields.text("Id")
        if not device_id:
            raise SmartMeParseError("smart-me device without Id")
        return cls(
            id=device_id,
            name=fields.text("Name"),
            serial=_serial(fields.get("Serial")),
            energy_type=fields.enum("DeviceEnergyType", MeterEnergyType),
            sub_type=fields.enum("MeterSubType", MeterSubType),
            family_type=fields.enum("FamilyType", MeterFamilyType),
            active_power=fields.number("ActivePower"),
            active_power_unit=fields.text("ActivePowerUnit"),
            counter_reading=fields.number("CounterReading"),
            counter_reading_unit=fields.text("CounterReadingUnit"),
            value_date=fields.date("ValueDate"),
            raw=raw,
        )

    def get(self, name: str) -> Any:
        """Any wire field by name, in either casing (e.g. ``"VoltageL1"``)."""
        return _Fields(self.raw).get(name)

    @property
    def extra(self) -> dict[str, Any]:
        """Fields smart-me sent that its 2026 document does not declare."""
        return _extra(self.raw, DEVICE_FIELDS)

    def active_power_w(self) -> float | None:
        """ActivePower in W; None without a value; :class:`SmartMeUnitError` for other units."""
        if self.active_power is None:
            return None
        return power_to_watts(self.active_power, self.active_power_unit)

    def counter_reading_wh(self) -> float | None:
        """CounterReading in Wh; None without a value; refuses non-energy units."""
        if self.counter_reading is None:
            return None
        return energy_to_wh(self.counter_reading, self.counter_reading_unit)


def _serial(value: Any) -> int | str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return str(value)


def parse_devices(data: Any) -> list[Device]:
    """A device array. An entry without an Id is skipped (logged): it cannot be keyed."""
    if not isinstance(data, list):
        raise SmartMeParseError(
            f"smart-me devices: expected a JSON array, got {type(data).__name__}")
    devices = []
    for index, item in enumerate(data):
        try:
            devices.append(Device.from_json(item))
        except SmartMeParseError as exc:
            log.warning("smart-me device #%d skipped: %s", index, exc)
    return devices


def inventory_record(device: Device) -> tuple[str, dict[str, Any]]:
    """(key, value) for the compacted ``smartme.devices`` topic; the key is the device id."""
    return device.id, {
        "device_id": device.id,
        "name": device.name,
        "serial": device.serial,
        "energy_type": enum_number(device.energy_type),
        "energy_type_name": enum_name(device.energy_type),
        "sub_type": enum_number(device.sub_type),
        "sub_type_name": enum_name(device.sub_type),
        "family_type": enum_number(device.family_type),
        "family_type_name": enum_name(device.family_type),
        "active_power_unit": device.active_power_unit,
        "counter_reading_unit": device.counter_reading_unit,
        "value_date": format_datetime(device.value_date),
        "raw": dict(device.raw),
    }


# -- /Values/{id} -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObisValue:
    """One ``{Obis, Value}``; ``code`` is None when the text is neither OBIS form."""

    obis: str
    code: ObisCode | None
    value: float | None


@dataclass(frozen=True)
class DeviceValues:
    """``ValuesData`` of ``GET /Values/{id}``: the last value of every OBIS code."""

    device_id: str | None
    date: datetime | None
    values: tuple[ObisValue, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> DeviceValues:
        raw = _object(data, "smart-me values")
        fields = _Fields(raw)
        items = fields.get("Values") or []
        if not isinstance(items, list):
            raise SmartMeParseError("smart-me values: Values is not an array")
        return cls(
            device_id=fields.text("DeviceId"),
            date=fields.date("Date"),
            values=tuple(_obis_value(item) for item in items if isinstance(item, Mapping)),
            raw=raw,
        )

    def by_code(self) -> dict[str, float]:
        """Value by ``A-B:C.D.E*F`` (whichever form smart-me used); unparseable codes left out."""
        return {str(item.code): item.value for item in self.values
                if item.code is not None and item.value is not None}


def _obis_value(item: Mapping[str, Any]) -> ObisValue:
    fields = _Fields(item)
    text = fields.text("Obis") or ""
    try:
        code: ObisCode | None = obis.parse(text)  # accepts 12 hex chars and A-B:C.D.E*F
    except ObisError:
        code = None
    return ObisValue(obis=text, code=code, value=fields.number("Value"))


# -- M-Bus gateways -----------------------------------------------------------------------------
_GUID_EMPTY: Final = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class MBusMeter:
    """``MBusMeterDto``; ``id`` is None when smart-me has no device for it (Guid.Empty)."""

    id: str | None
    name: str | None
    addressing_mode: MBusAddressingMode | int | None
    primary_address: int | None
    secondary_address: str | None
    baudrate: MBusBaudrate | int | None
    state: MBusMeterState | int | None
    energy_type: MBusMeterEnergyType | int | None
    energy_sub_type: MBusMeterEnergySubType | int | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> MBusMeter:
        raw = _object(data, "smart-me M-Bus meter")
        fields = _Fields(raw)
        meter_id = fields.text("Id")
        return cls(
            id=None if not meter_id or meter_id == _GUID_EMPTY else meter_id,
            name=fields.text("Name"),
            addressing_mode=fields.enum("AddressingMode", MBusAddressingMode),
            primary_address=fields.integer("PrimaryAddress"),
            secondary_address=fields.text("SecondaryAddress"),
            baudrate=fields.enum("Baudrate", MBusBaudrate),
            state=fields.enum("State", MBusMeterState),
            energy_type=fields.enum("EnergyType", MBusMeterEnergyType),
            energy_sub_type=fields.enum("EnergyEnergySubType", MBusMeterEnergySubType),
            raw=raw,
        )

    @property
    def alert(self) -> bool:
        return mbus_meter_state_alerts(self.state)


@dataclass(frozen=True)
class MBusGateway:
    """``MBusGatewayDto`` of ``GET /gateway/mbus/{id}`` (the id is the one asked for)."""

    id: str
    name: str | None
    serial_number: str | None
    last_seen: datetime | None
    readout_interval: MBusReadoutInterval | int | None
    state: MBusGatewayState | int | None
    meters: tuple[MBusMeter, ...]
    is_adding_meters_allowed: bool | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any, gateway_id: str) -> MBusGateway:
        raw = _object(data, "smart-me M-Bus gateway")
        fields = _Fields(raw)
        meters = fields.get("Meters") or []
        if not isinstance(meters, list):
            raise SmartMeParseError("smart-me M-Bus gateway: Meters is not an array")
        return cls(
            id=gateway_id,
            name=fields.text("Name"),
            serial_number=fields.text("SerialNumber"),
            last_seen=fields.date("LastSeen"),
            readout_interval=fields.enum("ReadoutInterval", MBusReadoutInterval),
            state=fields.enum("State", MBusGatewayState),
            meters=tuple(MBusMeter.from_json(m) for m in meters if isinstance(m, Mapping)),
            is_adding_meters_allowed=fields.flag("IsAddingMetersAllowed"),
            raw=raw,
        )

    @property
    def readout_interval_seconds(self) -> int | None:
        return readout_interval_seconds(self.readout_interval)


def readout_interval_seconds(interval: MBusReadoutInterval | int | None) -> int | None:
    """Seconds of a readout interval; None for an unknown enum number."""
    if isinstance(interval, MBusReadoutInterval):
        return _READOUT_SECONDS[interval]
    return None


def mbus_offline_threshold(readout_interval_seconds: float) -> float:
    """Seconds without data after which an M-Bus gateway/meter counts as offline.

    Three readout intervals (a meter may miss a readout or two: sequential reads of ~3–10 s
    per meter, battery meters), never below smart-me's own 15-minute offline rule.
    """
    return max(3.0 * readout_interval_seconds, float(OFFLINE_FLOOR_SECONDS))


def mbus_meter_state_alerts(state: MBusMeterState | int | None) -> bool:
    """True for states that need attention (CRCError, LastReadoutFailed); unknown: False."""
    return state in ALERT_METER_STATES


def mbus_gateway_metrics(gateway: MBusGateway) -> dict[str, Any]:
    """JSON-able, metrics-friendly view: last seen, interval in s, state names, meter alerts.

    ``offline_threshold_seconds`` is None when the interval is an unknown number: guessing a
    floor there could page someone every night for a 24 h gateway.
    """
    interval = gateway.readout_interval_seconds
    meters = [_meter_metrics(meter) for meter in gateway.meters]
    return {
        "gateway_id": gateway.id,
        "name": gateway.name,
        "serial_number": gateway.serial_number,
        "last_seen": format_datetime(gateway.last_seen),
        "last_seen_timestamp": gateway.last_seen.timestamp() if gateway.last_seen else None,
        "readout_interval": enum_number(gateway.readout_interval),
        "readout_interval_name": enum_name(gateway.readout_interval),
        "readout_interval_seconds": interval,
        "offline_threshold_seconds": (
            None if interval is None else mbus_offline_threshold(interval)
        ),
        "state": enum_number(gateway.state),
        "state_name": enum_name(gateway.state),
        "meters": meters,
        "meters_alerting": sum(1 for meter in meters if meter["alert"]),
    }


def _meter_metrics(meter: MBusMeter) -> dict[str, Any]:
    return {
        "id": meter.id,
        "name": meter.name,
        "primary_address": meter.primary_address,
        "secondary_address": meter.secondary_address,
        "energy_type": enum_number(meter.energy_type),
        "energy_type_name": enum_name(meter.energy_type),
        "state": enum_number(meter.state),
        "state_name": enum_name(meter.state),
        "alert": meter.alert,
    }


# -- realtime (webhook) registrations -----------------------------------------------------------
@dataclass(frozen=True)
class RealtimeRegistration:
    """``RegisterRealtimeApiData``. The Basic password is never part of the repr."""

    registration_type: RegistrationType | int | None
    api_url: str | None
    meter_id: str | None = None
    serial_number: str | None = None
    basic_auth_username: str | None = None
    basic_auth_password: str | None = field(default=None, repr=False)
    id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> RealtimeRegistration:
        raw = _object(data, "smart-me realtime registration")
        fields = _Fields(raw)
        return cls(
            id=fields.text("Id"),
            registration_type=fields.enum("RegistrationType", RegistrationType),
            meter_id=fields.text("MeterId"),
            serial_number=fields.text("SerialNumber"),
            api_url=fields.text("ApiUrl"),
            basic_auth_username=fields.text("BasicAuthUsername"),
            basic_auth_password=fields.text("BasicAuthPassword"),
            raw=raw,
        )

    def to_json(self) -> dict[str, Any]:
        """The POST body, PascalCase like everything smart-me sends."""
        body = {
            "Id": self.id,
            "RegistrationType": enum_number(self.registration_type),
            "MeterId": self.meter_id,
            "SerialNumber": self.serial_number,
            "ApiUrl": self.api_url,
            "BasicAuthUsername": self.basic_auth_username,
            "BasicAuthPassword": self.basic_auth_password,
        }
        return {key: value for key, value in body.items() if value is not None}


# -- authentication -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    access_token: str = field(repr=False)
    expires_in: float


TokenFetcher = Callable[[str, Mapping[str, str]], Awaitable[Token]]


class Auth(Protocol):
    kind: str
    refreshable: bool  # can a fresh credential be had after a 401?
    hint: str  # the settings to check when smart-me refuses

    async def authorization(self, fetch_token: TokenFetcher) -> str: ...

    def invalidate(self) -> None: ...

    def secrets(self) -> tuple[str, ...]: ...


class ApiKeyAuth:
    kind = "api-key"
    refreshable = False
    hint = f"{PREFIX}SMARTME_API_KEY"

    def __init__(self, key: str) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "ApiKeyAuth(key=***)"

    async def authorization(self, fetch_token: TokenFetcher) -> str:
        return f"ApiKey {self._key}"

    def invalidate(self) -> None:
        """A static key cannot be refreshed."""

    def secrets(self) -> tuple[str, ...]:
        return (self._key,)


class BasicAuth:
    kind = "basic"
    refreshable = False
    hint = f"{PREFIX}SMARTME_USERNAME / {PREFIX}SMARTME_PASSWORD"

    def __init__(self, username: str, password: str) -> None:
        self._password = password
        self._token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._warned = False

    def __repr__(self) -> str:
        return "BasicAuth(***)"

    async def authorization(self, fetch_token: TokenFetcher) -> str:
        if not self._warned:
            self._warned = True
            log.warning(
                "smart-me Basic authentication is deprecated by smart-me (marked obsolete, to "
                "be removed); set %sSMARTME_API_KEY or %sSMARTME_CLIENT_ID/CLIENT_SECRET instead",
                PREFIX, PREFIX,
            )
        return f"Basic {self._token}"

    def invalidate(self) -> None:
        """A password cannot be refreshed."""

    def secrets(self) -> tuple[str, ...]:
        return (self._password, self._token)


class OAuthClientCredentials:
    """OAuth2 client credentials (``client_secret_post``) with a cached bearer token."""

    kind = "oauth2"
    refreshable = True
    hint = f"{PREFIX}SMARTME_CLIENT_ID / {PREFIX}SMARTME_CLIENT_SECRET"

    def __init__(self, token_url: str, client_id: str, client_secret: str, *,
                 clock: Callable[[], float] = time.monotonic,
                 margin: float = TOKEN_MARGIN) -> None:
        self._token_url = token_url
        self._form = {"grant_type": "client_credentials", "client_id": client_id,
                      "client_secret": client_secret}
        self._secret = client_secret
        self._clock = clock
        self._margin = margin
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        # Tokens handed out recently, so an echo of one in an error body can be redacted.
        self._recent: collections.deque[str] = collections.deque(maxlen=4)

    def __repr__(self) -> str:
        return f"OAuthClientCredentials(client_id={self._form['client_id']!r}, secret=***)"

    async def authorization(self, fetch_token: TokenFetcher) -> str:
        # One refresh at a time: concurrent requests wait for the same new token.
        async with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                token = await fetch_token(self._token_url, self._form)
                self._recent.append(token.access_token)
                self._token = token.access_token
                self._refresh_at = self._clock() + self._lifetime(token.expires_in)
            return f"Bearer {self._token}"

    def _lifetime(self, expires_in: float) -> float:
        # Refresh a margin early so a token never expires in flight; short tokens: half-life.
        return max(0.0, expires_in - min(self._margin, expires_in / 2))

    def invalidate(self) -> None:
        self._token = None

    def secrets(self) -> tuple[str, ...]:
        return (self._secret, *self._recent)


def auth_from_settings(settings: Settings, *,
                       clock: Callable[[], float] = time.monotonic) -> Auth:
    """API key, else OAuth2 client credentials, else (deprecated) Basic; none → config error."""
    if settings.smartme_api_key:
        return ApiKeyAuth(settings.smartme_api_key)
    if settings.smartme_client_id or settings.smartme_client_secret:
        _require_pair(settings.smartme_client_id, "SMARTME_CLIENT_ID",
                      settings.smartme_client_secret, "SMARTME_CLIENT_SECRET")
        return OAuthClientCredentials(settings.smartme_token_url, settings.smartme_client_id,
                                      settings.smartme_client_secret, clock=clock)
    if settings.smartme_username or settings.smartme_password:
        _require_pair(settings.smartme_username, "SMARTME_USERNAME",
                      settings.smartme_password, "SMARTME_PASSWORD")
        return BasicAuth(settings.smartme_username, settings.smartme_password)
    raise SmartMeConfigError(
        f"no smart-me credentials: set {PREFIX}SMARTME_API_KEY (recommended), or "
        f"{PREFIX}SMARTME_CLIENT_ID and {PREFIX}SMARTME_CLIENT_SECRET (OAuth2 client "
        f"credentials), or {PREFIX}SMARTME_USERNAME and {PREFIX}SMARTME_PASSWORD (Basic, "
        "deprecated by smart-me)"
    )


def _require_pair(first: str, first_name: str, second: str, second_name: str) -> None:
    missing = [PREFIX + name for value, name in ((first, first_name), (second, second_name))
               if not value]
    if missing:
        raise SmartMeConfigError(f"{' and '.join(missing)} must be set too "
                                 f"({PREFIX}{first_name} and {PREFIX}{second_name} go together)")


# -- retries ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: sleep uniform(0, min(max_delay, base·2^n))."""

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    # A Retry-After longer than this is not slept through: the request fails at once.
    max_retry_after: float = 300.0

    def backoff(self, attempt: int, rng: Callable[[], float]) -> float:
        return rng() * min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent/invalid."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass  # not delta-seconds: an HTTP-date
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _retriable(status: int) -> bool:
    return status in (408, 429) or status >= 500


# -- the client ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Request:
    method: str
    url: str
    label: str  # path (+ query) for logs and errors: never a header, never a secret
    params: Mapping[str, str] | None = None
    json_body: Any = None
    form: Mapping[str, str] | None = field(default=None, repr=False)
    authorized: bool = True
    idempotent: bool = True


@dataclass(frozen=True)
class _Reply:
    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    attempts: int


Sleep = Callable[[float], Awaitable[None]]


class SmartMeClient:
    """Async smart-me REST client. Use as ``async with SmartMeClient(settings) as client``.

    ``sleep``, ``clock``, ``rng`` and ``retry`` are injectable so tests run without waiting.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        session: aiohttp.ClientSession | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._base = _base_url(settings.smartme_base_url)
        self._auth = auth_from_settings(settings, clock=clock)
        self._retry = retry or RetryPolicy(max_retries=max(0, settings.smartme_max_retries))
        self._timeout = aiohttp.ClientTimeout(total=settings.smartme_timeout)
        self._session = session
        self._owns_session = session is None
        self._sleep = sleep
        self._rng = rng

    def __repr__(self) -> str:
        return f"SmartMeClient(base_url={self._base!r}, auth={self._auth.kind})"

    @property
    def auth_kind(self) -> str:
        return self._auth.kind

    async def __aenter__(self) -> SmartMeClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- endpoints ------------------------------------------------------------------------------
    async def devices(self) -> list[Device]:
        return parse_devices(await self._json("GET", "/Devices"))

    async def device(self, device_id: str) -> Device:
        return Device.from_json(await self._json("GET", f"/Devices/{_segment(device_id)}"))

    async def devices_by_energy(self, energy_type: MeterEnergyType | int) -> list[Device]:
        params = {"meterEnergyType": str(int(energy_type))}
        return parse_devices(await self._json("GET", "/DevicesByEnergy", params=params))

    async def values(self, device_id: str) -> DeviceValues:
        return DeviceValues.from_json(await self._json("GET", f"/Values/{_segment(device_id)}"))

    async def mbus_gateway(self, gateway_id: str) -> MBusGateway:
        data = await self._json("GET", f"/gateway/mbus/{_segment(gateway_id)}")
        return MBusGateway.from_json(data, gateway_id)

    async def realtime_registrations(self) -> list[RealtimeRegistration]:
        data = await self._json("GET", "/RegisterForRealtimeApi")
        if not isinstance(data, list):
            raise SmartMeParseError("smart-me registrations: expected a JSON array")
        return [RealtimeRegistration.from_json(item) for item in data
                if isinstance(item, Mapping)]

    async def create_realtime_registration(
        self, registration: RealtimeRegistration
    ) -> RealtimeRegistration | None:
        """POST a registration. smart-me documents no response body (200); if one with an
        ``Id`` comes back it is returned, else None (list the registrations to find it)."""
        data = await self._json("POST", "/RegisterForRealtimeApi",
                                json_body=registration.to_json(), idempotent=False)
        if isinstance(data, Mapping) and _Fields(data).text("Id"):
            return RealtimeRegistration.from_json(data)
        return None

    async def delete_realtime_registration(self, registration_id: str) -> None:
        path = f"/RegisterForRealtimeApi/{_segment(registration_id)}"
        try:
            await self._json("DELETE", path)
        except SmartMeHTTPError as exc:
            # A retried DELETE whose first attempt went through finds nothing left: done.
            if not (exc.status == 404 and exc.attempts > 1):
                raise

    # -- machinery ------------------------------------------------------------------------------
    async def _json(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                    json_body: Any = None, idempotent: bool = True) -> Any:
        label = path if not params else f"{path}?" + "&".join(f"{k}={v}" for k, v in
                                                              params.items())
        request = _Request(method, self._base + path, label, params=params,
                           json_body=json_body, idempotent=idempotent)
        reply = await self._send(request)
        if reply.status == 401 and self._auth.refreshable:
            # Tokens can be revoked before expires_in: one fresh token, then it is an error.
            log.info("smart-me %s %s: 401, re-authenticating once", method, label)
            self._auth.invalidate()
            reply = await self._send(request)
        if reply.status in (401, 403):
            raise self._auth_error(request, reply)
        if reply.status >= 300:
            raise self._http_error(request, reply)
        return self._decode(request, reply)

    async def _send(self, request: _Request) -> _Reply:
        total = self._retry.max_retries + 1
        for attempt in range(1, total + 1):
            try:
                reply = await self._once(request, attempt)
            except (TimeoutError, aiohttp.ClientError) as exc:
                if attempt == total or not request.idempotent:
                    raise self._transport_error(request, exc, attempt) from None
                delay = self._retry.backoff(attempt, self._rng)
                self._log_retry(request, _describe(exc), attempt, total, delay)
            else:
                retry = _retriable(reply.status) and (request.idempotent or reply.status == 429)
                if not retry or attempt == total:
                    return reply
                delay = self._delay_after(request, reply, attempt)
                self._log_retry(request, f"HTTP {reply.status}", attempt, total, delay)
            await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _once(self, request: _Request, attempt: int) -> _Reply:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if request.authorized:
            headers["Authorization"] = await self._auth.authorization(self._fetch_token)
        async with self._client_session().request(
            request.method, request.url, params=request.params, json=request.json_body,
            data=request.form, headers=headers, timeout=self._timeout,
        ) as response:
            body = await response.read()
            return _Reply(response.status, response.reason or "", response.headers, body,
                          attempt)

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _delay_after(self, request: _Request, reply: _Reply, attempt: int) -> float:
        backoff = self._retry.backoff(attempt, self._rng)
        wait = parse_retry_after(reply.headers.get("Retry-After"))
        if wait is None:
            return backoff
        if wait > self._retry.max_retry_after:
            raise SmartMeHTTPError(
                f"smart-me {request.method} {request.label}: HTTP {reply.status}, Retry-After "
                f"{wait:.0f} s is longer than the {self._retry.max_retry_after:.0f} s this "
                "client waits; try again later",
                method=request.method, path=request.label, status=reply.status,
                attempts=attempt,
            )
        return max(wait, backoff)

    async def _fetch_token(self, url: str, form: Mapping[str, str]) -> Token:
        request = _Request("POST", url, urlsplit(url).path or url, form=form, authorized=False,
                           idempotent=True)  # asking twice for a token harms nobody
        reply = await self._send(request)
        if reply.status in (400, 401, 403):
            raise SmartMeAuthError(
                f"smart-me token endpoint refused the OAuth2 client credentials (HTTP "
                f"{reply.status}{self._oauth_error(reply)}); check {self._auth.hint}"
            )
        if reply.status >= 300:
            raise self._http_error(request, reply)
        fields = _Fields(_object(self._decode(request, reply), "smart-me token response"))
        token = fields.get("access_token")
        if not isinstance(token, str) or not token:
            raise SmartMeAuthError("smart-me token endpoint answered without an access_token")
        expires_in = fields.number("expires_in")
        if expires_in is None or expires_in <= 0:
            expires_in = DEFAULT_TOKEN_LIFETIME
        return Token(token, expires_in)

    def _oauth_error(self, reply: _Reply) -> str:
        try:
            data = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            return ""
        code = data.get("error") if isinstance(data, dict) else None
        return f": {self._redact(str(code))[:60]}" if code else ""

    def _decode(self, request: _Request, reply: _Reply) -> Any:
        if not reply.body.strip():
            return None
        try:
            return orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            raise SmartMeParseError(
                f"smart-me {request.method} {request.label}: response is not JSON"
            ) from None

    # -- errors and logs, all redacted ----------------------------------------------------------
    def _redact(self, text: str) -> str:
        # Secrets shorter than 4 characters are not searched for: replacing them would
        # mangle the text and they would not survive a brute force anyway.
        for secret in self._auth.secrets():
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def _snippet(self, reply: _Reply) -> str:
        text = " ".join(reply.body.decode("utf-8", "replace").split())
        if not text:
            return ""
        text = self._redact(text)
        if len(text) > _MAX_ERROR_SNIPPET:
            text = text[:_MAX_ERROR_SNIPPET] + "…"
        return f": {text}"

    def _auth_error(self, request: _Request, reply: _Reply) -> SmartMeAuthError:
        if reply.status == 403:
            return SmartMeAuthError(
                f"smart-me {request.method} {request.label}: HTTP 403, the credentials lack "
                f"the permission (API key claim / OAuth2 scope) for this call; check "
                f"{self._auth.hint}"
            )
        again = ", also with a fresh OAuth2 token" if self._auth.refreshable else ""
        return SmartMeAuthError(
            f"smart-me {request.method} {request.label}: HTTP 401, smart-me rejected the "
            f"{self._auth.kind} credentials{again}; check {self._auth.hint}"
        )

    def _http_error(self, request: _Request, reply: _Reply) -> SmartMeHTTPError:
        tries = f" after {reply.attempts} attempts" if reply.attempts > 1 else ""
        reason = f" {self._redact(reply.reason)}" if reply.reason else ""
        maybe = ""
        if not request.idempotent and _retriable(reply.status):
            maybe = " (not retried: the request may or may not have taken effect)"
        return SmartMeHTTPError(
            f"smart-me {request.method} {request.label}: HTTP {reply.status}"
            f"{reason}{tries}{maybe}{self._snippet(reply)}",
            method=request.method, path=request.label, status=reply.status,
            attempts=reply.attempts,
        )

    def _transport_error(self, request: _Request, exc: BaseException,
                         attempts: int) -> SmartMeHTTPError:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        message = (f"smart-me {request.method} {request.label}: "
                   f"{self._redact(_describe(exc))}{tries}")
        if isinstance(exc, TimeoutError):
            return SmartMeTimeoutError(message, method=request.method, path=request.label,
                                       status=None, attempts=attempts)
        return SmartMeHTTPError(message, method=request.method, path=request.label,
                                status=None, attempts=attempts)

    def _log_retry(self, request: _Request, reason: str, attempt: int, total: int,
                   delay: float) -> None:
        log.warning("smart-me %s %s: %s; retry %d/%d in %.2f s", request.method,
                    request.label, self._redact(reason), attempt, total - 1, delay)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _segment(value: str) -> str:
    """A path segment: ids are quoted so a stray ``/`` or ``?`` cannot change the route."""
    if not value:
        raise SmartMeConfigError("an empty smart-me id was given")
    return quote(value, safe="")


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        # Checked first, and the URL is not echoed: it holds a secret.
        raise SmartMeConfigError(f"{PREFIX}SMARTME_BASE_URL must not contain credentials")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SmartMeConfigError(
            f"{PREFIX}SMARTME_BASE_URL must be an http(s) URL, got {url!r}"
        )
    return url.rstrip("/")


def is_uuid(text: str) -> bool:
    """True for a GUID as smart-me writes device and registration ids."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
