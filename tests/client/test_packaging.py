"""The client stays light and typed: no torch, server or registry imports; ``mypy --strict`` clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_client_imports_nothing_heavy() -> None:
    code = (
        "import json, sys, preimage.client, preimage.client.cli; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnx2torch') "
        "or m.startswith(('preimage.server', 'preimage.registry')))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(result.stdout) == []


@pytest.mark.slow
def test_mypy_strict_on_the_client(tmp_path: Path) -> None:
    # mypy cannot follow the editable install's package-dir mapping, so lay the
    # `preimage` namespace out as it is installed, with links into the checkout.
    package = tmp_path / "preimage"
    package.mkdir()
    for name in ("__init__.py", "py.typed", "errors.py", "v1"):
        (package / name).symlink_to(ROOT / "preimage" / name)
    (package / "client").symlink_to(ROOT / "client")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "-p",
            "preimage.client",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
