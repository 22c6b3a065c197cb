"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models import EXAMPLE_MODEL


@pytest.fixture
def example_model_bytes() -> bytes:
    """The shipped example model (10 features in [0, 1] -> difficulty in [1, 10])."""
    return EXAMPLE_MODEL.read_bytes()


@pytest.fixture
def example_model_path() -> Path:
    """Path of the shipped example model."""
    return EXAMPLE_MODEL
