"""``meterstream worker``: ensure the topics (Faust's own included) exist, then run the
Faust worker."""

from __future__ import annotations

import asyncio
import gc
import logging

import faust

from streams.app import Pipeline
from streams.config import Settings
from streams.logs import throttle_client_logs
from streams.metrics import conform_faust_metrics, setup_prometheus
from streams.topics import ensure_topics, topic_specs

# A busy worker allocates millions of short-lived dicts (readings, window records, state);
# with the default thresholds the cyclic collector took about a fifth of its time
# (bench: 6,700 → 8,100 readings/s with these, 8,500 with the collector off).
_GC_THRESHOLDS = (50_000, 20, 100)


def run(settings: Settings) -> int:
    gc.set_threshold(*_GC_THRESHOLDS)
    # Faust binds to the current event loop; create it here so topic setup runs on it too.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pipeline = Pipeline(settings)
    # Faust's own topics too, before Faust starts: see ensure_topics on why a worker must not
    # join its group while a topic it subscribes to is still being created.
    loop.run_until_complete(ensure_topics(
        settings.kafka_bootstrap, topic_specs(settings) + pipeline.internal_specs()))
    setup_prometheus(pipeline.app, pipeline.device_metrics, name_prefix="meterstream_faust")
    conform_faust_metrics(pipeline.app.monitor, pipeline.registry)
    # aiokafka and Faust log every produced message at DEBUG; with their loggers left at
    # NOTSET the records are built and only then dropped by the handler (~10% of a busy
    # worker's time in a profile), so set the level where the check is cheap.
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(settings.log_level.upper())
    throttle_client_logs()
    gc.freeze()  # what setup built lives as long as the process: keep it out of collections
    worker = faust.Worker(pipeline.app, loglevel=settings.log_level, loop=loop)
    worker.execute_from_commandline()
    return 0
