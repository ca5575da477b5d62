"""The one settings object of meterstream.

Every knob is a field of the frozen :class:`Settings` dataclass, read once from the
environment (prefix ``METERSTREAM_``) by :func:`Settings.from_env` and passed in to
whatever needs it. Nothing else in the package reads ``os.environ``.

Each field carries its documentation in ``metadata["doc"]``; the README table is
checked against it by a test, so a setting cannot exist undocumented.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams import obis
from streams.offline import ThresholdError, Thresholds
from streams.windows import WindowConfig

PREFIX = "METERSTREAM_"

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Credential:
    """One HTTP Basic user/password pair accepted by the bridge, and the source it names."""

    source: str
    username: str
    password: str = field(repr=False)


def _setting(default: Any, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, repr=not secret, metadata={"doc": doc, "secret": secret})


def _setting_factory(factory: Callable[[], Any], doc: str, *, secret: bool = False) -> Any:
    return field(default_factory=factory, repr=not secret,
                 metadata={"doc": doc, "secret": secret})


@dataclass(frozen=True)
class Settings:
    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap: str = _setting(
        "", "Kafka bootstrap servers (host:port,...). Empty: `meterstream run` starts the "
        "embedded single-node Kafka and sets it for the bridge and worker."
    )
    topic_partitions: int = _setting(
        6, "Partitions of every topic meterstream creates (and of Faust's changelogs). "
        "The maximum number of useful worker processes."
    )
    topic_replication: int = _setting(1, "Replication factor of the topics meterstream creates.")
    topic_raw: str = _setting("smartme.raw", "Raw webhook bodies, exactly as received.")
    topic_readings: str = _setting("meter.readings", "Decoded readings, one JSON per DeviceData.")
    topic_aggregates: str = _setting(
        "meter.aggregates", "Per-device window aggregates (compacted, key device|size|start)."
    )
    topic_alerts: str = _setting("meter.alerts", "Offline/online transitions and other alerts.")
    topic_deadletter: str = _setting(
        "meterstream.deadletter", "Undecodable raw bodies with the error in the headers."
    )
    topic_late: str = _setting("meter.late", "Readings beyond the allowed lateness.")
    topic_umeter_customer: str = _setting("umeter.customer", "UMeter customer data as polled.")
    topic_umeter_measurements: str = _setting(
        "umeter.measurements", "UMeter grid-operator measurements as polled."
    )
    topic_smartme_devices: str = _setting(
        "smartme.devices", "smart-me device inventory (compacted, key device id)."
    )
    topic_reading_batches: str = _setting(
        "meterstream.reading-batches", "Internal: the decoded readings again, grouped by "
        "meter.readings partition (one record per partition per decode batch); the "
        "aggregation agent consumes these, not meter.readings, for throughput."
    )
    topic_ticks: str = _setting(
        "meterstream.ticks", "Internal: wall-clock ticks, one per partition, that drive the "
        "sweeps of quiet devices (short retention)."
    )

    # --- Embedded Kafka (meterstream run, tests) -------------------------------------------
    kafka_version: str = _setting("4.1.1", "Apache Kafka version of the embedded broker.")
    kafka_cache_dir: Path = _setting(
        Path("~/.cache/meterstream/kafka"),
        "Where the embedded broker's jars are cached (one sub-directory per version).",
    )
    kafka_state_dir: Path = _setting(
        Path(".meterstream/kafka"), "Data, config and logs of the embedded broker."
    )
    kafka_port: int = _setting(9092, "Embedded broker's client port (127.0.0.1).")
    kafka_controller_port: int = _setting(9093, "Embedded broker's KRaft controller port.")
    kafka_heap: str = _setting("-Xms64m -Xmx512m", "JVM heap options of the embedded broker.")
    kafka_start_timeout: float = _setting(120.0, "Seconds to wait for the embedded broker.")

    # --- Bridge ----------------------------------------------------------------------------
    bridge_host: str = _setting("127.0.0.1", "Address the webhook bridge listens on.")
    bridge_port: int = _setting(8080, "Port of the webhook bridge.")
    bridge_path: str = _setting("/smartme/realtime", "Path smart-me POSTs protobuf bodies to.")
    bridge_credentials: tuple[Credential, ...] = _setting(
        (),
        "Accepted Basic credentials, comma separated `source:user:password` triples. "
        "The source name travels with every body as the `source` header.",
        secret=True,
    )
    bridge_credentials_file: Path | None = _setting(
        None, "File with one `source user password` per line (added to BRIDGE_CREDENTIALS)."
    )
    bridge_allow_anonymous: bool = _setting(
        False, "Accept bodies without credentials (source `anonymous`). Only for local tests."
    )
    bridge_max_body_bytes: int = _setting(1024 * 1024, "Largest body accepted; larger → 413.")
    bridge_produce_timeout: float = _setting(
        10.0, "Seconds to wait for Kafka's acknowledgement before answering 503."
    )
    bridge_retry_after: int = _setting(5, "Retry-After seconds sent with a 503.")
    bridge_linger_ms: int = _setting(
        5, "Producer linger: how long the bridge waits to batch concurrent bodies."
    )
    bridge_shutdown_timeout: float = _setting(
        20.0, "Seconds a SIGTERM'd bridge waits for in-flight requests before it exits."
    )

    # --- Worker ----------------------------------------------------------------------------
    app_id: str = _setting("meterstream", "Faust application id (consumer group, table names).")
    store: str = _setting("rocksdb://", "Faust table store: rocksdb:// or memory://.")
    state_dir: Path = _setting(Path(".meterstream/state"), "Faust data directory (RocksDB).")
    worker_host: str = _setting("127.0.0.1", "Address of the worker's web server (/metrics).")
    worker_port: int = _setting(6066, "Port of the worker's web server.")
    worker_advertised_host: str = _setting(
        "", "Host name the other workers reach this one at (GET /devices/{id} is forwarded "
        "to the worker owning the meter). Empty: WORKER_HOST, or this machine's host name "
        "when WORKER_HOST is a wildcard such as 0.0.0.0."
    )
    worker_session_timeout: float = _setting(
        10.0, "Kafka consumer session timeout (s): how fast a dead worker's partitions move."
    )
    worker_produce_timeout: float = _setting(
        1200.0, "Seconds the worker's producer tries to deliver a record before the agent "
        "sends it again (Faust's producer_request_timeout)."
    )
    decode_batch: int = _setting(500, "Raw bodies the decoder takes per batch.")
    local_timezone: str = _setting(
        "UTC", "IANA zone for smart-me DateTime values of kind LOCAL (never seen in practice)."
    )
    obis_scales: Mapping[str, float] = _setting_factory(
        lambda: dict(obis.DEFAULT_SCALES),
        "Per-OBIS factor from the webhook value to the normalised unit, comma separated "
        "`A-B:C.D[.E[*F]]=factor`; merged over the defaults (energy registers mWh → Wh).",
    )
    min_reading_year: int = _setting(
        2000, "Readings dated before this year are rejected as implausible (dead letter)."
    )
    max_clock_skew: float = _setting(
        900.0, "Readings more than this many seconds in the future are rejected (dead letter). "
        "Must stay below the broker's message.timestamp.after.max.ms (1 h on Kafka 4)."
    )
    log_level: str = _setting("info", "Log level of bridge and worker.")

    # --- Window aggregation -----------------------------------------------------------------
    window_sizes: tuple[int, ...] = _setting(
        (60, 900, 3600), "Tumbling window sizes in seconds, comma separated (epoch aligned)."
    )
    window_grace: int = _setting(
        300, "Seconds a window waits (in the device's event time) before it is final."
    )
    allowed_lateness: int = _setting(
        6 * 3600, "Readings up to this many seconds behind the device's event time still "
        "correct their windows (re-emitted with revision+1); older ones go to meter.late."
    )
    aggregate_chunk: int = _setting(
        900, "Seconds of readings per state chunk (one chunk is rewritten per reading)."
    )
    aggregate_interim: bool = _setting(
        False, "Also emit non-final window updates (final=false) on every reading."
    )
    aggregate_batch: int = _setting(
        100, "Records (each a list of readings) the aggregation agent takes per batch."
    )
    compact_reading_batches: bool = _setting(
        True, "Write the internal reading-batches records compact (the bodies' protobuf "
        "items), which workers from 2026-12-02 on read; false: JSON arrays of the readings, "
        "which every version reads (for a rolling upgrade from older workers)."
    )
    sweep_interval: float = _setting(
        10.0, "Seconds between wall-clock sweeps that finalize windows of quiet devices."
    )

    # --- Offline detection -------------------------------------------------------------------
    offline_threshold: float = _setting(
        900.0, "Seconds without data after which a meter is offline (smart-me's own rule: "
        "15 minutes)."
    )
    offline_thresholds: str = _setting(
        "", "Overrides, comma separated: `id:<device id>=s`, `prefix:<id start>=s`, "
        "`class:<meter class>=s` (most specific wins; e.g. `class:mbus=3600`)."
    )
    inventory_file: Path | None = _setting(
        None, "CSV (`device_id,class,name,serial`) or JSON list of meters that should be "
        "sending; never-seen ones are reported offline from the start."
    )

    # --- UMeter (customer / EAN data and grid-operator measurements) -----------------------
    umeter_auth_url: str = _setting("https://auth.umeter.nl/token", "UMeter token endpoint.")
    umeter_app_url: str = _setting("https://app.umeter.nl", "UMeter app API base (/api/customer).")
    umeter_meas_url: str = _setting(
        "https://meas.meterdata.io", "Measurements API base (/api/v2/measurements/...)."
    )
    umeter_username: str = _setting("", "UMeter login e-mail. Empty: the UMeter poller is off.")
    umeter_password: str = _setting("", "UMeter password (prefer UMETER_PASSWORD_FILE).",
                                    secret=True)
    umeter_password_file: Path | None = _setting(
        None, "File holding the UMeter password (a mounted secret); overrides UMETER_PASSWORD."
    )
    umeter_poll_interval: float = _setting(3600.0, "Seconds between UMeter polls (leader only).")
    umeter_timeout: float = _setting(30.0, "Timeout of one UMeter HTTP request (s).")
    umeter_max_retries: int = _setting(
        4, "Retries of a UMeter request on 429, 5xx and timeouts (exponential backoff)."
    )
    umeter_meas_keys: str = _setting(
        "import,export", "measKeys asked from the measurements API (comma separated)."
    )
    umeter_mapping_file: Path | None = _setting(
        None, "CSV/JSON mapping smart-me device id → EAN (see README, UMeter section)."
    )
    reconcile_tolerance: float = _setting(
        0.05, "Relative daily energy difference (ours vs UMeter) above which an alert is sent."
    )

    # --- smart-me REST (inventory, webhook registration) -----------------------------------
    smartme_base_url: str = _setting("https://api.smart-me.com", "smart-me REST API base URL.")
    smartme_api_key: str = _setting("", "smart-me API key (header `ApiKey`).", secret=True)
    smartme_client_id: str = _setting("", "smart-me OAuth2 client id (client credentials).")
    smartme_client_secret: str = _setting("", "smart-me OAuth2 client secret.", secret=True)
    smartme_token_url: str = _setting(
        "https://api.smart-me.com/oauth/token", "smart-me OAuth2 token endpoint."
    )
    smartme_username: str = _setting(
        "", "smart-me Basic-auth user (deprecated by smart-me; use an API key or OAuth2)."
    )
    smartme_password: str = _setting("", "smart-me Basic-auth password.", secret=True)
    smartme_poll_interval: float = _setting(
        900.0, "Seconds between smart-me inventory polls (leader only); 0 turns them off."
    )
    smartme_timeout: float = _setting(30.0, "Timeout of one smart-me HTTP request (s).")
    smartme_max_retries: int = _setting(
        4, "Retries of a smart-me request on 429, 5xx and timeouts (exponential backoff)."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``METERSTREAM_*`` variables; unknown ones are an error."""
        env = os.environ if environ is None else environ
        known = {PREFIX + f.name.upper(): f for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name in env:
                values[f.name] = _parse(f, name, env[name])
        settings = cls(**values)._with_secret_files()
        settings.thresholds()  # fail at start, not at the first sweep
        settings.zone()
        return settings

    def to_env(self) -> dict[str, str]:
        """The ``METERSTREAM_*`` variables that reproduce these settings in a child process."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            env[PREFIX + f.name.upper()] = _format(value)
        # The file's entries are already in bridge_credentials; do not add them twice.
        env.pop(PREFIX + "BRIDGE_CREDENTIALS_FILE", None)
        env.pop(PREFIX + "UMETER_PASSWORD_FILE", None)
        return env

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def _with_secret_files(self) -> Settings:
        settings = self
        if self.bridge_credentials_file is not None:
            creds = self.bridge_credentials + read_credentials_file(self.bridge_credentials_file)
            settings = settings.replace(bridge_credentials=creds)
        if self.umeter_password_file is not None:
            try:
                password = self.umeter_password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{PREFIX}UMETER_PASSWORD_FILE: cannot read "
                                  f"{self.umeter_password_file}: {exc}") from exc
            settings = settings.replace(umeter_password=password)
        return settings

    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.local_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"{PREFIX}LOCAL_TIMEZONE: unknown time zone "
                              f"{self.local_timezone!r} (an IANA name such as "
                              "Europe/Zurich)") from exc

    def thresholds(self) -> Thresholds:
        try:
            return Thresholds.parse(self.offline_threshold, self.offline_thresholds)
        except ThresholdError as exc:
            raise ConfigError(f"{PREFIX}OFFLINE_THRESHOLDS: {exc}") from exc

    def window_config(self) -> WindowConfig:
        return WindowConfig(sizes=self.window_sizes, grace=self.window_grace,
                            allowed_lateness=self.allowed_lateness, chunk=self.aggregate_chunk,
                            emit_interim=self.aggregate_interim)

    @property
    def all_topics(self) -> dict[str, str]:
        """Every topic meterstream uses, by setting name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name.startswith("topic_") and isinstance(getattr(self, f.name), str)}


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, doc) for every setting, in declaration order (README table)."""
    rows = []
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        default = getattr(defaults, f.name)
        if f.metadata.get("secret"):
            shown = "(none)"
        elif isinstance(default, Mapping):
            shown = ",".join(f"{k}={v}" for k, v in default.items())
        elif isinstance(default, tuple) and default:
            shown = ",".join(str(v) for v in default)
        else:
            shown = "(empty)" if default in ("", None, ()) else str(default)
        rows.append((PREFIX + f.name.upper(), shown, f.metadata["doc"]))
    return rows


def read_credentials_file(path: Path) -> tuple[Credential, ...]:
    creds = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{PREFIX}BRIDGE_CREDENTIALS_FILE: cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ConfigError(
                f"{path}:{number}: expected `source user password`, got {len(parts)} fields"
            )
        creds.append(Credential(*parts))
    return tuple(creds)


def _parse_credentials(raw: str) -> tuple[Credential, ...]:
    creds = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        pieces = item.split(":", 2)
        if len(pieces) != 3 or not all(pieces):
            raise ValueError("expected comma separated source:user:password triples")
        creds.append(Credential(*pieces))
    return tuple(creds)


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _parse_ints(raw: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in raw.split(",") if part.strip())
    if not values:
        raise ValueError("expected comma separated integers")
    return values


def _parse_scales(raw: str) -> dict[str, float]:
    scales = dict(obis.DEFAULT_SCALES)
    for item in filter(None, (part.strip() for part in raw.split(","))):
        code, sep, factor = item.partition("=")
        if not sep:
            raise ValueError(f"expected CODE=factor, got {item!r}")
        scales[obis.normalise_scale_key(code.strip())] = float(factor)
    return scales


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) if isinstance(v, int) else f"{v.source}:{v.username}:{v.password}"
                        for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v!r}" for k, v in value.items())
    return str(value)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": _parse_bool,
    "Path": Path,
    "Path | None": lambda raw: Path(raw) if raw else None,
    "tuple[Credential, ...]": _parse_credentials,
    "tuple[int, ...]": _parse_ints,
    "Mapping[str, float]": _parse_scales,
}


def _parse(f: dataclasses.Field[Any], name: str, raw: str) -> Any:
    parser = _PARSERS[str(f.type)]
    try:
        return parser(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def environment_with(**overrides: str) -> dict[str, str]:
    """This process's environment plus overrides, for child processes (``meterstream run``)."""
    return {**os.environ, **overrides}
