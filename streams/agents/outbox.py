"""The records one batch of events sends, confirmed together before Faust acks the batch.

Records are collected per topic partition and handed to the producer at :meth:`confirm`
as whole record batches (aiokafka's ``send_batch``): one future per batch instead of one
per record, and none of the per-record layers of ``producer.send`` (at two or more
records per reading those layers were ~12% of a busy worker in a profile).

The producer resolves a batch when Kafka acknowledged it and fails it once it gave up
(after ``METERSTREAM_WORKER_PRODUCE_TIMEOUT``). An agent's batch of events must not be
acked while one of its records is unacknowledged: Faust would commit past readings that
never reached their topic. So the records of a failed batch are sent again, with backoff,
until Kafka takes them; meanwhile the agent waits (consumer lag grows, nothing is lost).
Records sent again can land after newer records of their partition: consumers get
at-least-once delivery, as everywhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from prometheus_client import Counter

log = logging.getLogger(__name__)


# (key, value — None: a tombstone, a deleted table key —, timestamp in ms or None for the
# producer's clock, headers). A plain tuple: the native window code makes them by the
# thousand, and the native batch builder reads them.
Record = tuple[bytes | None, bytes | None, int | None, list[tuple[str, bytes]]]


# Hands records for one topic partition to the producer; returns, per record batch it
# made, the records in it and the batch's delivery (resolves once Kafka has them).
SendRecords = Callable[[str, int, list[Record]],
                       Awaitable[list[tuple[list[Record], Awaitable[Any]]]]]
# The partition of a record: (topic, key, device id) -> partition, None while the producer
# knows no partitions of the topic yet.
PartitionFor = Callable[[str, bytes | None, str | None], int | None]
# Waits until the producer knows the topic's partitions (raises when it gives up).
WaitForTopic = Callable[[str], Awaitable[Any]]


class Outbox:
    def __init__(self, send_records: SendRecords, partition_for: PartitionFor,
                 wait_for_topic: WaitForTopic, resent: Counter, *, first_delay: float = 0.5,
                 max_delay: float = 10.0) -> None:
        self._send_records = send_records
        self._partition_for = partition_for
        self._wait_for_topic = wait_for_topic
        self._resent = resent
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._pending: dict[tuple[str, int], list[Record]] = {}
        # Records for a topic whose partitions the producer did not know yet.
        self._unplaced: list[tuple[str, bytes | None, str | None, Record]] = []
        # Handed to the producer by send(), not confirmed yet.
        self._in_flight: list[tuple[str, int, list[Record], Awaitable[Any]]] = []

    def __len__(self) -> int:
        """Records queued and not handed to the producer yet."""
        return sum(len(records) for records in self._pending.values()) + len(self._unplaced)

    def add(self, topic: str, value: bytes | None, *, key: bytes | None = None,
            device_id: str | None = None, partition: int | None = None,
            timestamp: float | None = None, headers: dict[str, bytes] | None = None) -> None:
        """Queue a record; it goes to the producer at :meth:`confirm`. Records about a
        device go to the device's partition unless `partition` is given."""
        if partition is None:
            partition = self._partition_for(topic, key, device_id)
        record: Record = (key, value, int(timestamp * 1000) if timestamp else None,
                          list(headers.items()) if headers else [])
        if partition is None:
            self._unplaced.append((topic, key, device_id, record))
            return
        self._queue(topic, partition).append(record)

    def add_device_records(self, topic: str, records: Iterable[tuple[str, int, bytes]],
                           headers: dict[str, bytes] | None = None) -> None:
        """Queue `(device_id, timestamp_us, value)` records, each as
        ``add(topic, value, key=device_id.encode(), device_id=device_id,
        timestamp=timestamp_us / 1_000_000, headers=headers)`` would, at a fraction of
        the cost per record: a reading body's records are added this way."""
        partition_for = self._partition_for
        # Shared by the records: nothing changes a record's headers once queued.
        header_list = list(headers.items()) if headers else []
        last_device: str | None = None
        key = b""
        partition: int | None = None
        queue: list[Record] = []
        for device_id, timestamp_us, value in records:
            # A body's readings are mostly one device's, in a row: one lookup for them.
            if device_id != last_device:
                last_device, key = device_id, device_id.encode()
                partition = partition_for(topic, key, device_id)
                queue = self._queue(topic, partition) if partition is not None else []
            seconds = timestamp_us / 1_000_000  # the same float arithmetic as add()
            record: Record = (key, value, int(seconds * 1000) if seconds else None, header_list)
            if partition is None:
                self._unplaced.append((topic, key, device_id, record))
            else:
                queue.append(record)

    def add_device_batch(self, topic: str, device_id: str, records: Sequence[Record]) -> None:
        """Queue ready records about one device, on the device's partition, in one go (a
        window outcome's records)."""
        partition = self._partition_for(topic, None, device_id)
        if partition is None:
            self._unplaced += [(topic, record[0], device_id, record) for record in records]
        else:
            self._queue(topic, partition).extend(records)

    def _queue(self, topic: str, partition: int) -> list[Record]:
        records = self._pending.get((topic, partition))
        if records is None:
            records = self._pending[(topic, partition)] = []
        return records

    async def send(self) -> None:
        """Hand what was queued to the producer now, without waiting for Kafka: it goes
        out while the caller works on. :meth:`confirm` waits for it."""
        await self._place_unplaced()
        groups, self._pending = self._pending, {}
        for (topic, partition), records in groups.items():
            self._in_flight += await self._attempt(topic, partition, records)

    async def confirm(self) -> dict[tuple[str, int], int]:
        """Send what was queued; return once Kafka acknowledged every record sent since
        the last confirm, with the offset of the last record per topic partition (where
        the producer tells)."""
        await self.send()
        attempts, self._in_flight = self._in_flight, []
        last: dict[tuple[str, int], int] = {}
        delay = self.first_delay
        while attempts:
            failed: list[tuple[str, int, list[Record], BaseException]] = []
            for topic, partition, records, delivery in attempts:
                try:
                    metadata = await delivery
                except Exception as exc:  # whatever the producer failed with: send again
                    failed.append((topic, partition, records, exc))
                    continue
                base = getattr(metadata, "offset", None)  # a batch's: its first record's
                if isinstance(base, int):
                    offset = base + len(records) - 1
                    last[(topic, partition)] = max(offset, last.get((topic, partition), -1))
            if not failed:
                return last
            count = sum(len(records) for _, _, records, _ in failed)
            topics = sorted({topic for topic, _, _, _ in failed})
            log.error("Kafka did not acknowledge %d record(s) to %s (%s: %s); sending them "
                      "again in %.1f s", count, ", ".join(topics),
                      type(failed[0][3]).__name__, failed[0][3], delay)
            self._resent.inc(count)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_delay)
            attempts = []
            for topic, partition, records, _ in failed:
                attempts += await self._attempt(topic, partition, records)
        return last

    async def _place_unplaced(self) -> None:
        """Partition the records queued before the producer knew their topic, waiting
        for its metadata (with backoff while Kafka does not answer)."""
        unplaced, self._unplaced = self._unplaced, []
        delay = self.first_delay
        for topic, key, device_id, record in unplaced:
            while (partition := self._partition_for(topic, key, device_id)) is None:
                try:
                    await self._wait_for_topic(topic)
                except Exception as exc:  # no metadata yet: Kafka away, or no such topic
                    log.error("no partitions known for %s (%s: %s); asking again in %.1f s",
                              topic, type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_delay)
            self._queue(topic, partition).append(record)

    async def _attempt(self, topic: str, partition: int, records: list[Record]
                       ) -> list[tuple[str, int, list[Record], Awaitable[Any]]]:
        try:
            batches = await self._send_records(topic, partition, records)
        except Exception as exc:  # refused before it was queued: confirm() sends it again
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return [(topic, partition, records, failed)]
        return [(topic, partition, part, delivery) for part, delivery in batches]
