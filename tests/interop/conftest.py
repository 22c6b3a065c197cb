"""Real in-process servers for the interop tests (plain, and TLS with a token) and the clients they run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NODE_MODULES = HERE / "node_modules"
BUF = NODE_MODULES / ".bin" / "buf"


def require_node_modules() -> None:
    """Skip, saying how to fix it, when ``npm ci --prefix tests/interop`` has not run."""
    if not NODE_MODULES.is_dir():
        pytest.skip(
            "tests/interop/node_modules is missing: run `npm ci --prefix tests/interop` (scripts/install.sh does)"
        )


@pytest.fixture
def node() -> str:
    """The ``node`` executable (skips with the reason when Node.js or the packages are missing)."""
    found = shutil.which("node")
    if found is None:
        pytest.skip("node is not installed: the Node.js interop client needs Node.js 18 or newer")
    require_node_modules()
    return found


@pytest.fixture
def buf() -> Path:
    """The ``buf`` CLI from the @bufbuild/buf npm package."""
    require_node_modules()
    if not BUF.exists():
        pytest.skip("tests/interop/node_modules/.bin/buf is missing: run `npm ci --prefix tests/interop`")
    return BUF


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One running server per module, registry under a fresh temporary folder."""
    from preimage.server.app import start_server
    from preimage.server.settings import Settings

    running = start_server(
        Settings(
            registry_dir=tmp_path_factory.mktemp("registry"),
            address="127.0.0.1:0",
            shutdown_grace_seconds=0,
            torch_threads=1,
        )
    )
    yield running
    running.stop()


TOKEN = "interop-admin-token"


@pytest.fixture(scope="session")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command running tests/interop/go/client.go, compiled once per session."""
    from tests.interop.compiled import build_go_client

    return build_go_client(tmp_path_factory.mktemp("go"))


@pytest.fixture(scope="session")
def java_client(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command running tests/interop/java/Client.java, compiled once per session."""
    from tests.interop.compiled import build_java_client

    return build_java_client(tmp_path_factory.mktemp("java"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and a server certificate for 127.0.0.1 signed by it (``ca.pem``, ``server.pem``)."""
    from tests.interop.compiled import unavailable
    from tests.server.test_security import make_pki

    if shutil.which("openssl") is None:
        unavailable("`openssl` (to make the test certificate)")
    d = tmp_path_factory.mktemp("pki")
    make_pki(d)
    return d


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[Any]:
    """A server over TLS that wants the bearer token ``TOKEN``, running one Invert at a time."""
    from preimage.server.app import start_server
    from preimage.server.settings import Settings

    running = start_server(
        Settings(
            registry_dir=tmp_path_factory.mktemp("registry"),
            address="127.0.0.1:0",
            shutdown_grace_seconds=0,
            torch_threads=1,
            tls_cert=pki / "server.pem",
            tls_key=pki / "server.key",
            admin_tokens=[TOKEN],
            max_concurrent_inverts=1,
            invert_queue_size=0,  # a second Invert is refused at once (with RetryInfo), not queued
        )
    )
    yield running
    running.stop()
