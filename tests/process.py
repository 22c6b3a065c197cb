"""Run ``preimage serve`` as a real process on a free loopback port (server and CLI tests)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_SERVING_LINE = re.compile(r"preimage serving on (\S+)")


class ServerProcess:
    """A server process with the given flags; its address is read from stdout.

    Args:
        registry_dir: The registry directory.
        extra: More ``serve`` flags.
        env: Extra environment variables.
        timeout: Seconds to wait for the "serving on" line.
        command: How to start ``serve`` (default ``python -m preimage.server.cli``; the CLI tests
            pass the ``preimage serve`` console script).
    """

    def __init__(
        self,
        registry_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        command: Sequence[str] = (sys.executable, "-m", "preimage.server.cli"),
    ) -> None:
        command = [*command, "--registry", str(registry_dir), *extra]
        if "--address" not in extra:
            command += ["--address", "127.0.0.1:0"]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stderr_lines: list[str] = []
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        self.address = self._wait_address(timeout)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)

    def _wait_address(self, timeout: float) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            match = _SERVING_LINE.search(line)
            if match:
                return match.group(1)
        self.kill()
        raise RuntimeError("server did not start:\n" + "".join(self.stderr_lines[-40:]))

    def wait_serving(self, timeout: float = 30) -> None:
        """Until the health service says SERVING."""
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if (
                        stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                        == health_pb2.HealthCheckResponse.SERVING
                    ):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError("server never reported SERVING")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def terminate_async(self) -> None:
        """SIGTERM without waiting."""
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, no clean-up at all."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
