"""Nothing acknowledged is lost: broker outages and bridge shutdowns under load."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import aiohttp
import orjson

from streams.config import Settings
from streams.embedded_kafka import EmbeddedKafka
from tests.integration.conftest import (
    AUTH,
    bridge_url,
    header,
    read_records,
    running_bridge,
    wait_http_ok,
)
from tests.integration.test_walking_skeleton import body_for

_CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=30)


async def _poster(session: aiohttp.ClientSession, settings: Settings, stop: asyncio.Event,
                  outcomes: list[tuple[float, int, str | None]]) -> None:
    while not stop.is_set():
        body = body_for(uuid.uuid4(), 1_700_000_000)
        try:
            async with session.post(bridge_url(settings), data=body, headers=AUTH) as response:
                answer = orjson.loads(await response.read())
                outcomes.append((time.monotonic(), response.status, answer.get("request_id")))
                if response.status == 503:
                    assert response.headers["Retry-After"].isdigit()
                    await asyncio.sleep(0.05)
        except aiohttp.ClientError as exc:  # a transport error would be a dropped request
            outcomes.append((time.monotonic(), -1, repr(exc)))


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        return response.status


async def test_broker_outage_mid_load_loses_nothing_and_the_bridge_recovers(
    settings: Settings, kafka: EmbeddedKafka
) -> None:
    settings = settings.replace(bridge_produce_timeout=3.0, bridge_retry_after=1)
    loop = asyncio.get_running_loop()
    outcomes: list[tuple[float, int, str | None]] = []
    stop = asyncio.Event()
    async with running_bridge(settings), aiohttp.ClientSession(timeout=_CLIENT_TIMEOUT) as s:
        posters = [asyncio.create_task(_poster(s, settings, stop, outcomes)) for _ in range(8)]
        await asyncio.sleep(2)
        await loop.run_in_executor(None, kafka.stop)
        stopped_at = time.monotonic()
        await asyncio.sleep(4)
        # Not ready while Kafka is away (a load balancer stops sending), alive all along.
        not_ready = await _status(s, bridge_url(settings, "/readyz"))
        alive = await _status(s, bridge_url(settings, "/healthz"))
        await loop.run_in_executor(None, kafka.start)
        restarted_at = time.monotonic()
        # The same bridge process must take bodies again, without a restart.
        deadline = restarted_at + 90
        while not any(t > restarted_at and code == 200 for t, code, _ in outcomes):
            assert time.monotonic() < deadline, "bridge did not recover after the broker came back"
            await asyncio.sleep(0.5)
        # Ready again: it may still answer 503 for a moment right after the first 200, while
        # it replaces a producer whose sequence numbers the restarted broker rejected.
        ready_again = await _status(s, bridge_url(settings, "/readyz"))
        while ready_again != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            ready_again = await _status(s, bridge_url(settings, "/readyz"))
        await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(*posters)

    assert (not_ready, alive, ready_again) == (503, 200, 200)
    codes = [code for _, code, _ in outcomes]
    assert set(codes) <= {200, 503}, [o for o in outcomes if o[1] not in (200, 503)][:5]
    assert any(code == 503 for t, code, _ in outcomes if t > stopped_at), "outage not observed"
    accepted = {rid for _, code, rid in outcomes if code == 200}
    assert any(t < stopped_at for t, code, _ in outcomes if code == 200)
    raw = await read_records(settings.kafka_bootstrap, settings.topic_raw, count=len(accepted),
                             timeout=90)
    in_kafka = {header(r, "request-id") for r in raw}
    missing = accepted - in_kafka
    assert not missing, f"{len(missing)} of {len(accepted)} acknowledged bodies are not in Kafka"


async def test_sigterm_drains_in_flight_requests_then_exits_0(
    settings: Settings, start_process
) -> None:
    # A long linger keeps requests in flight (waiting for Kafka's ack) when SIGTERM lands.
    settings = settings.replace(bridge_linger_ms=700)
    bridge = start_process("bridge", settings)
    await wait_http_ok(bridge_url(settings, "/readyz"), timeout=60)
    async with aiohttp.ClientSession(timeout=_CLIENT_TIMEOUT) as session:
        async def one(i: int) -> tuple[int, str | None] | str:
            body = body_for(uuid.uuid4(), 1_700_000_000 + i)
            try:
                async with session.post(bridge_url(settings), data=body, headers=AUTH) as resp:
                    return resp.status, orjson.loads(await resp.read()).get("request_id")
            except aiohttp.ClientError as exc:
                return repr(exc)

        requests = [asyncio.create_task(one(i)) for i in range(40)]
        await asyncio.sleep(0.3)
        bridge.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*requests)
    assert await asyncio.get_running_loop().run_in_executor(None, bridge.proc.wait, 30) == 0
    answered = [r for r in results if isinstance(r, tuple)]
    dropped = [r for r in results if isinstance(r, str)]
    # Requests already accepted must be answered; only connections opened after the
    # listener closed may be refused (never a reset of an accepted request).
    assert all("ServerDisconnected" not in d for d in dropped), dropped
    assert all(code in (200, 503) for code, _ in answered), answered
    accepted = {rid for code, rid in answered if code == 200}
    assert accepted, f"no request was in flight at SIGTERM: {results[:3]}"
    raw = await read_records(settings.kafka_bootstrap, settings.topic_raw, count=len(accepted))
    assert accepted <= {header(r, "request-id") for r in raw}
