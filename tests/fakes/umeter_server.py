"""A fake UMeter (auth + app + meas APIs on one local aiohttp server) for tests.

    async with FakeUMeter() as server:
        settings = server.settings()          # URLs and credentials pointing at it
        server.fail_next(500, times=2)        # switches for the next requests
        ...
        assert server.counts["/api/customer"] == 3

Endpoints (all on 127.0.0.1, an ephemeral port):

* ``POST /token`` — form-encoded password grant; answers an OWIN-style token (as the real
  one per DOMAIN.md §4.2) or ``400 {"error": "invalid_grant"}``.
* ``GET /api/customer`` — the published fixture ``fixtures/umeter/customer.json``.
* ``GET /api/v2/measurements/{date|month|year}/{value}?meteringPointIds=&measKeys=`` —
  **an invented shape** (the real one is UNKNOWN, DOMAIN.md §4.4)::

      {"meteringPoints": [{"meteringPointId": EAN, "measurements": [
          {"measKey": "import", "unit": "kWh",
           "values": [{"timestamp": "2025-11-21T00:00:00+01:00", "value": 0.25}, ...]}]}]}

  ``date`` gives the local day's quarter-hours (92/100 on DST days), ``month`` one value
  per day, ``year`` one per month; every quarter-hour carries ``import_kwh``/``export_kwh``.

Bearer tokens are checked: unknown or expired (``token_lifetime`` seconds on ``clock``,
by default the real monotonic clock) → 401.
Switches (faults) apply to the next N requests whose path starts with ``path`` (default:
every path except ``/token``), in the order they were added.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from streams.config import Settings
from tests.conftest import load_json

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
USERNAME = "meter.owner@example.org"
PASSWORD = "pw-Very$ecret-4711"  # distinctive, so leak checks cannot pass by accident


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    content_type: str
    form: dict[str, str] | None


@dataclass
class _Fault:
    status: int
    remaining: int
    path: str | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def applies(self, path: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.path is None:
            return path != "/token"
        return path.startswith(self.path)


class FakeUMeter:
    def __init__(
        self,
        *,
        username: str = USERNAME,
        password: str = PASSWORD,
        expires_in: float = 3600,
        token_lifetime: float | None = None,
        import_kwh: float = 0.25,
        export_kwh: float = 0.05,
        published_through: date | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.username = username
        self.password = password
        self.expires_in = expires_in  # what the token answer announces
        self.token_lifetime = expires_in if token_lifetime is None else token_lifetime
        self.import_kwh = import_kwh
        self.export_kwh = export_kwh
        self.published_through = published_through  # later days answer without values
        self.clock = clock  # decides token expiry; tests may pass one they can move on
        self.customer: Any = load_json("fixtures/umeter/customer.json")
        self.measurement_body: Any = None  # replaces the invented answer when not None
        self.delay = 0.0  # seconds every request waits before it is answered
        self.requests: list[Recorded] = []
        self.counts: Counter[str] = Counter()
        self.issued_tokens: list[str] = []
        self._valid_until: dict[str, float] = {}
        self._faults: list[_Fault] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- switches -----------------------------------------------------------------------------
    def fail_next(self, status: int, times: int = 1, *, path: str | None = None,
                  headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self._faults.append(_Fault(status, times, path, dict(headers or {}), body))

    def unauthorized_next(self, times: int = 1, *, path: str | None = None) -> None:
        self.fail_next(401, times, path=path, headers={"WWW-Authenticate": "Bearer"},
                       body=b'{"message":"Authorization has been denied for this request."}')

    def rate_limit_next(self, times: int = 1, *, retry_after: str = "1",
                        path: str | None = None) -> None:
        self.fail_next(429, times, path=path, headers={"Retry-After": retry_after})

    def malformed_next(self, times: int = 1, *, path: str | None = None) -> None:
        self.fail_next(200, times, path=path, headers={"Content-Type": "application/json"},
                       body=b'{"id": "5b0d7c1e", "addresses": [ <html>oops')

    def expire_tokens(self) -> None:
        """Forget every issued token, as a server restart or early expiry would."""
        self._valid_until.clear()

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def auth_url(self) -> str:
        return self.base_url + "/token"

    def settings(self, **changes: Any) -> Settings:
        values: dict[str, Any] = {
            "umeter_auth_url": self.auth_url, "umeter_app_url": self.base_url,
            "umeter_meas_url": self.base_url, "umeter_username": self.username,
            "umeter_password": self.password, "umeter_timeout": 5.0, "umeter_max_retries": 3,
        }
        values.update(changes)
        return Settings(**values)

    async def __aenter__(self) -> FakeUMeter:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/token", self._token)
        app.router.add_get("/api/customer", self._customer)
        app.router.add_get("/api/v2/measurements/{kind}/{value}", self._measurements)
        # Cancel handlers of clients that gave up (timeouts) and stop quickly on exit.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        host, port = sock.getsockname()[:2]
        self.base_url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- request handling ---------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        form = dict(await request.post()) if request.method == "POST" else None
        self.requests.append(Recorded(
            request.method, request.path, dict(request.query),
            request.headers.get("Authorization"), request.headers.get("Content-Type", ""),
            {k: str(v) for k, v in form.items()} if form is not None else None,
        ))
        self.counts[request.path] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        for fault in self._faults:
            if fault.applies(request.path):
                fault.remaining -= 1
                return web.Response(status=fault.status, headers=fault.headers, body=fault.body)
        response: web.StreamResponse = await handler(request)
        return response

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        valid_until = self._valid_until.get(token)
        return scheme.lower() == "bearer" and valid_until is not None and \
            self.clock() < valid_until

    @staticmethod
    def _unauthorised() -> web.Response:
        return web.json_response({"message": "Authorization has been denied for this request."},
                                 status=401, headers={"WWW-Authenticate": "Bearer"})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("grant_type") != "password" or form.get("username") != self.username or \
                form.get("password") != self.password:
            return web.json_response({"error": "invalid_grant", "error_description":
                                      "The user name or password is incorrect."}, status=400)
        token = secrets.token_urlsafe(24)
        self.issued_tokens.append(token)
        self._valid_until[token] = self.clock() + self.token_lifetime
        now = datetime.now(UTC)
        return web.json_response({
            "access_token": token, "token_type": "bearer", "expires_in": self.expires_in,
            "userName": self.username, "accountId": "acc-1",
            ".issued": now.strftime("%a, %d %b %Y %H:%M:%S GMT"),
            ".expires": (now + timedelta(seconds=self.expires_in)).strftime(
                "%a, %d %b %Y %H:%M:%S GMT"),
        })

    async def _customer(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._unauthorised()
        return web.json_response(self.customer)

    async def _measurements(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._unauthorised()
        kind, value = request.match_info["kind"], request.match_info["value"]
        ean = request.query.get("meteringPointIds", "")
        keys = [k for k in request.query.get("measKeys", "").split(",") if k]
        try:
            series = self._series(kind, value)
        except ValueError as exc:
            return web.json_response({"message": str(exc)}, status=400)
        if not ean or not keys:
            return web.json_response({"message": "meteringPointIds and measKeys required"},
                                     status=400)
        if self.measurement_body is not None:
            return web.Response(text=json.dumps(self.measurement_body),
                                content_type="application/json")
        per_key = {"import": self.import_kwh, "export": self.export_kwh}
        measurements = [
            {"measKey": key, "unit": "kWh",
             "values": [{"timestamp": stamp.isoformat(), "value": round(quarters * per_key.get(
                 key, 0.0), 6)} for stamp, quarters in series]}
            for key in keys
        ]
        return web.json_response(
            {"meteringPoints": [{"meteringPointId": ean, "measurements": measurements}]})

    def _series(self, kind: str, value: str) -> list[tuple[datetime, int]]:
        """(local start, number of quarter-hours) per interval of the requested period."""
        if kind == "date":
            day = datetime.strptime(value, "%Y%m%d").date()
            return [(q, 1) for q in _quarters(day)] if self._published(day) else []
        if kind == "month":
            first = datetime.strptime(value + "01", "%Y%m%d").date()
            days = [first + timedelta(days=n) for n in range(31)
                    if (first + timedelta(days=n)).month == first.month]
            return [(_local_midnight(d), len(_quarters(d))) for d in days if self._published(d)]
        if kind == "year":
            year = int(value)
            series = []
            for month in range(1, 13):
                days = [d for d in (date(year, month, 1) + timedelta(days=n) for n in range(31))
                        if d.month == month and self._published(d)]
                if days:
                    series.append((_local_midnight(days[0]),
                                   sum(len(_quarters(d)) for d in days)))
            return series
        raise ValueError(f"unknown period kind {kind!r}")

    def _published(self, day: date) -> bool:
        return self.published_through is None or day <= self.published_through


def _local_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=AMSTERDAM)


def _quarters(day: date) -> list[datetime]:
    """Local start times of a day's quarter-hours (stepping in UTC handles DST)."""
    start = _local_midnight(day).astimezone(UTC)
    end = _local_midnight(day + timedelta(days=1)).astimezone(UTC)
    stamps = []
    while start < end:
        stamps.append(start.astimezone(AMSTERDAM))
        start += timedelta(minutes=15)
    return stamps
