"""A real in-process server for the client tests, and fake servers for retry tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from preimage.client import Client, RetryPolicy
from tests.models import EXAMPLE_MODEL

_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One running server per test module (registry under a fresh temporary folder)."""
    from preimage.server.app import start_server
    from preimage.server.settings import Settings

    settings = Settings(
        registry_dir=tmp_path_factory.mktemp("registry"),
        address="127.0.0.1:0",
        shutdown_grace_seconds=0,
        torch_threads=1,
    )
    running = start_server(settings)
    yield running
    running.stop()


@pytest.fixture
def client(server: Any) -> Iterator[Client]:
    """A blocking client of ``server`` with a generous deadline on every call."""
    with Client(server.address, timeout=120, retry=RetryPolicy(max_attempts=1)) as connected:
        yield connected


@pytest.fixture
def unique_name() -> str:
    """A model name no other test in the session uses."""
    return f"m{next(_names)}"


@pytest.fixture
def example_ref(client: Client, unique_name: str) -> str:
    """The example difficulty model (10 features in [0, 1]) registered under a fresh name."""
    return client.register(EXAMPLE_MODEL, unique_name).ref


@pytest.fixture
def example_path() -> Path:
    """Path of the shipped example model."""
    return EXAMPLE_MODEL
