"""Fixtures of the registry tests: a registry under ``tmp_path``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from preimage.registry import Registry


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A fresh registry (small parity batch to keep the suite quick)."""
    opened = Registry.open(tmp_path / "registry", parity_rows=8)
    yield opened
    opened.close()
