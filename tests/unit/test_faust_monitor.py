"""The worker's Faust monitor exports what Faust's own PrometheusMonitor exports."""

from __future__ import annotations

from typing import Any

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from streams.faust_monitor import FaustMonitor


class Agent:
    pass


class Stream:
    def __init__(self, label: str) -> None:
        self.shortlabel = label
        self.task_owner = Agent()


class Message:
    time_in: float | None = None


def feed(monitor: Any) -> None:
    """Events of two streams over three topic partitions, one left in flight."""
    streams = [Stream("Stream: Topic: smartme.raw"), Stream("Stream: Topic: meterstream.ticks")]
    tps = [TP("smartme.raw", 0), TP("smartme.raw", 4), TP("meterstream.ticks", 1)]
    for offset in range(30):
        tp, stream, message = tps[offset % 3], streams[offset % 3 // 2], Message()
        monitor.on_message_in(tp, offset, message)
        state = monitor.on_stream_event_in(tp, offset, stream, object())
        if offset < 29:
            monitor.on_stream_event_out(tp, offset, stream, object(), state)
            monitor.on_message_out(tp, offset, message)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in registry.collect() for sample in metric.samples
            # the latencies are wall-clock times: their counts are compared, not their sums
            if not (sample.name.endswith(("_sum", "_bucket", "_created")))}


def test_the_same_samples_as_fausts_prometheus_monitor() -> None:
    exported = []
    for monitor_class in (PrometheusMonitor, FaustMonitor):
        registry = CollectorRegistry()
        monitor = monitor_class(metrics=FaustMetrics.create(registry, "meterstream_faust"))
        feed(monitor)
        exported.append(samples(registry))
    faust, ours = exported
    assert ours == faust
    assert ours[("meterstream_faust_messages_received_per_topics_partition",
                 (("partition", "4"), ("topic", "smartme.raw")))] == 28  # its last offset
    assert ours[("meterstream_faust_active_messages", ())] == 1
    assert ours[("meterstream_faust_events_runtime_ms_count", ())] == 29
    assert ours[("meterstream_faust_total_events_per_stream_total",
                 (("stream", "stream.topic_smartme.raw.events"),))] == 20
