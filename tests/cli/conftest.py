"""``preimage serve`` as a real process, and a runner for ``preimage`` commands against it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.process import ServerProcess


def preimage_command() -> list[str]:
    """The installed ``preimage`` console script (next to this interpreter), else the module."""
    script = Path(sys.executable).with_name("preimage")
    if script.exists():
        return [str(script)]
    found = shutil.which("preimage")
    return [found] if found else [sys.executable, "-m", "preimage.client.cli"]


Served = ServerProcess
"""A ``preimage serve`` process on a free loopback port (the shared runner, via the console script)."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One ``preimage serve`` process per test module."""
    with ServerProcess(
        tmp_path_factory.mktemp("registry"),
        "--shutdown-grace",
        "0",
        "--torch-threads",
        "1",
        command=[*preimage_command(), "serve"],
    ) as server:
        yield server
        server.terminate(timeout=30)


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(served: Served) -> Run:
    """Run ``preimage ARGS...`` against ``served`` (via PREIMAGE_SERVER); returns the finished process."""

    def run(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_preimage(args, served.address, stdin, timeout)

    return run


def run_preimage(
    args: Sequence[str], address: str, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``preimage ARGS...`` with ``PREIMAGE_SERVER=address`` and no token from the environment."""
    env = {**os.environ, "PREIMAGE_SERVER": address}
    env.pop("PREIMAGE_TOKEN", None)
    return subprocess.run(
        [*preimage_command(), *args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout
    )
