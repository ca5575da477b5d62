"""Webhook → bridge → Kafka → decode agent → meter.readings, on the real broker."""

from __future__ import annotations

import asyncio
import struct
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson

from streams.config import Settings
from streams.protos_gen import smartme_realtime_pb2 as pb
from tests.integration.conftest import (
    AUTH,
    basic_auth,
    bridge_url,
    header,
    read_records,
    running_bridge,
    topic_size,
)

SEED_DEVICE = "3bd0fce9-9f8e-4183-b3d1-0c1622a22ca1"


def body_for(device: uuid.UUID, seconds: int, energy_mwh: float = 1000.0) -> bytes:
    lo, hi = struct.unpack("<QQ", device.bytes_le)
    item = pb.DeviceData(
        DeviceId=pb.Guid(lo=lo, hi=hi),
        DateTime=pb.DateTime(value=seconds, scale=pb.DateTime.SECONDS),
        DeviceValues=[pb.DeviceValue(Obis=bytes.fromhex("0100010800FF"), Value=energy_mwh)],
    )
    return pb.DeviceDataArray(DeviceDataItems=[item]).SerializeToString()


async def post(session: aiohttp.ClientSession, settings: Settings, body: bytes
               ) -> tuple[int, dict]:
    headers = {**AUTH, "Content-Type": "application/octet-stream"}
    async with session.post(bridge_url(settings), data=body, headers=headers) as response:
        return response.status, orjson.loads(await response.read())


async def test_seed_example_becomes_exactly_one_reading(
    settings: Settings, start_process, seed_body: bytes
) -> None:
    worker = start_process("worker", settings)
    async with running_bridge(settings), aiohttp.ClientSession() as session:
        before = datetime.now(UTC)
        status, answer = await post(session, settings, seed_body)
        after = datetime.now(UTC)
        assert status == 200, answer
        records = await read_records(settings.kafka_bootstrap, settings.topic_readings, count=1,
                                     timeout=90, settle=3)
    (raw,) = await read_records(settings.kafka_bootstrap, settings.topic_raw, count=1)
    assert raw.value == seed_body  # unchanged
    assert header(raw, "source") == "test"
    assert header(raw, "content-type") == "application/octet-stream"
    received = datetime.fromisoformat(header(raw, "received-at") or "")
    assert before - timedelta(milliseconds=1) <= received <= after
    assert len(records) == 1, worker.log_tail()
    record = records[0]
    assert record.key == SEED_DEVICE.encode()
    assert record.timestamp == 1571228444978  # the reading time, not the arrival time
    value = orjson.loads(record.value)
    assert value["device_id"] == SEED_DEVICE
    assert value["timestamp"] == "2019-10-16T12:20:44.978851Z"
    assert [(v["obis"], v["value"]) for v in value["values"]] == [
        ("1-0:1.8.0*255", 1879583.2), ("1-0:2.8.0*255", 0.0), ("1-0:1.7.0*255", 24.19)]
    assert value["values"][0]["normalised"] == 1879.5832
    assert value["source"] == "test"
    assert value["request_id"] == answer["request_id"] == header(record, "request-id")


async def test_garbage_goes_to_dead_letter_and_the_next_body_is_decoded(
    settings: Settings, start_process, seed_body: bytes
) -> None:
    start_process("worker", settings)
    async with running_bridge(settings), aiohttp.ClientSession() as session:
        bad_status, bad = await post(session, settings, b"\x0a\xffnot protobuf")
        good_status, _ = await post(session, settings, seed_body)
        assert (bad_status, good_status) == (200, 200)  # the bridge never interprets bodies
        dead = await read_records(settings.kafka_bootstrap, settings.topic_deadletter, count=1,
                                  timeout=90)
        readings = await read_records(settings.kafka_bootstrap, settings.topic_readings,
                                      count=1, timeout=60)
    assert len(dead) == 1
    letter = dead[0]
    assert letter.value == b"\x0a\xffnot protobuf"
    assert "not a DeviceDataArray protobuf" in (header(letter, "error") or "")
    assert header(letter, "origin-topic") == settings.topic_raw
    assert header(letter, "origin-offset") is not None
    assert header(letter, "request-id") == bad["request_id"]
    assert [orjson.loads(r.value)["device_id"] for r in readings] == [SEED_DEVICE]


async def test_wrong_credentials_get_401_wrong_methods_405_and_nothing_reaches_kafka(
    settings: Settings, seed_body: bytes
) -> None:
    async with running_bridge(settings), aiohttp.ClientSession() as session:
        for auth in (basic_auth("smartme", "wrong"), basic_auth("x", "y"), {}):
            async with session.post(bridge_url(settings), data=seed_body, headers=auth
                                    ) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Basic")
        for method in ("GET", "PUT"):  # the webhook takes POST only
            async with session.request(method, bridge_url(settings), data=seed_body,
                                       headers=AUTH) as response:
                assert response.status == 405, method
        await asyncio.sleep(1)
    assert await topic_size(settings.kafka_bootstrap, settings.topic_raw) == 0


async def test_oversized_body_gets_413_and_nothing_reaches_kafka(settings: Settings) -> None:
    settings = settings.replace(bridge_max_body_bytes=4096)
    async with running_bridge(settings), aiohttp.ClientSession() as session:
        async with session.post(bridge_url(settings), data=b"\0" * 4097, headers=AUTH) as response:
            assert response.status == 413

        async def chunked():  # no Content-Length: the limit must hold while reading
            for _ in range(8):
                yield b"\0" * 1024

        async with session.post(bridge_url(settings), data=chunked(), headers=AUTH) as response:
            assert response.status == 413
        async with session.post(bridge_url(settings), data=b"\0" * 4096, headers=AUTH) as response:
            assert response.status == 200  # exactly the limit is fine
    assert await topic_size(settings.kafka_bootstrap, settings.topic_raw) == 1


async def test_200_concurrent_posts_all_land_and_all_decode(
    settings: Settings, start_process
) -> None:
    start_process("worker", settings)
    devices = [uuid.uuid4() for _ in range(200)]
    async with running_bridge(settings), aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(
            post(session, settings, body_for(device, 1_700_000_000 + i))
            for i, device in enumerate(devices)
        ))
        assert [status for status, _ in results] == [200] * 200
        raw = await read_records(settings.kafka_bootstrap, settings.topic_raw, count=200)
        readings = await read_records(settings.kafka_bootstrap, settings.topic_readings,
                                      count=200, timeout=120, settle=2)
    assert len(raw) == 200
    assert {header(r, "request-id") for r in raw} == {a["request_id"] for _, a in results}
    assert len(readings) == 200
    assert {orjson.loads(r.value)["device_id"] for r in readings} == {str(d) for d in devices}
