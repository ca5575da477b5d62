"""Log hygiene for the Kafka client's own messages.

While a broker is unreachable aiokafka logs the same connection and metadata errors
thousands of times a second (seen: about 80,000 lines in an 8 s outage of one worker). Each
message template of its loggers gets through at most once per interval; the next one that
does says how many were held back, so the log stays readable and the count stays true.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# aiokafka logs through per-module loggers; a filter on a parent logger does not see
# records of its children, so each one gets the filter.
CLIENT_LOGGERS = (
    "aiokafka", "aiokafka.conn", "aiokafka.cluster", "aiokafka.admin.client",
    "aiokafka.producer.producer", "aiokafka.producer.sender",
    "aiokafka.consumer.consumer", "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator", "aiokafka.consumer.subscription_state",
)


class Throttle(logging.Filter):
    def __init__(self, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)  # the template: "Unable connect to node %s: %s"
        now = self.clock()
        passed_at, held = self._seen.get(key, (None, 0))
        if passed_at is not None and now - passed_at < self.interval:
            self._seen[key] = (passed_at, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = (f"{record.msg} [{held} more like this in the last "
                          f"{now - passed_at:.0f} s not logged]")  # type: ignore[operator]
        return True


def throttle_client_logs(interval: float = 10.0) -> Throttle:
    throttle = Throttle(interval)
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).addFilter(throttle)
    return throttle
