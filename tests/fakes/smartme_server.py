"""A fake smart-me REST API (one local aiohttp server) for tests.

    async with FakeSmartMe() as server:
        settings = server.settings("oauth")   # base/token URL and credentials pointing at it
        server.fail_next(503, times=2)        # switches for the next requests
        ...
        assert server.counts["/Devices"] == 3

It speaks the documented shapes (DOMAIN.md §1.2, §3.3–3.5, §5.3): PascalCase JSON with integer
enums, ``ValueDate`` with 7 fractional digits. Devices: the published fixture
``fixtures/smartme/device_by_id.json`` plus synthetic ones — a cold-water meter (m3), a heat
meter (kW/MWh, two days stale), an M-Bus gateway (type 8) with ``/gateway/mbus/{id}`` data
whose meters are in every state (and one unknown), and a device from the future (unknown enum
numbers, an undeclared field, the non-unit ``"KW"``).

Auth, all three as smart-me documents them: ``Authorization: ApiKey <key>``, OAuth2 client
credentials (``POST /oauth/token``, client_secret_post) giving Bearer tokens, and Basic.

Switches apply to the next N requests whose path starts with ``path`` (default: every path
except the token endpoint), in the order they were added: ``fail_next`` (any status, e.g. 500
or Cloudflare's 524), ``rate_limit_next`` (429 + Retry-After), ``unauthorized_next`` (forced
401), ``slow_next`` (answer late), ``expire_tokens`` (every issued token becomes invalid).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import uuid
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from streams import obis
from streams.config import Settings
from tests.conftest import load_json

TOKEN_PATH = "/oauth/token"
# Distinctive values, so a leak check cannot pass by accident.
API_KEY = "ak-SmartMe-Key$ecret-8051"
CLIENT_ID = "meterstream-test-client"
CLIENT_SECRET = "cs-OAuth-Very$ecret-2718"
USERNAME = "owner@example.org"
PASSWORD = "pw-Basic-Very$ecret-3141"

WATER_ID = "5a1b2c3d-0000-4000-8000-00000000a001"
HEAT_ID = "5a1b2c3d-0000-4000-8000-00000000a002"
GATEWAY_ID = "5a1b2c3d-0000-4000-8000-00000000a008"
FUTURE_ID = "5a1b2c3d-0000-4000-8000-00000000a0ff"
GAS_METER_ID = "5a1b2c3d-0000-4000-8000-00000000a003"
NEW_METER_ID = "5a1b2c3d-0000-4000-8000-00000000a004"
GUID_EMPTY = "00000000-0000-0000-0000-000000000000"


def synthetic_devices() -> list[dict[str, Any]]:
    """The devices besides the fixture, PascalCase like the wire."""
    return [
        {"Id": WATER_ID, "Name": "WATER-COLD-1", "Serial": 81000042, "DeviceEnergyType": 2,
         "MeterSubType": 1, "FamilyType": 0, "ActivePower": 0.35, "ActivePowerUnit": "m3/h",
         "CounterReading": 123.456, "CounterReadingUnit": "m3", "FlowRate": 0.35,
         "ValueDate": "2026-11-21T12:58:00.5000000Z"},
        {"Id": HEAT_ID, "Name": "HEAT-FLAT-2", "Serial": 72000007, "DeviceEnergyType": 4,
         "MeterSubType": 2, "FamilyType": 0, "ActivePower": 1.2, "ActivePowerUnit": "kW",
         "CounterReading": 8.5, "CounterReadingUnit": "MWh",
         "ValueDate": "2026-11-19T09:15:00.1234567Z"},
        {"Id": GATEWAY_ID, "Name": "MBUS-GW-CELLAR", "Serial": 40000123, "DeviceEnergyType": 8,
         "MeterSubType": 0, "FamilyType": 4, "ValueDate": "2026-11-21T13:00:00.0000000Z"},
        {"Id": FUTURE_ID, "Name": "FUTURE-DEVICE", "Serial": 99000001, "DeviceEnergyType": 42,
         "MeterSubType": 77, "FamilyType": 4242, "ActivePower": 1.0, "ActivePowerUnit": "KW",
         "ValueDate": None, "BatteryLevel": 87},
    ]


def gateway_dto() -> dict[str, Any]:
    """``MBusGatewayDto`` of the synthetic gateway: 15-minute readout, one meter per state."""
    def meter(meter_id: str, name: str, state: int, energy: int, sub: int,
              primary: int, secondary: str | None) -> dict[str, Any]:
        return {"Id": meter_id, "Name": name, "AddressingMode": 2 if secondary else 1,
                "PrimaryAddress": primary, "SecondaryAddress": secondary, "Baudrate": 1,
                "Send_SND_NKE": True, "Send_App_Reset": False, "State": state,
                "EnergyType": energy, "EnergyEnergySubType": sub}

    return {
        "Name": "MBUS-GW-CELLAR", "SerialNumber": "40000123",
        "LastSeen": "2026-11-21T13:00:00.0000000Z", "ReadoutInterval": 4, "State": 2,
        "IsAddingMetersAllowed": False,
        "Meters": [
            meter(WATER_ID, "WATER-COLD-1", 0, 2, 4, 0, "81000042"),
            meter(HEAT_ID, "HEAT-FLAT-2", 1, 4, 2, 0, "72000007"),
            meter(GUID_EMPTY, "PHANTOM-FF", 3, 0, 0, 254, None),
            meter(GAS_METER_ID, "GAS-1", 2, 3, 5, 0, "63001122"),
            meter(NEW_METER_ID, "NEW-FIRMWARE", 9, 7, 0, 0, "11223344"),
        ],
    }


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    auth_scheme: str | None  # "apikey", "bearer", "basic" when valid; None otherwise
    body: Any


@dataclass
class _Fault:
    status: int | None  # None: answer normally (after the delay)
    remaining: int
    path: str | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    echo_authorization: bool = False

    def applies(self, path: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.path is None:
            return path != TOKEN_PATH
        return path.startswith(self.path)


class FakeSmartMe:
    def __init__(
        self,
        *,
        api_key: str = API_KEY,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        username: str = USERNAME,
        password: str = PASSWORD,
        expires_in: float = 3600,
        obis_form: str = "hex",
    ) -> None:
        self.api_key = api_key
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.password = password
        self.expires_in = expires_in  # announced in the token answer
        self.obis_form = obis_form  # "hex" (0100010800FF) or "dotted" (1-0:1.8.0*255)
        fixture = load_json("fixtures/smartme/device_by_id.json")
        self.fixture_id: str = fixture["Id"]
        self.devices: dict[str, dict[str, Any]] = {
            d["Id"]: d for d in [fixture, *synthetic_devices()]}
        self.gateways: dict[str, dict[str, Any]] = {GATEWAY_ID: gateway_dto()}
        self.values: dict[str, list[tuple[str, float]]] = {
            self.fixture_id: [("1-0:1.8.0*255", 5123456.0), ("1-0:2.8.0*255", 12500.0),
                              ("1-0:1.7.0*255", 742.0), ("1-0:32.7.0*255", 231.0)],
        }
        self.registrations: dict[str, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.counts: Counter[str] = Counter()
        self.issued_tokens: list[str] = []
        self._valid_tokens: set[str] = set()
        self._faults: list[_Fault] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- switches -----------------------------------------------------------------------------
    def fail_next(self, status: int, times: int = 1, *, path: str | None = None,
                  headers: dict[str, str] | None = None, body: bytes = b"",
                  echo_authorization: bool = False) -> None:
        """Answer ``status`` to the next ``times`` requests; ``echo_authorization`` puts the
        received Authorization header into the body (a careless error page)."""
        self._faults.append(_Fault(status, times, path, dict(headers or {}), body,
                                   echo_authorization=echo_authorization))

    def rate_limit_next(self, times: int = 1, *, retry_after: str = "1",
                        path: str | None = None) -> None:
        self.fail_next(429, times, path=path, headers={"Retry-After": retry_after})

    def unauthorized_next(self, times: int = 1, *, path: str | None = None) -> None:
        self.fail_next(401, times, path=path, headers={"WWW-Authenticate": "Bearer"},
                       body=b'{"Message":"Authorization has been denied for this request."}')

    def slow_next(self, seconds: float, times: int = 1, *, path: str | None = None) -> None:
        self._faults.append(_Fault(None, times, path, delay=seconds))

    def expire_tokens(self) -> None:
        """Every issued token becomes invalid, as an early expiry or revocation would do."""
        self._valid_tokens.clear()

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    def settings(self, auth: str = "api_key", **changes: Any) -> Settings:
        """Settings pointing at this server with one auth mode: api_key, oauth, basic, none."""
        credentials = {
            "api_key": {"smartme_api_key": self.api_key},
            "oauth": {"smartme_client_id": self.client_id,
                      "smartme_client_secret": self.client_secret},
            "basic": {"smartme_username": self.username, "smartme_password": self.password},
            "none": {},
        }[auth]
        values: dict[str, Any] = {
            "smartme_base_url": self.base_url, "smartme_token_url": self.token_url,
            "smartme_timeout": 5.0, "smartme_max_retries": 3, **credentials,
        }
        values.update(changes)
        return Settings(**values)

    async def __aenter__(self) -> FakeSmartMe:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(TOKEN_PATH, self._token)
        app.router.add_get("/Devices", self._devices)
        app.router.add_get("/Devices/{id}", self._device)
        app.router.add_get("/DevicesByEnergy", self._devices_by_energy)
        app.router.add_get("/Values/{id}", self._values)
        app.router.add_get("/gateway/mbus/{id}", self._gateway)
        app.router.add_get("/RegisterForRealtimeApi", self._registrations)
        app.router.add_post("/RegisterForRealtimeApi", self._register)
        app.router.add_delete("/RegisterForRealtimeApi/{id}", self._unregister)
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
        body: Any = None
        if request.method == "POST":
            body = dict(await request.post()) if request.path == TOKEN_PATH else \
                await request.text()
        self.requests.append(Recorded(request.method, request.path, dict(request.query),
                                      self._auth_scheme(request), body))
        self.counts[request.path] += 1
        for fault in self._faults:
            if fault.applies(request.path):
                fault.remaining -= 1
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status is not None:
                    return self._fault_response(fault, request)
                break
        if request.path != TOKEN_PATH and self._auth_scheme(request) is None:
            return web.json_response(
                {"Message": "Authorization has been denied for this request."}, status=401,
                headers={"WWW-Authenticate": 'Basic realm="smart-me"'})
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _fault_response(fault: _Fault, request: web.Request) -> web.Response:
        body = fault.body
        if fault.echo_authorization:
            body += b" received Authorization: " + request.headers.get(
                "Authorization", "").encode()
        return web.Response(status=fault.status or 500, headers=fault.headers, body=body)

    def _auth_scheme(self, request: web.Request) -> str | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "apikey" and secrets.compare_digest(value, self.api_key):
            return scheme
        if scheme == "bearer" and value in self._valid_tokens:
            return scheme
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if scheme == "basic" and secrets.compare_digest(value, expected):
            return scheme
        return None

    async def _token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response({"error": "invalid_request"}, status=400)
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("client_id") != self.client_id or \
                form.get("client_secret") != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        token = secrets.token_urlsafe(32)
        self.issued_tokens.append(token)
        self._valid_tokens.add(token)
        return web.json_response({"access_token": token, "token_type": "Bearer",
                                  "expires_in": self.expires_in})

    @staticmethod
    def _not_found(what: str) -> web.Response:
        return web.json_response({"Message": f"{what} not found"}, status=404)

    async def _devices(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.devices.values()))

    async def _device(self, request: web.Request) -> web.Response:
        device = self.devices.get(request.match_info["id"])
        return web.json_response(device) if device else self._not_found("device")

    async def _devices_by_energy(self, request: web.Request) -> web.Response:
        try:
            energy = int(request.query["meterEnergyType"])
        except (KeyError, ValueError):
            return web.json_response({"Message": "meterEnergyType is required"}, status=400)
        return web.json_response([d for d in self.devices.values()
                                  if d.get("DeviceEnergyType") == energy])

    async def _values(self, request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        if device_id not in self.devices:
            return self._not_found("device")
        values = [{"Obis": self._obis_text(code), "Value": value}
                  for code, value in self.values.get(device_id, [])]
        return web.json_response({"DeviceId": device_id,
                                  "Date": self.devices[device_id].get("ValueDate"),
                                  "Values": values})

    def _obis_text(self, dotted: str) -> str:
        if self.obis_form == "dotted":
            return dotted
        code = obis.parse(dotted)
        return bytes((code.a, code.b, code.c, code.d, code.e, code.f)).hex().upper()

    async def _gateway(self, request: web.Request) -> web.Response:
        gateway = self.gateways.get(request.match_info["id"])
        return web.json_response(gateway) if gateway else self._not_found("M-Bus gateway")

    async def _registrations(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.registrations.values()))

    async def _register(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except ValueError:
            return web.json_response({"Message": "body is not JSON"}, status=400)
        problem = self._registration_problem(data)
        if problem:
            return web.json_response({"Message": problem}, status=400)
        registration_id = str(uuid.uuid4())
        self.registrations[registration_id] = {
            "Id": registration_id,
            "RegistrationType": data["RegistrationType"],
            "MeterId": data.get("MeterId"),
            "SerialNumber": data.get("SerialNumber"),
            "ApiUrl": data["ApiUrl"],
            "BasicAuthUsername": data.get("BasicAuthUsername", ""),
            "BasicAuthPassword": data.get("BasicAuthPassword", ""),
        }
        return web.Response(status=200)  # smart-me documents 200 without a body

    def _registration_problem(self, data: Any) -> str | None:
        if not isinstance(data, dict) or not data.get("ApiUrl"):
            return "ApiUrl is required"
        kind = data.get("RegistrationType")
        if kind not in (1, 2):
            return "RegistrationType must be 1 (single meter) or 2 (user)"
        if kind == 1:
            meter_id, serial = data.get("MeterId"), data.get("SerialNumber")
            known_serials = {str(d.get("Serial")) for d in self.devices.values()}
            if meter_id not in self.devices and str(serial) not in known_serials:
                return "meter not found"
        return None

    async def _unregister(self, request: web.Request) -> web.Response:
        if self.registrations.pop(request.match_info["id"], None) is None:
            return self._not_found("registration")
        return web.Response(status=200)
