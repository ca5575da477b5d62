"""The leader's vendor pollers (Faust timer bodies): whatever goes wrong is logged and
counted, and the timer survives to poll again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streams.agents import vendors
from streams.app import Pipeline
from tests.agents.conftest import Clock, counter, make_pipeline

UNREACHABLE = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused


@pytest.fixture
async def vendor_pipeline(tmp_path: Path, clock: Clock) -> Any:
    async for made in make_pipeline(
            tmp_path, clock, umeter_username="u@example.com", umeter_password="p",
            umeter_auth_url=f"{UNREACHABLE}/token", umeter_app_url=UNREACHABLE,
            umeter_meas_url=UNREACHABLE, umeter_max_retries=0, umeter_timeout=2.0,
            smartme_api_key="k", smartme_base_url=UNREACHABLE, smartme_max_retries=0,
            smartme_timeout=2.0):
        yield made


def polls(app: Pipeline, vendor: str, outcome: str) -> float:
    return counter(app.metrics.vendor_polls.labels(vendor, outcome))


@pytest.mark.parametrize("vendor", ["umeter", "smartme"])
async def test_an_unreachable_vendor_is_counted_and_the_poll_returns(
    vendor_pipeline: Any, vendor: str
) -> None:
    app, outbox = vendor_pipeline
    await app.pollers[vendor]()
    await app.pollers[vendor]()  # and again: nothing stuck
    assert polls(app, vendor, "error") == 2
    assert polls(app, vendor, "ok") == 0
    assert not outbox.records


async def test_an_unexpected_failure_is_counted_too(
    vendor_pipeline: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = vendor_pipeline

    async def broken(_pipeline: Pipeline) -> Any:
        raise KeyError("addresses")  # e.g. a parsing bug on a surprising answer

    monkeypatch.setattr(vendors, "fetch_umeter", broken)
    await app.pollers["umeter"]()
    assert polls(app, "umeter", "error") == 1
    assert "umeter poll failed unexpectedly" in caplog.text
