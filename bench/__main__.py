"""`make bench`: every benchmark, each figure next to a ceiling measured in the same run."""

from __future__ import annotations

import os
import platform
import sys

from bench import aggregate_bench, bridge_bench, codec_bench, metrics_bench, scale_bench

BENCHES = {"codec": codec_bench.run, "bridge": bridge_bench.run,
           "aggregate": aggregate_bench.run, "scale": scale_bench.run,
           "metrics": metrics_bench.run}


def main() -> None:
    chosen = sys.argv[1:] or list(BENCHES)
    print(f"meterstream benchmarks on {platform.node()}: {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; figures vary with machine load, "
          "compare the ratios", flush=True)
    for name in chosen:
        BENCHES[name]()


main()
