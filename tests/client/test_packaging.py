"""The client stays light and typed: no torch, server or registry imports; ``mypy --strict`` clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.typecheck import run_mypy

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
    result = run_mypy(tmp_path, "--strict", "-p", "preimage.client")
    assert result.returncode == 0, result.stdout + result.stderr
