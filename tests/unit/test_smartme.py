"""smart-me REST client, parsing, pure transforms and CLI functions, against a fake smart-me."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime as http_date
from typing import Any

import orjson
import pytest

from streams import smartme_cli
from streams.config import ConfigError, Credential, Settings
from streams.smartme import (
    Device,
    MBusGatewayState,
    MBusMeterState,
    MBusReadoutInterval,
    MeterEnergyType,
    MeterFamilyType,
    RetryPolicy,
    SmartMeAuthError,
    SmartMeClient,
    SmartMeConfigError,
    SmartMeHTTPError,
    SmartMeParseError,
    SmartMeTimeoutError,
    SmartMeUnitError,
    energy_to_wh,
    enum_name,
    inventory_record,
    mbus_gateway_metrics,
    mbus_meter_state_alerts,
    mbus_offline_threshold,
    parse_datetime,
    parse_enum,
    power_to_watts,
)
from tests.conftest import load_json
from tests.fakes.smartme_server import (
    API_KEY,
    CLIENT_SECRET,
    FUTURE_ID,
    GATEWAY_ID,
    GUID_EMPTY,
    HEAT_ID,
    PASSWORD,
    TOKEN_PATH,
    USERNAME,
    WATER_ID,
    FakeSmartMe,
)

FIXTURE = "fixtures/smartme/device_by_id.json"
HOOK_URL = "https://meters.example.org/smartme/realtime"  # the bridge's default path


@pytest.fixture
async def fake() -> AsyncIterator[FakeSmartMe]:
    async with FakeSmartMe() as server:
        yield server


class Sleeps:
    """Records the delays the client asks for instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def client(settings: Settings, *, sleeps: Sleeps | None = None, base_delay: float = 0.01,
           rng: Callable[[], float] = lambda: 1.0,
           clock: Callable[[], float] | None = None) -> SmartMeClient:
    """A client whose backoff is deterministic (rng=1 → the upper bound) and never waits."""
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    return SmartMeClient(
        settings, retry=RetryPolicy(max_retries=settings.smartme_max_retries,
                                    base_delay=base_delay),
        sleep=sleeps or Sleeps(), rng=rng, **extra)


def fixture_device() -> dict[str, Any]:
    data: dict[str, Any] = load_json(FIXTURE)
    return data


# -- authentication -----------------------------------------------------------------------------
async def test_api_key_is_sent_as_apikey_header(fake: FakeSmartMe) -> None:
    async with client(fake.settings("api_key")) as smartme:
        devices = await smartme.devices()
    assert {d.id for d in devices} == set(fake.devices)
    assert [r.auth_scheme for r in fake.requests] == ["apikey"]
    assert fake.counts[TOKEN_PATH] == 0


async def test_oauth_client_credentials_post_then_bearer(fake: FakeSmartMe) -> None:
    async with client(fake.settings("oauth")) as smartme:
        await smartme.device(fake.fixture_id)
    token_request, device_request = fake.requests
    assert token_request.path == TOKEN_PATH
    assert token_request.body == {"grant_type": "client_credentials",
                                  "client_id": fake.client_id,
                                  "client_secret": fake.client_secret}
    assert device_request.auth_scheme == "bearer"


async def test_basic_works_and_warns_once_that_it_is_deprecated(
        fake: FakeSmartMe, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streams.smartme")
    async with client(fake.settings("basic")) as smartme:
        await smartme.devices()
        await smartme.device(fake.fixture_id)
    assert [r.auth_scheme for r in fake.requests] == ["basic", "basic"]
    warnings = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1
    assert "SMARTME_API_KEY" in warnings[0].getMessage()


def test_no_credentials_is_a_config_error_naming_the_settings() -> None:
    with pytest.raises(SmartMeConfigError) as caught:
        SmartMeClient(Settings())
    message = str(caught.value)
    for name in ("METERSTREAM_SMARTME_API_KEY", "METERSTREAM_SMARTME_CLIENT_ID",
                 "METERSTREAM_SMARTME_CLIENT_SECRET", "METERSTREAM_SMARTME_USERNAME",
                 "METERSTREAM_SMARTME_PASSWORD"):
        assert name in message
    assert isinstance(caught.value, ConfigError)  # the CLI maps it to exit status 2


@pytest.mark.parametrize(("changes", "missing"), [
    ({"smartme_client_id": "app"}, "METERSTREAM_SMARTME_CLIENT_SECRET"),
    ({"smartme_client_secret": "s3cret-value"}, "METERSTREAM_SMARTME_CLIENT_ID"),
    ({"smartme_username": "me"}, "METERSTREAM_SMARTME_PASSWORD"),
])
def test_half_configured_auth_names_the_missing_setting(changes: dict[str, str],
                                                         missing: str) -> None:
    with pytest.raises(SmartMeConfigError, match=missing):
        SmartMeClient(Settings(**changes))


async def test_oauth_token_is_cached(fake: FakeSmartMe) -> None:
    async with client(fake.settings("oauth")) as smartme:
        for _ in range(3):
            await smartme.devices()
    assert fake.counts[TOKEN_PATH] == 1
    assert fake.counts["/Devices"] == 3


async def test_oauth_token_is_refreshed_a_margin_before_it_expires(fake: FakeSmartMe) -> None:
    now = [1000.0]
    async with client(fake.settings("oauth"), clock=lambda: now[0]) as smartme:
        await smartme.devices()
        now[0] += 3600 - 60 - 1  # expires_in 3600, refreshed 60 s early
        await smartme.devices()
        assert len(fake.issued_tokens) == 1
        now[0] += 2
        await smartme.devices()
    assert len(fake.issued_tokens) == 2


async def test_revoked_token_gets_one_reauthentication(fake: FakeSmartMe) -> None:
    async with client(fake.settings("oauth")) as smartme:
        await smartme.devices()
        fake.expire_tokens()
        devices = await smartme.devices()
    assert devices
    assert len(fake.issued_tokens) == 2
    assert fake.counts["/Devices"] == 3  # ok, 401, ok with the new token


async def test_persistent_401_is_an_auth_error_after_one_reauthentication(
        fake: FakeSmartMe) -> None:
    fake.unauthorized_next(5, path="/Devices")
    async with client(fake.settings("oauth")) as smartme:
        with pytest.raises(SmartMeAuthError) as caught:
            await smartme.devices()
    assert fake.counts["/Devices"] == 2
    assert fake.counts[TOKEN_PATH] == 2
    assert "401" in str(caught.value)
    assert "METERSTREAM_SMARTME_CLIENT_ID" in str(caught.value)


async def test_401_with_an_api_key_is_not_repeated(fake: FakeSmartMe) -> None:
    fake.unauthorized_next(1)
    async with client(fake.settings("api_key")) as smartme:
        with pytest.raises(SmartMeAuthError, match="METERSTREAM_SMARTME_API_KEY"):
            await smartme.devices()
    assert fake.counts["/Devices"] == 1


async def test_wrong_client_secret_is_a_clear_auth_error(fake: FakeSmartMe) -> None:
    wrong = "cs-this-is-not-the-right-one"
    async with client(fake.settings("oauth", smartme_client_secret=wrong)) as smartme:
        with pytest.raises(SmartMeAuthError) as caught:
            await smartme.devices()
    assert "invalid_client" in str(caught.value)
    assert wrong not in str(caught.value)
    assert fake.counts["/Devices"] == 0


# -- retries and timeouts -----------------------------------------------------------------------
@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_429_waits_for_retry_after(fake: FakeSmartMe, form: str) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    retry_after = "7" if form == "seconds" else http_date(when, usegmt=True)
    fake.rate_limit_next(1, retry_after=retry_after)
    sleeps = Sleeps()
    async with client(fake.settings(), sleeps=sleeps) as smartme:
        await smartme.devices()
    assert fake.counts["/Devices"] == 2
    expected = 7.0 if form == "seconds" else 30.0
    assert len(sleeps.delays) == 1
    assert expected - 2.0 <= sleeps.delays[0] <= expected + 0.1


async def test_too_long_retry_after_fails_without_waiting(fake: FakeSmartMe) -> None:
    fake.rate_limit_next(1, retry_after="3600")
    sleeps = Sleeps()
    async with client(fake.settings(), sleeps=sleeps) as smartme:
        with pytest.raises(SmartMeHTTPError) as caught:
            await smartme.devices()
    assert caught.value.status == 429
    assert "3600" in str(caught.value)
    assert sleeps.delays == []


@pytest.mark.parametrize("status", [500, 502, 503, 524])
async def test_5xx_is_retried_with_exponential_backoff(fake: FakeSmartMe, status: int) -> None:
    fake.fail_next(status, times=2)
    sleeps = Sleeps()
    async with client(fake.settings(smartme_max_retries=4), sleeps=sleeps,
                      base_delay=0.25) as smartme:
        devices = await smartme.devices()
    assert devices
    assert fake.counts["/Devices"] == 3
    assert sleeps.delays == [0.25, 0.5]  # rng=1 gives the full-jitter upper bound


async def test_backoff_is_full_jitter_below_the_cap(fake: FakeSmartMe) -> None:
    fake.fail_next(503, times=3)
    sleeps = Sleeps()
    draws = iter([0.5, 0.0, 0.25])
    async with client(fake.settings(), sleeps=sleeps, base_delay=1.0,
                      rng=lambda: next(draws)) as smartme:
        await smartme.devices()
    assert sleeps.delays == [0.5, 0.0, 1.0]  # 0.5·1, 0·2, 0.25·4


async def test_5xx_beyond_the_retry_budget_is_an_error(fake: FakeSmartMe) -> None:
    fake.fail_next(500, times=10)
    async with client(fake.settings(smartme_max_retries=2)) as smartme:
        with pytest.raises(SmartMeHTTPError) as caught:
            await smartme.devices()
    assert (caught.value.status, caught.value.attempts) == (500, 3)
    assert fake.counts["/Devices"] == 3
    assert "after 3 attempts" in str(caught.value)


async def test_client_errors_are_not_retried(fake: FakeSmartMe) -> None:
    async with client(fake.settings()) as smartme:
        with pytest.raises(SmartMeHTTPError) as caught:
            await smartme.device("5a1b2c3d-0000-4000-8000-0000000000ee")
    assert caught.value.status == 404
    assert fake.counts["/Devices/5a1b2c3d-0000-4000-8000-0000000000ee"] == 1


async def test_post_is_not_repeated_after_a_5xx(fake: FakeSmartMe) -> None:
    fake.fail_next(503, times=5, path="/RegisterForRealtimeApi")
    settings = fake.settings(smartme_max_retries=3)
    code, _out, err = await run_cli(smartme_cli.register, settings, HOOK_URL,
                                    device=fake.fixture_id)
    assert code == 1
    assert fake.counts["/RegisterForRealtimeApi"] == 1
    assert "may or may not" in err


async def test_timeouts_are_retried(fake: FakeSmartMe) -> None:
    fake.slow_next(1.0, times=1, path="/Devices")
    async with client(fake.settings(smartme_timeout=0.2)) as smartme:
        devices = await smartme.devices()
    assert devices
    assert fake.counts["/Devices"] == 2


async def test_timeouts_beyond_the_retry_budget_are_a_timeout_error(fake: FakeSmartMe) -> None:
    fake.slow_next(1.0, times=5, path="/Devices")
    async with client(fake.settings(smartme_timeout=0.2, smartme_max_retries=1)) as smartme:
        with pytest.raises(SmartMeTimeoutError) as caught:
            await smartme.devices()
    assert caught.value.attempts == 2
    assert fake.counts["/Devices"] == 2


# -- parsing ------------------------------------------------------------------------------------
def test_fixture_device_is_parsed() -> None:
    data = fixture_device()
    device = Device.from_json(data)
    assert device.id == "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert (device.name, device.serial) == ("METER-EXAMPLE", 63000017)
    assert device.energy_type is MeterEnergyType.Electricity
    assert device.family_type is MeterFamilyType.ThreePhase80AWifiV2
    assert device.sub_type is None  # not sent
    assert (device.active_power, device.active_power_unit) == (0.742, "kW")
    assert (device.counter_reading, device.counter_reading_unit) == (5123.456, "kWh")
    assert device.value_date == datetime(2026, 11, 21, 13, 6, 32, 50051, tzinfo=UTC)
    assert device.get("voltageL2") == 229.5
    assert device.raw == data
    assert device.extra == {}


def test_camel_case_device_parses_the_same() -> None:
    data = fixture_device()
    camel = {key[0].lower() + key[1:]: value for key, value in data.items()}
    assert Device.from_json(camel) == Device.from_json(data)


async def test_unknown_enum_numbers_and_fields_are_kept(fake: FakeSmartMe) -> None:
    async with client(fake.settings()) as smartme:
        device = await smartme.device(FUTURE_ID)
    assert device.energy_type == 42 and not isinstance(device.energy_type, MeterEnergyType)
    assert (device.sub_type, device.family_type) == (77, 4242)
    assert enum_name(device.energy_type) is None
    assert device.extra == {"BatteryLevel": 87}
    assert device.value_date is None


def test_enum_names_and_numeric_strings_are_accepted() -> None:
    assert parse_enum(MeterEnergyType, "MeterTypeHeat") is MeterEnergyType.Heat
    assert parse_enum(MeterEnergyType, "mbusgateway") is MeterEnergyType.MBusGateway
    assert parse_enum(MeterEnergyType, "8") is MeterEnergyType.MBusGateway
    assert parse_enum(MeterEnergyType, "NoSuchType") is None
    assert parse_enum(MeterEnergyType, True) is None


def test_a_device_without_id_is_refused() -> None:
    with pytest.raises(SmartMeParseError, match="Id"):
        Device.from_json({"Name": "nameless"})


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-21T13:06:32.0500519Z", datetime(2026, 11, 21, 13, 6, 32, 50051, tzinfo=UTC)),
    ("2026-11-21T13:06:32Z", datetime(2026, 11, 21, 13, 6, 32, tzinfo=UTC)),
    ("2026-11-21T14:06:32.5+01:00", datetime(2026, 11, 21, 13, 6, 32, 500000, tzinfo=UTC)),
    ("2026-11-21T13:06:32.1234567", datetime(2026, 11, 21, 13, 6, 32, 123456, tzinfo=UTC)),
    ("2026-11-21 13:06+0000", datetime(2026, 11, 21, 13, 6, tzinfo=UTC)),
])
def test_value_dates_become_aware_utc(text: str, expected: datetime) -> None:
    parsed = parse_datetime(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_garbage_date_is_a_parse_error() -> None:
    with pytest.raises(SmartMeParseError):
        parse_datetime("yesterday")


# -- units --------------------------------------------------------------------------------------
def test_power_and_energy_convert_to_w_and_wh() -> None:
    device = Device.from_json(fixture_device())
    assert device.active_power_w() == pytest.approx(742.0)
    assert device.counter_reading_wh() == pytest.approx(5_123_456.0)
    assert power_to_watts(12.0, "W") == 12.0
    assert power_to_watts(1.5, "MW") == 1_500_000.0
    assert energy_to_wh(3.0, "Wh") == 3.0
    assert energy_to_wh(8.5, "MWh") == 8_500_000.0


@pytest.mark.parametrize("unit", ["KW", "kw", " kW", "m3/h", "", None])
def test_unknown_power_units_are_refused(unit: str | None) -> None:
    with pytest.raises(SmartMeUnitError, match="W/kW/MW"):
        power_to_watts(1.0, unit)


@pytest.mark.parametrize("unit", ["KWH", "kwh", "m3", "W", None])
def test_unknown_energy_units_are_refused(unit: str | None) -> None:
    with pytest.raises(SmartMeUnitError, match="Wh/kWh/MWh"):
        energy_to_wh(1.0, unit)


async def test_water_meter_parses_but_refuses_w_and_wh(fake: FakeSmartMe) -> None:
    async with client(fake.settings()) as smartme:
        water = await smartme.device(WATER_ID)
        heat = await smartme.device(HEAT_ID)
    assert water.energy_type is MeterEnergyType.Water
    assert (water.counter_reading, water.counter_reading_unit) == (123.456, "m3")
    with pytest.raises(SmartMeUnitError):
        water.active_power_w()
    with pytest.raises(SmartMeUnitError):
        water.counter_reading_wh()
    assert heat.counter_reading_wh() == pytest.approx(8_500_000.0)


# -- /Values ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("form", "first"), [("hex", "0100010800FF"),
                                             ("dotted", "1-0:1.8.0*255")])
async def test_values_accept_both_obis_forms(form: str, first: str) -> None:
    async with FakeSmartMe(obis_form=form) as server, client(server.settings()) as smartme:
        values = await smartme.values(server.fixture_id)
    assert values.values[0].obis == first
    assert values.device_id == server.fixture_id
    assert values.date == datetime(2026, 11, 21, 13, 6, 32, 50051, tzinfo=UTC)
    assert values.by_code() == {"1-0:1.8.0*255": 5123456.0, "1-0:2.8.0*255": 12500.0,
                                "1-0:1.7.0*255": 742.0, "1-0:32.7.0*255": 231.0}


def test_values_keep_unparseable_obis_text() -> None:
    from streams.smartme import DeviceValues

    values = DeviceValues.from_json({"deviceId": "x", "values": [
        {"obis": "not-obis", "value": 1.0}, {"obis": "1-0:2.8.0", "value": 2.0}]})
    assert [(v.obis, v.code is None) for v in values.values] == [("not-obis", True),
                                                                 ("1-0:2.8.0", False)]
    assert values.by_code() == {"1-0:2.8.0*255": 2.0}


# -- M-Bus gateway ------------------------------------------------------------------------------
async def test_mbus_gateway_is_parsed_into_metrics(fake: FakeSmartMe) -> None:
    async with client(fake.settings()) as smartme:
        gateways = await smartme.devices_by_energy(MeterEnergyType.MBusGateway)
        assert [g.id for g in gateways] == [GATEWAY_ID]
        gateway = await smartme.mbus_gateway(gateways[0].id)
    assert fake.requests[0].query == {"meterEnergyType": "8"}
    assert gateway.readout_interval is MBusReadoutInterval.Intervall_15min
    assert gateway.state is MBusGatewayState.FailedOnOneOrMoreMeter
    assert gateway.last_seen == datetime(2026, 11, 21, 13, 0, tzinfo=UTC)
    assert gateway.is_adding_meters_allowed is False
    metrics = mbus_gateway_metrics(gateway)
    orjson.dumps(metrics)  # JSON-able
    assert metrics["readout_interval_seconds"] == 900
    assert metrics["offline_threshold_seconds"] == 2700
    assert metrics["state_name"] == "FailedOnOneOrMoreMeter"
    assert metrics["last_seen_timestamp"] == gateway.last_seen.timestamp()
    meters = [(m["name"], m["state"], m["state_name"], m["alert"]) for m in metrics["meters"]]
    assert meters == [
        ("WATER-COLD-1", 0, "LastReadoutOk", False),
        ("HEAT-FLAT-2", 1, "LastReadoutFailed", True),
        ("PHANTOM-FF", 3, "CRCError", True),
        ("GAS-1", 2, "ReadoutStarted", False),
        ("NEW-FIRMWARE", 9, None, False),  # unknown state: kept as a number
    ]
    assert metrics["meters_alerting"] == 2
    assert metrics["meters"][2]["id"] is None  # Guid.Empty: not a smart-me device
    assert GUID_EMPTY not in orjson.dumps(metrics).decode()


@pytest.mark.parametrize(("interval", "threshold"), [
    (2, 900), (60, 900), (300, 900), (900, 2700), (3600, 10800), (86400, 259200),
])
def test_mbus_offline_threshold_is_three_intervals_never_below_15_minutes(
        interval: int, threshold: int) -> None:
    assert mbus_offline_threshold(interval) == threshold


@pytest.mark.parametrize(("state", "alerts"), [
    (MBusMeterState.LastReadoutOk, False), (MBusMeterState.LastReadoutFailed, True),
    (MBusMeterState.ReadoutStarted, False), (MBusMeterState.CRCError, True), (9, False),
    (None, False),
])
def test_meter_states_that_alert(state: MBusMeterState | int | None, alerts: bool) -> None:
    assert mbus_meter_state_alerts(state) is alerts


def test_unknown_readout_interval_gives_no_threshold() -> None:
    from streams.smartme import MBusGateway

    gateway = MBusGateway.from_json({"ReadoutInterval": 17, "Meters": None}, GATEWAY_ID)
    metrics = mbus_gateway_metrics(gateway)
    assert metrics["readout_interval"] == 17
    assert metrics["readout_interval_seconds"] is None
    assert metrics["offline_threshold_seconds"] is None


# -- inventory record ---------------------------------------------------------------------------
def test_inventory_record_is_keyed_by_device_id_and_json_able() -> None:
    data = fixture_device()
    key, record = inventory_record(Device.from_json(data))
    assert key == data["Id"]
    assert orjson.loads(orjson.dumps(record)) == {
        "device_id": data["Id"], "name": "METER-EXAMPLE", "serial": 63000017,
        "energy_type": 1, "energy_type_name": "Electricity",
        "sub_type": None, "sub_type_name": None,
        "family_type": 12, "family_type_name": "ThreePhase80AWifiV2",
        "active_power_unit": "kW", "counter_reading_unit": "kWh",
        "value_date": "2026-11-21T13:06:32.050051Z", "raw": data,
    }


async def test_inventory_record_of_an_unknown_device_type(fake: FakeSmartMe) -> None:
    async with client(fake.settings()) as smartme:
        device = await smartme.device(FUTURE_ID)
    _key, record = inventory_record(device)
    assert (record["energy_type"], record["energy_type_name"]) == (42, None)
    assert record["raw"]["BatteryLevel"] == 87
    assert record["value_date"] is None


# -- CLI functions ------------------------------------------------------------------------------
async def run_cli(func: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await func(*args, out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def bridge_credential(output: str) -> Credential:
    """The printed setting line, read the way the bridge reads its environment."""
    lines = [line for line in output.splitlines()
             if line.startswith("METERSTREAM_BRIDGE_CREDENTIALS=")]
    assert len(lines) == 1
    name, _, value = lines[0].partition("=")
    (credential,) = Settings.from_env({name: value}).bridge_credentials
    return credential


async def test_register_one_device_prints_the_bridge_setting(fake: FakeSmartMe) -> None:
    code, out, err = await run_cli(smartme_cli.register, fake.settings(), HOOK_URL,
                                   device=fake.fixture_id)
    assert (code, err) == (0, "")
    credential = bridge_credential(out)
    assert credential.source == "smartme"
    (stored,) = fake.registrations.values()
    assert stored["RegistrationType"] == 1
    assert stored["MeterId"] == fake.fixture_id
    assert stored["ApiUrl"] == HOOK_URL
    assert (stored["BasicAuthUsername"], stored["BasicAuthPassword"]) == (
        credential.username, credential.password)
    assert len(credential.password) >= 24
    assert stored["Id"] in out  # found by listing: smart-me's POST returns no body


async def test_register_all_devices_generates_fresh_credentials(fake: FakeSmartMe) -> None:
    first = await run_cli(smartme_cli.register, fake.settings(), HOOK_URL, all_devices=True)
    second = await run_cli(smartme_cli.register, fake.settings(), HOOK_URL, all_devices=True)
    assert first[0] == second[0] == 0
    one, two = bridge_credential(first[1]), bridge_credential(second[1])
    assert one.username != two.username and one.password != two.password
    assert [(r["RegistrationType"], r["MeterId"]) for r in fake.registrations.values()] == [
        (2, None), (2, None)]


async def test_register_by_serial_number(fake: FakeSmartMe) -> None:
    code, _out, _err = await run_cli(smartme_cli.register, fake.settings(), HOOK_URL,
                                     device="63000017")
    assert code == 0
    (stored,) = fake.registrations.values()
    assert (stored["MeterId"], stored["SerialNumber"]) == (None, "63000017")


async def test_register_warns_about_plain_http_and_another_path(fake: FakeSmartMe) -> None:
    code, _out, err = await run_cli(smartme_cli.register, fake.settings(),
                                    "http://meters.example.org/hook", all_devices=True)
    assert code == 0
    assert "plain http" in err and "/smartme/realtime" in err


@pytest.mark.parametrize(("url", "kwargs"), [
    (HOOK_URL, {}),
    (HOOK_URL, {"device": "63000017", "all_devices": True}),
    ("meters.example.org/smartme/realtime", {"all_devices": True}),
    ("https://user:pw@meters.example.org/smartme/realtime", {"all_devices": True}),
])
async def test_register_usage_errors_exit_2_without_calling_smart_me(
        fake: FakeSmartMe, url: str, kwargs: dict[str, Any]) -> None:
    code, out, err = await run_cli(smartme_cli.register, fake.settings(), url, **kwargs)
    assert code == 2
    assert out == "" and len(err.splitlines()) == 1
    assert not fake.requests


async def test_list_shows_registrations_but_never_the_password(fake: FakeSmartMe) -> None:
    _code, registered, _err = await run_cli(smartme_cli.register, fake.settings(), HOOK_URL,
                                            device=fake.fixture_id)
    credential = bridge_credential(registered)
    code, out, err = await run_cli(smartme_cli.list_registrations, fake.settings())
    assert (code, err) == (0, "")
    (stored_id,) = fake.registrations
    header, row = out.splitlines()
    assert header.split() == ["ID", "TYPE", "METER", "URL", "BASIC", "USER"]
    assert stored_id in row and HOOK_URL in row and credential.username in row
    assert "single meter" in row
    assert credential.password not in out


async def test_unregister_deletes_and_a_missing_one_is_a_vendor_error(
        fake: FakeSmartMe) -> None:
    await run_cli(smartme_cli.register, fake.settings(), HOOK_URL, all_devices=True)
    (stored_id,) = fake.registrations
    code, out, _err = await run_cli(smartme_cli.unregister, fake.settings(), stored_id)
    assert code == 0 and stored_id in out
    assert fake.registrations == {}
    code, out, err = await run_cli(smartme_cli.unregister, fake.settings(), stored_id)
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and "404" in err


async def test_unregister_needs_a_uuid(fake: FakeSmartMe) -> None:
    code, _out, err = await run_cli(smartme_cli.unregister, fake.settings(), "../Devices")
    assert code == 2 and "UUID" in err
    assert not fake.requests


async def test_cli_vendor_failure_is_one_line_without_traceback(fake: FakeSmartMe) -> None:
    fake.fail_next(500, times=5, body=b"<html>\n<body>Internal\nServer Error</body>\n</html>")
    code, out, err = await run_cli(smartme_cli.devices, fake.settings(smartme_max_retries=0))
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert err.startswith("meterstream smartme devices: ") and "HTTP 500" in err
    assert "Traceback" not in err


async def test_cli_without_credentials_is_a_usage_error(fake: FakeSmartMe) -> None:
    code, _out, err = await run_cli(smartme_cli.list_registrations, fake.settings("none"))
    assert code == 2 and "METERSTREAM_SMARTME_API_KEY" in err
    assert not fake.requests


async def test_devices_table_is_aligned_with_ages(fake: FakeSmartMe) -> None:
    now = datetime(2026, 11, 21, 13, 9, 44, 50051, tzinfo=UTC)  # fixture ValueDate + 3m 12s
    code, out, err = await run_cli(smartme_cli.devices, fake.settings(), now=now)
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "SERIAL", "TYPE", "LAST", "VALUE", "(UTC)", "AGE"]
    assert len(rows) == len(fake.devices)
    by_name = {row.split()[0]: row for row in rows}
    assert by_name["METER-EXAMPLE"].split()[1:] == [
        "63000017", "Electricity", "2026-11-21", "13:06:32", "3m", "12s"]
    assert by_name["HEAT-FLAT-2"].endswith("2d 3h")
    assert by_name["WATER-COLD-1"].split()[2] == "Water"
    assert by_name["MBUS-GW-CELLAR"].split()[2] == "MBusGateway"
    assert by_name["FUTURE-DEVICE"].split()[2:] == ["42", "-", "-"]
    for column in ("SERIAL", "TYPE", "LAST VALUE", "AGE"):
        start = header.index(column)
        assert all(row[start - 1] == " " and row[start] != " " for row in rows), column
    assert [row.split()[0] for row in rows] == sorted(by_name, key=str.lower)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45.9, "45s"), (192, "3m 12s"), (3600, "1h 0m"), (18420, "5h 7m"),
    (187200, "2d 4h"), (-5, "future"),
])
def test_format_age(seconds: float, text: str) -> None:
    assert smartme_cli.format_age(seconds) == text


# -- secrets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("auth", ["api_key", "oauth", "basic"])
async def test_secrets_are_never_logged_nor_in_errors(
        fake: FakeSmartMe, caplog: pytest.LogCaptureFixture, auth: str) -> None:
    caplog.set_level(logging.DEBUG)
    settings = fake.settings(auth, smartme_max_retries=1)
    # A careless error page echoing the Authorization header, once retried, then for good.
    fake.fail_next(503, times=1, body=b"busy", echo_authorization=True)
    fake.fail_next(500, times=2, body=b"boom", echo_authorization=True)
    async with client(settings) as smartme:
        with pytest.raises(SmartMeHTTPError) as caught:
            await smartme.devices()
        texts = [caplog.text, str(caught.value), repr(caught.value), repr(smartme),
                 repr(settings)]
    assert "received Authorization:" in str(caught.value)  # the echo reached the message
    assert "***" in str(caught.value)
    basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    for secret in (API_KEY, CLIENT_SECRET, PASSWORD, basic, *fake.issued_tokens):
        for text in texts:
            assert secret not in text
