"""The monitoring files of the compose stack: Prometheus scrape config and alert rules,
Alertmanager, Grafana provisioning and dashboard.

The files are validated by the real tools (Debian's `promtool` and `amtool`), the alert
rules by their unit tests (deploy/prometheus/alerts.test.yml), and every metric the rules
and the dashboard name is checked against the metrics streams/metrics.py really exports,
so renaming a metric breaks this test instead of silently emptying a panel or an alert.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from streams.metrics import BridgeMetrics, DeviceMetrics, WorkerMetrics
from tests.conftest import ROOT
from tests.dashboards import dashboard_queries, iter_panels

COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts.test.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = GRAFANA / "provisioning" / "dashboards" / "meterstream.yml"
DASHBOARD = GRAFANA / "dashboards" / "meterstream.json"

TOOLS = {
    "promtool": "prometheus",
    "amtool": "prometheus-alertmanager",
}
EXPECTED_ALERTS = {
    "MeterOffline", "MetersOfflineMany", "DeadLettersRising", "BridgeServerErrors",
    "BridgeKafkaUnavailable", "ConsumerLagHigh", "LateReadings", "WorkerDown", "BridgeDown",
}
# Which Alertmanager receiver each severity must reach.
SEVERITY_RECEIVERS = {
    "critical": "ops-critical-webhook",
    "warning": "ops-webhook",
    "info": "ops-webhook",
}
GRAFANA_BUILTINS = {"__rate_interval", "__interval"}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time

METRIC_NAME = re.compile(r"\b(meterstream_[a-zA-Z0-9_]+)")
SELECTOR = re.compile(r"\b(meterstream_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
JOB_MATCHER = re.compile(r"\bjob\s*=~?\s*[\"']([^\"']+)[\"']")


# -- helpers ---------------------------------------------------------------------------------
def tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is missing: install Debian's {TOOLS[name]} package "
                    f"(`sudo apt-get install -y --no-install-recommends {TOOLS[name]}`; the "
                    "Makefile's `deps` target does)", pytrace=False)
    return exe


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose_services() -> dict[str, dict[str, Any]]:
    return dict(load_yaml(COMPOSE)["services"])


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]
            if "alert" in rule]


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def dashboard_targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in iter_panels(dashboard()["panels"]):
        for target in panel.get("targets") or []:
            yield panel, target


def provisioned_datasource() -> dict[str, Any]:
    sources = load_yaml(DATASOURCES)["datasources"]
    assert len(sources) == 1, "one datasource: the stack's Prometheus"
    return dict(sources[0])


def scrape_jobs() -> dict[str, list[str]]:
    jobs = {}
    for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]:
        jobs[job["job_name"]] = [t for sc in job.get("static_configs", [])
                                 for t in sc["targets"]]
    return jobs


def container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[1]) for p in service.get("ports", [])}


def bind_mounts() -> list[tuple[str, str, str]]:
    """(service, source, target) of every bind mount in docker-compose.yml."""
    mounts = []
    for name, svc in compose_services().items():
        for volume in svc.get("volumes", []):
            if isinstance(volume, dict):
                if volume.get("type") == "bind":
                    mounts.append((name, str(volume["source"]), str(volume["target"])))
                continue
            source, target = str(volume).split(":")[:2]
            if source.startswith((".", "/", "~")):
                mounts.append((name, source, target))
    return mounts


def mount_target(service: str, source: str) -> str:
    for name, src, target in bind_mounts():
        if name == service and src == source:
            return target
    raise AssertionError(f"{service} does not mount {source}")


def exported_metrics() -> dict[str, set[str]]:
    """Every series name streams/metrics.py exports, with its label names.

    Built from the real metric classes: each labelled metric gets one child and the device
    collector one of everything, so every family shows its samples and labels.
    """
    registry = CollectorRegistry()
    for holder in (BridgeMetrics(registry), WorkerMetrics(registry)):
        for metric in vars(holder).values():
            names = getattr(metric, "_labelnames", ())
            if names:
                metric.labels(*("x" for _ in names))
    view: dict[str, Any] = {field: 1.0 for _name, _doc, field in DeviceMetrics._GAUGES}
    view.update(partition=0, seen=1.0, online=0, ean="871", name="n", reconciliation=(1, 0.1),
                mapped=False, **{"class": "c"})
    optional: dict[str, Any] = {
        "lag": lambda: [("smartme.raw", 0, 1)],
        "gateways": lambda: [{"gateway_id": "g", "name": "n", "last_seen_timestamp": 1.0,
                              "readout_interval_seconds": 60, "state": 0,
                              "meters": [{"id": "m", "name": "m", "state": 0}]}],
    }
    accepted = inspect.signature(DeviceMetrics).parameters
    devices = DeviceMetrics(registry, lambda: 2.0,
                            **{k: v for k, v in optional.items() if k in accepted})
    devices.update("dev", view)
    devices.window("dev", 60, 0, 1.0, 1.0)
    exported: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


def metric_problems(exprs: list[str], exported: dict[str, set[str]]) -> list[str]:
    """What in these PromQL expressions does not match the exported metrics."""
    problems = []
    for expr in exprs:
        names = set(METRIC_NAME.findall(expr))
        for name in sorted(names):
            if name.startswith("meterstream_faust_"):
                problems.append(f"{name}: Faust's own metrics are not relied on ({expr})")
            elif name not in exported:
                problems.append(f"{name} is not exported by streams/metrics.py ({expr})")
        known = set(TARGET_LABELS) | {"le"}
        for name in names:
            known |= exported.get(name, set())
        for name, matchers in SELECTOR.findall(expr):
            for label in MATCHER.findall(matchers):
                if label not in exported.get(name, set()) | TARGET_LABELS:
                    problems.append(f"{name} has no label {label} ({expr})")
        for group in GROUPING.findall(expr):
            for label in (item.strip() for item in group.split(",")):
                if label and label not in known:
                    problems.append(f"no metric of the expression has a label {label} ({expr})")
    return problems


def alert_expressions() -> list[str]:
    """The rules' PromQL, including the queries in their annotation templates."""
    exprs = []
    for rule in alert_rules():
        exprs.append(rule["expr"])
        for text in rule.get("annotations", {}).values():
            exprs += re.findall(r'printf\s+"([^"]+)"', text)
    return exprs


def copy_rules(tmp_path: Path, old: str = "", new: str = "", *,
               in_tests: bool = False) -> Path:
    """alerts.yml and alerts.test.yml in tmp_path, one of them with `old` replaced."""
    for path in (ALERTS, ALERTS_TEST):
        text = path.read_text()
        if old and (path == ALERTS_TEST) == in_tests:
            assert old in text, f"the mutation no longer applies to {path.name}: {old!r}"
            text = text.replace(old, new, 1)
        (tmp_path / path.name).write_text(text)
    return tmp_path


# -- the real validators ---------------------------------------------------------------------
def test_promtool_accepts_the_prometheus_config() -> None:
    result = run(tool("promtool"), "check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, output(result)
    assert "1 rule files found" in output(result), output(result)


def test_promtool_accepts_the_alert_rules() -> None:
    result = run(tool("promtool"), "check", "rules", ALERTS)
    assert result.returncode == 0, output(result)
    count = sum(len(group["rules"]) for group in load_yaml(ALERTS)["groups"])
    assert f"SUCCESS: {count} rules found" in output(result), output(result)


def test_alert_rule_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", ALERTS_TEST.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in output(result), output(result)


def test_amtool_accepts_the_alertmanager_config() -> None:
    result = run(tool("amtool"), "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in output(result), output(result)


# -- the validators bite ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("min by (device_id) (meterstream_device_online) == 0",
         "min by (device_id) (meterstream_device_online == 0", "parse error"),
        ('summary: "Meter {{ $labels.device_id }} is offline"',
         'summary: "Meter {{ $labels.device_id is offline"', "template"),
        ("for: 10m", "for: ten minutes", "not a valid duration"),
    ],
    ids=["bad-promql", "bad-template", "bad-duration"],
)
def test_promtool_rejects_broken_rules(tmp_path: Path, old: str, new: str,
                                       complaint: str) -> None:
    rules = copy_rules(tmp_path, old, new) / ALERTS.name
    result = run(tool("promtool"), "check", "rules", rules)
    assert result.returncode != 0, "promtool accepted broken rules"
    assert complaint in output(result), output(result)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # a threshold change the tests must notice (3 of 13 offline no longer fires)
        ("sum(meterstream_devices{state=\"offline\"}) / sum(meterstream_devices) > 0.2",
         "sum(meterstream_devices{state=\"offline\"}) / sum(meterstream_devices) > 0.5"),
        # MeterOffline delayed beyond the worker's own threshold
        ("        for: 0m\n        keep_firing_for: 2m",
         "        for: 5m\n        keep_firing_for: 2m"),
        # losing keep_firing_for makes a partition move resolve the alert
        ("        keep_firing_for: 2m\n", ""),
        # a severity change reroutes the alert
        ("        for: 1m\n        labels:\n          severity: critical",
         "        for: 1m\n        labels:\n          severity: warning"),
    ],
    ids=["threshold", "for", "keep-firing", "severity"],
)
def test_rule_unit_tests_notice_a_changed_rule(tmp_path: Path, old: str, new: str) -> None:
    copy_rules(tmp_path, old, new)
    result = run(tool("promtool"), "test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert result.returncode != 0, "the rule unit tests did not notice the change"
    assert "FAILED" in output(result), output(result)


def test_promtool_rejects_a_config_without_its_rule_file(tmp_path: Path) -> None:
    (tmp_path / "prometheus.yml").write_text(PROMETHEUS_CONFIG.read_text())
    result = run(tool("promtool"), "check", "config", tmp_path / "prometheus.yml")
    assert result.returncode != 0
    assert "alerts.yml" in output(result), output(result)


def test_amtool_rejects_a_route_to_an_unknown_receiver(tmp_path: Path) -> None:
    text = ALERTMANAGER_CONFIG.read_text()
    assert "  receiver: ops-webhook\n" in text
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(text.replace("  receiver: ops-webhook\n", "  receiver: ops-pager\n", 1))
    result = run(tool("amtool"), "check-config", broken)
    assert result.returncode != 0, "amtool accepted a route to an undefined receiver"
    assert "ops-pager" in output(result), output(result)


def test_metric_check_notices_a_renamed_metric_or_label() -> None:
    exported = exported_metrics()
    good = 'sum by (code) (rate(meterstream_bridge_requests_total{source="a"}[1m]))'
    assert metric_problems([good], exported) == []
    for bad in (
        "sum(meterstream_device_window_import_energy_watt_hours)",  # renamed to joules
        'sum by (status) (rate(meterstream_bridge_requests_total[1m]))',
        'meterstream_device_online{device="x"}',
        "meterstream_bridge_request_duration_seconds",  # a histogram has no such series
        "rate(meterstream_faust_messages_received_total[1m])",
    ):
        assert metric_problems([bad], exported), f"not noticed: {bad}"


# -- Prometheus ------------------------------------------------------------------------------
def test_prometheus_scrapes_the_compose_services() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == [ALERTS.name]
    jobs = scrape_jobs()
    assert jobs["meterstream-bridge"] == ["bridge:8080"]
    assert sorted(jobs["meterstream-worker"]) == ["worker-1:6066", "worker-2:6066"]
    services = compose_services()
    for job, targets in jobs.items():
        for target in targets:
            host, _, port = target.partition(":")
            if host == "localhost":
                continue
            assert host in services, f"{job}: {host} is not a compose service"
            assert int(port) in container_ports(services[host]), \
                f"{job}: {host} does not listen on {port}"
    alertmanagers = [t for am in config["alerting"]["alertmanagers"]
                     for sc in am["static_configs"] for t in sc["targets"]]
    assert alertmanagers == ["alertmanager:9093"]
    assert 9093 in container_ports(services["alertmanager"])


def test_job_names_in_rules_and_dashboard_are_scrape_jobs() -> None:
    texts = [ALERTS.read_text()] + [t["expr"] for _p, t in dashboard_targets()]
    used = {job for text in texts for match in JOB_MATCHER.findall(text)
            for job in match.split("|")}
    assert used >= {"meterstream-bridge", "meterstream-worker"}
    assert used <= set(scrape_jobs()), f"unknown jobs: {used - set(scrape_jobs())}"


# -- alert rules -----------------------------------------------------------------------------
def test_every_rule_has_severity_summary_and_description() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= EXPECTED_ALERTS, f"missing: {EXPECTED_ALERTS - set(names)}"
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITY_RECEIVERS, rule["alert"]
        for key in ("summary", "description"):
            assert rule["annotations"].get(key, "").strip(), f"{rule['alert']}: no {key}"


def duration_s(text: str) -> float:
    factor = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * factor[u] for n, u in re.findall(r"(\d+)([smh])", text))


def test_meter_offline_adds_no_delay_of_its_own() -> None:
    """The worker already waited the meter's threshold; the rule must not wait again."""
    rule = next(r for r in alert_rules() if r["alert"] == "MeterOffline")
    assert "meterstream_device_online" in rule["expr"] and "== 0" in rule["expr"]
    assert duration_s(str(rule.get("for", "0s"))) <= 60
    assert "device_id" in rule["annotations"]["summary"]
    assert "meterstream_device_seconds_since_last_seen" in rule["annotations"]["description"]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= firing, f"never shown firing: {sorted(names - firing)}"
    assert names <= quiet, f"never shown quiet: {sorted(names - quiet)}"
    assert load_yaml(ALERTS_TEST)["rule_files"] == [ALERTS.name]


def test_rules_name_only_exported_metrics() -> None:
    exprs = alert_expressions()
    assert len(exprs) > len(alert_rules()), "the annotation queries were not found"
    problems = metric_problems(exprs, exported_metrics())
    assert not problems, "\n".join(problems)


# -- Alertmanager ----------------------------------------------------------------------------
@pytest.mark.parametrize("severity", sorted(SEVERITY_RECEIVERS))
def test_each_severity_reaches_its_receiver(severity: str) -> None:
    receiver = SEVERITY_RECEIVERS[severity]
    result = run(tool("amtool"), "config", "routes", "test",
                 f"--config.file={ALERTMANAGER_CONFIG}", f"--verify.receivers={receiver}",
                 f"severity={severity}", "alertname=Any", "device_id=dev-a")
    assert result.returncode == 0, f"{severity} does not reach {receiver}: {output(result)}"


def test_every_rule_severity_is_routed() -> None:
    used = {rule["labels"]["severity"] for rule in alert_rules()}
    assert used <= set(SEVERITY_RECEIVERS)
    assert "critical" in used


def test_alertmanager_groups_per_meter_and_inhibits_real_alerts() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    assert set(config["route"]["group_by"]) == {"alertname", "device_id"}
    names = {rule["alert"] for rule in alert_rules()}
    assert config["inhibit_rules"], "no inhibit rule"
    for inhibit in config["inhibit_rules"]:
        for side in ("source_matchers", "target_matchers"):
            matched = set()
            for matcher in inhibit[side]:
                m = re.fullmatch(r'alertname\s*(=~|=)\s*"([^"]+)"', matcher)
                assert m, f"unexpected matcher {matcher!r}"
                matched |= set(m.group(2).split("|"))
            assert matched <= names, f"{side} names unknown alerts: {matched - names}"
    pairs = {(s, t) for i in config["inhibit_rules"]
             for s in re.findall(r"\w+", " ".join(i["source_matchers"]))
             for t in re.findall(r"\w+", " ".join(i["target_matchers"]))}
    assert ("MetersOfflineMany", "MeterOffline") in pairs
    assert ("BridgeKafkaUnavailable", "BridgeServerErrors") in pairs


def test_alertmanager_config_holds_no_secret() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    secretish = re.compile(r"(password|secret|token|api_key|routing_key|service_key)$")

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                assert not secretish.search(str(key)), f"{path}.{key}: use a *_file option"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(config, "alertmanager")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert re.match(r"https?://[^/@]+\.example(:\d+)?/", hook["url"]), \
                f"{receiver['name']}: not a placeholder URL: {hook['url']}"


# -- Grafana ---------------------------------------------------------------------------------
def test_grafana_datasource_is_the_stack_prometheus() -> None:
    source = provisioned_datasource()
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert 9090 in container_ports(compose_services()["prometheus"])
    assert mount_target("grafana", "./deploy/grafana/provisioning") == \
        "/etc/grafana/provisioning"


def test_grafana_provider_reads_the_mounted_dashboards() -> None:
    providers = load_yaml(DASHBOARD_PROVIDER)["providers"]
    assert len(providers) == 1
    path = providers[0]["options"]["path"]
    assert path == mount_target("grafana", "./deploy/grafana/dashboards")
    assert providers[0]["type"] == "file"


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] == "meterstream"
    assert board["schemaVersion"] >= 36
    panels = list(iter_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [p["title"] for p in panels if p["type"] == "row"]
    for wanted in ("Fleet overview", "Device drill-down", "Pipeline health"):
        assert any(r.startswith(wanted) for r in rows), f"no row {wanted!r}: {rows}"
    assert any(p["type"] == "table" and "offline" in p["title"].lower() for p in panels)


def test_every_panel_queries_the_provisioned_datasource() -> None:
    uid = provisioned_datasource()["uid"]
    for panel in iter_panels(dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no targets"
        assert panel["datasource"]["uid"] == uid, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: duplicate refIds"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']}: target without expr"
            assert target["datasource"]["uid"] == uid, panel["title"]


def test_dashboard_has_the_device_variable() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    device = variables["device"]
    query = device["query"]["query"] if isinstance(device["query"], dict) else device["query"]
    assert re.sub(r"\s", "", query) == "label_values(meterstream_device_online,device_id)"
    assert device["datasource"]["uid"] == provisioned_datasource()["uid"]
    used = {v for _p, t in dashboard_targets()
            for v in re.findall(r"\$\{?(\w+)", t["expr"])}
    assert "device" in used
    assert used <= set(variables) | GRAFANA_BUILTINS, f"undefined: {used - set(variables)}"


def test_dashboard_names_only_exported_metrics() -> None:
    exprs = [t["expr"] for _p, t in dashboard_targets()]
    problems = metric_problems(exprs, exported_metrics())
    assert not problems, "\n".join(problems)
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    for wanted in ("meterstream_device_online", "meterstream_bridge_requests_total",
                   "meterstream_consumer_lag_records", "meterstream_deadletters_total",
                   "meterstream_processing_lag_seconds_bucket"):
        assert wanted in used, f"the dashboard does not show {wanted}"


def test_dashboard_queries_helper() -> None:
    queries = dashboard_queries(DASHBOARD, "3bd0fce9-9f8e-4183-b3d1-0c1622a22ca1")
    assert len(queries) == len(list(dashboard_targets()))
    for title, expr in queries:
        assert "$" not in expr, f"{title}: unreplaced variable in {expr}"
    assert any('device_id="3bd0fce9-9f8e-4183-b3d1-0c1622a22ca1"' in e for _t, e in queries)
    assert any("[1m]" in e for _t, e in queries)


def test_dashboard_queries_helper_recurses_into_collapsed_rows(tmp_path: Path) -> None:
    board = {"panels": [
        {"type": "row", "title": "r", "collapsed": True, "panels": [
            {"type": "timeseries", "title": "inner", "targets": [
                {"expr": 'rate(x{device_id="$device"}[$__rate_interval]) + y[$__interval]'},
            ]},
        ]},
        {"type": "stat", "title": "outer", "targets": [{"expr": "z{d=\"${device}\"}"}]},
    ]}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(board))
    assert dashboard_queries(path, "dev") == [
        ("inner", 'rate(x{device_id="dev"}[1m]) + y[30s]'),
        ("outer", 'z{d="dev"}'),
    ]


# -- docker-compose --------------------------------------------------------------------------
def test_every_bind_mount_source_exists() -> None:
    mounts = bind_mounts()
    assert len(mounts) >= 5, mounts
    for service, source, target in mounts:
        path = (COMPOSE.parent / source).resolve()
        assert path.exists(), f"{service} mounts {source}, which does not exist"
        if Path(target).suffix in (".yml", ".yaml", ".json"):
            assert path.is_file(), f"{service}: {source} must be a file (mounted at {target})"
        assert ROOT in path.parents, f"{service}: {source} lies outside the repository"
