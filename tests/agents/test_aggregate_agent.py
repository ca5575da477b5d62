from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.agents.aggregate import TICK_KEY
from streams.app import Pipeline
from streams.codec import format_timestamp
from tests.agents.conftest import Clock, Outbox, counter, make_pipeline, wait_until

DEVICE = "6513270e-269e-0d37-f2a7-4de452e6b438"
T0 = 1_699_999_200  # 2023-11-14T22:00:00Z


def reading(minute: float, imp: float | None = None, power: float | None = None,
            device: str = DEVICE) -> bytes:
    ts_us = int((T0 + minute * 60) * 1_000_000)
    values = []
    if imp is not None:
        values.append({"obis": "1-0:1.8.0*255", "value": imp * 1000, "normalised": imp,
                       "quantity": "active_energy_import", "unit": "Wh"})
    if power is not None:
        values.append({"obis": "1-0:1.7.0*255", "value": power, "normalised": power,
                       "quantity": "active_power_import", "unit": "W"})
    return orjson.dumps({"device_id": device, "timestamp": format_timestamp(ts_us),
                         "timestamp_us": ts_us, "values": values, "source": "test",
                         "received_at": "2026-11-22T00:00:00.000Z", "request_id": "r"})


def windows(outbox: Outbox, pipeline: Pipeline) -> dict[bytes, dict[str, Any]]:
    return {sent.key: orjson.loads(sent.value)
            for sent in outbox.of(pipeline.settings.topic_aggregates)}


async def test_readings_become_final_windows_keyed_for_compaction(
    pipeline: tuple[Pipeline, Outbox]
) -> None:
    app, outbox = pipeline
    async with app.aggregate_agent.test_context() as agent:
        for minute, imp in ((0, 100.0), (1, 130.0), (10, 130.0)):
            await agent.put(key=DEVICE.encode(), value=reading(minute, imp, power=1800.0))
        await wait_until(lambda: counter(app.metrics.aggregated) == 3)
    emitted = windows(outbox, app)
    first = emitted[f"{DEVICE}|60|2023-11-14T22:00:00Z".encode()]
    assert first["energy_import_wh"] == 30.0
    assert first["power_mean_w"] == 1800.0
    assert (first["final"], first["revision"], first["samples"]) == (True, 0, 1)
    assert app.metrics.windows.labels("60", "final")._value.get() == len(
        [w for w in emitted.values() if w["size"] == 60])


async def test_replayed_readings_change_nothing(pipeline: tuple[Pipeline, Outbox]) -> None:
    app, outbox = pipeline
    trace = [reading(m, 100.0 + m, power=60.0) for m in range(0, 12)]
    async with app.aggregate_agent.test_context() as agent:
        for body in trace:
            await agent.put(key=DEVICE.encode(), value=body)
        await wait_until(lambda: counter(app.metrics.aggregated) == len(trace))
        sent = len(outbox.of(app.settings.topic_aggregates))
        assert sent > 0
        for body in trace:  # a webhook retry storm / a replay after a restart
            await agent.put(key=DEVICE.encode(), value=body)
        await wait_until(lambda: counter(app.metrics.aggregated) == 2 * len(trace))
    assert len(outbox.of(app.settings.topic_aggregates)) == sent
    assert app.metrics.duplicates._value.get() == len(trace)


async def test_too_late_readings_go_to_meter_late(pipeline: tuple[Pipeline, Outbox]) -> None:
    app, outbox = pipeline
    async with app.aggregate_agent.test_context() as agent:
        await agent.put(key=DEVICE.encode(), value=reading(0, 100.0))
        await agent.put(key=DEVICE.encode(), value=reading(7 * 60, 200.0))
        await agent.put(key=DEVICE.encode(), value=reading(10, 110.0))
        await wait_until(lambda: counter(app.metrics.aggregated) == 3)
    (late,) = outbox.of(app.settings.topic_late)
    record = orjson.loads(late.value)
    assert record["timestamp"] == "2023-11-14T22:10:00Z"
    assert "allowed lateness" in record["late_reason"]
    assert app.metrics.late._value.get() == 1


async def test_a_tick_finalizes_the_windows_of_a_quiet_device(
    pipeline: tuple[Pipeline, Outbox], clock: Clock
) -> None:
    app, outbox = pipeline
    async with app.aggregate_agent.test_context() as agent:
        clock.now = T0 + 60
        await agent.put(key=DEVICE.encode(), value=reading(0, 100.0, power=10.0))
        await agent.put(key=DEVICE.encode(), value=reading(0.5, 105.0, power=20.0))
        await wait_until(lambda: counter(app.metrics.aggregated) == 2)
        assert windows(outbox, app) == {}
        clock.now = T0 + 2 * 3600  # two hours of silence
        await agent.put(key=TICK_KEY, value=b"", partition=0)
        await wait_until(lambda: counter(app.metrics.ticks) == 1)
    emitted = windows(outbox, app)
    assert {(w["size"], w["window_start"]) for w in emitted.values()} == {
        (60, "2023-11-14T22:00:00Z"), (900, "2023-11-14T22:00:00Z"),
        (3600, "2023-11-14T22:00:00Z")}
    assert all(w["final"] for w in emitted.values())


async def test_a_broken_reading_record_is_dead_lettered(
    pipeline: tuple[Pipeline, Outbox]
) -> None:
    app, outbox = pipeline
    async with app.aggregate_agent.test_context() as agent:
        await agent.put(key=b"x", value=b"{not json")
        await agent.put(key=DEVICE.encode(), value=reading(0, 1.0))
        await wait_until(lambda: counter(app.metrics.aggregated) == 1)
    (letter,) = outbox.of(app.settings.topic_deadletter)
    assert b"not a meter.readings record" in letter.headers["error"]
    assert app.device_snapshot(DEVICE) is not None


async def test_a_record_of_readings_is_aggregated_and_its_bad_items_dead_lettered(
    pipeline: tuple[Pipeline, Outbox]
) -> None:
    app, outbox = pipeline
    other = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    batch = [reading(0, 100.0), reading(0, 500.0, device=other), b'{"no":"device"}',
             reading(1, 130.0), reading(1, 560.0, device=other)]
    async with app.aggregate_agent.test_context() as agent:
        await agent.put(key=None, value=b"[" + b",".join(batch) + b"]")
        await wait_until(lambda: counter(app.metrics.aggregated) == 4)
    (letter,) = outbox.of(app.settings.topic_deadletter)
    assert letter.value == b'{"no":"device"}'
    assert b"not a meter.readings record" in letter.headers["error"]
    for device in (DEVICE, other):
        assert app.device_snapshot(device)["latest_reading"]["imp"] in (130.0, 560.0)


async def test_a_batch_of_many_meters_sends_each_window_once(
    pipeline: tuple[Pipeline, Outbox]
) -> None:
    """Window records leave in parts while a large batch is computed: all of them, once."""
    app, outbox = pipeline
    devices = [f"00000000-0000-0000-0000-{n:012d}" for n in range(150)]
    body = [reading(minute, 100.0 + n + minute * 30, device=device)
            for minute in (0, 1, 10) for n, device in enumerate(devices)]
    async with app.aggregate_agent.test_context() as agent:
        await agent.put(key=None, value=b"[" + b",".join(body) + b"]")
        await wait_until(lambda: counter(app.metrics.aggregated) == len(body))
    sent = outbox.of(app.settings.topic_aggregates)
    assert len(sent) == len({record.key for record in sent})
    emitted = windows(outbox, app)
    for device in devices:
        first = emitted[f"{device}|60|2023-11-14T22:00:00Z".encode()]
        assert (first["energy_import_wh"], first["final"]) == (30.0, True)


async def test_too_late_readings_of_two_meters_at_the_same_time_keep_their_meter(
    pipeline: tuple[Pipeline, Outbox]
) -> None:
    app, outbox = pipeline
    other = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    async with app.aggregate_agent.test_context() as agent:
        for device in (DEVICE, other):
            await agent.put(key=None, value=reading(7 * 60, 200.0, device=device))
        # Meters report on the minute: late readings of several meters share timestamps.
        late = [reading(10, 110.0, device=device) for device in (DEVICE, other)]
        await agent.put(key=None, value=b"[" + b",".join(late) + b"]")
        await wait_until(lambda: counter(app.metrics.aggregated) == 4)
    records = [orjson.loads(sent.value) for sent in outbox.of(app.settings.topic_late)]
    assert sorted(r["device_id"] for r in records) == sorted([DEVICE, other])
    assert {sent.key for sent in outbox.of(app.settings.topic_late)} == {
        DEVICE.encode(), other.encode()}


async def test_device_snapshot_shows_latest_reading_and_open_windows(
    pipeline: tuple[Pipeline, Outbox]
) -> None:
    app, _ = pipeline
    async with app.aggregate_agent.test_context() as agent:
        await agent.put(key=DEVICE.encode(), value=reading(0, 100.0, power=5.0))
        await agent.put(key=DEVICE.encode(), value=reading(0.5, 101.0, power=7.0))
        await wait_until(lambda: counter(app.metrics.aggregated) == 2)
    snapshot = app.device_snapshot(DEVICE)
    assert snapshot is not None
    assert snapshot["event_time"] == "2023-11-14T22:00:30Z"
    assert snapshot["latest_reading"]["power"] == 7.0
    assert {w["size"] for w in snapshot["open_windows"]} == {60, 900, 3600}
    assert all(not w["final"] for w in snapshot["open_windows"])
    assert app.device_snapshot("00000000-0000-0000-0000-000000000000") is None


@pytest.fixture
async def interim(tmp_path: Any, clock: Clock) -> Any:
    async for made in make_pipeline(tmp_path, clock, aggregate_interim=True):
        yield made


async def test_interim_updates_are_counted_apart_and_leave_the_final_window_gauge(
    interim: tuple[Pipeline, Outbox]
) -> None:
    app, outbox = interim
    async with app.aggregate_agent.test_context() as agent:
        await agent.put(key=DEVICE.encode(), value=reading(0, 100.0, power=60.0))
        await agent.put(key=DEVICE.encode(), value=reading(0.5, 110.0, power=60.0))
        await wait_until(lambda: counter(app.metrics.aggregated) == 2)
    emitted = [orjson.loads(s.value) for s in outbox.of(app.settings.topic_aggregates)]
    assert emitted and not any(w["final"] for w in emitted)  # nothing closed yet
    assert app.metrics.windows.labels("60", "interim")._value.get() == len(
        [w for w in emitted if w["size"] == 60])
    assert app.metrics.windows.labels("60", "final")._value.get() == 0
    assert app.device_metrics.windows == {}  # "energy of the last final window"


async def test_state_goes_to_the_changelogs_on_the_readings_partition(
    pipeline: tuple[Pipeline, Outbox]
) -> None:
    """What a worker taking the partition over recovers from: the latest changelog value
    of every key is the state the agent holds, tombstones for pruned chunks included."""
    app, outbox = pipeline
    async with app.aggregate_agent.test_context() as agent:
        # 8 h of readings, an hour per batch: past the allowed lateness, so chunks that
        # reached the store are pruned (deleted) later.
        for hour in range(8):
            for minute in range(hour * 60, hour * 60 + 60, 5):
                await agent.put(key=DEVICE.encode(), value=reading(minute, 100.0 + minute),
                                partition=3)
            await wait_until(lambda h=hour: counter(app.metrics.aggregated) == (h + 1) * 12)
    recovered: dict[bytes, Any] = {}
    tombstones = 0
    for name in ("aggregate-heads", "aggregate-chunks"):
        table = app.app.tables[name]
        for sent in outbox.of(table.changelog_topic.get_topic_name()):
            assert sent.partition == 3
            recovered[sent.key] = sent.value
            tombstones += sent.value is None
        held = {key: value for key, value in table.data.items()}
        assert held and {k: v for k, v in recovered.items() if k in held} == held
    assert tombstones > 0
    assert not [key for key, value in recovered.items() if value is not None and not any(
        key in app.app.tables[n].data for n in ("aggregate-heads", "aggregate-chunks"))]
