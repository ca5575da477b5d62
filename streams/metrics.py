"""Prometheus metrics of the bridge and the worker, built against an injected registry."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Prometheus wants base units; energy is exported in joules (Grafana shows kWh).
_JOULES_PER_WH = 3600.0
_BYTES_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "meterstream_bridge_requests_total",
            "Webhook requests answered, by source and HTTP status code.",
            ["source", "code"], registry=registry,
        )
        self.request_duration = Histogram(
            "meterstream_bridge_request_duration_seconds",
            "Time from request start to response, webhook path only.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.produce_duration = Histogram(
            "meterstream_bridge_produce_duration_seconds",
            "Time Kafka took to acknowledge a body (acks=all).",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.body_bytes = Histogram(
            "meterstream_bridge_body_bytes",
            "Size of accepted webhook bodies.",
            buckets=_BYTES_BUCKETS, registry=registry,
        )
        self.in_flight = Gauge(
            "meterstream_bridge_in_flight_requests",
            "Webhook requests being handled right now.", registry=registry,
        )
        self.kafka_up = Gauge(
            "meterstream_bridge_kafka_up",
            "1 when the bridge's producer reaches Kafka, 0 otherwise.", registry=registry,
        )
        self.produce_errors = Counter(
            "meterstream_bridge_produce_errors_total",
            "Bodies Kafka did not acknowledge in time (answered 503), by error type.",
            ["error"], registry=registry,
        )


class WorkerMetrics:
    """Pipeline counters of a worker process (device-level metrics live in collectors)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bodies = Counter(
            "meterstream_bodies_decoded_total",
            "Raw webhook bodies decoded successfully.", registry=registry,
        )
        self.readings = Counter(
            "meterstream_readings_decoded_total",
            "Readings (DeviceData items) decoded and published.", registry=registry,
        )
        self.deadletters = Counter(
            "meterstream_deadletters_total",
            "Records that could not be decoded or used and went to the dead-letter topic.",
            registry=registry,
        )
        self.aggregated = Counter(
            "meterstream_readings_aggregated_total",
            "Readings consumed by the aggregation (applied, duplicate or late).",
            registry=registry,
        )
        self.alerts = Counter(
            "meterstream_alerts_total",
            "Offline/online transitions sent to meter.alerts, by new state.",
            ["state"], registry=registry,
        )
        self.vendor_polls = Counter(
            "meterstream_vendor_polls_total",
            "Polls of the vendor REST APIs (leader only), by vendor and outcome.",
            ["vendor", "outcome"], registry=registry,
        )
        self.vendor_last_success = Gauge(
            "meterstream_vendor_last_success_timestamp_seconds",
            "When a poll of the vendor's API last succeeded.", ["vendor"], registry=registry,
        )
        self.resent = Counter(
            "meterstream_records_resent_total",
            "Records sent again because Kafka did not acknowledge them in time (the batch "
            "waits for them; nothing is lost).", registry=registry,
        )
        self.offset_gaps = Counter(
            "meterstream_offset_gaps_total",
            "Times a partition was fetched again from a record that was never processed "
            "while later ones were (it is not committed past such a record).",
            ["topic"], registry=registry,
        )
        self.ticks = Counter(
            "meterstream_sweep_ticks_total",
            "Wall-clock ticks handled (each sweeps one partition's quiet devices).",
            registry=registry,
        )
        self.late = Counter(
            "meterstream_readings_late_total",
            "Readings beyond the allowed lateness, sent to meter.late instead of applied.",
            registry=registry,
        )
        self.duplicates = Counter(
            "meterstream_readings_duplicate_total",
            "Readings whose (device, timestamp) was already applied (retries, replays).",
            registry=registry,
        )
        self.revisions = Counter(
            "meterstream_window_corrections_total",
            "Final windows re-emitted with a higher revision because late data changed them.",
            registry=registry,
        )
        self.windows = Counter(
            "meterstream_windows_emitted_total",
            "Window records emitted, by window size (s) and kind (final, revision, interim).",
            ["size", "kind"], registry=registry,
        )
        self.processing_lag = Histogram(
            "meterstream_processing_lag_seconds",
            "Time from the bridge receiving a body to the aggregation applying its reading.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.sweep_duration = Histogram(
            "meterstream_sweep_duration_seconds",
            "Time one partition's wall-clock sweep of quiet devices took.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )


_CONSUMER_LAG = ("meterstream_consumer_lag_records",
                 "Records not yet consumed, per source topic partition.")


class DeviceMetrics:
    """Per-device gauges computed at scrape time from the worker's own device views.

    The views hold only devices of partitions this worker owns right now: when Kafka
    moves a partition away, its devices are dropped, so two workers never export the
    same meter and a lost partition leaves no stale series behind.

    The series are rendered two ways with the same result: ``collect`` for
    ``generate_latest`` and any other reader of the registry, and ``exposition``, which
    a worker's /metrics serves (``setup_prometheus``) because it costs a fraction.
    """

    _GAUGES = (
        ("power_watts", "Latest active power (1-0:1.7.0) of the meter.", "power"),
        ("import_energy_joules", "Latest import register (1-0:1.8.0), in joules (Wh × 3600).",
         "import"),
        ("export_energy_joules", "Latest export register (1-0:2.8.0), in joules (Wh × 3600).",
         "export"),
        ("last_reading_timestamp_seconds", "Time stamp of the newest reading (meter clock).",
         "reading"),
        ("last_seen_timestamp_seconds", "When data from the meter last arrived at the bridge.",
         "seen"),
        ("online", "1 while the meter is online, 0 once it is offline.", "online"),
        ("offline_threshold_seconds", "Silence after which the meter counts as offline.",
         "threshold"),
    )
    _SINCE = ("meterstream_device_seconds_since_last_seen",
              "Seconds since data from the meter last arrived (at scrape).")
    _INFO = ("meterstream_device_info",
             "1 per meter, with what is known about it (join on device_id for EAN or name; "
             "kept off the value metrics so a late mapping does not start new series).")
    _RECONCILIATION = ("meterstream_device_reconciliation_difference_ratio",
                       "(ours - grid operator) / grid operator import energy of the latest "
                       "reconciled day.")
    _WINDOWS = tuple(
        (f"meterstream_device_window_{name}_energy_joules",
         f"Energy ({name}) of the meter's newest final window in joules, by window size (s).",
         index)
        for name, index in (("import", 1), ("export", 2)))

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float],
                 lag: Callable[[], Iterable[tuple[str, int, int]]] | None = None,
                 gateways: Callable[[], Iterable[dict[str, Any]]] | None = None) -> None:
        self.gateways = gateways
        self.views: dict[str, dict[str, Any]] = {}
        self.windows: dict[tuple[str, int], tuple[int, float | None, float | None]] = {}
        self.clock = clock
        self.lag = lag
        self.registry = registry
        # exposition()'s text of what changes seldom, by device and by window.
        self._kept: dict[str, _DeviceText] = {}
        self._kept_windows: dict[tuple[str, int], tuple[Any, str | None, str | None]] = {}
        registry.register(self)

    def update(self, device_id: str, view: dict[str, Any]) -> None:
        self.views[device_id] = view

    def window(self, device_id: str, size: int, start_us: int, imp: float | None,
               exp: float | None) -> None:
        known = self.windows.get((device_id, size))
        if known is None or start_us >= known[0]:
            self.windows[(device_id, size)] = (start_us, imp, exp)

    def keep_partitions(self, partition: int, present: set[str]) -> None:
        """Forget devices of `partition` that this worker no longer holds."""
        for device_id in [d for d, v in self.views.items()
                          if v["partition"] == partition and d not in present]:
            self._forget(device_id)

    def drop_partitions(self, partitions: set[int]) -> None:
        for device_id in [d for d, v in self.views.items() if v["partition"] in partitions]:
            self._forget(device_id)

    def _forget(self, device_id: str) -> None:
        self.views.pop(device_id, None)
        self._kept.pop(device_id, None)
        for key in [k for k in self.windows if k[0] == device_id]:
            del self.windows[key]
            self._kept_windows.pop(key, None)

    def describe(self) -> list[Any]:
        """The families collect() yields, without samples: registered by name, so that a
        scrape restricted to other names (``/metrics?name[]=…``) skips the devices."""
        families = [GaugeMetricFamily(f"meterstream_device_{name}", doc)
                    for name, doc, _ in self._GAUGES]
        families += [GaugeMetricFamily(*self._SINCE), GaugeMetricFamily(*self._INFO),
                     GaugeMetricFamily(*self._RECONCILIATION), *self._fleet(0, {})]
        families += [GaugeMetricFamily(name, doc) for name, doc, _ in self._WINDOWS]
        families += [*_gateway_families([]), GaugeMetricFamily(*_CONSUMER_LAG)]
        return families

    def collect(self) -> Iterator[Any]:
        if _SPLICING.get() is self:
            yield _PLACEHOLDER  # exposition() writes these series' text itself, here
            return
        now = self.clock()
        labels = ["device_id"]
        families = {field: GaugeMetricFamily(f"meterstream_device_{name}", doc, labels=labels)
                    for name, doc, field in self._GAUGES}
        since = GaugeMetricFamily(*self._SINCE, labels=labels)
        counts = {"online": 0, "offline": 0}
        for device_id, view in self.views.items():
            for field, family in families.items():
                value = view.get(field)
                if value is not None:
                    scale = _JOULES_PER_WH if field in ("import", "export") else 1.0
                    family.add_metric([device_id], float(value) * scale)
            if view.get("seen") is not None:
                since.add_metric([device_id], max(0.0, now - view["seen"]))
            counts["online" if view.get("online", 1) else "offline"] += 1
        yield from families.values()
        yield since
        info = GaugeMetricFamily(*self._INFO,
                                 labels=["device_id", "ean", "name", "serial", "class"])
        reconciliation = GaugeMetricFamily(*self._RECONCILIATION, labels=["device_id"])
        unmapped = 0
        for device_id, view in self.views.items():
            info.add_metric([device_id, view.get("ean") or "", view.get("name") or "",
                             view.get("serial") or "", view.get("class") or ""], 1)
            if view.get("reconciliation") is not None:
                reconciliation.add_metric([device_id], view["reconciliation"][1])
            unmapped += view.get("mapped") is False
        yield info
        yield reconciliation
        yield from self._fleet(unmapped, counts)
        for name, doc, index in self._WINDOWS:
            family = GaugeMetricFamily(name, doc, labels=["device_id", "size"])
            for (device_id, size), window in self.windows.items():
                value = window[index]
                if value is not None and device_id in self.views:
                    family.add_metric([device_id, str(size)], value * _JOULES_PER_WH)
            yield family
        yield from self._others()

    def _fleet(self, unmapped: int, counts: dict[str, int]) -> Iterator[Any]:
        yield GaugeMetricFamily("meterstream_devices_unmapped",
                                "Meters of this worker without an EAN (only when EAN mapping "
                                "is configured).", value=unmapped)
        fleet = GaugeMetricFamily("meterstream_devices",
                                  "Meters held by this worker, by online state.",
                                  labels=["state"])
        for state, count in counts.items():
            fleet.add_metric([state], count)
        yield fleet

    def _others(self) -> Iterator[Any]:
        """The families after the per-device ones: M-Bus gateways and consumer lag."""
        if self.gateways is not None:
            yield from _gateway_families(self.gateways())
        if self.lag is not None:
            family = GaugeMetricFamily(*_CONSUMER_LAG, labels=["topic", "partition"])
            for topic, partition, lag in self.lag():
                family.add_metric([topic, str(partition)], lag)
            yield family

    def exposition(self) -> bytes:
        """What ``generate_latest(registry)`` returns, byte for byte, in far less time.

        generate_latest builds a Sample, a label dict and a sorted label list for every
        series and checks every name against the naming rules: with thousands of device
        series that was nearly all of a scrape. Here the rest of the registry still goes
        through generate_latest (in registration order) while this collector yields a
        placeholder, whose lines are then replaced by the device series written directly,
        reusing the lines of the previous scrape whose values did not change.
        """
        token = _SPLICING.set(self)
        try:
            text = generate_latest(self.registry)
        finally:
            _SPLICING.reset(token)
        before, placeholder, after = text.partition(_PLACEHOLDER_TEXT)
        if not placeholder:  # unregistered from its registry: nothing to put in
            return text
        return b"".join((before, self._series(), after))

    def _series(self) -> bytes:
        """collect()'s families as generate_latest writes them: the same values through
        the same conversions, so the same floats reach the text."""
        now = self.clock()
        views = self.views
        kept = self._kept
        gauges: tuple[list[str], ...] = tuple([] for _ in self._GAUGES)
        since: list[str] = []
        info: list[str] = []
        reconciliation: list[str] = []
        counts = {"online": 0, "offline": 0}
        unmapped = 0
        for device_id, view in views.items():
            device = kept.get(device_id)
            if device is None:
                device = kept[device_id] = _DeviceText(device_id)
            get = view.get
            for lines, field, number in zip(gauges, _GAUGE_FIELDS, device.gauges,
                                            strict=True):
                if (value := get(field)) is not None:
                    lines.append(number.text(value))
            if (value := get("seen")) is not None:
                since.append(f"{device.label}{_go_float(float(max(0.0, now - value)))}\n")
            counts["online" if get("online", 1) else "offline"] += 1
            info.append(device.info((get("class") or "", get("ean") or "",
                                     get("name") or "", get("serial") or "")))
            if (value := get("reconciliation")) is not None:
                reconciliation.append(device.ratio.text(value[1]))
            unmapped += get("mapped") is False
        out: list[bytes] = []
        for (name, doc, _), lines in zip(self._GAUGES, gauges, strict=True):
            _family(out, f"meterstream_device_{name}", doc, lines)
        _family(out, *self._SINCE, since)
        _family(out, *self._INFO, info)
        _family(out, *self._RECONCILIATION, reconciliation)
        out.append(_generate(self._fleet(unmapped, counts)))
        imports: list[str] = []
        exports: list[str] = []
        kept_windows = self._kept_windows
        for key, window in self.windows.items():
            device = kept.get(key[0])  # by now, kept holds exactly the devices in the views
            if device is None:
                continue
            # A window is a new tuple each time it changes: the same tuple, the same text.
            text = kept_windows.get(key)
            if text is None or text[0] is not window:
                text = kept_windows[key] = (window, *_window_lines(device, key[1], window))
            if text[1] is not None:
                imports.append(text[1])
            if text[2] is not None:
                exports.append(text[2])
        for (name, doc, _), lines in zip(self._WINDOWS, (imports, exports), strict=True):
            _family(out, name, doc, lines)
        out.append(_generate(self._others()))
        return b"".join(out)


_GAUGE_FIELDS = tuple(field for _, _, field in DeviceMetrics._GAUGES)
_GAUGE_SCALES = tuple(_JOULES_PER_WH if field in ("import", "export") else 1.0
                      for field in _GAUGE_FIELDS)


class _DeviceText:
    """What exposition() wrote for a device, kept between scrapes: most of its series
    change far less often than every 15 s (a meter reports about once a minute, some
    every 15 min), so a line is written again only when what it shows differs."""

    __slots__ = ("_info", "_info_key", "escaped", "gauges", "label", "ratio")

    def __init__(self, device_id: str) -> None:
        self.escaped = _escape(device_id)
        self.label = f'{{device_id="{self.escaped}"}} '
        self.gauges = tuple(_NumberLine(self.label, scale) for scale in _GAUGE_SCALES)
        self.ratio = _NumberLine(self.label, 1.0)
        self._info_key: tuple[str, str, str, str] | None = None
        self._info = ""

    def info(self, key: tuple[str, str, str, str]) -> str:
        """The info series line for (class, ean, name, serial)."""
        if key != self._info_key:  # strings: equal ones have the same text
            kind, ean, name, serial = key
            # generate_latest sorts labels by name.
            self._info = (f'{{class="{_escape(kind)}",device_id="{self.escaped}",'
                          f'ean="{_escape(ean)}",name="{_escape(name)}",'
                          f'serial="{_escape(serial)}"}} 1.0\n')
            self._info_key = key
        return self._info


class _NumberLine:
    """One series line of a device: its label and a value (times `scale`)."""

    __slots__ = ("label", "line", "scale", "value")

    def __init__(self, label: str, scale: float) -> None:
        self.label = label
        self.scale = scale  # x * 1.0 is x, bit for bit (NaN, infinities and -0.0 too)
        self.value: Any = None
        self.line = ""

    def text(self, value: Any) -> str:
        # Equal numbers convert to the same float, so to the same text, except 0 and
        # -0.0 (and NaN, never equal to itself, is always written again).
        if not (value == self.value and value):
            self.line = f"{self.label}{_go_float(float(value) * self.scale)}\n"
            self.value = value
        return self.line


def _window_lines(device: _DeviceText, size: int, window: tuple[int, float | None, float | None]
                  ) -> tuple[str | None, str | None]:
    """The import and export window series lines of a device's window (None: no value)."""
    label = f'{{device_id="{device.escaped}",size="{_escape(str(size))}"}} '
    imp, exp = window[1], window[2]
    return (None if imp is None else f"{label}{_go_float(imp * _JOULES_PER_WH)}\n",
            None if exp is None else f"{label}{_go_float(exp * _JOULES_PER_WH)}\n")


class _Families(Collector):
    """Metric families already built, for generate_latest to render."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _generate(families: Iterable[Metric]) -> bytes:
    return generate_latest(_Families(families))


# The DeviceMetrics whose exposition() is rendering the registry right now, if any (a
# context variable: another thread's generate_latest still gets the real series).
_SPLICING: ContextVar[DeviceMetrics | None] = ContextVar("device_metrics_splicing",
                                                         default=None)
_PLACEHOLDER = GaugeMetricFamily("meterstream_device_series_placeholder", "Never exported.")
_PLACEHOLDER_TEXT = _generate([_PLACEHOLDER])


@functools.cache
def _header(name: str, doc: str) -> bytes:
    """HELP and TYPE lines of a gauge family, as generate_latest writes them."""
    return _generate([GaugeMetricFamily(name, doc, labels=[])])


def _family(out: list[bytes], name: str, doc: str, lines: list[str]) -> None:
    """A family's text: its header, then each series line after the metric name."""
    out.append(_header(name, doc))
    if lines:
        # Encoded apart from the header: an all-ASCII string encodes as a plain copy, and
        # the help texts are not all ASCII.
        out.append(name.encode())
        out.append(name.join(lines).encode())


def _escape(value: str) -> str:
    """A label value escaped as generate_latest escapes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


_GO_SPECIAL = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}
_GO_EXPONENTS = {dot: f"e+{dot - 1:02d}" for dot in range(7, 17)}


def _go_float(value: float) -> str:
    """prometheus_client's floatToGoString of a float, in fewer steps.

    repr gives the shortest digits that round-trip, in plain notation from 1e-4 to 1e16;
    floatToGoString writes positive values from 1e6 up with an exponent instead, like Go,
    and the names Go gives to infinities and NaN.
    """
    text = repr(value)
    dot = text.find(".")
    if dot > 6:
        if text[0] == "-":
            return text
        if text[-2:] == ".0":  # an integral value: its trailing zeros go too
            return f"{text[0]}.{text[1:dot]}".rstrip("0.") + _GO_EXPONENTS[dot]
        # Shortest digits never end in 0 after the point: nothing to strip.
        return f"{text[0]}.{text[1:dot]}{text[dot + 1:]}{_GO_EXPONENTS[dot]}"
    if dot < 0:
        return _GO_SPECIAL.get(text, text)
    return text


def _gateway_families(gateways: Iterable[dict[str, Any]]) -> Iterator[Any]:
    """smart-me M-Bus gateways (from the inventory poll) and the state of their meters."""
    labels = ["gateway_id", "name"]
    seen = GaugeMetricFamily("meterstream_mbus_gateway_last_seen_timestamp_seconds",
                             "When smart-me last heard from the M-Bus gateway.", labels=labels)
    interval = GaugeMetricFamily("meterstream_mbus_gateway_readout_interval_seconds",
                                 "Configured readout interval of the gateway.", labels=labels)
    state = GaugeMetricFamily("meterstream_mbus_gateway_state",
                              "1 for the gateway's current state.", labels=[*labels, "state"])
    meters = GaugeMetricFamily("meterstream_mbus_meter_state",
                               "1 for each M-Bus meter's current readout state.",
                               labels=["gateway_id", "meter_id", "meter", "state"])
    for gateway in gateways:
        ids = [str(gateway.get("gateway_id")), str(gateway.get("name") or "")]
        if gateway.get("last_seen_timestamp") is not None:
            seen.add_metric(ids, gateway["last_seen_timestamp"])
        if gateway.get("readout_interval_seconds") is not None:
            interval.add_metric(ids, gateway["readout_interval_seconds"])
        state.add_metric([*ids, str(gateway.get("state_name") or gateway.get("state"))], 1)
        for meter in gateway.get("meters", []):
            meters.add_metric([ids[0], str(meter.get("id") or ""), str(meter.get("name") or ""),
                               str(meter.get("state_name") or meter.get("state"))], 1)
    yield from (seen, interval, state, meters)


class _MillisecondsToSeconds:
    """Takes Faust's observations in ms, records them in a seconds histogram."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    def observe(self, milliseconds: float) -> None:
        self.histogram.observe(milliseconds / 1000)


def conform_faust_metrics(monitor: Any, registry: CollectorRegistry) -> None:
    """Replace the one metric of Faust's PrometheusMonitor that breaks Prometheus naming
    rules (``…_events_runtime_ms``; promtool wants the base unit) by the same histogram in
    seconds, so a worker's whole scrape passes ``promtool check metrics``. Faust's other
    latency histograms are in ms too but do not say so in their names."""
    metrics = monitor._metrics
    old = metrics.events_runtime_latency
    registry.unregister(old)
    seconds = Histogram(
        old._name.removesuffix("_ms") + "_seconds", "Faust: time an agent took per event.",
        registry=registry, buckets=[bound / 1000 for bound in old._upper_bounds[:-1]])
    monitor._metrics = metrics._replace(events_runtime_latency=_MillisecondsToSeconds(seconds))


def setup_prometheus(app: Any, devices: DeviceMetrics, name_prefix: str,
                     path: str = "/metrics") -> None:
    """Faust's Prometheus sensors on the worker registry, and the page Prometheus scrapes.

    What faust's ``setup_prometheus_sensors`` does, except that the page serves
    ``devices.exposition()`` instead of ``generate_latest(registry)``: the same bytes, for
    a fraction of the CPU with thousands of devices.
    """
    # Here, not at the top: the bridge imports this module and runs no Faust.
    from aiohttp.web import Response
    from faust.sensors.prometheus import FaustMetrics

    from streams.faust_monitor import FaustMonitor

    app.monitor = FaustMonitor(metrics=FaustMetrics.create(
        devices.registry, name_prefix.replace("-", "_").replace(".", "_")))

    async def metrics_handler(_view: Any, request: Any) -> Response:
        # As prometheus_client's own servers: `name[]` parameters restrict the scrape.
        query: Any = getattr(request, "query", None)
        names = query.getall("name[]", []) if hasattr(query, "getall") else []
        body = (generate_latest(devices.registry.restricted_registry(names)) if names
                else devices.exposition())
        return Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.page(path)(metrics_handler)
