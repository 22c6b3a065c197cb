"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.models import EXAMPLE_MODEL
from tests.services import MotoServer, PostgresServer, require_postgres


@pytest.fixture
def example_model_bytes() -> bytes:
    """The shipped example model (10 features in [0, 1] -> difficulty in [1, 10])."""
    return EXAMPLE_MODEL.read_bytes()


@pytest.fixture
def example_model_path() -> Path:
    """Path of the shipped example model."""
    return EXAMPLE_MODEL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the session (a test that stops it starts it again)."""
    server = PostgresServer(require_postgres())
    yield server
    server.close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto S3 server process for the session."""
    server = MotoServer()
    yield server
    server.close()


@dataclass(frozen=True)
class SharedStore:
    """A fresh database and bucket: what ``--index`` and ``--blobs`` get, and the AWS variables."""

    index: str
    blobs: str
    bucket: str
    env: dict[str, str]


@pytest.fixture
def shared_store(
    postgres_server: PostgresServer, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> SharedStore:
    """An empty shared registry: a new PostgreSQL database and S3 bucket; the AWS variables set in this process."""
    bucket = moto_server.new_bucket()
    for key, value in moto_server.env.items():
        monkeypatch.setenv(key, value)
    return SharedStore(postgres_server.new_database(), f"s3://{bucket}/models", bucket, moto_server.env)
