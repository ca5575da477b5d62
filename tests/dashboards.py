"""The PromQL of a Grafana dashboard, ready to run against Prometheus.

Used by tests/unit/test_deploy_monitoring.py (static checks) and by the integration test
that runs every query of deploy/grafana/dashboards/meterstream.json against a real
Prometheus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Grafana's variables as a query against a scraped Prometheus sees them. Longest names
# first, so `$__rate_interval` is not mistaken for `$__interval` plus a suffix.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
}


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def substitute(expr: str, device: str) -> str:
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr.replace("${device}", device).replace("$device", device)


def dashboard_queries(path: str | Path, device: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel of the dashboard at `path`,
    with `$device` replaced by `device`, `$__rate_interval` by 1m and `$__interval` by 30s.
    """
    dashboard = json.loads(Path(path).read_text())
    queries = []
    for panel in iter_panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            queries.append((str(panel.get("title", "")), substitute(target["expr"], device)))
    return queries
