"""Prometheus metrics of the bridge and the worker, built against an injected registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

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
            "Offsets that never reached an agent on a partition it holds; the partition "
            "was rewound to fetch them again.",
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


class DeviceMetrics:
    """Per-device gauges computed at scrape time from the worker's own device views.

    The views hold only devices of partitions this worker owns right now: when Kafka
    moves a partition away, its devices are dropped, so two workers never export the
    same meter and a lost partition leaves no stale series behind.
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

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float],
                 lag: Callable[[], Iterable[tuple[str, int, int]]] | None = None,
                 gateways: Callable[[], Iterable[dict[str, Any]]] | None = None) -> None:
        self.gateways = gateways
        self.views: dict[str, dict[str, Any]] = {}
        self.windows: dict[tuple[str, int], tuple[int, float | None, float | None]] = {}
        self.clock = clock
        self.lag = lag
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
        for key in [k for k in self.windows if k[0] == device_id]:
            del self.windows[key]

    def describe(self) -> list[Any]:
        return []  # collected lazily; nothing to register up front

    def collect(self) -> Iterator[Any]:
        now = self.clock()
        labels = ["device_id"]
        families = {field: GaugeMetricFamily(f"meterstream_device_{name}", doc, labels=labels)
                    for name, doc, field in self._GAUGES}
        since = GaugeMetricFamily("meterstream_device_seconds_since_last_seen",
                                  "Seconds since data from the meter last arrived (at scrape).",
                                  labels=labels)
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
        info = GaugeMetricFamily(
            "meterstream_device_info",
            "1 per meter, with what is known about it (join on device_id for EAN or name; "
            "kept off the value metrics so a late mapping does not start new series).",
            labels=["device_id", "ean", "name", "serial", "class"])
        reconciliation = GaugeMetricFamily(
            "meterstream_device_reconciliation_difference_ratio",
            "(ours - grid operator) / grid operator import energy of the latest reconciled "
            "day.", labels=["device_id"])
        unmapped = 0
        for device_id, view in self.views.items():
            info.add_metric([device_id, view.get("ean") or "", view.get("name") or "",
                             view.get("serial") or "", view.get("class") or ""], 1)
            if view.get("reconciliation") is not None:
                reconciliation.add_metric([device_id], view["reconciliation"][1])
            unmapped += view.get("mapped") is False
        yield info
        yield reconciliation
        yield GaugeMetricFamily("meterstream_devices_unmapped",
                                "Meters of this worker without an EAN (only when EAN mapping "
                                "is configured).", value=unmapped)
        fleet = GaugeMetricFamily("meterstream_devices",
                                  "Meters held by this worker, by online state.",
                                  labels=["state"])
        for state, count in counts.items():
            fleet.add_metric([state], count)
        yield fleet
        for name, index in (("import", 1), ("export", 2)):
            family = GaugeMetricFamily(
                f"meterstream_device_window_{name}_energy_joules",
                f"Energy ({name}) of the meter's newest final window in joules, by window size "
                "(s).",
                labels=["device_id", "size"])
            for (device_id, size), window in self.windows.items():
                value = window[index]
                if value is not None and device_id in self.views:
                    family.add_metric([device_id, str(size)], value * _JOULES_PER_WH)
            yield family
        if self.gateways is not None:
            yield from _gateway_families(self.gateways())
        if self.lag is not None:
            family = GaugeMetricFamily("meterstream_consumer_lag_records",
                                       "Records not yet consumed, per source topic partition.",
                                       labels=["topic", "partition"])
            for topic, partition, lag in self.lag():
                family.add_metric([topic, str(partition)], lag)
            yield family


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
