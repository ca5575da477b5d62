"""The vendor sub-commands, run as a user runs them, against the fake vendor servers."""

from __future__ import annotations

import asyncio
import os
import sys

from streams.config import Settings
from tests.fakes.smartme_server import FakeSmartMe
from tests.fakes.umeter_server import FakeUMeter


async def meterstream(settings: Settings, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams", *args, env={**os.environ, **settings.to_env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return int(process.returncode or 0), out.decode(), err.decode()


async def test_smartme_devices_and_registration_round_trip() -> None:
    async with FakeSmartMe() as fake:
        settings = fake.settings()
        code, out, _ = await meterstream(settings, "smartme", "devices")
        assert code == 0 and "METER-EXAMPLE" in out and "MBUS-GW-CELLAR" in out
        code, out, _ = await meterstream(settings, "smartme", "register", "--url",
                                         "https://meters.example.com/smartme/realtime", "--all")
        assert code == 0 and "METERSTREAM_BRIDGE_CREDENTIALS=smartme:" in out
        code, out, _ = await meterstream(settings, "smartme", "list")
        assert code == 0 and "meters.example.com" in out


async def test_smartme_without_credentials_is_a_usage_error() -> None:
    code, _out, err = await meterstream(Settings(), "smartme", "list")
    assert code == 2 and "METERSTREAM_SMARTME_API_KEY" in err and "Traceback" not in err


async def test_umeter_check_prints_the_customers_eans() -> None:
    async with FakeUMeter() as fake:
        code, out, err = await meterstream(fake.settings(), "umeter", "check")
    assert code == 0, err
    assert "871687120000000017" in out  # the fixture's EAN
