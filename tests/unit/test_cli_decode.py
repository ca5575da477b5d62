from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import SEED_HEX


def _decode(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "streams", "decode", *args], input=stdin,
                          capture_output=True, timeout=60, check=False)


def test_binary_file_prints_one_json_line_per_device_data(tmp_path: Path) -> None:
    body = tmp_path / "seed.pb"
    body.write_bytes(bytes.fromhex(SEED_HEX))
    result = _decode(str(body))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1
    reading = json.loads(lines[0])
    assert reading["device_id"] == "3bd0fce9-9f8e-4183-b3d1-0c1622a22ca1"
    assert reading["timestamp"] == "2019-10-16T12:20:44.978851Z"
    assert reading["values"][0] == {
        "obis": "1-0:1.8.0*255", "value": 1879583.2, "quantity": "active_energy_import",
        "unit": "Wh", "normalised": 1879.5832,
    }


def test_hex_from_stdin_with_whitespace() -> None:
    text = "\n".join(SEED_HEX[i:i + 40] for i in range(0, len(SEED_HEX), 40))
    result = _decode("-", "--hex", stdin=text.encode())
    assert result.returncode == 0
    assert json.loads(result.stdout)["values"][2]["obis"] == "1-0:1.7.0*255"


def test_malformed_body_exits_1_with_one_line_and_no_traceback() -> None:
    result = _decode("--hex", stdin=SEED_HEX[:60].encode())
    assert result.returncode == 1
    assert result.stdout == b""
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("meterstream decode: malformed body:")
    assert "Traceback" not in err


def test_unreadable_input_exits_2(tmp_path: Path) -> None:
    result = _decode(str(tmp_path / "missing.pb"))
    assert result.returncode == 2
    assert b"No such file" in result.stderr and b"Traceback" not in result.stderr
    result = _decode("--hex", stdin=b"not hex")
    assert result.returncode == 2
