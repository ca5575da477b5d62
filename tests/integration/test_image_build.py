"""The container image's build steps, replayed without Docker (no engine on CI machines).

The builder stage copies what the Dockerfile's COPY lines name (minus .dockerignore),
builds a wheel of it and installs that wheel with its runtime dependencies only, in a
fresh virtualenv; the runtime stage uses nothing else. Doing the same here shows that the
package is complete (generated protobuf code, entry point) and that no runtime import
reaches for a development-only dependency. Downloads come from the package index (pip's
cache after `make test`'s own install).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, SEED_HEX
from tests.unit.test_deploy_k8s import dockerfile_instructions, dockerignored

DEV_ONLY = ("pytest", "hypothesis", "ruff", "mypy", "grpcio-tools")


def build_context(target: Path) -> None:
    """What the builder stage COPYs from the context, as Docker would send it."""
    for word, rest in dockerfile_instructions():
        if word != "COPY" or rest.startswith("--from="):
            continue
        *sources, _dest = [a for a in rest.split() if not a.startswith("--")]
        for source in sources:
            path = ROOT / source
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            for file in files:
                relative = file.relative_to(ROOT)
                if "__pycache__" in relative.parts or dockerignored(relative.as_posix()):
                    continue
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target / relative)


def run(*args: str | Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run([str(a) for a in args], input=stdin, capture_output=True,
                            timeout=600, check=False)
    assert result.returncode == 0, (args, result.stderr.decode(errors="replace")[-3000:])
    return result.stdout


def test_the_image_build_steps_give_a_complete_runtime_only_install(tmp_path: Path) -> None:
    context, venv, wheels = tmp_path / "context", tmp_path / "venv", tmp_path / "wheels"
    context.mkdir()
    build_context(context)
    assert (context / "pyproject.toml").exists() and (context / "streams").is_dir()

    run(sys.executable, "-m", "venv", venv)
    pip = venv / "bin" / "pip"
    run(pip, "install", "-q", "--disable-pip-version-check", "wheel")
    run(pip, "wheel", "-q", "--no-deps", "--wheel-dir", wheels, context)
    (wheel,) = wheels.glob("meterstream-*.whl")
    run(pip, "install", "-q", "--disable-pip-version-check", wheel)

    installed = {line.split("==")[0].lower()
                 for line in run(pip, "freeze").decode().splitlines()}
    assert not installed & set(DEV_ONLY), installed & set(DEV_ONLY)
    run(venv / "bin" / "python", "-c", "import streams.bridge, streams.worker")
    # The image's `decode` command, from outside the source tree.
    out = run(venv / "bin" / "meterstream", "decode", "-", stdin=bytes.fromhex(SEED_HEX))
    (line,) = out.decode().splitlines()
    assert json.loads(line)["device_id"] == "3bd0fce9-9f8e-4183-b3d1-0c1622a22ca1"
