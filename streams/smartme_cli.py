"""What ``meterstream smartme ...`` does: webhook registrations and a device overview.

Every function is a coroutine returning an exit status — 0 ok, 1 smart-me refused or failed
(one line on ``err``, no traceback), 2 usage or configuration error — so the command line
runs it with ``asyncio.run(...)`` and tests await it next to a fake smart-me.

``register`` generates the Basic credentials smart-me will present to the webhook bridge
(``secrets`` module) and prints the bridge setting that accepts them. That line is the only
place the password is ever shown: ``list`` prints the user name only.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TextIO
from urllib.parse import urlsplit

from streams.config import PREFIX, ConfigError, Settings
from streams.smartme import (
    Device,
    RealtimeRegistration,
    RegistrationType,
    SmartMeClient,
    SmartMeError,
    enum_label,
    is_uuid,
)

EXIT_OK = 0
EXIT_VENDOR = 1
EXIT_USAGE = 2
BRIDGE_SOURCE = "smartme"  # the `source` the bridge stamps on bodies smart-me sends


class _UsageError(Exception):
    """The command cannot run as asked; exit status 2."""


async def register(
    settings: Settings,
    url: str,
    device: str | None = None,
    *,
    all_devices: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Register ``url`` for one device (id or serial) or, with ``all_devices``, for all."""
    out, err = out or sys.stdout, err or sys.stderr

    async def action() -> int:
        registration = _new_registration(settings, url, device, all_devices, err)
        async with SmartMeClient(settings) as client:
            created = await client.create_realtime_registration(registration)
            if created is None:  # smart-me documents no body: find ours by its unique user
                created = _find(await client.realtime_registrations(), registration)
        _print_registered(out, registration, created)
        return EXIT_OK

    return await _guarded("register", err, action)


async def list_registrations(settings: Settings, *, out: TextIO | None = None,
                             err: TextIO | None = None) -> int:
    """Print every realtime API registration (never a password)."""
    out, err = out or sys.stdout, err or sys.stderr

    async def action() -> int:
        async with SmartMeClient(settings) as client:
            registrations = await client.realtime_registrations()
        if not registrations:
            print("no realtime API registrations", file=out)
            return EXIT_OK
        rows = [_registration_row(r) for r in registrations]
        _print_table(out, ("ID", "TYPE", "METER", "URL", "BASIC USER"), rows)
        return EXIT_OK

    return await _guarded("list", err, action)


async def unregister(settings: Settings, registration_id: str, *, out: TextIO | None = None,
                     err: TextIO | None = None) -> int:
    """Delete one realtime API registration by its id."""
    out, err = out or sys.stdout, err or sys.stderr

    async def action() -> int:
        if not is_uuid(registration_id):
            raise _UsageError(f"{registration_id!r} is not a registration id (a UUID; see "
                              "`meterstream smartme list`)")
        async with SmartMeClient(settings) as client:
            await client.delete_realtime_registration(registration_id)
        print(f"deleted realtime API registration {registration_id}", file=out)
        return EXIT_OK

    return await _guarded("unregister", err, action)


async def devices(settings: Settings, *, out: TextIO | None = None, err: TextIO | None = None,
                  now: datetime | None = None) -> int:
    """Print the account's devices: name, serial, type, last value date and its age."""
    out, err = out or sys.stdout, err or sys.stderr

    async def action() -> int:
        async with SmartMeClient(settings) as client:
            found = await client.devices()
        if not found:
            print("no devices", file=out)
            return EXIT_OK
        for line in devices_table(found, now or datetime.now(UTC)):
            print(line, file=out)
        return EXIT_OK

    return await _guarded("devices", err, action)


# -- pure helpers -------------------------------------------------------------------------------
def devices_table(found: Sequence[Device], now: datetime) -> list[str]:
    """Aligned table lines, sorted by name; the age says how stale each meter is."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)  # a naive clock reading is taken as UTC
    rows = [
        (
            device.name or "-",
            "-" if device.serial is None else str(device.serial),
            enum_label(device.energy_type),
            _date_text(device.value_date),
            "-" if device.value_date is None else format_age(
                (now - device.value_date).total_seconds()),
        )
        for device in sorted(found, key=lambda d: ((d.name or "").lower(), d.id))
    ]
    return table_lines(("NAME", "SERIAL", "TYPE", "LAST VALUE (UTC)", "AGE"), rows)


def format_age(seconds: float) -> str:
    """``45s``, ``3m 12s``, ``5h 7m``, ``2d 4h``; ``future`` when the clock is behind."""
    if seconds < 0:
        return "future"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart, no trailing blanks."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in (headers, *rows)]


def bridge_setting(username: str, password: str) -> str:
    """The bridge setting line that accepts smart-me's Basic credentials."""
    return f"{PREFIX}BRIDGE_CREDENTIALS={BRIDGE_SOURCE}:{username}:{password}"


def generate_credentials() -> tuple[str, str]:
    """A fresh user and password; URL-safe alphabet, so no `,` or `:` breaks the setting."""
    return f"smartme-{secrets.token_hex(4)}", secrets.token_urlsafe(24)


# -- internals ----------------------------------------------------------------------------------
async def _guarded(command: str, err: TextIO, action: Callable[[], Awaitable[int]]) -> int:
    try:
        return await action()
    except (_UsageError, ConfigError) as exc:  # SmartMeConfigError is a ConfigError
        _fail(err, command, exc)
        return EXIT_USAGE
    except SmartMeError as exc:
        _fail(err, command, exc)
        return EXIT_VENDOR


def _fail(err: TextIO, command: str, exc: BaseException) -> None:
    message = " ".join(str(exc).split())  # one line, whatever the server sent
    print(f"meterstream smartme {command}: {message}", file=err)


def _new_registration(settings: Settings, url: str, device: str | None, all_devices: bool,
                      err: TextIO) -> RealtimeRegistration:
    if bool(device) == all_devices:
        raise _UsageError("give exactly one of a device (id or serial) or --all")
    _check_url(settings, url, err)
    username, password = generate_credentials()
    if not device:
        return RealtimeRegistration(RegistrationType.UserRegistration, url,
                                    basic_auth_username=username, basic_auth_password=password)
    # smart-me accepts a serial number when MeterId is empty (OpenAPI 2026).
    meter_id, serial = (device, None) if is_uuid(device) else (None, device)
    return RealtimeRegistration(RegistrationType.SingleMeterRegistration, url,
                                meter_id=meter_id, serial_number=serial,
                                basic_auth_username=username, basic_auth_password=password)


def _check_url(settings: Settings, url: str, err: TextIO) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _UsageError(f"the webhook URL must be an absolute http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise _UsageError("the webhook URL must not contain credentials (they are generated)")
    if parts.scheme == "http":
        print("warning: plain http: smart-me's Basic credentials would cross the internet "
              "unencrypted; use https", file=err)
    if parts.path != settings.bridge_path:
        print(f"warning: the bridge listens on {settings.bridge_path} but the URL's path is "
              f"{parts.path or '/'} (fine only behind a proxy that rewrites it)", file=err)


def _find(found: Sequence[RealtimeRegistration],
          wanted: RealtimeRegistration) -> RealtimeRegistration | None:
    for registration in found:
        if (registration.basic_auth_username == wanted.basic_auth_username
                and registration.api_url == wanted.api_url):
            return registration
    return None


def _print_registered(out: TextIO, registration: RealtimeRegistration,
                      created: RealtimeRegistration | None) -> None:
    target = _target(registration)
    ident = created.id if created is not None and created.id else "(id not returned)"
    print(f"registered {ident}: smart-me sends {target} to {registration.api_url}", file=out)
    print("smart-me authenticates with these generated credentials; give them to the bridge "
          f"(append with a comma if {PREFIX}BRIDGE_CREDENTIALS is already set). "
          "They are not shown again:", file=out)
    print(bridge_setting(registration.basic_auth_username or "",
                         registration.basic_auth_password or ""), file=out)


def _target(registration: RealtimeRegistration) -> str:
    if registration.registration_type == RegistrationType.UserRegistration:
        return "all devices of the account"
    return f"device {registration.meter_id or registration.serial_number}"


_KINDS = {
    RegistrationType.SingleMeterRegistration.name: "single meter",
    RegistrationType.UserRegistration.name: "all devices",
    RegistrationType.Disabled.name: "disabled",
}


def _registration_row(registration: RealtimeRegistration) -> tuple[str, ...]:
    return (
        registration.id or "-",
        _KINDS.get(enum_label(registration.registration_type),
                   enum_label(registration.registration_type)),
        registration.meter_id or registration.serial_number or "-",
        registration.api_url or "-",
        registration.basic_auth_username or "-",
    )


def _print_table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    for line in table_lines(headers, rows):
        print(line, file=out)


def _date_text(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
