"""grpc.health.v1: NOT_SERVING while starting, SERVING when the registry is open,
NOT_SERVING when the registry cannot be read and while draining."""

from __future__ import annotations

import queue
import socket
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import preimage.server.app as app_module
from preimage.errors import UnavailableError
from preimage.registry import Registry
from preimage.server.app import SERVICE_NAMES, RunningServer, start_server
from preimage.server.settings import Settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def watch(address: str, service: str, into: queue.Queue[Any]) -> threading.Thread:
    def run() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                for response in stub.Watch(
                    health_pb2.HealthCheckRequest(service=service), timeout=60, wait_for_ready=True
                ):
                    into.put(response.status)
            except grpc.RpcError as exc:
                into.put(exc.code())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_check_every_service(tmp_path: Path) -> None:
    with start_server(Settings(registry_dir=tmp_path / "r", address="127.0.0.1:0")) as running:
        with grpc.insecure_channel(running.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", *SERVICE_NAMES):
                assert stub.Check(health_pb2.HealthCheckRequest(service=service)).status == SERVING
            with pytest.raises(grpc.RpcError) as caught:
                stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_start_and_drain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original_open = Registry.open

    def slow_open(*args: Any, **kwargs: Any) -> Registry:
        assert release.wait(30)
        return original_open(*args, **kwargs)

    monkeypatch.setattr(Registry, "open", slow_open)
    address = f"127.0.0.1:{free_port()}"
    started: queue.Queue[RunningServer] = queue.Queue()
    threading.Thread(
        target=lambda: started.put(start_server(Settings(registry_dir=tmp_path / "r", address=address))), daemon=True
    ).start()

    statuses: queue.Queue[Any] = queue.Queue()
    # The port is bound before the registry opens; retry until the watch connects.
    watcher = watch(address, "", statuses)
    assert statuses.get(timeout=30) == NOT_SERVING
    release.set()
    running = started.get(timeout=60)
    assert statuses.get(timeout=30) == SERVING
    stopper = threading.Thread(target=running.stop, kwargs={"grace": 1.0})
    stopper.start()
    assert statuses.get(timeout=30) == NOT_SERVING
    stopper.join(60)
    watcher.join(60)


def test_not_serving_while_registry_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "REGISTRY_CHECK_SECONDS", 0.1)
    broken = threading.Event()
    original = Registry.check_readable

    def check(self: Registry) -> None:
        if broken.is_set():
            raise UnavailableError("index unreadable (test)")
        original(self)

    monkeypatch.setattr(Registry, "check_readable", check)
    with start_server(Settings(registry_dir=tmp_path / "r", address="127.0.0.1:0")) as running:
        statuses: queue.Queue[Any] = queue.Queue()
        watch(running.address, SERVICE_NAMES[1], statuses)
        assert statuses.get(timeout=30) == SERVING
        broken.set()
        assert statuses.get(timeout=30) == NOT_SERVING
        broken.clear()
        assert statuses.get(timeout=30) == SERVING
