"""deploy/k8s manifests, deploy/Dockerfile and .dockerignore, checked statically.

The manifests are wired to the Settings object: every ConfigMap/Secret key must be
`METERSTREAM_` + a real setting, so renaming a setting in streams/config.py breaks this test
instead of silently dropping the value in a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from streams.config import PREFIX, Settings, documented_settings
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SETTING_NAMES = {name for name, _default, _doc in documented_settings()}
SECRET_NAMES = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)
                if f.metadata.get("secret")}
DEFAULTS = Settings()


# -- manifests -------------------------------------------------------------------------------
def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file__"] = path.name
                docs.append(doc)
    return docs


def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def one(kind: str) -> dict[str, Any]:
    found = by_kind(kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def configmap() -> dict[str, str]:
    return {k: str(v) for k, v in one("ConfigMap")["data"].items()}


def secret() -> dict[str, str]:
    doc = one("Secret")
    assert "data" not in doc, "use stringData: placeholders must be readable, not base64"
    return {k: str(v) for k, v in doc["stringData"].items()}


def workloads() -> list[dict[str, Any]]:
    return by_kind("Deployment") + by_kind("StatefulSet")


def workload(component: str) -> dict[str, Any]:
    found = [w for w in workloads()
             if w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
             == component]
    assert len(found) == 1, f"expected one {component} workload"
    return found[0]


def containers(work: dict[str, Any]) -> list[dict[str, Any]]:
    spec = work["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def main_container(work: dict[str, Any]) -> dict[str, Any]:
    return dict(work["spec"]["template"]["spec"]["containers"][0])


def effective_settings() -> Settings:
    """What a pod sees: image ENV, then the ConfigMap, then the Secret."""
    return Settings.from_env({**dockerfile_env(), **configmap(), **secret()})


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise AssertionError(f"{container['name']} has no port named {port!r}")


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def quantity(value: str | int | float) -> float:
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_kustomization_lists_every_manifest() -> None:
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization()["resources"]) == files


def test_every_kind_is_there() -> None:
    kinds = sorted(doc["kind"] for doc in manifests())
    for kind in ("ConfigMap", "Secret", "Deployment", "StatefulSet",
                 "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"):
        assert kind in kinds, f"no {kind} in deploy/k8s"
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    for doc in manifests():
        assert doc.get("apiVersion") and doc.get("metadata", {}).get("name"), doc["__file__"]


def test_kustomize_image_tag_is_the_package_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {image["name"]: image for image in kustomization()["images"]}
    for work in workloads():
        for container in containers(work):
            image = images[container["image"]]
            assert str(image["newTag"]) == version, \
                f"kustomization deploys {image['newTag']}, the package is {version}"


# -- settings wiring -------------------------------------------------------------------------
def test_configmap_and_secret_keys_are_settings() -> None:
    for source, keys in (("ConfigMap", configmap()), ("Secret", secret())):
        unknown = sorted(set(keys) - SETTING_NAMES)
        assert not unknown, f"{source} keys that are no setting: {unknown}"


def test_secret_settings_live_in_the_secret_only() -> None:
    leaked = sorted(SECRET_NAMES & set(configmap()))
    assert not leaked, f"secret settings in the ConfigMap: {leaked}"
    assert set(secret()) == SECRET_NAMES, \
        f"the Secret must hold exactly the secret settings {sorted(SECRET_NAMES)}"


def test_secret_values_are_obvious_placeholders() -> None:
    for key, value in secret().items():
        assert value == "" or "CHANGE-ME" in value, f"{key} looks like a real secret"
    assert "CHANGE-ME" in secret()["METERSTREAM_BRIDGE_CREDENTIALS"]
    text = (K8S / "secret.yaml").read_text()
    assert "PLACEHOLDER" in text.upper(), "secret.yaml must say it holds placeholders"


def test_configmap_values_are_valid_settings() -> None:
    settings = effective_settings()  # raises ConfigError on an unparsable value
    assert settings.kafka_bootstrap, "the pods need METERSTREAM_KAFKA_BOOTSTRAP"
    assert settings.bridge_host == settings.worker_host == "0.0.0.0"
    assert settings.bridge_credentials, "the bridge refuses to start without credentials"


def test_every_container_gets_config_and_the_secrets_it_uses() -> None:
    cm_name = one("ConfigMap")["metadata"]["name"]
    secret_doc = one("Secret")
    used_secret_keys = set()
    for work in workloads():
        for container in containers(work):
            refs = [ref["configMapRef"]["name"] for ref in container.get("envFrom", [])
                    if "configMapRef" in ref]
            assert refs == [cm_name], f"{container['name']} does not load the ConfigMap"
            for ref in container.get("envFrom", []):
                if "secretRef" in ref:
                    assert ref["secretRef"]["name"] == secret_doc["metadata"]["name"]
                    used_secret_keys |= set(secret())
            for var in container.get("env", []):
                assert var["name"] in SETTING_NAMES, f"{var['name']} is no setting"
                key_ref = var.get("valueFrom", {}).get("secretKeyRef")
                if key_ref:
                    assert key_ref["name"] == secret_doc["metadata"]["name"]
                    assert key_ref["key"] in secret(), f"Secret has no {key_ref['key']}"
                    assert key_ref["key"] == var["name"], var
                    used_secret_keys.add(key_ref["key"])
                elif var["name"] in SECRET_NAMES:
                    raise AssertionError(f"{var['name']} given a literal value")
    assert used_secret_keys == set(secret()), \
        f"Secret keys no container reads: {sorted(set(secret()) - used_secret_keys)}"
    bridge_env = {v["name"] for v in main_container(workload("bridge")).get("env", [])}
    assert "METERSTREAM_BRIDGE_CREDENTIALS" in bridge_env


# -- probes, ports, metrics ------------------------------------------------------------------
def test_bridge_probes_and_port() -> None:
    settings = effective_settings()
    container = main_container(workload("bridge"))
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"
    assert live["path"] == "/healthz"
    assert port_number(container, ready["port"]) == settings.bridge_port
    assert port_number(container, live["port"]) == settings.bridge_port
    assert container["args"] == ["bridge"]


def test_worker_probes_and_port() -> None:
    settings = effective_settings()
    container = main_container(workload("worker"))
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            get = container[probe]["httpGet"]
            assert get["path"] == "/healthz", probe
            assert port_number(container, get["port"]) == settings.worker_port, probe
    assert "livenessProbe" in container
    assert container["args"] == ["worker"]


@pytest.mark.parametrize(("component", "setting"), [("bridge", "bridge_port"),
                                                    ("worker", "worker_port")])
def test_pods_are_annotated_for_prometheus(component: str, setting: str) -> None:
    annotations = workload(component)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == getattr(effective_settings(), setting)


def test_services_reach_their_pods() -> None:
    for service in by_kind("Service"):
        selector = service["spec"]["selector"]
        targets = [w for w in workloads()
                   if labels_match(selector, w["spec"]["template"]["metadata"]["labels"])]
        assert len(targets) == 1, f"Service {service['metadata']['name']} selects {targets}"
        for port in service["spec"]["ports"]:
            port_number(main_container(targets[0]), port["targetPort"])


def test_every_container_has_requests_and_limits() -> None:
    for work in workloads():
        for container in containers(work):
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                assert request and limit, f"{container['name']}: {resource} request+limit"
                assert quantity(request) <= quantity(limit), f"{container['name']} {resource}"


def test_pods_run_as_the_image_user_and_never_as_root() -> None:
    user = dockerfile_user()
    for work in workloads():
        pod = work["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == user
        assert pod.get("automountServiceAccountToken") is False
        for container in containers(work):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context.get("runAsUser", user) != 0
            assert "ALL" in context["capabilities"]["drop"]


# -- bridge scaling ------------------------------------------------------------------------
def test_bridge_autoscaling_and_disruption_budget() -> None:
    bridge = workload("bridge")
    hpa = one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", bridge["metadata"]["name"])
    assert "replicas" not in bridge["spec"], "a fixed replica count fights the autoscaler"
    metrics = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert "cpu" in metrics
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    labels = bridge["spec"]["template"]["metadata"]["labels"]
    pdbs = [p for p in by_kind("PodDisruptionBudget")
            if labels_match(p["spec"]["selector"]["matchLabels"], labels)]
    assert len(pdbs) == 1, "the bridge needs one PodDisruptionBudget"
    # minAvailable equal to the replica floor would block every node drain.
    assert pdbs[0]["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_bridge_shuts_down_within_its_grace_period() -> None:
    settings = effective_settings()
    bridge = workload("bridge")
    container = main_container(bridge)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
    sleep = int(pre_stop["command"][-1]) if pre_stop.get("command", [""])[0] == "sleep" else 0
    grace = bridge["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > sleep + settings.bridge_shutdown_timeout, \
        "Kubernetes would kill the bridge before it flushed its in-flight webhooks"


# -- workers ---------------------------------------------------------------------------------
def test_worker_statefulset_keeps_state_per_worker() -> None:
    worker = workload("worker")
    assert worker["kind"] == "StatefulSet"
    spec = worker["spec"]
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    assert claims, "workers need volumeClaimTemplates for RocksDB"
    state_dir = str(effective_settings().state_dir)
    mounts = {m["mountPath"]: m["name"] for m in main_container(worker)["volumeMounts"]}
    assert mounts.get(state_dir) in claims, \
        f"no volumeClaimTemplate mounted at METERSTREAM_STATE_DIR {state_dir}"
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    assert spec["template"]["spec"]["securityContext"].get("fsGroup"), \
        "without fsGroup the non-root worker cannot write its volume"
    assert spec["replicas"] <= effective_settings().topic_partitions, \
        "workers beyond the partition count get no work"


def test_worker_statefulset_has_a_headless_service() -> None:
    worker = workload("worker")
    service = next(s for s in by_kind("Service")
                   if s["metadata"]["name"] == worker["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert labels_match(service["spec"]["selector"],
                        worker["spec"]["template"]["metadata"]["labels"])


# -- Dockerfile ------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.strip().startswith("#"):
            continue
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    result = []
    for line in lines:
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def runtime_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in runtime_stage():
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return {k: v for k, v in env.items() if k.startswith(PREFIX)}


def dockerfile_user() -> int:
    users = [rest for word, rest in runtime_stage() if word == "USER"]
    assert users, "the runtime stage runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "USER must be numeric so runAsNonRoot can verify it"
    return int(uid)


def exec_form(word: str) -> list[str]:
    found = [rest for w, rest in runtime_stage() if w == word]
    assert found, f"no {word}"
    value = found[-1]
    if word == "HEALTHCHECK":
        value = value[value.index("CMD ") + 4:]
    parsed = json.loads(value)
    assert isinstance(parsed, list)
    return [str(item) for item in parsed]


def test_dockerfile_is_multi_stage_from_python_311_slim() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) >= 2, "builder and runtime stages"
    args = dict(rest.split("=", 1) for word, rest in instructions
                if word == "ARG" and "=" in rest)
    base = froms[-1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    assert "COPY --from=builder" in " ".join(f"{w} {r}" for w, r in runtime_stage())


def test_dockerfile_installs_runtime_dependencies_only() -> None:
    text = " ".join(rest for word, rest in dockerfile_instructions() if word == "RUN")
    assert "[dev]" not in text and "requirements-dev" not in text
    runtime_copies = [rest for word, rest in runtime_stage() if word in ("COPY", "ADD")]
    assert all(rest.startswith("--from=") for rest in runtime_copies), \
        "the runtime stage must take only the built virtualenv, not the source tree"


def test_dockerfile_runs_meterstream_as_non_root() -> None:
    assert dockerfile_user() != 0
    assert exec_form("ENTRYPOINT") == ["meterstream"]
    assert exec_form("CMD") == ["bridge"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "meterstream" in scripts


def test_dockerfile_version_argument_labels_the_image() -> None:
    runtime = runtime_stage()
    assert any(word == "ARG" and rest.split("=")[0] == "VERSION" for word, rest in runtime)
    labels = " ".join(rest for word, rest in runtime if word == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


def test_dockerfile_environment_is_valid_settings_and_exposed() -> None:
    env = dockerfile_env()
    assert set(env) <= SETTING_NAMES, f"unknown settings stop the container: {set(env)}"
    settings = Settings.from_env(env)
    assert settings.bridge_host == settings.worker_host == "0.0.0.0"
    assert str(settings.state_dir).startswith("/"), "state dir must be absolute"
    exposed = {int(p.split("/")[0]) for word, rest in runtime_stage() if word == "EXPOSE"
               for p in rest.split()}
    assert {settings.bridge_port, settings.worker_port} <= exposed
    created = " ".join(rest for word, rest in runtime_stage() if word == "RUN")
    assert str(settings.state_dir) in created, "the image must create the state dir"


# -- the HEALTHCHECK, run for real against local HTTP servers ---------------------------------
class _Server:
    def __init__(self, status: int) -> None:
        self.status = status
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[dict[str, _Server]]:
    made = {"bridge": _Server(200), "worker": _Server(200)}
    yield made
    for server in made.values():
        server.close()


# PID 1 of the container is replaced by the given command line: the check reads it from
# /proc/1/cmdline to know whether it runs in a bridge or a worker container.
_RUNNER = """
import builtins, io, sys
cmdline, code = sys.argv[1].encode().replace(b" ", b"\\0") + b"\\0", sys.argv[2]
real_open = builtins.open
def fake_open(path, *args, **kwargs):
    if path == "/proc/1/cmdline":
        return io.BytesIO(cmdline)
    return real_open(path, *args, **kwargs)
builtins.open = fake_open
exec(compile(code, "HEALTHCHECK", "exec"), {})
"""


def run_healthcheck(cmdline: str, env: dict[str, str]) -> int:
    command = exec_form("HEALTHCHECK")
    assert command[:2] == ["python", "-c"], "the check runs with the image's python"
    result = subprocess.run([sys.executable, "-c", _RUNNER, cmdline, command[2]], env=env,
                            capture_output=True, timeout=30, check=False)
    return result.returncode


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        ("/opt/venv/bin/python /opt/venv/bin/meterstream bridge", "bridge"),
        ("/opt/venv/bin/python /opt/venv/bin/meterstream", "bridge"),  # CMD default
        ("/opt/venv/bin/python /opt/venv/bin/meterstream worker", "worker"),
        ("/sbin/docker-init -- meterstream worker", "worker"),  # compose `init: true`
    ],
)
def test_healthcheck_asks_the_process_of_its_container(
    servers: dict[str, _Server], cmdline: str, role: str
) -> None:
    env = {"METERSTREAM_BRIDGE_PORT": str(servers["bridge"].port),
           "METERSTREAM_WORKER_PORT": str(servers["worker"].port)}
    assert run_healthcheck(cmdline, env) == 0
    assert servers[role].paths == ["/healthz"]
    other = "worker" if role == "bridge" else "bridge"
    assert servers[other].paths == []


def test_healthcheck_fails_on_an_unhealthy_or_absent_server(
    servers: dict[str, _Server]
) -> None:
    servers["bridge"].status = 503
    env = {"METERSTREAM_BRIDGE_PORT": str(servers["bridge"].port)}
    assert run_healthcheck("meterstream bridge", env) != 0
    closed = _Server(200)
    closed.close()
    env = {"METERSTREAM_WORKER_PORT": str(closed.port)}
    assert run_healthcheck("meterstream worker", env) != 0


# -- .dockerignore ---------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Docker's rules: the last matching pattern wins; a match on a parent dir counts."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = _pattern_regex(pattern)
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".git/HEAD", ".env", ".meterstream/kafka/data/meta.properties",
    ".pytest_cache/v/cache/nodeids", ".mypy_cache/3.11/x.json", ".ruff_cache/content",
    ".hypothesis/examples/x", "tests/unit/test_codec.py", "meterstream.egg-info/PKG-INFO",
    "streams/__pycache__/cli.cpython-311.pyc", "bench/results/run.json",
    # build products of an editable install: the image compiles native/ itself
    "native/target/release/lib_native.so", "streams/_native.cpython-311-x86_64-linux-gnu.so",
])
def test_dockerignore_keeps_local_state_and_secrets_out(path: str) -> None:
    assert dockerignored(path), f"{path} would be sent to the image build"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    package_files = [p.relative_to(ROOT).as_posix()
                     for p in [*(ROOT / "streams").rglob("*"), *(ROOT / "native").rglob("*")]
                     if p.is_file() and not {"__pycache__", "target"} & set(p.parts)
                     and p.suffix != ".so"]
    assert package_files
    for path in ["pyproject.toml", "README.md", *package_files]:
        assert not dockerignored(path), f"{path} is needed by the build but ignored"
    for word, rest in dockerfile_instructions():
        if word in ("COPY", "ADD") and not rest.startswith("--from="):
            *sources, _dest = [a for a in rest.split() if not a.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                assert not dockerignored(source), f"COPY {source} is excluded by .dockerignore"

