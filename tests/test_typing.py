"""The server and the registry type-check (the client is checked with --strict in tests/client)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.typecheck import run_mypy


@pytest.mark.slow
def test_mypy_on_server_and_registry(tmp_path: Path) -> None:
    result = run_mypy(tmp_path, "--ignore-missing-imports", "-p", "preimage.server", "-p", "preimage.registry")
    assert result.returncode == 0, result.stdout + result.stderr
