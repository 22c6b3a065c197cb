"""A real in-process server for the interop tests, and the paths of the Node.js tools."""

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
