"""``preimage serve`` as a real process, and a runner for ``preimage`` commands against it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

_SERVING = re.compile(r"preimage serving on (\S+)")


def preimage_command() -> list[str]:
    """The installed ``preimage`` console script (next to this interpreter), else the module."""
    script = Path(sys.executable).with_name("preimage")
    if script.exists():
        return [str(script)]
    found = shutil.which("preimage")
    return [found] if found else [sys.executable, "-m", "preimage.client.cli"]


class Served:
    """A ``preimage serve`` process on a free loopback port."""

    def __init__(self, registry: Path) -> None:
        self.process = subprocess.Popen(
            [
                *preimage_command(),
                "serve",
                "--registry",
                str(registry),
                "--address",
                "127.0.0.1:0",
                "--shutdown-grace",
                "0",
                "--torch-threads",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            match = _SERVING.search(line)
            if match:
                self.address = match.group(1)
                return
        self.process.kill()
        raise RuntimeError("preimage serve did not start")

    def stop(self) -> None:
        """SIGTERM, then wait; SIGKILL if it does not exit."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One ``preimage serve`` process per test module."""
    server = Served(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


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
