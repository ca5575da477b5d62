"""The webhook bridge: smart-me POSTs protobuf bodies, the bridge lands them in Kafka.

The bridge never interprets a body. It authenticates the sender, enforces the size
limit and publishes the bytes unchanged to the raw topic with an idempotent producer
(acks=all). It answers 200 only after Kafka acknowledged the record; when Kafka is
unavailable or slower than the produce timeout it answers 503 with Retry-After, so
smart-me (or any sender) retries and nothing acknowledged is ever lost.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import signal
import time
import uuid
from datetime import UTC, datetime

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streams.codec import first_device_key
from streams.config import Credential, Settings
from streams.metrics import BridgeMetrics
from streams.topics import ensure_topics, topic_specs

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
_HEALTH_INTERVAL = 2.0
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="meterstream", charset="UTF-8"'}


class Authenticator:
    """HTTP Basic against several credential pairs, each naming a source."""

    def __init__(self, credentials: tuple[Credential, ...], allow_anonymous: bool) -> None:
        self._credentials = [
            (c.username.encode(), c.password.encode(), c.source) for c in credentials
        ]
        self._allow_anonymous = allow_anonymous

    def source_for(self, header: str | None) -> str | None:
        """The source of a valid Authorization header, else None."""
        if header is None:
            return ANONYMOUS if self._allow_anonymous else None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            username, sep, password = base64.b64decode(token.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return None
        if not sep:
            return None
        found = None
        # Compare against every pair without stopping early: timing says nothing about
        # which user exists or how much of a password matched.
        for user, secret, source in self._credentials:
            user_ok = hmac.compare_digest(username, user)
            secret_ok = hmac.compare_digest(password, secret)
            if user_ok and secret_ok and found is None:
                found = source
        return found


class Bridge:
    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not settings.bridge_credentials and not settings.bridge_allow_anonymous:
            raise ValueError(
                "no webhook credentials configured: set METERSTREAM_BRIDGE_CREDENTIALS "
                "(source:user:password) or METERSTREAM_BRIDGE_CREDENTIALS_FILE"
            )
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = BridgeMetrics(self.registry)
        self._auth = Authenticator(settings.bridge_credentials, settings.bridge_allow_anonymous)
        self._producer: AIOKafkaProducer | None = None
        self._kafka_up = False
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._reset = asyncio.Event()
        self.app = self._build_app()

    # -- application -----------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.bridge_max_body_bytes)
        app.router.add_post(self.settings.bridge_path, self.handle_webhook)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/readyz", self.handle_readyz)
        app.router.add_get("/metrics", self.handle_metrics)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._tasks.append(asyncio.create_task(self._producer_loop(), name="bridge-producer"))

    async def _on_cleanup(self, _app: web.Application) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._producer is not None:
            # stop() flushes whatever is still buffered before closing.
            await self._producer.stop()
            self._producer = None
        self._set_kafka_up(False)

    async def _producer_loop(self) -> None:
        """Keep one healthy producer: start it (retrying while Kafka is down), watch the
        broker, and replace it when it broke (see ``_request_reset``)."""
        await ensure_topics(self.settings.kafka_bootstrap, topic_specs(self.settings)[:1],
                            attempts=1_000_000, delay=_HEALTH_INTERVAL)
        while True:
            producer = await self._start_producer()
            self._reset.clear()
            self._producer = producer
            self._set_kafka_up(True)
            while not self._reset.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._reset.wait(), _HEALTH_INTERVAL)
                if not self._reset.is_set():
                    self._set_kafka_up(await self._probe_kafka(producer))
            self._producer = None
            self._set_kafka_up(False)
            # Bodies still pending in the old producer were answered 503 or will be;
            # give it a bounded chance to deliver them (duplicates are fine, loss is not).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), self.settings.bridge_produce_timeout)

    async def _start_producer(self) -> AIOKafkaProducer:
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=self.settings.bridge_linger_ms,
                max_request_size=self.settings.bridge_max_body_bytes + 64 * 1024,
                request_timeout_ms=int(max(self.settings.bridge_produce_timeout, 5) * 1000),
                client_id="meterstream-bridge",
            )
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                log.warning("Kafka not reachable at %s (%s); retrying in %.0fs",
                            self.settings.kafka_bootstrap, exc, _HEALTH_INTERVAL)
                await producer.stop()
                await asyncio.sleep(_HEALTH_INTERVAL)
                continue
            log.info("producer connected to %s", self.settings.kafka_bootstrap)
            return producer

    def _request_reset(self, producer: AIOKafkaProducer, error: KafkaError) -> None:
        # aiokafka's idempotent producer cannot recover its sequence numbers once a batch
        # expired during an outage (every later send fails with OutOfOrderSequenceNumber);
        # a fresh producer gets a new producer id and starts clean.
        if producer is self._producer and not self._reset.is_set():
            log.warning("replacing the Kafka producer after %s", type(error).__name__)
            self._reset.set()

    async def _probe_kafka(self, producer: AIOKafkaProducer) -> bool:
        try:
            return bool(await asyncio.wait_for(
                producer.client.force_metadata_update(), _HEALTH_INTERVAL))
        except (TimeoutError, KafkaError, OSError):
            return False

    def _set_kafka_up(self, up: bool) -> None:
        if up != self._kafka_up:
            log.log(logging.INFO if up else logging.WARNING,
                    "Kafka %s", "reachable" if up else "UNREACHABLE: answering 503")
        self._kafka_up = up
        self.metrics.kafka_up.set(1 if up else 0)

    # -- handlers --------------------------------------------------------------------------
    async def handle_webhook(self, request: web.Request) -> web.Response:
        began = time.perf_counter()
        request_id = uuid.uuid4().hex
        source = self._auth.source_for(request.headers.get("Authorization"))
        self.metrics.in_flight.inc()
        try:
            response = await self._accept(request, request_id, source)
        finally:
            self.metrics.in_flight.dec()
        response.headers["X-Request-Id"] = request_id
        self.metrics.requests.labels(source or "", str(response.status)).inc()
        self.metrics.request_duration.observe(time.perf_counter() - began)
        return response

    async def _accept(
        self, request: web.Request, request_id: str, source: str | None
    ) -> web.Response:
        if source is None:
            log.info("401 %s from %s: missing or wrong credentials", request_id, request.remote)
            return _json(401, "unauthorized", "missing or wrong Basic credentials", _CHALLENGE)
        if self._stopping:
            return self._unavailable("shutting down")
        limit = self.settings.bridge_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _too_large(request_id, request.content_length, limit)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large(request_id, None, limit)
        producer = self._producer
        if producer is None or not self._kafka_up:
            self.metrics.produce_errors.labels("unavailable").inc()
            return self._unavailable("Kafka unavailable")
        headers = [
            ("received-at", datetime.now(UTC).isoformat(timespec="milliseconds").encode()),
            ("source", source.encode()),
            ("request-id", request_id.encode()),
            ("content-type", (request.content_type or "application/octet-stream").encode()),
        ]
        produce_began = time.perf_counter()
        try:
            meta = await asyncio.wait_for(
                producer.send_and_wait(self.settings.topic_raw, body,
                                       key=first_device_key(body), headers=headers),
                self.settings.bridge_produce_timeout,
            )
        except (TimeoutError, KafkaError) as exc:
            if isinstance(exc, KafkaError):
                self._request_reset(producer, exc)
            error = type(exc).__name__
            self.metrics.produce_errors.labels(error).inc()
            log.warning("503 %s: Kafka did not acknowledge (%s: %s)", request_id, error, exc)
            return self._unavailable(f"Kafka did not acknowledge: {error}")
        self.metrics.produce_duration.observe(time.perf_counter() - produce_began)
        self.metrics.body_bytes.observe(len(body))
        return web.json_response(
            {"status": "accepted", "request_id": request_id,
             "partition": meta.partition, "offset": meta.offset},
            dumps=lambda obj: orjson.dumps(obj).decode(),
        )

    def _unavailable(self, reason: str) -> web.Response:
        headers = {"Retry-After": str(self.settings.bridge_retry_after)}
        return _json(503, "unavailable", reason, headers)

    async def handle_healthz(self, _request: web.Request) -> web.Response:
        return _json(200, "ok", "process alive")

    async def handle_readyz(self, _request: web.Request) -> web.Response:
        if self._producer is not None and self._kafka_up and not self._stopping:
            return _json(200, "ready", "producer connected to Kafka")
        return _json(503, "not ready", "producer not connected to Kafka")

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response


def _json(status: int, state: str, detail: str, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"status": state, "detail": detail}),
        content_type="application/json", headers=headers,
    )


def _too_large(request_id: str, size: int | None, limit: int) -> web.Response:
    log.info("413 %s: body %s bytes over the %d byte limit", request_id,
             size if size is not None else "(chunked)", limit)
    return _json(413, "too large", f"body exceeds {limit} bytes")


async def serve(settings: Settings, registry: CollectorRegistry | None = None) -> None:
    """Run the bridge until SIGTERM/SIGINT, then drain in-flight requests and flush."""
    bridge = Bridge(settings, registry)
    runner = web.AppRunner(
        bridge.app, access_log=None, shutdown_timeout=settings.bridge_shutdown_timeout,
        handle_signals=False,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.bridge_host, settings.bridge_port)
    await site.start()
    log.info("bridge listening on http://%s:%d%s (topic %s)", settings.bridge_host,
             settings.bridge_port, settings.bridge_path, settings.topic_raw)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("bridge stopping: no new connections, draining in-flight requests")
    bridge._stopping = True
    await runner.cleanup()
    log.info("bridge stopped")
