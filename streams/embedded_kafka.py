"""A real single-node Apache Kafka (KRaft) on 127.0.0.1, assembled from Maven Central.

No Docker and no release tarball: ``mvn dependency:copy-dependencies`` on the POM in
``streams/data/kafka-pom.xml`` puts the broker's runtime classpath into a cache outside
the repository, once per version. The broker is then formatted (once per state
directory) and started as a child JVM; it is ready when its client port accepts TCP
connections (Kafka opens a fixed port only after the broker is unfenced and serving).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from streams.config import Settings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_JVM_OPTS = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]
_PR_SET_PDEATHSIG = 1


class KafkaStartError(RuntimeError):
    """The embedded broker could not be fetched, formatted or started; the message says why."""


def port_open(port: int, host: str = HOST) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now, for a server started a moment later.

    Chosen below the kernel's ephemeral range: a port the kernel picks for `bind(0)` comes
    from the range it also gives outgoing connections, so a Kafka client connecting in
    between can take it (seen in the scale-out test: a worker failed with EADDRINUSE).
    """
    start = _ephemeral_start()
    low = 10_000 if start > 12_000 else 1_024
    for _ in range(200):
        port = random.randrange(low, start)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # every try taken: let the kernel choose
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child before exec: if the Python process that started the broker dies
    # (even by SIGKILL), the kernel sends the JVM SIGTERM, so no broker is orphaned.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedKafka:
    def __init__(
        self,
        *,
        state_dir: Path,
        cache_dir: Path,
        version: str = "4.1.1",
        port: int = 9092,
        controller_port: int = 9093,
        heap: str = "-Xms64m -Xmx512m",
        start_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        extra_config: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.libs = cache_dir.expanduser().resolve() / version / "libs"
        self.version = version
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_config = extra_config or {}
        self._proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- jars ----------------------------------------------------------------------------
    def fetch(self) -> Path:
        """Resolve the broker classpath from Maven Central into the cache (once)."""
        if (self.libs / ".complete").exists():
            return self.libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaStartError("mvn not found: install Maven (Debian: apt-get install maven)")
        self.libs.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="libs.", dir=self.libs.parent))
        with resources.as_file(resources.files("streams") / "data" / "kafka-pom.xml") as pom:
            log.info("resolving Apache Kafka %s from Maven Central into %s", self.version,
                     self.libs)
            result = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [mvn, "-B", "-q", "-f", str(pom), f"-Dkafka.version={self.version}",
                 "dependency:copy-dependencies", "-DincludeScope=runtime",
                 f"-DoutputDirectory={tmp}"],
                capture_output=True, text=True, check=False,
            )
        if result.returncode != 0 or not (tmp / f"kafka_2.13-{self.version}.jar").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            tail = (result.stdout + result.stderr)[-3000:]
            raise KafkaStartError(f"mvn could not resolve Kafka {self.version}:\n{tail}")
        (tmp / ".complete").touch()
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)
        return self.libs

    # -- config and storage ----------------------------------------------------------------
    @property
    def _config_path(self) -> Path:
        return self.state_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def _write_config(self) -> None:
        data = self.state_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # A static quorum formats once and restarts with other ports unchanged.
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            # One node: internal topics must not ask for three replicas.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.num.partitions": "1",
            "num.partitions": "1",
            # Every topic is created explicitly with its configured partitions.
            "auto.create.topics.enable": "false",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            # The cleaner allocates this on the heap at start (default 128 MiB).
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            **self.extra_config,
        }
        self._config_path.write_text("".join(f"{k}={v}\n" for k, v in config.items()))
        (self.state_dir / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {self.log_dir}/server.log\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
            "logger.request.name = kafka.request.logger\n"
            "logger.request.level = WARN\n"
        )

    def _java(self) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaStartError("java not found: install a JDK 17+ (Debian: openjdk-17-jre)")
        return [java, f"-Dlog4j2.configurationFile={self.state_dir}/log4j2.properties",
                f"-Dkafka.logs.dir={self.log_dir}", "-cp", f"{self.libs}/*"]

    def _format(self) -> None:
        if (self.state_dir / "data" / "meta.properties").exists():
            return
        tool = [*self._java(), "-Xmx256m", *_JVM_OPTS, "kafka.tools.StorageTool"]
        uuid_run = subprocess.run(  # noqa: S603
            [*tool, "random-uuid"], capture_output=True, text=True, check=False
        )
        cluster_id = uuid_run.stdout.strip().splitlines()[-1] if uuid_run.stdout.strip() else ""
        if uuid_run.returncode != 0 or not cluster_id:
            raise KafkaStartError(f"StorageTool random-uuid failed: {uuid_run.stderr[-2000:]}")
        formatted = subprocess.run(  # noqa: S603
            [*tool, "format", "-t", cluster_id, "-c", str(self._config_path),
             "--ignore-formatted"],
            capture_output=True, text=True, check=False,
        )
        if formatted.returncode != 0:
            raise KafkaStartError(f"StorageTool format failed: {formatted.stderr[-2000:]}")

    # -- process control -------------------------------------------------------------------
    def start(self) -> str:
        """Fetch, format and start the broker; return the bootstrap address when ready."""
        if self.running:
            return self.bootstrap
        for port in (self.port, self.controller_port):
            if port_open(port):
                raise KafkaStartError(f"port {HOST}:{port} is already in use by another process")
        self.fetch()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._format()
        began = time.monotonic()
        out = (self.log_dir / "broker.out").open("ab")
        try:
            self._proc = subprocess.Popen(  # noqa: S603
                [*self._java(), *self.heap.split(), *_JVM_OPTS, "kafka.Kafka",
                 str(self._config_path)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        (self.state_dir / "broker.pid").write_text(str(self._proc.pid))
        deadline = began + self.start_timeout
        while not port_open(self.port):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                raise KafkaStartError(f"broker exited with {code} during startup:\n"
                                      f"{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise KafkaStartError(
                    f"broker not ready after {self.start_timeout:.0f}s:\n{self._log_tail()}"
                )
            time.sleep(0.2)
        self.startup_seconds = time.monotonic() - began
        log.info("Kafka %s ready on %s after %.1fs (pid %d)", self.version, self.bootstrap,
                 self.startup_seconds, self._proc.pid)
        return self.bootstrap

    def stop(self) -> None:
        """SIGTERM (controlled shutdown), then SIGKILL after the stop timeout."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("broker pid %d ignored SIGTERM for %.0fs, killing", proc.pid,
                        self.stop_timeout)
            proc.kill()
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / "broker.pid").unlink()

    def rss_bytes(self) -> int | None:
        if self.pid is None:
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def _log_tail(self, lines: int = 30) -> str:
        chunks = []
        for name in ("broker.out", "server.log"):
            path = self.log_dir / name
            if path.exists():
                chunks.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace")
                                                          .splitlines()[-lines:]))
        return "\n".join(chunks)

    @contextlib.contextmanager
    def running_broker(self) -> Iterator[str]:
        try:
            yield self.start()
        finally:
            self.stop()


def from_settings(settings: Settings) -> EmbeddedKafka:
    """The embedded broker described by the ``kafka_*`` settings."""
    return EmbeddedKafka(
        state_dir=settings.kafka_state_dir,
        cache_dir=settings.kafka_cache_dir,
        version=settings.kafka_version,
        port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
        heap=settings.kafka_heap,
        start_timeout=settings.kafka_start_timeout,
    )
