"""A worker's /metrics text (DeviceMetrics.exposition) is what prometheus_client's
generate_latest writes for the same registry, byte for byte, scrape after scrape."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from streams.metrics import DeviceMetrics, WorkerMetrics, conform_faust_metrics, setup_prometheus

T0 = 1_800_000_000.0
NAN = math.nan
INF = math.inf

# Device ids and label values a scrape must escape or carry through as they are.
IDS = ["6513270e-269e-0d37-f2a7-4de452e6b438", 'quote"d', "back\\slash", "new\nline",
       "tab\there", "é-ß-€-😀", "", " ", "trailing\\", '\\"\n', "{device_id=\"x\"}"]
TEXTS = [None, "", "Boiler room", 'say "hi"', "C:\\meters\\1", "two\nlines", "Zürich Straße",
         "8716000000000001", 0, False]
# Floats whose text takes each of floatToGoString's turns, and some in between.
NUMBERS: list[Any] = [
    None, 0.0, -0.0, 0, 1, True, False, 1.0, -1.0, 0.5, 1e-4, 1e-5, 123456.7, 999999.9,
    1e6, 1_000_000.5, 1234567.0, -1234567.0, 1.8e9, 1_800_000_123.456789, 1e15, 1e16,
    1.5e16, 1e22, -1e22, 5e-324, 1.7976931348623157e308, NAN, INF, -INF, 600, 2700.0,
    17_999_999_999.999996, 0.1 + 0.2, "42.5",
]
FIELDS = ["ean", "name", "class", "serial", "mapped", "reconciliation", "power", "import",
          "export", "reading", "seen", "online", "threshold"]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Worker:
    """A registry laid out like a worker's, with a DeviceMetrics the test can change."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.clock = Clock()
        self.registry = CollectorRegistry()
        WorkerMetrics(self.registry).windows.labels("60", "final").inc(3)
        self.lag = [("meter.raw", 0, 12), ("meterstream.reading-batches", 3, 0)]
        self.gateways: list[dict[str, Any]] = []
        self.devices = DeviceMetrics(self.registry, self.clock, lag=lambda: self.lag,
                                     gateways=lambda: self.gateways)
        # Collected after the devices: the text must keep it after them.
        Counter("meterstream_after_devices", "Registered after DeviceMetrics.",
                ["kind"], registry=self.registry).labels('a"b').inc()

    def number(self) -> Any:
        rng = self.rng
        if rng.random() < 0.5:
            return rng.choice(NUMBERS)
        return rng.choice([rng.uniform(-1e4, 1e4), rng.uniform(1.7e9, 1.9e9),
                           rng.uniform(0, 5e6), rng.uniform(0, 1e-3)])

    def value(self, field: str) -> Any:
        """A value of a view's field such as Pipeline.observe_head could give, or odder."""
        rng = self.rng
        if field in ("ean", "name", "class", "serial"):
            return rng.choice(TEXTS)
        if field == "mapped":
            return rng.choice([None, True, False])
        if field == "reconciliation":
            ratio = self.number()
            return None if ratio is None else ["2027-01-01", ratio]
        if field == "seen":
            return rng.choice([None, T0 - 30, T0 + 5, 1.5, NAN, -INF, rng.uniform(0, T0)])
        if field == "online":
            return rng.choice([None, 0, 1, True, False])
        return self.number()

    def view(self, partition: int) -> dict[str, Any]:
        view = {field: self.value(field) for field in FIELDS}
        for field in self.rng.sample(FIELDS, self.rng.randrange(3)):
            del view[field]  # fields never set
        return {"partition": partition, **view}

    def window(self, device_id: str) -> None:
        size = self.rng.choice([60, 900, 3600])
        start = self.rng.randrange(10) * size * 1_000_000
        imp, exp = (self.rng.choice([None, -0.0, NAN, self.rng.uniform(0, 50)])
                    for _ in range(2))
        self.devices.window(device_id, size, start, imp, exp)

    def change(self) -> None:
        """What happens to a worker between two scrapes, at random."""
        rng, devices = self.rng, self.devices
        self.clock.now += rng.choice([0.0, 15.0, 0.001])
        for device_id in rng.sample(IDS, rng.randrange(len(IDS) + 1)):
            known = devices.views.get(device_id)
            if known is not None and rng.random() < 0.5:
                # A sweep: the same values in new objects, some of them changed a little.
                view = dict(known)
                field = rng.choice(FIELDS)
                view[field] = rng.choice([view.get(field), self.value(field)])
                devices.update(device_id, view)
            else:
                devices.update(device_id, self.view(rng.randrange(4)))
        for _ in range(rng.randrange(6)):
            self.window(rng.choice([*IDS, "never-viewed"]))
        roll = rng.random()
        if roll < 0.15:
            devices.drop_partitions({rng.randrange(4)})
        elif roll < 0.3:
            present = set(rng.sample(IDS, rng.randrange(len(IDS))))
            devices.keep_partitions(rng.randrange(4), present)
        if rng.random() < 0.3:
            self.gateways = [{"gateway_id": 7, "name": 'gw "1"', "last_seen_timestamp": T0,
                              "readout_interval_seconds": None, "state_name": "Ok",
                              "meters": [{"id": 1, "name": "m\n1", "state": 2}]}]

    def check(self) -> None:
        stock = generate_latest(self.registry)
        served = self.devices.exposition()
        assert served == stock, _first_difference(served, stock)


def _first_difference(served: bytes, stock: bytes) -> str:
    for ours, theirs in zip(served.splitlines(), stock.splitlines(), strict=False):
        if ours != theirs:
            return f"served {ours!r}, generate_latest {theirs!r}"
    return f"lengths {len(served)} and {len(stock)}"


@pytest.mark.parametrize("seed", range(40))
def test_every_scrape_is_byte_identical_to_generate_latest(seed: int) -> None:
    worker = Worker(random.Random(seed))
    worker.check()  # no devices yet
    for _ in range(8):
        worker.change()
        worker.check()
        worker.check()  # again with nothing changed: what was kept is still right


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.floats(), st.integers(-(2**70), 2**70)), min_size=1,
                max_size=20))
def test_any_number_is_written_as_generate_latest_writes_it(values: list[Any]) -> None:
    worker = Worker(random.Random(0))
    for round_ in range(2):  # the second time from what the first one kept
        for index, value in enumerate(values):
            worker.devices.update(f"d{index}", {
                "partition": 0, "power": value, "import": value, "seen": value,
                "threshold": value if round_ else -value,
                "reconciliation": ["2027-01-01", value]})
            worker.devices.window(f"d{index}", 60, round_, value, value)
        worker.check()


def test_a_scrape_shows_what_changed_and_drops_what_is_gone() -> None:
    worker = Worker(random.Random(1))
    devices = worker.devices
    devices.update("a", {"partition": 1, "power": 0.0, "online": 1, "name": "Old"})
    devices.update("b", {"partition": 2, "power": 5.0, "online": 1})
    devices.window("a", 60, 0, 1.0, None)
    first = devices.exposition().decode()
    assert 'meterstream_device_power_watts{device_id="a"} 0.0\n' in first
    assert 'name="Old"' in first
    assert 'meterstream_device_window_import_energy_joules{device_id="a",size="60"} 3600.0\n' \
        in first
    devices.update("a", {"partition": 1, "power": -0.0, "online": 1, "name": "New"})
    devices.window("a", 60, 60_000_000, 2.0, None)
    devices.drop_partitions({2})
    second = devices.exposition().decode()
    assert 'meterstream_device_power_watts{device_id="a"} -0.0\n' in second
    assert 'name="New"' in second and 'name="Old"' not in second
    assert 'meterstream_device_window_import_energy_joules{device_id="a",size="60"} 7200.0\n' \
        in second
    assert 'device_id="b"' not in second
    worker.check()


async def test_the_metrics_page_serves_the_whole_registry() -> None:
    """Wired as the worker wires it: Faust's sensors, the conformed histogram, devices."""
    app = faust.App("metrics-page-test", broker="kafka://127.0.0.1:1", store="memory://",
                    web_enabled=True)
    registry = CollectorRegistry()
    devices = DeviceMetrics(registry, lambda: T0)
    devices.update('m"1', {"partition": 0, "power": 12.5, "seen": T0 - 3, "online": 1})
    setup_prometheus(app, devices, name_prefix="meterstream_faust")
    conform_faust_metrics(app.monitor, registry)
    app.monitor._metrics.messages_received.inc()

    response = await app.web.views["/metrics"].get(None)

    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert response.body == generate_latest(registry)
    text = response.body.decode()
    assert 'meterstream_device_seconds_since_last_seen{device_id="m\\"1"} 3.0\n' in text
    assert "meterstream_faust_messages_received_total 1.0\n" in text
    assert "# TYPE meterstream_faust_events_runtime_seconds histogram\n" in text


async def test_a_scrape_restricted_by_name_renders_only_those_families() -> None:
    """`/metrics?name[]=…`, as prometheus_client's own servers take it: a cheap look at a
    few counters (the benchmark polls one every second), without the device series."""
    app = faust.App("metrics-names-test", broker="kafka://127.0.0.1:1", store="memory://",
                    web_enabled=True)
    registry = CollectorRegistry()
    worker = WorkerMetrics(registry)
    devices = DeviceMetrics(registry, lambda: T0)
    devices.update("m1", {"partition": 0, "power": 12.5, "seen": T0 - 3, "online": 1})
    setup_prometheus(app, devices, name_prefix="meterstream_faust")
    worker.aggregated.inc(7)
    request = SimpleNamespace(query=MultiDict([("name[]", "meterstream_readings_aggregated_total"),
                                               ("name[]", "meterstream_devices")]))

    response = await app.web.views["/metrics"].get(request)

    text = response.body.decode()
    assert "meterstream_readings_aggregated_total 7.0\n" in text
    assert 'meterstream_devices{state="online"}' in text  # a device family, when asked for
    assert "meterstream_device_power_watts" not in text
    assert "meterstream_faust_" not in text
    full = (await app.web.views["/metrics"].get(SimpleNamespace(query=MultiDict()))).body
    assert full == generate_latest(registry)
