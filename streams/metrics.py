"""Prometheus metrics of the bridge and the worker, built against an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
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
            "Window records emitted, by window size (s) and kind (final, revision).",
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
