"""docker-compose.yml, .env.example and the services table of deploy/README.md.

The compose file is validated by a real implementation of the format, Debian's
`docker-compose` (1.29), which needs no Docker engine for `config`. It runs on a copy of the
stack in a temporary directory with `.env` made from `.env.example`, so a developer's own
`.env` is neither needed nor read.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.cli import build_parser
from streams.config import PREFIX, Settings, documented_settings
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY_README = ROOT / "deploy" / "README.md"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

SETTING_NAMES = {name for name, _default, _doc in documented_settings()}
SECRET_NAMES = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)
                if f.metadata.get("secret")}
INSTALL_HINT = ("docker-compose is missing: the compose file is validated with Debian's "
                "docker-compose. Install it with `sudo apt-get install -y docker-compose` "
                "(the Makefile's `deps` target does).")


# -- helpers ---------------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=value lines as docker reads an env_file: no quotes, no inline comments."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=value: {line!r}"
        env[key.strip()] = value
    return env


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def dockerfile_env() -> dict[str, str]:
    """The METERSTREAM_* ENV of the image (the runtime stage is the last one)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "ENV":
            for pair in words[1:]:
                key, _, value = pair.partition("=")
                env[key] = value
    return {k: v for k, v in env.items() if k.startswith(PREFIX)}


def meterstream_services() -> dict[str, dict[str, Any]]:
    """Services running the meterstream image (built from deploy/Dockerfile)."""
    return {name: svc for name, svc in services().items()
            if svc.get("build", {}).get("dockerfile") == "deploy/Dockerfile"}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else list(command)


def worker_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in meterstream_services().items() if command_of(s)[:1] == ["worker"]}


def container_settings(service: dict[str, Any]) -> Settings:
    """The settings the container's process will see: image ENV, .env, environment."""
    env = {**dockerfile_env(), **parse_env_file(ENV_EXAMPLE.read_text()),
           **service_environment(service)}
    return Settings.from_env(env)


def duration(text: str) -> float:
    """A compose duration such as 90s, 1m30s or 2m in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    factor = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * factor[u] for n, u in parts)


def docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return exe


def compose_config(tmp_path: Path, compose_text: str,
                   env_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """`docker-compose config -q` on a copy of the stack; .env from .env.example."""
    stack = tmp_path / "stack"
    stack.mkdir()
    (stack / "docker-compose.yml").write_text(compose_text)
    (stack / ".env").write_text(ENV_EXAMPLE.read_text() if env_text is None else env_text)
    (stack / "deploy").symlink_to(ROOT / "deploy", target_is_directory=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run(
        [docker_compose(), "-f", str(stack / "docker-compose.yml"), "config", "-q"],
        cwd=stack, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def readme_table() -> dict[str, dict[str, Any]]:
    """The services table between the compose-services markers of deploy/README.md."""
    text = DEPLOY_README.read_text()
    match = re.search(r"<!-- compose-services:begin -->\n(.*?)<!-- compose-services:end -->",
                      text, flags=re.S)
    assert match, "deploy/README.md has no <!-- compose-services:begin/end --> table"
    rows = [line for line in match.group(1).splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header[:4] == ["Service", "Image", "Ports (host:container)",
                          "Volumes (source:target)"], header
    table = {}
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        service, image, ports, volumes = (re.findall(r"`([^`]+)`", cell) for cell in cells[:4])
        assert len(service) == 1 and len(image) == 1, f"malformed row: {row}"
        table[service[0]] = {"image": image[0], "ports": sorted(ports),
                             "volumes": sorted(volumes)}
    return table


# -- the real validator ----------------------------------------------------------------------
def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    result = compose_config(tmp_path, COMPOSE.read_text())
    assert result.returncode == 0, f"docker-compose config rejected the file:\n{result.stderr}"


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("condition: service_healthy", "condition: service_happy", "service_happy"),
        ("      interval: 10s", "      intervall: 10s", "intervall"),
        ("meterstream-topics:\n        condition: service_completed_successfully",
         "meterstream-topic:\n        condition: service_completed_successfully",
         "meterstream-topic"),
        ('"127.0.0.1:8080:8080"', '"127.0.0.1:8080:http"', "ports"),
        ("  init: true", "  init: sometimes", "init"),
    ],
    ids=["unknown-condition", "unknown-healthcheck-key", "undefined-dependency",
         "bad-port", "bad-type"],
)
def test_validator_rejects_a_broken_compose_file(
    tmp_path: Path, old: str, new: str, complaint: str
) -> None:
    text = COMPOSE.read_text()
    assert old in text, f"the mutation no longer applies to docker-compose.yml: {old!r}"
    result = compose_config(tmp_path, text.replace(old, new, 1))
    assert result.returncode != 0, "docker-compose accepted a broken file"
    assert complaint in result.stderr, result.stderr


def test_grafana_admin_password_has_no_default(tmp_path: Path) -> None:
    env = "\n".join(line for line in ENV_EXAMPLE.read_text().splitlines()
                    if not line.startswith("GRAFANA_ADMIN_PASSWORD="))
    result = compose_config(tmp_path, COMPOSE.read_text(), env)
    assert result.returncode != 0
    assert "set GRAFANA_ADMIN_PASSWORD in .env" in result.stderr, result.stderr


# -- the documented services -----------------------------------------------------------------
def test_readme_table_matches_compose_both_ways() -> None:
    documented = readme_table()
    actual = {
        name: {"image": svc.get("image"),
               "ports": sorted(str(p) for p in svc.get("ports", [])),
               "volumes": sorted(str(v) for v in svc.get("volumes", []))}
        for name, svc in services().items()
    }
    assert sorted(documented) == sorted(actual), "services differ from deploy/README.md"
    for name in actual:
        assert documented[name] == actual[name], f"{name}: deploy/README.md says " \
            f"{documented[name]}, docker-compose.yml has {actual[name]}"


def test_ports_are_published_on_loopback_only() -> None:
    for name, svc in services().items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), \
                f"{name} publishes {port!r} beyond 127.0.0.1"


def test_named_volumes_are_declared_and_not_shared() -> None:
    declared = set(compose().get("volumes") or {})
    used: dict[str, str] = {}
    for name, svc in services().items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert source.startswith("./deploy/"), f"{name}: bind mount outside deploy/"
                continue
            assert source in declared, f"{name}: volume {source} not declared"
            assert source not in used, f"{source} shared by {used[source]} and {name}"
            used[source] = name
    assert declared == set(used), f"unused volumes: {declared - set(used)}"


# -- settings and secrets --------------------------------------------------------------------
@pytest.mark.parametrize("path", [COMPOSE, ENV_EXAMPLE, DOCKERFILE],
                         ids=lambda p: p.name)
def test_every_meterstream_variable_is_a_real_setting(path: Path) -> None:
    names = set(re.findall(r"\bMETERSTREAM_[A-Z0-9_]+\b", path.read_text()))
    assert names, f"{path.name} names no setting at all"
    unknown = sorted(names - SETTING_NAMES)
    assert not unknown, f"{path.name} names settings that do not exist: {unknown}"


def test_env_example_holds_every_setting_the_stack_needs() -> None:
    env = parse_env_file(ENV_EXAMPLE.read_text())
    for name in ("METERSTREAM_BRIDGE_CREDENTIALS", "METERSTREAM_TOPIC_PARTITIONS",
                 "METERSTREAM_TOPIC_REPLICATION", "GRAFANA_ADMIN_PASSWORD"):
        assert name in env, f".env.example lacks {name}"
    assert env["METERSTREAM_TOPIC_REPLICATION"] == "1", "the stack has a single broker"


def test_env_example_secrets_are_placeholders() -> None:
    env = parse_env_file(ENV_EXAMPLE.read_text())
    for name, value in env.items():
        if name in SECRET_NAMES or "PASSWORD" in name:
            assert value == "" or "change-me" in value.lower(), \
                f".env.example holds what looks like a real secret in {name}"
    assert "change-me" in env["METERSTREAM_BRIDGE_CREDENTIALS"]


def test_secret_settings_never_have_a_literal_value_in_compose() -> None:
    text = COMPOSE.read_text()
    for name in SECRET_NAMES:
        literal = re.search(rf"{name}\s*[:=]\s*(?!\$\{{)\S", text)
        assert literal is None, f"docker-compose.yml sets the secret {name} literally"
    for svc_name, svc in services().items():
        for key, value in service_environment(svc).items():
            if key in SECRET_NAMES or "PASSWORD" in key or "SECRET" in key:
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}", value), \
                    f"{svc_name}: {key} is not taken from .env"


def test_meterstream_containers_get_usable_settings() -> None:
    kafka_env = service_environment(services()["kafka"])
    assert meterstream_services(), "no service runs the meterstream image"
    for name, svc in meterstream_services().items():
        assert svc.get("env_file") in (".env", [".env"]), f"{name} does not read .env"
        settings = container_settings(svc)  # raises ConfigError on a bad value
        host, _, port = settings.kafka_bootstrap.partition(":")
        assert host in services() and f"PLAINTEXT://{host}:{port}" in \
            kafka_env["KAFKA_ADVERTISED_LISTENERS"], f"{name}: {settings.kafka_bootstrap}"
        assert settings.bridge_host == settings.worker_host == "0.0.0.0"
        assert settings.topic_replication == 1


def test_published_ports_reach_the_configured_servers() -> None:
    for name, svc in meterstream_services().items():
        settings = container_settings(svc)
        targets = {int(str(p).rsplit(":", 1)[1]) for p in svc.get("ports", [])}
        role = command_of(svc)[:1]
        if role == ["bridge"]:
            assert targets == {settings.bridge_port}, name
        elif role == ["worker"]:
            assert targets == {settings.worker_port}, name


def test_every_worker_has_its_own_state_volume() -> None:
    workers = worker_services()
    assert len(workers) == 2, f"expected two workers, found {sorted(workers)}"
    volumes = set()
    for name, svc in workers.items():
        state_dir = str(container_settings(svc).state_dir)
        mounts = [str(v).split(":") for v in svc.get("volumes", [])]
        at_state = [source for source, target, *_ in mounts if target == state_dir]
        assert at_state, f"{name}: nothing mounted at METERSTREAM_STATE_DIR {state_dir}"
        volumes.add(at_state[0])
        assert duration(svc.get("stop_grace_period", "10s")) >= 60, \
            f"{name}: Faust needs time to commit on SIGTERM"
    assert len(volumes) == len(workers), "workers share a RocksDB volume"


# -- start order -----------------------------------------------------------------------------
def test_services_come_up_in_order() -> None:
    svcs = services()
    topics = [n for n, s in meterstream_services().items() if s.get("restart") == "no"]
    assert len(topics) == 1, "one one-shot topic-creation service"
    topic_service = topics[0]
    assert svcs[topic_service]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name, svc in meterstream_services().items():
        if name != topic_service:
            assert svc["depends_on"][topic_service]["condition"] == \
                "service_completed_successfully", name
    image_has_healthcheck = "\nHEALTHCHECK " in DOCKERFILE.read_text()
    for name, svc in svcs.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                target = svcs[dep]
                has_check = "healthcheck" in target and not target["healthcheck"].get("disable")
                assert has_check or (dep in meterstream_services() and image_has_healthcheck), \
                    f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
    for name in ("kafka", "prometheus", "alertmanager", "grafana"):
        assert "healthcheck" in svcs[name], f"{name} has no healthcheck"


def test_topic_service_creates_the_topics() -> None:
    svc = next(s for s in meterstream_services().values() if s.get("restart") == "no")
    entrypoint = svc.get("entrypoint")
    if entrypoint is None:  # `meterstream topics`
        build_parser().parse_args(command_of(svc))  # exits 2 for an unknown command
        return
    assert entrypoint[:2] == ["python", "-c"]
    tree = ast.parse(entrypoint[2])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name} is gone"
    called = {n.func.id for n in ast.walk(tree)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"ensure_topics", "topic_specs"} <= called


def test_kafka_is_a_single_kraft_node() -> None:
    kafka = services()["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.1\.\d+", kafka["image"])
    env = service_environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == "1", key
    data_mount = [str(v) for v in kafka["volumes"] if str(v).endswith(":" + env["KAFKA_LOG_DIRS"])]
    assert data_mount, "Kafka's log dirs are not on a volume"


def test_monitoring_loads_the_files_from_deploy() -> None:
    svcs = services()

    def mount_target(service: str, source: str) -> str:
        for volume in svcs[service]["volumes"]:
            parts = str(volume).split(":")
            if parts[0] == source:
                return parts[1]
        raise AssertionError(f"{service} does not mount {source}")

    prometheus_config = mount_target("prometheus", "./deploy/prometheus/prometheus.yml")
    assert f"--config.file={prometheus_config}" in svcs["prometheus"]["command"]
    rules = mount_target("prometheus", "./deploy/prometheus/alerts.yml")
    assert Path(rules).parent == Path(prometheus_config).parent, \
        "alerts.yml must sit next to prometheus.yml for its relative rule_files entry"
    alertmanager_config = mount_target("alertmanager", "./deploy/alertmanager/alertmanager.yml")
    assert f"--config.file={alertmanager_config}" in svcs["alertmanager"]["command"]
    assert mount_target("grafana", "./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    assert mount_target("grafana", "./deploy/grafana/dashboards")
