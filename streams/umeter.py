"""UMeter / meterdata.io client: customer (EAN) data and grid-operator measurements.

Framework-free (aiohttp only, no Faust): the poller agent, the CLI and the tests all use
:class:`UMeterClient` the same way::

    async with UMeterClient.from_settings(settings) as client:
        customer = await client.customer()
        day = await client.measurements(customer.eans[0], date=date(2025, 11, 21))

What is documented and what is assumed (see shared/DOMAIN.md §4):

* Login is the OAuth2 *password* grant, form-encoded, at ``auth.umeter.nl/token``
  [documented by the vendor's guide; the form content type is what the working public Java
  client sends]. The answer carries ``access_token``, ``token_type``, ``expires_in``; other
  fields (``refresh_token``, ``userName``, ...) are kept but not used. The real lifetime is
  UNKNOWN; when ``expires_in`` is missing the token is used until the API answers 401.
* ``GET {app}/api/customer`` has the shape of an anonymised real 2022 response (EAN at
  ``addresses[].eEan.ean``). Every field except the customer ``id`` is optional here.
* ``GET {meas}/api/v2/measurements/{date|month|year}/{value}?meteringPointIds=&measKeys=``
  is documented only as a URL. Its JSON shape, time zone and units are UNKNOWN, so
  :func:`parse_measurements` looks for plausible field names (see its docstring), always
  keeps the raw JSON, and reports in ``warnings`` what it could not interpret.
* The older P4 shape (``aData[]`` with local-time ``dateFrom``/``dateTo`` and
  ``usage{r181,r182,r281,r282}`` in kWh) is the only public evidence of UMeter data and is
  parsed as well. Naive timestamps are Dutch local time (Europe/Amsterdam) — INFERENCE.

Credentials never appear in logs, exception messages or reprs: the password is only put in
the login form, the token only in the Authorization header, and every message built from a
vendor answer is scrubbed of both.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, TextIO
from zoneinfo import ZoneInfo

import aiohttp
from multidict import CIMultiDictProxy

from streams.config import Settings

log = logging.getLogger(__name__)

#: The Dutch grid operators' time zone; naive UMeter timestamps are read as this (INFERENCE).
LOCAL_TZ = ZoneInfo("Europe/Amsterdam")

CUSTOMER_SCHEMA = "umeter.customer/1"
MEASUREMENTS_SCHEMA = "umeter.measurements/1"

_SNIPPET_BYTES = 120
_TOKEN_MARGIN_MAX = 60.0  # seconds a token is renewed before the vendor says it expires
_TOKEN_MARGIN_SHARE = 0.1  # ... or 10 % of its lifetime when that is shorter
_MAX_DEPTH = 12  # nesting the tolerant measurement walk descends before it gives up

Sleep = Callable[[float], Awaitable[None]]
_Date = date  # parameters named `date` shadow the type inside some functions
PeriodKind = Literal["date", "month", "year"]


# -- errors -----------------------------------------------------------------------------------
class UMeterError(Exception):
    """Anything that went wrong talking to UMeter; the message is one readable line."""


class UMeterAuthError(UMeterError):
    """Login refused, or the API refused a freshly issued token (HTTP 401 twice)."""


class UMeterResponseError(UMeterError):
    """A response that cannot be used: unexpected status, non-JSON or wrong-typed body."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        path: str | None = None,
        snippet: str | None = None,
    ) -> None:
        self.reason = reason
        self.status = status
        self.path = path
        self.snippet = snippet
        parts = [f"UMeter {path}" if path else "UMeter response", reason]
        if status is not None:
            parts.append(f"HTTP {status}")
        message = ": ".join(parts[:2]) + (f" ({parts[2]})" if len(parts) > 2 else "")
        if snippet is not None:
            message += f"; body starts {snippet}"
        super().__init__(message)


class UMeterUnavailableError(UMeterError):
    """UMeter kept answering 429/5xx or timing out after every retry."""

    def __init__(self, message: str, *, status: int | None, path: str, attempts: int) -> None:
        super().__init__(message)
        self.status = status
        self.path = path
        self.attempts = attempts


# -- token ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    """An access token and when it was obtained (on the client's monotonic clock)."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: float | None
    obtained_at: float
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def renew_at(self) -> float | None:
        """Clock value after which the token is replaced; None: unknown lifetime."""
        if self.expires_in is None:
            return None
        margin = min(_TOKEN_MARGIN_MAX, _TOKEN_MARGIN_SHARE * self.expires_in)
        return self.obtained_at + self.expires_in - margin

    def fresh(self, now: float) -> bool:
        renew_at = self.renew_at
        return renew_at is None or now < renew_at


def parse_token(data: Any, *, obtained_at: float) -> Token:
    """The token endpoint's JSON; raises ValueError (without the body) when unusable."""
    if not isinstance(data, dict):
        raise ValueError(f"token response is a JSON {type(data).__name__}, not an object")
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        error = data.get("error")
        raise ValueError(f"no access_token in the token response (error: {error!r})"
                         if isinstance(error, str) else "no access_token in the token response")
    expires = data.get("expires_in")
    expires_in: float | None = None
    if isinstance(expires, int | float) and not isinstance(expires, bool) and expires > 0:
        expires_in = float(expires)
    elif isinstance(expires, str) and expires.strip().isdigit():
        expires_in = float(expires)  # OWIN servers sometimes send numbers as strings
    token_type = data.get("token_type")
    extra = {k: v for k, v in data.items() if k not in ("access_token", "token_type", "expires_in")}
    return Token(access, token_type if isinstance(token_type, str) else "bearer",
                 expires_in, obtained_at, extra)


# -- retry helpers ----------------------------------------------------------------------------
def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), else None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # RFC 9110: HTTP-dates are always GMT
    reference = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())


def backoff_delay(attempt: int, *, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base·2^attempt)]."""
    return rand() * min(cap, base * 2.0 ** attempt)


def _retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def _snippet(body: bytes, secrets: Iterable[str] = ()) -> str:
    text = body[:_SNIPPET_BYTES].decode("utf-8", errors="replace")
    return repr(_redact(text, secrets)) + ("…" if len(body) > _SNIPPET_BYTES else "")


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class _Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


# -- customer ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """A device listed by UMeter (in customer.json its id is the EAN itself)."""

    id: str
    name: str | None
    type: str | None
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Address:
    """One connection address; ``ean`` is ``eEan.ean``, the metering point id."""

    id: str | None
    title: str | None
    ean: str | None
    street: str | None
    building_nr: str | None
    building_nr_ex: str | None
    zip_code: str | None
    city: str | None
    elec_meter_number: str | None
    devices: tuple[Device, ...]
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def house_number(self) -> str | None:
        if self.building_nr is None:
            return None
        return self.building_nr + (self.building_nr_ex or "")

    def one_line(self) -> str:
        """``Street 12A, 3511AB City`` with whatever parts are known."""
        street = " ".join(p for p in (self.street, self.house_number) if p)
        place = " ".join(p for p in (self.zip_code, self.city) if p)
        return ", ".join(p for p in (street, place) if p) or "(no address given)"


@dataclass(frozen=True)
class Customer:
    """``GET /api/customer``, normalised; ``raw`` is the untouched JSON object."""

    id: str
    first_name: str | None
    sur_name: str | None
    email: str | None
    addresses: tuple[Address, ...]
    other_devices: tuple[Device, ...]
    raw: Mapping[str, Any] = field(repr=False)
    warnings: tuple[str, ...] = ()

    @property
    def name(self) -> str | None:
        name = " ".join(p for p in (self.first_name, self.sur_name) if p)
        return name or None

    @property
    def eans(self) -> list[str]:
        """Every address EAN, in order, without duplicates."""
        return list(dict.fromkeys(a.ean for a in self.addresses if a.ean))

    @property
    def devices(self) -> list[Device]:
        return [d for a in self.addresses for d in a.devices] + list(self.other_devices)


def _text(value: Any) -> str | None:
    """A scalar as text (numbers too: ``buildingNr`` is an int), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float):
        return str(value)
    return None


def _field(obj: Mapping[str, Any], *names: str) -> Any:
    """The first of ``names`` present in ``obj``, compared case-insensitively."""
    lowered = {k.lower(): k for k in obj if isinstance(k, str)}
    for name in names:
        key = lowered.get(name.lower())
        if key is not None and obj[key] is not None:
            return obj[key]
    return None


def _parse_devices(items: Any, where: str, warnings: list[str]) -> tuple[Device, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        warnings.append(f"{where} is a {type(items).__name__}, not a list; ignored")
        return ()
    devices = []
    for index, item in enumerate(items):
        device_id = _text(_field(item, "id")) if isinstance(item, dict) else None
        if device_id is None:
            warnings.append(f"{where}[{index}] has no id; ignored")
            continue
        devices.append(Device(device_id, _text(_field(item, "name")),
                              _text(_field(item, "type")), item))
    return tuple(devices)


def _parse_address(item: Mapping[str, Any], index: int, warnings: list[str]) -> Address:
    e_ean = _field(item, "eEan")
    ean = _text(_field(e_ean, "ean")) if isinstance(e_ean, dict) else None
    if ean is None:
        warnings.append(f"addresses[{index}] has no eEan.ean")
    return Address(
        id=_text(_field(item, "id")),
        title=_text(_field(item, "title")),
        ean=ean,
        street=_text(_field(item, "street")),
        building_nr=_text(_field(item, "buildingNr")),
        building_nr_ex=_text(_field(item, "buildingNrEx")),
        zip_code=_text(_field(item, "zipCode")),
        city=_text(_field(item, "city")),
        elec_meter_number=_text(_field(item, "elecMeterNumber")),
        devices=_parse_devices(_field(item, "devices"), f"addresses[{index}].devices", warnings),
        raw=item,
    )


def parse_customer(data: Any) -> Customer:
    """Normalise ``/api/customer``; only a JSON object with an ``id`` is required."""
    if not isinstance(data, dict):
        raise UMeterResponseError(f"customer is a JSON {type(data).__name__}, not an object")
    customer_id = _text(data.get("id"))
    if customer_id is None:
        raise UMeterResponseError("customer has no id")
    warnings: list[str] = []
    addresses = []
    raw_addresses = data.get("addresses")
    if isinstance(raw_addresses, list):
        for index, item in enumerate(raw_addresses):
            if isinstance(item, dict):
                addresses.append(_parse_address(item, index, warnings))
            else:
                warnings.append(f"addresses[{index}] is not an object; ignored")
    elif raw_addresses is not None:
        warnings.append("addresses is not a list; ignored")
    # p1Devices' item shape is UNKNOWN (empty in the only sample); parsed like devices[].
    others = _parse_devices(data.get("p1Devices"), "p1Devices", warnings)
    return Customer(
        id=customer_id,
        first_name=_text(_field(data, "firstName", "name")),
        sur_name=_text(_field(data, "surName", "lastName")),
        email=_text(data.get("email")),
        addresses=tuple(addresses),
        other_devices=others,
        raw=data,
        warnings=tuple(warnings),
    )


# -- measurements -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    """The ``{date|month|year}/{value}`` part of a measurements URL."""

    kind: PeriodKind
    value: str  # YYYYMMDD, YYYYMM or YYYY

    @property
    def path(self) -> str:
        return f"{self.kind}/{self.value}"

    @property
    def first_day(self) -> date:
        if self.kind == "date":
            return datetime.strptime(self.value, "%Y%m%d").date()
        if self.kind == "month":
            return datetime.strptime(self.value + "01", "%Y%m%d").date()
        return date(int(self.value), 1, 1)


def make_period(
    *, date: date | str | None = None, month: date | str | None = None,
    year: int | str | None = None,
) -> Period:
    """Exactly one of date/month/year, as a date object or ``YYYYMMDD``/``YYYYMM``/``YYYY``."""
    given = sum(v is not None for v in (date, month, year))
    if given != 1:
        raise ValueError("give exactly one of date=, month= or year=")
    if date is not None:
        text = date.strftime("%Y%m%d") if isinstance(date, _Date) else str(date)
        _check_format(text, text, "date", "YYYYMMDD")
        return Period("date", text)
    if month is not None:
        text = month.strftime("%Y%m") if isinstance(month, _Date) else str(month)
        _check_format(text, text + "01", "month", "YYYYMM")
        return Period("month", text)
    text = str(year)
    if not re.fullmatch(r"\d{4}", text) or text == "0000":
        raise ValueError(f"year must be YYYY, got {year!r}")
    return Period("year", text)


def _check_format(text: str, as_day: str, name: str, shown: str) -> None:
    try:
        if not re.fullmatch(r"\d{8}", as_day):
            raise ValueError
        datetime.strptime(as_day, "%Y%m%d")
    except ValueError:
        raise ValueError(f"{name} must be a real date written {shown}, got {text!r}") from None


@dataclass(frozen=True)
class MeasurementPoint:
    """One value of one key over one interval.

    ``start``/``end`` are timezone-aware when the source gave an offset, naive (= Dutch
    local time, INFERENCE) when it did not. ``register`` is the source's own register name
    when it had one (P4: r181/r182/r281/r282).
    """

    start: datetime
    end: datetime | None
    key: str
    value: float
    unit: str | None = None
    metering_point: str | None = None
    register: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat() if self.end else None,
            "key": self.key,
            "value": self.value,
            "unit": self.unit,
            "metering_point": self.metering_point,
            "register": self.register,
        }


@dataclass(frozen=True)
class Measurements:
    """One measurements response: recognised points, the raw JSON, and what was not understood.

    ``shape`` says how the body was read: ``"p4"``, ``"guessed"`` (field names matched the
    tolerant rules of :func:`parse_measurements`), ``"empty"`` (no number anywhere in the
    body) or ``"unrecognised"`` (numbers, but no rule found them).
    """

    ean: str
    period: Period
    meas_keys: tuple[str, ...]
    points: tuple[MeasurementPoint, ...]
    raw: Any = field(repr=False)
    shape: str
    warnings: tuple[str, ...] = ()


# P4 registers (DSMR OBIS 1.8.1/1.8.2/2.8.1/2.8.2): tariff 1 = low, 2 = normal (DOMAIN.md §4.5).
P4_REGISTERS: Mapping[str, str] = {"r181": "import", "r182": "import",
                                   "r281": "export", "r282": "export"}

_START_FIELDS = ("timestamp", "start", "startTime", "startDateTime", "from", "dateFrom",
                 "fromDate", "periodStart", "intervalStart", "begin", "dateTime", "datetime",
                 "time", "ts", "t", "date")
_END_FIELDS = ("end", "endTime", "endDateTime", "to", "dateTo", "toDate", "periodEnd",
               "intervalEnd", "until")
_VALUE_FIELDS = ("value", "v", "val", "quantity", "amount", "consumption")
_KEY_FIELDS = ("measKey", "measurementKey", "key", "register")
_LOOSE_KEY_FIELDS = ("type", "name", "direction", "channel")  # only when naming a wanted key
_UNIT_FIELDS = ("unit", "units", "uom", "unitOfMeasure")
_EAN_FIELDS = ("meteringPointId", "meteringPoint", "ean", "eanId", "connectionId")
_NESTED_VALUE_FIELDS = ("values", "usage", "data", "measurements", "readings")
_EAN_RE = re.compile(r"\d{18}")


def parse_timestamp(value: Any) -> datetime | None:
    """ISO-8601 (``Z``/offset/naive, ``T`` or space), ``YYYYMMDD[HHMM]``, ``YYYYMM`` or epoch
    seconds/milliseconds; None for anything else. Naive results are local time."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if abs(value) > 1e11 else value  # ms epochs are 13 digits
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    compact = {14: "%Y%m%d%H%M%S", 12: "%Y%m%d%H%M", 8: "%Y%m%d", 6: "%Y%m"}
    if text.isdigit() and len(text) in compact:
        try:
            return datetime.strptime(text, compact[len(text)])
        except ValueError:
            return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class _Context:
    """What enclosing objects said about the values below them."""

    key: str | None = None
    unit: str | None = None
    ean: str | None = None


class _Walker:
    """The tolerant walk over an unknown measurements body (see parse_measurements)."""

    def __init__(self, wanted: Sequence[str]) -> None:
        self.wanted = tuple(k.lower() for k in wanted)
        self.points: list[MeasurementPoint] = []
        self.warnings: list[str] = []
        self._problems: dict[str, int] = {}
        self._examples: dict[str, str] = {}

    def problem(self, kind: str, example: Any) -> None:
        self._problems[kind] = self._problems.get(kind, 0) + 1
        self._examples.setdefault(kind, repr(example)[:80])

    def finish(self) -> list[str]:
        for kind, count in self._problems.items():
            self.warnings.append(f"{count} {kind} (e.g. {self._examples[kind]})")
        return self.warnings

    def walk(self, node: Any, ctx: _Context, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            self.problem("objects nested too deeply to read", "…")
            return
        if isinstance(node, list):
            for item in node:
                self.walk(item, ctx, depth + 1)
            return
        if not isinstance(node, dict):
            return
        ctx = self._context(node, ctx)
        if self._is_point(node):
            self._points(node, ctx)
            return
        if ctx.key and self._timestamp_map(node, ctx):
            return
        for name, child in node.items():
            if not isinstance(child, dict | list):
                continue
            lowered = str(name).lower()
            if lowered in self.wanted:
                self.walk(child, _Context(lowered, ctx.unit, ctx.ean), depth + 1)
            elif _EAN_RE.fullmatch(str(name)):
                self.walk(child, _Context(ctx.key, ctx.unit, str(name)), depth + 1)
            else:
                self.walk(child, ctx, depth + 1)

    def _context(self, node: Mapping[str, Any], ctx: _Context) -> _Context:
        key = _text(_field(node, *_KEY_FIELDS))
        if key is None:
            loose = _text(_field(node, *_LOOSE_KEY_FIELDS))
            key = loose if loose is not None and loose.lower() in self.wanted else None
        unit = _text(_field(node, *_UNIT_FIELDS))
        ean = _text(_field(node, *_EAN_FIELDS))
        if key is not None:
            key = P4_REGISTERS.get(key.lower(), key.lower())  # "r181" → "import"
        return _Context(key or ctx.key, unit or ctx.unit, ean or ctx.ean)

    def _start_field(self, node: Mapping[str, Any]) -> Any:
        value = _field(node, *_START_FIELDS)
        return None if isinstance(value, dict | list) else value

    @staticmethod
    def _value_field(node: Mapping[str, Any]) -> tuple[bool, Any]:
        """(present, value) of a scalar ``value``-like member; null counts as present
        because a missing interval must be reported, not passed over."""
        lowered = {k.lower(): k for k in node if isinstance(k, str)}
        for name in _VALUE_FIELDS:
            key = lowered.get(name.lower())
            if key is not None and not isinstance(node[key], dict | list):
                return True, node[key]
        return False, None

    def _is_point(self, node: Mapping[str, Any]) -> bool:
        """An object with a scalar time field and at least one value it can carry."""
        if self._start_field(node) is None:
            return False
        if self._value_field(node)[0]:
            return True
        if any((str(name).lower() in self.wanted or str(name).lower() in P4_REGISTERS)
               and not isinstance(value, dict | list) for name, value in node.items()):
            return True
        return isinstance(_field(node, *_NESTED_VALUE_FIELDS), dict)

    def _points(self, node: Mapping[str, Any], ctx: _Context) -> None:
        raw_start = self._start_field(node)
        start = parse_timestamp(raw_start)
        if start is None:
            self.problem("values with an unreadable timestamp skipped", raw_start)
            return
        end = parse_timestamp(_field(node, *_END_FIELDS))
        before = (len(self.points), sum(self._problems.values()))
        has_value, value = self._value_field(node)
        if has_value:
            # Long form: the key comes from the object, an enclosing one, or is the only one.
            key = ctx.key or (self.wanted[0] if len(self.wanted) == 1 else None)
            if key is None:
                self.problem("values without a measKey skipped", node)
            else:
                self._add(start, end, key, value, ctx, None)
        self._wide(node, start, end, ctx)
        nested = _field(node, *_NESTED_VALUE_FIELDS)
        if isinstance(nested, dict):
            self._wide(nested, start, end, ctx)
        if (len(self.points), sum(self._problems.values())) == before:
            self.problem("time-stamped objects without a usable value", node)

    def _wide(self, node: Mapping[str, Any], start: datetime, end: datetime | None,
              ctx: _Context) -> None:
        """Values stored under the key's own name ({"import": 0.1}) or a P4 register."""
        for name, value in node.items():
            lowered = str(name).lower()
            if lowered in self.wanted:
                self._add(start, end, lowered, value, ctx, None)
            elif lowered in P4_REGISTERS:
                self._add(start, end, P4_REGISTERS[lowered], value, ctx, lowered)

    def _timestamp_map(self, node: Mapping[str, Any], ctx: _Context) -> bool:
        """``{"2025-11-21T00:00:00Z": 0.1, ...}`` under a known key."""
        stamps = [(parse_timestamp(k), v) for k, v in node.items()]
        if not stamps or any(s is None or _number(v) is None for s, v in stamps):
            return False
        for stamp, value in stamps:
            assert stamp is not None  # checked just above; narrows the type
            self._add(stamp, None, ctx.key or "", value, ctx, None)
        return True

    def _add(self, start: datetime, end: datetime | None, key: str, value: Any,
             ctx: _Context, register: str | None) -> bool:
        number = _number(value)
        if number is None:
            if value is None:
                self.problem("missing (null) values skipped", f"{key} at {start.isoformat()}")
            else:
                self.problem("non-numeric values skipped", value)
            return False
        self.points.append(MeasurementPoint(start, end, key, number, ctx.unit, ctx.ean, register))
        return True


def parse_p4(data: Mapping[str, Any], *, ean: str | None = None) -> tuple[
        list[MeasurementPoint], list[str]]:
    """The older P4 body: ``aData[{dateFrom, dateTo, usage{r181..r282}}]``, kWh, local time."""
    walker = _Walker(())
    items = data.get("aData")
    if not isinstance(items, list):
        return [], ["aData is not a list"]
    for item in items:
        if not isinstance(item, dict):
            walker.problem("aData items that are not objects skipped", item)
            continue
        start = parse_timestamp(item.get("dateFrom"))
        if start is None:
            walker.problem("aData items with an unreadable dateFrom skipped", item.get("dateFrom"))
            continue
        end = parse_timestamp(item.get("dateTo"))
        usage = item.get("usage")
        if not isinstance(usage, dict):
            walker.problem("aData items without usage skipped", item)
            continue
        for register, value in usage.items():
            # Unknown registers keep their own name as key; daily totals ignore them.
            key = P4_REGISTERS.get(str(register).lower(), str(register))
            walker._add(start, end, key, value, _Context(unit="kWh", ean=ean), str(register))
    return walker.points, walker.finish()


def parse_measurements(data: Any, *, ean: str, period: Period,
                       meas_keys: Sequence[str] = ("import", "export")) -> Measurements:
    """Read a measurements body of UNKNOWN shape; never raises, always keeps ``data``.

    Rules (assumptions, to be checked against a real response with ``meterstream umeter
    check``):

    * A body with ``aData`` is the P4 shape (see :func:`parse_p4`).
    * Otherwise objects and lists are walked. An object with a scalar time field
      (``timestamp``, ``start``, ``from``, ``dateFrom``, ``dateTime``, ``time``, ``date`` …)
      plus a value is one interval: either long form ``{"value": 0.1}`` with the key from
      ``measKey``/``key``/``register`` on it or an enclosing object (or the only requested
      key), or wide form ``{"import": 0.1, "export": 0.0}`` (also nested under
      ``values``/``usage``). ``to``/``end``/``dateTo`` give the interval end.
    * ``unit``/``uom`` and ``meteringPointId``/``ean`` are inherited from enclosing objects;
      an object member named like a requested key or like an 18-digit EAN sets them too.
    * Times: ISO-8601 with or without offset, ``YYYYMMDD[HHMM]``, epoch s/ms; naive times
      are Dutch local time. Values: numbers or numeric strings; units as given (None when
      absent — :func:`daily_totals` then assumes kWh, as P4 used).
    """
    keys = tuple(meas_keys)
    if not _has_numbers(data):
        # Series without a single number: most likely nothing published yet (the grid
        # operator's data arrive a day or more later), not a shape we failed to read.
        return Measurements(ean, period, keys, (), data, "empty",
                            ("response contains no values (not published yet?)",))
    if isinstance(data, dict) and "aData" in data:
        points, warnings = parse_p4(data, ean=ean)
        return Measurements(ean, period, keys, tuple(points), data, "p4", tuple(warnings))
    walker = _Walker(keys)
    walker.walk(data, _Context(ean=None))
    warnings = walker.finish()
    found = _own_points(walker.points, ean, warnings)
    if not found:
        warnings.append("no measurement values recognised; the response shape is UNKNOWN "
                        "(DOMAIN.md §4.4), raw JSON kept")
        return Measurements(ean, period, keys, (), data, "unrecognised", tuple(warnings))
    return Measurements(ean, period, keys, found, data, "guessed", tuple(warnings))


def _has_numbers(data: Any, depth: int = 0) -> bool:
    if isinstance(data, bool) or depth > _MAX_DEPTH:
        return False
    if isinstance(data, int | float):
        return True
    if isinstance(data, dict):
        return any(_has_numbers(v, depth + 1) for v in data.values())
    if isinstance(data, list):
        return any(_has_numbers(v, depth + 1) for v in data)
    return False


def _own_points(points: list[MeasurementPoint], ean: str,
                warnings: list[str]) -> tuple[MeasurementPoint, ...]:
    """Drop values of other metering points, but only when the asked EAN is there too:
    the id UMeter puts in a response might be written differently from the EAN."""
    ids = {p.metering_point for p in points if p.metering_point}
    if ean in ids and len(ids) > 1:
        warnings.append(f"values for other metering points ignored: "
                        f"{', '.join(sorted(ids - {ean}))}")
        return tuple(p for p in points if p.metering_point in (None, ean))
    if ids and ean not in ids:
        warnings.append(f"values are labelled {', '.join(sorted(ids))}, not {ean}; kept")
    return tuple(points)


# -- daily totals (reconciliation) ------------------------------------------------------------
_KWH_FACTORS = {"kwh": 1.0, "wh": 0.001, "mwh": 1000.0}


@dataclass(frozen=True)
class DailyEnergy:
    """Import/export energy of one local day; None means no value of that key that day."""

    day: date
    import_kwh: float | None
    export_kwh: float | None
    points: int
    ignored: int = 0  # points with a unit that is not energy (e.g. kW, m3)


def daily_totals(points: Iterable[MeasurementPoint], *,
                 tz: ZoneInfo = LOCAL_TZ) -> dict[date, DailyEnergy]:
    """Sum ``import``/``export`` per local day (the day of each interval's start).

    Aware times are converted to ``tz``; naive ones already are local (so a P4 DST day with
    92 or 100 quarter-hours still lands on one day). Units: kWh, Wh, MWh are converted;
    no unit is taken as kWh (INFERENCE from P4). Only date/month responses make sense here:
    a year response's monthly values would all count on each month's first day.
    """
    sums: dict[date, dict[str, float]] = {}
    counts: dict[date, list[int]] = {}
    for point in points:
        if point.key not in ("import", "export"):
            continue
        start = point.start.astimezone(tz) if point.start.tzinfo else point.start
        day = start.date()
        tally = counts.setdefault(day, [0, 0])
        factor = _KWH_FACTORS.get((point.unit or "kwh").lower())
        if factor is None:
            tally[1] += 1
            continue
        tally[0] += 1
        per_key = sums.setdefault(day, {})
        per_key[point.key] = per_key.get(point.key, 0.0) + point.value * factor
    return {day: DailyEnergy(day, sums.get(day, {}).get("import"),
                             sums.get(day, {}).get("export"), n, ignored)
            for day, (n, ignored) in sorted(counts.items())}


# -- Kafka records ----------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    """``raw`` as plain JSON types (it came from json.loads; Mapping views are copied)."""
    return json.loads(json.dumps(value))


def customer_record(customer: Customer, *, polled_at: datetime) -> tuple[str, dict[str, Any]]:
    """(key, value) for topic ``umeter.customer``: key = customer id."""
    value = {
        "schema": CUSTOMER_SCHEMA,
        "customer_id": customer.id,
        "name": customer.name,
        "email": customer.email,
        "eans": customer.eans,
        "addresses": [
            {
                "id": a.id, "title": a.title, "ean": a.ean, "street": a.street,
                "building_nr": a.building_nr, "building_nr_ex": a.building_nr_ex,
                "zip_code": a.zip_code, "city": a.city,
                "elec_meter_number": a.elec_meter_number,
                "devices": [{"id": d.id, "name": d.name, "type": d.type} for d in a.devices],
            }
            for a in customer.addresses
        ],
        "other_devices": [{"id": d.id, "name": d.name, "type": d.type}
                          for d in customer.other_devices],
        "warnings": list(customer.warnings),
        "polled_at": polled_at.isoformat(),
        "raw": _json_safe(customer.raw),
    }
    return customer.id, value


def measurement_key(ean: str, day: date) -> str:
    return f"{ean}|{day:%Y%m%d}"


def measurement_record(measurements: Measurements, *,
                       polled_at: datetime) -> tuple[str, dict[str, Any]]:
    """(key, value) for topic ``umeter.measurements``: key = ``ean|YYYYMMDD``.

    Only day (``date=``) responses are published: the topic is keyed per day so the latest
    poll of a day replaces earlier ones, and an unknown month/year body cannot be split.
    """
    period = measurements.period
    if period.kind != "date":
        raise ValueError(f"only date= measurements are published per day, not {period.kind}=")
    day = period.first_day
    totals = daily_totals(measurements.points).get(day)
    value = {
        "schema": MEASUREMENTS_SCHEMA,
        "ean": measurements.ean,
        "date": day.isoformat(),
        "period": {"kind": period.kind, "value": period.value},
        "meas_keys": list(measurements.meas_keys),
        "shape": measurements.shape,
        "points": [p.as_json() for p in measurements.points],
        "import_kwh": totals.import_kwh if totals else None,
        "export_kwh": totals.export_kwh if totals else None,
        "warnings": list(measurements.warnings),
        "polled_at": polled_at.isoformat(),
        "raw": _json_safe(measurements.raw),
    }
    return measurement_key(measurements.ean, day), value


# -- the client -------------------------------------------------------------------------------
def _split_keys(meas_keys: str | Sequence[str]) -> tuple[str, ...]:
    items = meas_keys.split(",") if isinstance(meas_keys, str) else list(meas_keys)
    keys = tuple(k.strip() for k in items if k.strip())
    if not keys:
        raise ValueError("at least one measKey is needed")
    return keys


class UMeterClient:
    """Async UMeter client; use as ``async with`` (it owns its aiohttp session).

    ``base_delay``/``max_delay`` shape the backoff, ``sleep``/``clock``/``rand`` are
    injectable so tests run in milliseconds. A Retry-After longer than ``max_retry_after``
    seconds is not waited for: the request fails at once (the next poll will come).
    """

    def __init__(
        self,
        *,
        username: str,
        password: str,
        auth_url: str = "https://auth.umeter.nl/token",
        app_url: str = "https://app.umeter.nl",
        meas_url: str = "https://meas.meterdata.io",
        timeout: float = 30.0,
        max_retries: int = 4,
        meas_keys: str | Sequence[str] = ("import", "export"),
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        max_retry_after: float = 300.0,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not username:
            raise ValueError("UMeter username is empty")
        if timeout <= 0 or max_retries < 0:
            raise ValueError("timeout must be > 0 and max_retries >= 0")
        self.username = username
        self._password = password
        self.auth_url = auth_url
        self.app_url = app_url.rstrip("/")
        self.meas_url = meas_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.meas_keys = _split_keys(meas_keys)
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._max_retry_after = max_retry_after
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self._token: Token | None = None
        self._login_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> UMeterClient:
        options: dict[str, Any] = {
            "username": settings.umeter_username,
            "password": settings.umeter_password,
            "auth_url": settings.umeter_auth_url,
            "app_url": settings.umeter_app_url,
            "meas_url": settings.umeter_meas_url,
            "timeout": settings.umeter_timeout,
            "max_retries": settings.umeter_max_retries,
            "meas_keys": settings.umeter_meas_keys,
        }
        options.update(overrides)
        return cls(**options)

    def __repr__(self) -> str:
        return (f"UMeterClient(username={self.username!r}, auth_url={self.auth_url!r}, "
                f"app_url={self.app_url!r}, meas_url={self.meas_url!r})")

    async def __aenter__(self) -> UMeterClient:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def has_token(self) -> bool:
        """A token is cached and, as far as the client knows, still valid."""
        return self._token is not None and self._token.fresh(self._clock())

    # -- public API ---------------------------------------------------------------------------
    async def login(self) -> Token:
        """Get a new token (also done implicitly by every call that needs one)."""
        response = await self._send(
            "POST", self.auth_url, path=self.auth_url,
            data={"grant_type": "password", "username": self.username,
                  "password": self._password},
        )
        if response.status != 200:
            raise UMeterAuthError(f"UMeter login failed for user {self.username!r} at "
                                  f"{self.auth_url}: HTTP {response.status}"
                                  f"{self._login_error(response.body)}")
        try:
            token = parse_token(json.loads(response.body), obtained_at=self._clock())
        except ValueError as exc:
            # The body is never quoted: it may hold a token even when it is malformed.
            reason = str(exc) if not isinstance(exc, json.JSONDecodeError) else "not JSON"
            raise UMeterAuthError(f"UMeter login for user {self.username!r} at "
                                  f"{self.auth_url} returned an unusable token response: "
                                  f"{reason}") from None
        self._token = token
        log.info("UMeter: logged in as %s (token valid for %s s)", self.username,
                 "unknown" if token.expires_in is None else f"{token.expires_in:.0f}")
        return token

    async def customer(self) -> Customer:
        """``GET {app}/api/customer``, parsed (raw kept)."""
        path = "/api/customer"
        data = await self._get_json(self.app_url + path, path=path)
        try:
            return parse_customer(data)
        except UMeterResponseError as exc:
            raise UMeterResponseError(exc.reason, status=200, path=path,
                                      snippet=repr(json.dumps(data)[:_SNIPPET_BYTES])) from None

    async def measurements(
        self, ean: str, *, date: date | str | None = None, month: date | str | None = None,
        year: int | str | None = None, meas_keys: str | Sequence[str] | None = None,
    ) -> Measurements:
        """``GET {meas}/api/v2/measurements/{kind}/{value}?meteringPointIds=&measKeys=``.

        Exactly one of date (15-min values of a day), month (per day) or year. The body is
        parsed by :func:`parse_measurements` and never rejected for its shape.
        """
        period = make_period(date=date, month=month, year=year)
        ean = ean.strip()
        if not ean:
            raise ValueError("ean is empty")
        keys = self.meas_keys if meas_keys is None else _split_keys(meas_keys)
        path = f"/api/v2/measurements/{period.path}"
        params = {"meteringPointIds": ean, "measKeys": ",".join(keys)}
        data = await self._get_json(self.meas_url + path, path=path, params=params,
                                    allow_empty=True)
        result = parse_measurements(data, ean=ean, period=period, meas_keys=keys)
        for warning in result.warnings:
            log.debug("UMeter %s %s: %s", path, ean, warning)
        return result

    # -- HTTP ---------------------------------------------------------------------------------
    def _secrets(self) -> tuple[str, ...]:
        token = self._token.access_token if self._token else ""
        return self._password, token

    def _login_error(self, body: bytes) -> str:
        """The OAuth ``error``/``error_description`` of a refused login, scrubbed."""
        try:
            data = json.loads(body)
        except ValueError:
            return ""
        if not isinstance(data, dict):
            return ""
        parts = [str(data[k]) for k in ("error", "error_description") if data.get(k)]
        return (" " + _redact(": ".join(parts), self._secrets())[:200]) if parts else ""

    async def _valid_token(self) -> Token:
        async with self._login_lock:
            if self._token is None or not self._token.fresh(self._clock()):
                await self.login()
            assert self._token is not None  # login() sets it or raises
            return self._token

    async def _get_json(self, url: str, *, path: str, params: Mapping[str, str] | None = None,
                        allow_empty: bool = False) -> Any:
        """GET with the bearer token; on 401 log in again once, then give up."""
        renewed = False
        while True:
            token = await self._valid_token()
            headers = {"Authorization": f"Bearer {token.access_token}",
                       "Accept": "application/json"}
            response = await self._send("GET", url, path=path, params=params, headers=headers)
            if response.status == 401:
                if renewed:
                    raise UMeterAuthError(f"UMeter {path} refused a freshly issued token for "
                                          f"user {self.username!r} (HTTP 401 twice)")
                log.info("UMeter %s: HTTP 401, logging in again", path)
                if self._token is token:  # another request may have renewed it already
                    self._token = None
                renewed = True
                continue
            return self._decode(response, path, allow_empty)

    def _decode(self, response: _Response, path: str, allow_empty: bool) -> Any:
        if not 200 <= response.status <= 299:
            raise UMeterResponseError("unexpected status", status=response.status, path=path,
                                      snippet=_snippet(response.body, self._secrets()))
        if allow_empty and not response.body.strip():
            return None
        try:
            return json.loads(response.body)
        except ValueError:
            raise UMeterResponseError("body is not JSON", status=response.status, path=path,
                                      snippet=_snippet(response.body, self._secrets())) from None

    async def _send(self, method: str, url: str, *, path: str,
                    params: Mapping[str, str] | None = None,
                    headers: Mapping[str, str] | None = None,
                    data: Mapping[str, str] | None = None) -> _Response:
        """One request with retries on 429, 5xx, timeouts and connection errors."""
        if self._session is None:
            raise RuntimeError("use `async with UMeterClient(...)` before calling it")
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            status: int | None = None
            retry_after: float | None = None
            try:
                async with self._session.request(method, url, params=params, headers=headers,
                                                 data=data, timeout=timeout) as resp:
                    body = await resp.read()
                    if not _retryable_status(resp.status):
                        return _Response(resp.status, resp.headers, body)
                    status = resp.status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    problem = f"HTTP {status}"
            except TimeoutError:
                problem = f"no answer within {self.timeout:g} s"
            except aiohttp.ClientError as exc:
                problem = f"{type(exc).__name__}: {_redact(str(exc), self._secrets())}"
            if attempt + 1 >= attempts:
                break
            if retry_after is not None and retry_after > self._max_retry_after:
                raise UMeterUnavailableError(
                    f"UMeter {path}: {problem}, asks to retry after {retry_after:.0f} s "
                    f"(more than {self._max_retry_after:g} s); giving up for now",
                    status=status, path=path, attempts=attempt + 1)
            delay = retry_after if retry_after is not None else backoff_delay(
                attempt, base=self._base_delay, cap=self._max_delay, rand=self._rand)
            log.warning("UMeter %s: %s; retry %d/%d in %.2f s", path, problem, attempt + 1,
                        self.max_retries, delay)
            await self._sleep(delay)
        raise UMeterUnavailableError(f"UMeter {path}: {problem} (gave up after {attempts} "
                                     f"attempt{'s' if attempts > 1 else ''})",
                                     status=status, path=path, attempts=attempts)


# -- `meterstream umeter check` ---------------------------------------------------------------
async def check(settings: Settings, out: TextIO, *, today: date | None = None,
                **client_options: Any) -> int:
    """Log in, print EANs, addresses, devices and yesterday's/today's measurements.

    Exit status: 0 all fine, 1 UMeter refused or failed (one line, no traceback), 2 no
    username configured (or an unusable UMeter setting). ``today`` (Dutch local date by
    default) and ``client_options`` (passed to :class:`UMeterClient`) exist for tests.
    """
    if not settings.umeter_username:
        print("UMeter: no username configured (set METERSTREAM_UMETER_USERNAME and "
              "METERSTREAM_UMETER_PASSWORD or _PASSWORD_FILE)", file=out)
        return 2
    day = today or datetime.now(LOCAL_TZ).date()
    status = 0
    try:
        client = UMeterClient.from_settings(settings, **client_options)
    except ValueError as exc:
        print(f"UMeter settings: {exc}", file=out)
        return 2
    try:
        async with client:
            customer = await client.customer()
            _print_customer(customer, out)
            for ean in customer.eans:
                print(f"measurements of EAN {ean}:", file=out)
                for label, when in (("yesterday", day - timedelta(days=1)), ("today", day)):
                    try:
                        result = await client.measurements(ean, date=when)
                    except UMeterAuthError:
                        raise
                    except UMeterError as exc:
                        print(f"  {when} ({label}): error: {exc}", file=out)
                        status = 1
                        continue
                    _print_measurements(result, label, out)
    except UMeterError as exc:
        print(f"UMeter check failed: {exc}", file=out)
        return 1
    return status


def _print_customer(customer: Customer, out: TextIO) -> None:
    print(f"customer {customer.id} ({customer.name or 'no name'})", file=out)
    if not customer.addresses:
        print("  no addresses", file=out)
    for address in customer.addresses:
        print(f"  address {address.title or address.id or '?'}: {address.one_line()}"
              f" — EAN {address.ean or '(none)'}", file=out)
        for device in address.devices:
            print(f"    device {device.id} {device.name or ''} ({device.type or '?'})", file=out)
    for device in customer.other_devices:
        print(f"  other device {device.id} {device.name or ''} ({device.type or '?'})", file=out)
    for warning in customer.warnings:
        print(f"  note: {warning}", file=out)


def _print_measurements(result: Measurements, label: str, out: TextIO) -> None:
    day = result.period.first_day
    points = result.points
    if points:
        totals = daily_totals(points).get(day)
        first, last = min(p.start for p in points), max(p.start for p in points)
        energy = ""
        if totals is not None:
            energy = ", ".join(f"{name} {value:.3f} kWh" for name, value in
                               (("import", totals.import_kwh), ("export", totals.export_kwh))
                               if value is not None)
        print(f"  {day} ({label}): {len(points)} values ({result.shape}), {energy or 'no kWh'}"
              f", {first:%H:%M}–{last:%H:%M}", file=out)
    else:
        print(f"  {day} ({label}): no values ({result.shape})", file=out)
    for warning in result.warnings:
        print(f"    note: {warning}", file=out)
    if result.shape == "unrecognised":
        # The one place a real response can be seen; it decides the UNKNOWN shape.
        print(f"    raw starts: {json.dumps(result.raw)[:300]}", file=out)
