"""Shared pieces of the benchmarks: a broker, timing, reporting.

Benchmarks print figures; they never assert. Every figure is shown next to a ceiling
measured in the same run on the same machine, as a ratio, because absolute numbers on a
shared 2-core machine mean little.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.embedded_kafka import EmbeddedKafka, free_port

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
# Seconds between looks at a worker's progress counter while measuring it. Each look is a
# scrape restricted to that one counter (`/metrics?name[]=…`): whole scrapes of 500
# devices' series, once a second, were ~5% of the worker's time (py-spy), which the figure
# would then miss. Prometheus scrapes the whole page every 15 s.
METRICS_POLL = 0.25


@contextlib.contextmanager
def broker() -> Iterator[tuple[str, EmbeddedKafka | None]]:
    """An embedded broker on free ports (or BENCH_KAFKA_BOOTSTRAP, if given)."""
    external = os.environ.get("BENCH_KAFKA_BOOTSTRAP")
    if external:
        yield external, None
        return
    with tempfile.TemporaryDirectory(prefix="meterstream-bench-") as tmp:
        kafka = EmbeddedKafka(state_dir=Path(tmp) / "kafka",
                              cache_dir=Path("~/.cache/meterstream/kafka"),
                              port=free_port(), controller_port=free_port())
        with kafka.running_broker() as bootstrap:
            yield bootstrap, kafka


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Row:
    name: str
    value: float
    unit: str
    ceiling_name: str = ""
    ceiling: float = 0.0
    note: str = ""

    def render(self) -> str:
        ratio = f"{self.value / self.ceiling:6.2f}" if self.ceiling else "     -"
        ceiling = f"{self.ceiling:12,.0f} {self.unit}" if self.ceiling else ""
        return (f"  {self.name:<44} {self.value:12,.0f} {self.unit:<11} ratio {ratio}"
                f"   ceiling: {self.ceiling_name} {ceiling} {self.note}")


def report(title: str, rows: list[Row]) -> None:
    print(f"\n{title} (median of {REPEATS} runs)", flush=True)
    for row in rows:
        print(row.render(), flush=True)
