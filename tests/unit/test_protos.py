"""The checked-in generated code must be exactly what `make protos` produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}",
         f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
         str(ROOT / "protos" / "smartme_realtime.proto")],
        check=True,
    )
    generated = ROOT / "streams" / "protos_gen"
    for name in ("smartme_realtime_pb2.py", "smartme_realtime_pb2.pyi"):
        assert (tmp_path / name).read_text() == (generated / name).read_text(), (
            f"{name} drifted from protos/: run `make protos` and commit the result"
        )
