"""Compare the worker bench of several checkouts, alternately, on one broker.

    .venv/bin/python -m bench.compare TREE[:setting=value,...] TREE... [--rounds N]

On a shared VM the same code's rate moves by half between runs minutes apart, so one
`make bench` before and one after a change say little about it. Here every round runs a
worker of each tree on a fresh copy of the bench's backlog (see bench.aggregate_bench),
in reverse order every other round so that no tree always runs first, and each tree is
compared with the first one *within* each round. Name the same tree twice to see what
the noise alone does.

A tree is a checkout of meterstream whose native module is built (``make venv`` in it, or
a copy of ``streams/_native*.so`` when ``native/`` did not change); the worker runs its
``streams`` package with this interpreter. ``:aggregate_batch=400`` after a tree changes
settings of that tree's workers.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench import aggregate_bench
from bench.common import broker, median
from streams.config import PREFIX, Settings


@dataclass
class Candidate:
    label: str
    tree: Path
    overrides: dict[str, str]
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def parse(spec: str) -> Candidate:
    tree, _, settings = spec.partition(":")
    overrides = dict(item.split("=", 1) for item in settings.split(",") if item)
    path = Path(tree).resolve()
    if not list((path / "streams").glob("_native*.so")):
        raise SystemExit(f"{path}: no built streams/_native*.so (run `make venv` there)")
    return Candidate(spec, path, overrides)


def _with(settings: Settings, overrides: dict[str, str]) -> Settings:
    """`settings` with some given as their ``METERSTREAM_*`` text, parsed as the worker
    parses its environment."""
    if not overrides:
        return settings
    return Settings.from_env({**settings.to_env(), **{
        PREFIX + name.upper(): text for name, text in overrides.items()}})


def run(candidates: list[Candidate], rounds: int) -> None:
    readings = aggregate_bench._trace()
    with broker() as (bootstrap, _), tempfile.TemporaryDirectory() as tmp:
        for number in range(rounds):
            order = candidates if number % 2 == 0 else candidates[::-1]
            for index, candidate in enumerate(order):
                settings = _with(aggregate_bench._settings(
                    bootstrap, Path(tmp) / f"state-{number}-{index}"), candidate.overrides)
                asyncio.run(aggregate_bench.produce_raw(settings, readings))
                rate, _, cpu = asyncio.run(aggregate_bench.worker_rate(
                    settings, len(readings), Path(tmp) / f"worker-{number}-{index}.log",
                    candidate.tree))
                candidate.rates.append(rate)
                candidate.cpu.append(cpu)
                print(f"round {number + 1}: {candidate.label}: {rate:,.0f} readings/s, "
                      f"{cpu:.1f} µs CPU per reading", flush=True)
    first = candidates[0]
    print(f"\nagainst {first.label}, per round (rate ratio, CPU ratio):")
    for candidate in candidates:
        rate_ratios = [a / b for a, b in zip(candidate.rates, first.rates, strict=True)]
        cpu_ratios = [a / b for a, b in zip(candidate.cpu, first.cpu, strict=True)]
        pairs = ", ".join(f"{r:.2f}/{c:.2f}" for r, c in zip(rate_ratios, cpu_ratios,
                                                              strict=True))
        print(f"  {candidate.label}: median {median(candidate.rates):,.0f} readings/s, "
              f"{median(candidate.cpu):.1f} µs CPU; ratios {pairs}; "
              f"median {median(rate_ratios):.2f}/{median(cpu_ratios):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description="The worker bench of several checkouts, alternately, on one broker.")
    parser.add_argument("trees", nargs="+", help="checkout[:setting=value,...]")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    run([parse(spec) for spec in args.trees], args.rounds)


if __name__ == "__main__":
    main()
