"""The records one batch of events sends, confirmed together before Faust acks the batch.

The producer resolves a send when Kafka acknowledged the record and fails it once it gave
up (after ``METERSTREAM_WORKER_PRODUCE_TIMEOUT``). A batch must not be acked while one of
its records is unacknowledged: Faust would commit past readings that never reached their
topic. So a failed record is sent again, with backoff, until Kafka takes it; meanwhile
the agent waits (consumer lag grows, nothing is lost). A record sent again can land after
newer records of its partition: consumers get at-least-once delivery, as everywhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from prometheus_client import Counter

log = logging.getLogger(__name__)

Produce = Callable[..., Awaitable[Awaitable[Any]]]


class _Sent(NamedTuple):
    delivery: Awaitable[Any]
    topic: str
    value: bytes
    options: dict[str, Any]


class Outbox:
    def __init__(self, produce: Produce, resent: Counter, *, first_delay: float = 0.5,
                 max_delay: float = 10.0) -> None:
        self._produce = produce
        self._resent = resent
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._sent: list[_Sent] = []

    def __len__(self) -> int:
        return len(self._sent)

    async def send(self, topic: str, value: bytes, **options: Any) -> None:
        """Hand a record to the producer (options as for ``Pipeline.produce``)."""
        self._sent.append(await self._attempt(topic, value, options))

    async def _attempt(self, topic: str, value: bytes, options: dict[str, Any]) -> _Sent:
        try:
            delivery = await self._produce(topic, value, **options)
        except Exception as exc:  # refused before it was queued: confirm() sends it again
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            delivery = failed
        return _Sent(delivery, topic, value, options)

    async def confirm(self) -> None:
        """Return once Kafka acknowledged every record sent so far."""
        pending, self._sent = self._sent, []
        delay = self.first_delay
        while pending:
            failed: list[tuple[_Sent, BaseException]] = []
            for sent in pending:
                try:
                    await sent.delivery
                except Exception as exc:  # whatever the producer failed with: send again
                    failed.append((sent, exc))
            if not failed:
                return
            topics = sorted({sent.topic for sent, _ in failed})
            log.error("Kafka did not acknowledge %d record(s) to %s (%s: %s); sending them "
                      "again in %.1f s", len(failed), ", ".join(topics),
                      type(failed[0][1]).__name__, failed[0][1], delay)
            self._resent.inc(len(failed))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_delay)
            pending = [await self._attempt(sent.topic, sent.value, sent.options)
                       for sent, _ in failed]
