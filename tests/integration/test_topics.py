"""Topic setup on the real broker: a worker creates every topic it uses, Faust's own
included, before it joins its group (see streams.topics.ensure_topics on why)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.app import Pipeline
from streams.config import Settings
from tests.integration.test_monitoring import scrape


async def _topics(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, Any]]:
    described = await admin.describe_topics(names)
    configs = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    policy = {resource[3]: {entry[0]: entry[1] for entry in resource[4]}.get("cleanup.policy")
              for response in configs for resource in response.resources}
    return {t["topic"]: {"partitions": len(t["partitions"]), "policy": policy[t["topic"]]}
            for t in described}


async def test_a_running_worker_uses_exactly_the_internal_topics_created_up_front(
    settings: Settings, start_process: Any
) -> None:
    expected = Pipeline(settings).internal_specs()  # same app id as the worker process
    assert {s.name for s in expected} >= {
        f"{settings.app_id}-aggregate-heads-changelog",
        f"{settings.app_id}-umeter-data-changelog",
    }
    worker = start_process("worker", settings)
    url = f"http://127.0.0.1:{settings.worker_port}/metrics"
    deadline = time.monotonic() + 120
    # Consumer lag is exported for assigned partitions only: the worker has joined.
    while f'topic="{settings.topic_raw}"' not in await scrape(url):
        assert time.monotonic() < deadline, f"worker never joined:\n{worker.log_tail()}"
        await asyncio.sleep(0.5)

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        # Anything Faust created on its own (a name we did not predict) shows up here.
        faust_made = sorted(t for t in await admin.list_topics()
                            if t.startswith(f"{settings.app_id}-"))
        assert faust_made == sorted(s.name for s in expected)
        found = await _topics(admin, faust_made)
    finally:
        await admin.close()
    for spec in expected:
        assert found[spec.name] == {
            "partitions": spec.partitions,
            "policy": spec.config.get("cleanup.policy", "delete"),
        }, spec.name
