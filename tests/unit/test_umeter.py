"""UMeter client against a real local HTTP server (tests/fakes/umeter_server.py)."""

from __future__ import annotations

import copy
import io
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest

from streams.umeter import (
    Period,
    UMeterAuthError,
    UMeterClient,
    UMeterResponseError,
    UMeterUnavailableError,
    backoff_delay,
    check,
    customer_record,
    daily_totals,
    make_period,
    measurement_record,
    parse_customer,
    parse_measurements,
    parse_retry_after,
)
from tests.conftest import load_json
from tests.fakes.umeter_server import PASSWORD, USERNAME, FakeUMeter

EAN = "871687120000000017"
DAY = date(2025, 11, 21)
POLLED = datetime(2025, 11, 22, 6, 0, tzinfo=UTC)


class Sleeps:
    """Records the delays the client asks for instead of waiting them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[FakeUMeter]:
    async with FakeUMeter() as fake:
        yield fake


def client_for(server: FakeUMeter, sleeps: Sleeps | None = None, **options: Any) -> UMeterClient:
    settings = server.settings(**{k: options.pop(k) for k in list(options)
                                  if k.startswith("umeter_")})
    options.setdefault("base_delay", 0.01)
    return UMeterClient.from_settings(settings, sleep=sleeps or Sleeps(), **options)


# -- login and token ----------------------------------------------------------------------------
async def test_login_posts_a_form_encoded_password_grant(server: FakeUMeter) -> None:
    async with client_for(server) as client:
        await client.customer()
    login, call = server.requests
    assert (login.method, login.path) == ("POST", "/token")
    assert login.content_type == "application/x-www-form-urlencoded"
    assert login.form == {"grant_type": "password", "username": USERNAME, "password": PASSWORD}
    assert call.authorization == f"Bearer {server.issued_tokens[0]}"


async def test_token_is_reused_while_valid(server: FakeUMeter) -> None:
    async with client_for(server) as client:
        await client.customer()
        await client.customer()
        await client.measurements(EAN, date=DAY)
    assert server.counts["/token"] == 1
    assert {r.authorization for r in server.requests[1:]} == {
        f"Bearer {server.issued_tokens[0]}"}


async def test_token_is_renewed_shortly_before_expires_in() -> None:
    clock = Clock()
    async with FakeUMeter(expires_in=600) as server, client_for(server, clock=clock) as client:
        await client.customer()
        clock.now += 530  # within 600 s minus the 60 s margin
        await client.customer()
        assert server.counts["/token"] == 1
        clock.now += 15
        await client.customer()
        assert server.counts["/token"] == 2
        assert server.counts["/api/customer"] == 3  # renewed before a 401, not after one


async def test_token_expired_at_the_server_means_one_new_login() -> None:
    # The server announces an hour but forgets tokens after 60 s (restart, revocation...).
    server_clock = Clock()
    async with FakeUMeter(expires_in=3600, token_lifetime=60, clock=server_clock) as server, \
            client_for(server) as client:
        await client.customer()
        server_clock.now += 61
        customer = await client.customer()
    assert customer.eans == [EAN]
    assert server.counts["/token"] == 2
    assert server.counts["/api/customer"] == 3  # the 401'd one was repeated with the new token
    assert server.requests[-1].authorization == f"Bearer {server.issued_tokens[1]}"


async def test_the_fake_server_stops_when_its_context_exits() -> None:
    async with FakeUMeter() as server:
        url = server.base_url + "/api/customer"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


async def test_401_after_a_fresh_login_is_an_auth_error(server: FakeUMeter) -> None:
    server.unauthorized_next(times=5)
    async with client_for(server) as client:
        with pytest.raises(UMeterAuthError) as caught:
            await client.customer()
    assert "/api/customer" in str(caught.value) and USERNAME in str(caught.value)
    assert server.counts["/token"] == 2  # exactly one re-login
    assert server.counts["/api/customer"] == 2


async def test_wrong_password_is_a_clear_auth_error_without_retries(server: FakeUMeter) -> None:
    async with client_for(server, umeter_password="not-the-password") as client:
        with pytest.raises(UMeterAuthError) as caught:
            await client.customer()
    message = str(caught.value)
    assert server.auth_url in message and USERNAME in message and "invalid_grant" in message
    assert "not-the-password" not in message
    assert server.counts["/token"] == 1
    assert server.counts["/api/customer"] == 0


# -- retries ------------------------------------------------------------------------------------
async def test_429_waits_the_retry_after_seconds(server: FakeUMeter) -> None:
    sleeps = Sleeps()
    server.rate_limit_next(retry_after="7")
    async with client_for(server, sleeps) as client:
        customer = await client.customer()
    assert customer.id
    assert sleeps.delays == [7.0]
    assert server.counts["/api/customer"] == 2


async def test_429_with_an_http_date_waits_until_that_time(server: FakeUMeter) -> None:
    sleeps = Sleeps()
    when = datetime.now(UTC) + timedelta(seconds=30)
    server.rate_limit_next(retry_after=format_datetime(when, usegmt=True))
    async with client_for(server, sleeps) as client:
        await client.customer()
    assert len(sleeps.delays) == 1 and 27.0 <= sleeps.delays[0] <= 30.0


async def test_retry_after_beyond_the_limit_fails_at_once(server: FakeUMeter) -> None:
    sleeps = Sleeps()
    server.rate_limit_next(retry_after="3600")
    async with client_for(server, sleeps, max_retry_after=60.0) as client:
        with pytest.raises(UMeterUnavailableError, match="retry after 3600 s"):
            await client.customer()
    assert sleeps.delays == []
    assert server.counts["/api/customer"] == 1


def test_retry_after_parsing() -> None:
    now = datetime(2025, 11, 21, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after("Fri, 21 Nov 2025 12:00:45 GMT", now=now) == 45.0
    assert parse_retry_after("Fri, 21 Nov 2025 11:00:00 GMT", now=now) == 0.0  # past
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


async def test_500_is_retried_with_doubling_backoff(server: FakeUMeter) -> None:
    sleeps = Sleeps()
    server.fail_next(500, times=2)
    async with client_for(server, sleeps, base_delay=0.5, rand=lambda: 1.0) as client:
        customer = await client.customer()
    assert customer.eans == [EAN]
    assert sleeps.delays == [0.5, 1.0]  # rand() = 1: the top of the full-jitter range
    assert server.counts["/api/customer"] == 3


def test_backoff_is_full_jitter_under_a_cap() -> None:
    assert backoff_delay(3, base=0.5, cap=30.0, rand=lambda: 0.25) == 1.0
    assert backoff_delay(10, base=0.5, cap=30.0, rand=lambda: 1.0) == 30.0
    assert backoff_delay(0, base=0.5, cap=30.0, rand=lambda: 0.0) == 0.0


async def test_500_until_retries_run_out_is_an_error(server: FakeUMeter) -> None:
    server.fail_next(503, times=10)
    async with client_for(server, umeter_max_retries=2) as client:
        with pytest.raises(UMeterUnavailableError) as caught:
            await client.customer()
    assert caught.value.attempts == 3 and caught.value.status == 503
    assert "HTTP 503" in str(caught.value) and "3 attempts" in str(caught.value)
    assert server.counts["/api/customer"] == 3


async def test_slow_answers_time_out_and_are_retried(server: FakeUMeter) -> None:
    async with client_for(server, umeter_timeout=0.1, umeter_max_retries=1) as client:
        await client.login()
        server.delay = 1.0
        with pytest.raises(UMeterUnavailableError, match=r"no answer within 0\.1 s"):
            await client.customer()
    assert server.counts["/api/customer"] == 2


async def test_other_statuses_are_not_retried(server: FakeUMeter) -> None:
    server.fail_next(404, path="/api/v2", body=b'{"message":"not found"}')
    async with client_for(server) as client:
        with pytest.raises(UMeterResponseError) as caught:
            await client.measurements(EAN, date=DAY)
    assert caught.value.status == 404
    assert "/api/v2/measurements/date/20251121" in str(caught.value)
    assert server.counts["/api/v2/measurements/date/20251121"] == 1


async def test_malformed_json_is_a_response_error(server: FakeUMeter) -> None:
    server.malformed_next(path="/api/customer")
    async with client_for(server) as client:
        with pytest.raises(UMeterResponseError) as caught:
            await client.customer()
    message = str(caught.value)
    assert "/api/customer" in message and "not JSON" in message and "HTTP 200" in message
    assert "<html>oops" in message  # the first bytes, to see what came instead


async def test_customer_of_the_wrong_json_type_is_a_response_error(server: FakeUMeter) -> None:
    server.customer = [{"id": "x"}]
    async with client_for(server) as client:
        with pytest.raises(UMeterResponseError, match="not an object"):
            await client.customer()


# -- customer -----------------------------------------------------------------------------------
async def test_customer_fixture_is_parsed(server: FakeUMeter) -> None:
    async with client_for(server) as client:
        customer = await client.customer()
    assert customer.id == "5b0d7c1e-2f43-4c8a-9a51-0d1c2e3f4a5b"
    assert customer.name == "Example Customer" and customer.email == "customer@example.org"
    assert customer.eans == [EAN]
    (address,) = customer.addresses
    assert (address.street, address.house_number, address.zip_code, address.city) == (
        "Voorbeeldstraat", "12A", "3511AB", "Utrecht")
    assert address.one_line() == "Voorbeeldstraat 12A, 3511AB Utrecht"
    assert [(d.id, d.name, d.type) for d in address.devices] == [
        (EAN, "Main elec meter", "mainelec")]
    assert customer.raw == load_json("fixtures/umeter/customer.json")
    assert customer.warnings == ()


def test_customer_parsing_keeps_unknown_fields_and_tolerates_missing_ones() -> None:
    data = {"id": 7, "futureField": {"x": 1},
            "addresses": [{"street": "Kade", "newThing": True, "devices": [{"name": "no id"}]},
                          "not an object"]}
    customer = parse_customer(data)
    assert customer.id == "7" and customer.name is None and customer.eans == []
    assert customer.addresses[0].one_line() == "Kade"
    assert customer.raw["futureField"] == {"x": 1}
    assert customer.addresses[0].raw["newThing"] is True
    assert any("addresses[1]" in w for w in customer.warnings)
    assert any("devices[0] has no id" in w for w in customer.warnings)
    with pytest.raises(UMeterResponseError, match="no id"):
        parse_customer({"surName": "x"})


# -- measurements -------------------------------------------------------------------------------
async def test_measurements_of_a_day(server: FakeUMeter) -> None:
    async with client_for(server) as client:
        result = await client.measurements(EAN, date=DAY)
    request = server.requests[-1]
    assert request.path == "/api/v2/measurements/date/20251121"
    assert request.query == {"meteringPointIds": EAN, "measKeys": "import,export"}
    assert result.shape == "guessed" and result.warnings == ()
    assert len([p for p in result.points if p.key == "import"]) == 96
    assert result.points[0].start == datetime.fromisoformat("2025-11-21T00:00:00+01:00")
    totals = daily_totals(result.points)[DAY]
    assert totals.import_kwh == pytest.approx(24.0) and totals.export_kwh == pytest.approx(4.8)
    assert result.raw["meteringPoints"][0]["meteringPointId"] == EAN


async def test_a_dst_day_has_100_quarter_hours_on_one_local_day(server: FakeUMeter) -> None:
    async with client_for(server) as client:
        result = await client.measurements(EAN, date="20251026", meas_keys="import")
    assert server.requests[-1].query["measKeys"] == "import"
    assert len(result.points) == 100
    assert list(daily_totals(result.points)) == [date(2025, 10, 26)]


async def test_month_and_year_periods(server: FakeUMeter) -> None:
    async with client_for(server) as client:
        month = await client.measurements(EAN, month="202511")
        year = await client.measurements(EAN, year=2025)
    paths = [r.path for r in server.requests[-2:]]
    assert paths == ["/api/v2/measurements/month/202511", "/api/v2/measurements/year/2025"]
    assert len([p for p in month.points if p.key == "import"]) == 30
    assert len([p for p in year.points if p.key == "import"]) == 12
    with pytest.raises(ValueError, match="only date="):
        measurement_record(month, polled_at=POLLED)


def test_period_is_exactly_one_real_date() -> None:
    assert make_period(date=DAY) == Period("date", "20251121")
    assert make_period(month=DAY).path == "month/202511"
    assert make_period(year="2025").first_day == date(2025, 1, 1)
    for bad in ({}, {"date": DAY, "year": 2025}, {"date": "20251341"}, {"month": "2025-11"},
                {"year": "25"}):
        with pytest.raises(ValueError):
            make_period(**bad)


async def test_an_unknown_measurement_shape_keeps_the_raw_json(server: FakeUMeter) -> None:
    server.measurement_body = {"series": "delta-encoded", "blob": "AAECAw==", "n": 96}
    async with client_for(server) as client:
        result = await client.measurements(EAN, date=DAY)
    assert result.points == () and result.shape == "unrecognised"
    assert result.raw == server.measurement_body
    assert any("UNKNOWN" in w for w in result.warnings)
    key, value = measurement_record(result, polled_at=POLLED)  # still published, as raw
    assert key == f"{EAN}|20251121"
    assert value["raw"] == server.measurement_body and value["import_kwh"] is None


async def test_a_body_without_any_number_is_no_data_yet(server: FakeUMeter) -> None:
    server.fail_next(204, path="/api/v2")  # an empty body
    async with client_for(server) as client:
        results = [await client.measurements(EAN, date=DAY)]
    period = make_period(date=DAY)
    bodies: list[Any] = [[], {"meteringPoints": [{"meteringPointId": EAN, "values": []}]}]
    results += [parse_measurements(body, ean=EAN, period=period) for body in bodies]
    assert [(r.shape, r.points) for r in results] == [("empty", ())] * 3
    assert all("not published yet" in r.warnings[0] for r in results)


_STAMPS = ["2025-11-21T00:00:00+01:00", "2025-11-21T12:00:00+01:00"]
PLAUSIBLE_SHAPES: dict[str, Any] = {
    "wide list": [{"timestamp": s, "import": 1.5, "export": 0.25} for s in _STAMPS],
    "long form": {"data": [{"from": s, "to": s, "measKey": k, "value": v, "unit": "kWh"}
                           for s in _STAMPS for k, v in (("import", 1.5), ("export", 0.25))]},
    "per key, epoch ms, Wh": {"import": {"unit": "Wh", "values": [
        {"t": int(datetime.fromisoformat(s).timestamp() * 1000), "v": 1500} for s in _STAMPS]},
        "export": {"unit": "Wh", "values": [
        {"t": int(datetime.fromisoformat(s).timestamp() * 1000), "v": "250"} for s in _STAMPS]}},
    "keyed by EAN, naive local": {EAN: [{"dateTime": s[:19].replace("T", " "),
                                         "values": {"import": 1.5, "export": 0.25}}
                                        for s in _STAMPS]},
    "timestamp maps": {"import": {s: 1.5 for s in _STAMPS}, "export": {s: 0.25 for s in _STAMPS}},
}


@pytest.mark.parametrize("shape", sorted(PLAUSIBLE_SHAPES))
def test_plausible_measurement_shapes_give_the_same_day_totals(shape: str) -> None:
    data = PLAUSIBLE_SHAPES[shape]
    result = parse_measurements(copy.deepcopy(data), ean=EAN, period=make_period(date=DAY))
    assert result.shape == "guessed", result.warnings
    assert result.warnings == ()
    totals = daily_totals(result.points)[DAY]
    assert totals.import_kwh == pytest.approx(3.0)
    assert totals.export_kwh == pytest.approx(0.5)
    assert result.raw == data


def test_gaps_and_foreign_metering_points_are_reported_not_fatal() -> None:
    other = "871687120000000999"
    data = {"meteringPoints": [
        {"meteringPointId": EAN, "measKey": "import", "values": [
            {"timestamp": _STAMPS[0], "value": 1.0}, {"timestamp": _STAMPS[1], "value": None},
            {"timestamp": "yesterday", "value": 2.0}, {"timestamp": _STAMPS[1], "value": "n/a"}]},
        {"meteringPointId": other, "measKey": "import", "values": [
            {"timestamp": _STAMPS[0], "value": 9.0}]},
    ]}
    result = parse_measurements(data, ean=EAN, period=make_period(date=DAY))
    assert [(p.key, p.value) for p in result.points] == [("import", 1.0)]
    text = " | ".join(result.warnings)
    assert "null" in text and "unreadable timestamp" in text and "non-numeric" in text
    assert other in text


def test_p4_excerpt_gives_import_and_export_per_day() -> None:
    data = load_json("fixtures/umeter/p4-excerpt.json")
    result = parse_measurements(data, ean=EAN, period=make_period(date=DAY))
    assert result.shape == "p4" and result.warnings == ()
    first = result.points[0]
    assert (first.start, first.end) == (datetime(2025, 11, 21, 0, 0), datetime(2025, 11, 21, 0, 15))
    assert (first.key, first.register, first.value, first.unit) == ("import", "r181", 0.02, "kWh")
    assert {p.register for p in result.points} == {"r181", "r182", "r281", "r282"}
    totals = daily_totals(result.points)[DAY]
    expected = data["totalUsage"]
    assert totals.import_kwh == pytest.approx(expected["r181"] + expected["r182"])
    assert totals.export_kwh == pytest.approx(expected["r281"] + expected["r282"])


def test_p4_items_that_cannot_be_read_are_skipped_with_a_warning() -> None:
    data = {"aData": [{"dateFrom": "2025-11-21 00:00:00", "usage": {"r181": 0.1}},
                      {"dateFrom": "garbage", "usage": {"r181": 5}}, 17,
                      {"dateFrom": "2025-11-21 00:15:00"}]}
    result = parse_measurements(data, ean=EAN, period=make_period(date=DAY))
    assert [p.value for p in result.points] == [0.1]
    assert len(result.warnings) == 3


def test_daily_totals_ignore_non_energy_units() -> None:
    data = [{"timestamp": _STAMPS[0], "import": 2.0, "unit": "kW"},
            {"timestamp": _STAMPS[1], "import": 1.0}]
    result = parse_measurements(data, ean=EAN, period=make_period(date=DAY))
    totals = daily_totals(result.points)[DAY]
    assert (totals.import_kwh, totals.points, totals.ignored) == (1.0, 1, 1)


# -- Kafka records ------------------------------------------------------------------------------
async def test_records_carry_normalised_fields_and_the_raw_response(server: FakeUMeter) -> None:
    async with client_for(server) as client:
        customer = await client.customer()
        day = await client.measurements(EAN, date=DAY)
    key, value = customer_record(customer, polled_at=POLLED)
    assert key == customer.id
    assert value["eans"] == [EAN] and value["addresses"][0]["zip_code"] == "3511AB"
    assert value["raw"] == load_json("fixtures/umeter/customer.json")
    key, value = measurement_record(day, polled_at=POLLED)
    assert key == f"{EAN}|20251121"
    assert value["date"] == "2025-11-21" and value["import_kwh"] == pytest.approx(24.0)
    assert len(value["points"]) == 192 and value["raw"] == day.raw
    assert json.loads(json.dumps(value)) == value  # publishable as JSON as it is


# -- secrets ------------------------------------------------------------------------------------
async def test_credentials_never_reach_logs_errors_or_reprs(
        server: FakeUMeter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    server.fail_next(500, times=1)
    server.rate_limit_next(retry_after="0")
    async with client_for(server) as client:
        token = await client.login()
        await client.customer()
        server.expire_tokens()
        await client.measurements(EAN, date=DAY)
        server.unauthorized_next(times=2)
        server.fail_next(502, times=9, path="/api/v2")
        for call in (client.customer(), client.measurements(EAN, date=DAY)):
            try:
                await call
            except Exception as exc:
                errors.append(str(exc))
        reprs = [repr(client), repr(token), str(token)]
    # A token server that echoes the password must not get it into our message either.
    server.fail_next(400, path="/token", body=json.dumps(
        {"error": "invalid_grant", "error_description": f"bad password {PASSWORD}"}).encode())
    async with client_for(server) as client:
        try:
            await client.customer()
        except UMeterAuthError as exc:
            errors.append(str(exc))
    assert len(errors) == 3 and len(server.issued_tokens) >= 3
    assert "retry" in caplog.text  # something was logged, so the check below means something
    for text in [caplog.text, *errors, *reprs]:
        assert PASSWORD not in text
        assert not any(t in text for t in server.issued_tokens)


# -- check --------------------------------------------------------------------------------------
async def test_check_prints_eans_addresses_devices_and_recent_days() -> None:
    async with FakeUMeter(published_through=date(2025, 11, 20)) as server:
        out = io.StringIO()
        status = await check(server.settings(), out, today=DAY)
    text = out.getvalue()
    assert status == 0, text
    assert "5b0d7c1e-2f43-4c8a-9a51-0d1c2e3f4a5b (Example Customer)" in text
    assert f"Voorbeeldstraat 12A, 3511AB Utrecht — EAN {EAN}" in text
    assert f"device {EAN} Main elec meter (mainelec)" in text
    assert "2025-11-20 (yesterday): 192 values (guessed), import 24.000 kWh, " \
           "export 4.800 kWh, 00:00–23:45" in text
    assert "2025-11-21 (today): no values (empty)\n    note: response contains no values " \
           "(not published yet?)" in text


async def test_check_shows_an_unrecognised_body_so_it_can_be_learned_from(
        server: FakeUMeter) -> None:
    server.measurement_body = {"series": "delta-encoded", "n": 96}
    out = io.StringIO()
    assert await check(server.settings(), out, today=DAY) == 0
    assert 'raw starts: {"series": "delta-encoded", "n": 96}' in out.getvalue()


async def test_check_refused_login_is_one_line_and_exit_1(server: FakeUMeter) -> None:
    out = io.StringIO()
    status = await check(server.settings(umeter_password="wrong-pw"), out, today=DAY)
    lines = out.getvalue().splitlines()
    assert status == 1
    assert len(lines) == 1 and lines[0].startswith("UMeter check failed: UMeter login failed")
    assert "wrong-pw" not in lines[0]


async def test_check_vendor_errors_exit_1(server: FakeUMeter) -> None:
    server.fail_next(500, times=100, path="/api/v2")
    out = io.StringIO()
    status = await check(server.settings(umeter_max_retries=1), out, today=DAY,
                         sleep=Sleeps())
    assert status == 1
    assert out.getvalue().count("error: UMeter /api/v2/measurements/date/") == 2
    assert "Traceback" not in out.getvalue()


async def test_check_without_username_exits_2(server: FakeUMeter) -> None:
    out = io.StringIO()
    assert await check(server.settings(umeter_username=""), out) == 2
    assert "METERSTREAM_UMETER_USERNAME" in out.getvalue()
    assert sum(server.counts.values()) == 0
