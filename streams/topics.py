"""The topics meterstream uses, their configuration, and creating them on the broker."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from streams.config import Settings

log = logging.getLogger(__name__)

_HEADROOM = 64 * 1024  # record headers and batch overhead on top of the body limit


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic with the configuration it is created with."""
    parts, repl = settings.topic_partitions, settings.topic_replication
    body = {"max.message.bytes": str(settings.bridge_max_body_bytes + _HEADROOM)}
    compact = {"cleanup.policy": "compact"}
    return [
        TopicSpec(settings.topic_raw, parts, repl, body),
        TopicSpec(settings.topic_readings, parts, repl),
        TopicSpec(settings.topic_reading_batches, parts, repl, body),
        TopicSpec(settings.topic_aggregates, parts, repl, compact),
        TopicSpec(settings.topic_alerts, parts, repl),
        TopicSpec(settings.topic_deadletter, parts, repl, body),
        TopicSpec(settings.topic_late, parts, repl),
        TopicSpec(settings.topic_umeter_customer, parts, repl, compact),
        TopicSpec(settings.topic_umeter_measurements, parts, repl, compact),
        TopicSpec(settings.topic_smartme_devices, parts, repl, compact),
        TopicSpec(settings.topic_ticks, parts, repl, {"retention.ms": str(3600 * 1000)}),
    ]


async def ensure_topics(
    bootstrap: str, specs: list[TopicSpec], *, attempts: int = 30, delay: float = 1.0
) -> None:
    """Create the topics that do not exist yet; warn about partition counts that differ.

    Retries while the broker is unreachable (a worker may start before Kafka is up).
    """
    for attempt in range(1, attempts + 1):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [s for s in specs if s.name not in existing]
            if missing:
                response = await admin.create_topics(
                    [NewTopic(s.name, s.partitions, s.replication, topic_configs=s.config)
                     for s in missing]
                )
                _raise_for_errors(response)
                log.info("created topics: %s", ", ".join(s.name for s in missing))
            present = [s.name for s in specs if s.name in existing]
            described = await admin.describe_topics(present) if present else []
            partitions = {t["topic"]: len(t["partitions"]) for t in described}
            for spec in specs:
                have = partitions.get(spec.name)
                if have is not None and have != spec.partitions:
                    log.warning("topic %s has %d partitions, configured %d; keeping %d",
                                spec.name, have, spec.partitions, have)
            # Existing ones too: another process may have created them a moment ago.
            await _wait_for_leaders(admin, [s.name for s in specs])
            return
        except TopicSetupError:
            raise
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            if attempt == attempts:
                raise
            log.info("Kafka not reachable yet (%s), retrying in %.0fs", exc, delay)
            await asyncio.sleep(delay)
        finally:
            await admin.close()


_TOPIC_ALREADY_EXISTS = 36
_LEADER_WAIT = 30.0  # s


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """Until the broker's metadata shows every partition of these topics with a leader.

    CreateTopics answers before the metadata has caught up. A Faust worker joining its group
    in that gap gets no partitions of a topic its group leader cannot see yet (the assignor
    skips it), and nothing makes it rejoin until its next metadata refresh, minutes later.
    """
    deadline = asyncio.get_running_loop().time() + _LEADER_WAIT
    while True:
        described = await admin.describe_topics(names)
        pending = [t["topic"] for t in described
                   if t.get("error_code") or not t["partitions"]
                   or any(p["leader"] < 0 for p in t["partitions"])]
        if not pending:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TopicSetupError(f"topics without partition leaders after "
                                  f"{_LEADER_WAIT:.0f}s: {', '.join(pending)}")
        await asyncio.sleep(0.1)


def _raise_for_errors(response: object) -> None:
    for topic, code, message in getattr(response, "topic_errors", []):
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            raise TopicSetupError(f"cannot create topic {topic}: error {code} {message or ''}")


class TopicSetupError(RuntimeError):
    """The broker refused to create a topic (bad configuration, authorisation)."""
