import logging

import pytest

from streams.logs import Throttle, throttle_client_logs


def test_a_repeated_client_error_is_logged_once_per_interval_with_the_count(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttle = Throttle(interval=10, clock=lambda: now[0])
    logger = logging.getLogger("test.throttled")
    logger.addFilter(throttle)
    try:
        with caplog.at_level(logging.ERROR, logger="test.throttled"):
            for node in range(5000):  # one outage's worth, within a second
                logger.error("Unable connect to node with id %s: %s", node % 2, "refused")
            logger.error("Unable to update metadata from %s", [1])  # another template
            now[0] = 10.5
            logger.error("Unable connect to node with id %s: %s", 1, "refused")
    finally:
        logger.removeFilter(throttle)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "Unable connect to node with id 0: refused",
        "Unable to update metadata from [1]",
        "Unable connect to node with id 1: refused [4999 more like this in the last 10 s "
        "not logged]",
    ]


def test_the_worker_and_bridge_filter_covers_every_aiokafka_module_logger() -> None:
    throttle = throttle_client_logs()
    try:
        import aiokafka.consumer.fetcher
        import aiokafka.producer.sender

        for module in (aiokafka.producer.sender, aiokafka.consumer.fetcher):
            assert throttle in module.log.filters
        assert throttle in logging.getLogger("aiokafka").filters  # aiokafka.client's logger
    finally:
        for name in list(logging.Logger.manager.loggerDict):
            if name.startswith("aiokafka"):
                logging.getLogger(name).removeFilter(throttle)
