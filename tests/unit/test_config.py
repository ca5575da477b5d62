from __future__ import annotations

import socket
from pathlib import Path

import pytest

from streams.config import ConfigError, Credential, Settings, documented_settings
from tests.conftest import ROOT


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.topic_raw == "smartme.raw"
    assert settings.bridge_max_body_bytes == 1024 * 1024
    assert settings.obis_scales["1-0:1.8"] == 0.001


def test_values_are_parsed_by_type() -> None:
    settings = Settings.from_env({
        "METERSTREAM_BRIDGE_PORT": "9000",
        "METERSTREAM_BRIDGE_PRODUCE_TIMEOUT": "2.5",
        "METERSTREAM_BRIDGE_ALLOW_ANONYMOUS": "yes",
        "METERSTREAM_STATE_DIR": "/tmp/x",
        "METERSTREAM_BRIDGE_CREDENTIALS": "cloud:smartme:s3cr:et, lab:u:p",
        "METERSTREAM_OBIS_SCALES": "1-0:1.7.0=0.001,1-0:1.8=1",
    })
    assert settings.bridge_port == 9000
    assert settings.bridge_produce_timeout == 2.5
    assert settings.bridge_allow_anonymous is True
    assert settings.state_dir == Path("/tmp/x")
    assert settings.bridge_credentials == (
        Credential("cloud", "smartme", "s3cr:et"), Credential("lab", "u", "p"))
    assert settings.obis_scales["1-0:1.7.0"] == 0.001
    assert settings.obis_scales["1-0:1.8"] == 1.0
    assert settings.obis_scales["1-0:2.8"] == 0.001  # defaults stay unless overridden


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("METERSTREAM_BRIDGE_PORT", "http", "METERSTREAM_BRIDGE_PORT"),
        ("METERSTREAM_BRIDGE_ALLOW_ANONYMOUS", "maybe", "not a boolean"),
        ("METERSTREAM_BRIDGE_CREDENTIALS", "user:pass", "source:user:password"),
        ("METERSTREAM_OBIS_SCALES", "1-0:1.8", "CODE=factor"),
        ("METERSTREAM_BRIDGE_PROT", "1", "unknown setting"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({name: value})


def test_credentials_file_adds_to_the_list(tmp_path: Path) -> None:
    path = tmp_path / "creds"
    path.write_text("# source user password\nbackup smartme2 pw2\n\n")
    settings = Settings.from_env({
        "METERSTREAM_BRIDGE_CREDENTIALS": "cloud:smartme:pw",
        "METERSTREAM_BRIDGE_CREDENTIALS_FILE": str(path),
    })
    assert [c.source for c in settings.bridge_credentials] == ["cloud", "backup"]
    path.write_text("only two\n")
    with pytest.raises(ConfigError, match="creds:1"):
        Settings.from_env({"METERSTREAM_BRIDGE_CREDENTIALS_FILE": str(path)})


def test_passwords_never_show_in_repr() -> None:
    settings = Settings.from_env({"METERSTREAM_BRIDGE_CREDENTIALS": "cloud:smartme:hunter2"})
    assert "hunter2" not in repr(settings)


def test_readme_settings_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- settings:begin -->\n", "<!-- settings:end -->"
    table = readme[readme.index(begin) + len(begin):readme.index(end)]
    expected = "".join(f"| `{n}` | `{d}` | {doc} |\n" for n, d, doc in documented_settings())
    assert table == "| Variable | Default | Meaning |\n|---|---|---|\n" + expected, (
        "README settings table is stale: regenerate it with `meterstream settings`"
    )


def test_umeter_password_file_overrides_the_variable(tmp_path: Path) -> None:
    secret = tmp_path / "umeter-password"
    secret.write_text("from-file\n")
    settings = Settings.from_env({"METERSTREAM_UMETER_PASSWORD": "from-env",
                                  "METERSTREAM_UMETER_PASSWORD_FILE": str(secret)})
    assert settings.umeter_password == "from-file"
    assert "from-file" not in repr(settings)
    with pytest.raises(ConfigError, match="UMETER_PASSWORD_FILE"):
        Settings.from_env({"METERSTREAM_UMETER_PASSWORD_FILE": str(tmp_path / "missing")})


def test_to_env_round_trips() -> None:
    settings = Settings.from_env({
        "METERSTREAM_BRIDGE_CREDENTIALS": "cloud:smartme:s3cr:et",
        "METERSTREAM_OBIS_SCALES": "1-0:1.7.0=0.001",
        "METERSTREAM_BRIDGE_ALLOW_ANONYMOUS": "true",
        "METERSTREAM_TOPIC_PARTITIONS": "3",
    })
    assert Settings.from_env(settings.to_env()) == settings


def test_workers_advertise_a_reachable_host_for_table_routing() -> None:
    from streams.app import Pipeline, advertised_host

    loopback = Settings(worker_host="127.0.0.1", worker_port=6070)
    assert advertised_host(loopback) == "127.0.0.1"
    wildcard = Settings(worker_host="0.0.0.0")  # what the image sets
    assert advertised_host(wildcard) == socket.gethostname() != "0.0.0.0"
    pod = wildcard.replace(worker_advertised_host="10.1.2.3", worker_port=6071)
    # Faust forwards GET /devices/{id} to the owner's canonical URL.
    assert str(Pipeline(pod).app.conf.canonical_url) == "http://10.1.2.3:6071"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../etc/passwd", ""])
def test_an_unknown_time_zone_is_a_clear_error_at_start(zone: str) -> None:
    with pytest.raises(ConfigError, match="METERSTREAM_LOCAL_TIMEZONE"):
        Settings.from_env({"METERSTREAM_LOCAL_TIMEZONE": zone})
