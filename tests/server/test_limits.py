"""Limits fail cleanly, deadlines and cancellation stop the work."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from preimage.server.app import RunningServer, start_server
from preimage.server.settings import Settings
from preimage.v1 import inference_pb2
from tests.server.conftest import Stubs, connect, register


def long_invert(**budget: Any) -> inference_pb2.InvertRequest:
    """An Invert call that runs until its budget (or the caller) stops it."""
    return inference_pb2.InvertRequest(
        model_ref="difficulty",
        targets=[inference_pb2.Target(value=7.0)],
        count=1_000_000,
        seed=5,
        budget=inference_pb2.InvertBudget(**budget),
    )


@pytest.fixture
def limited(tmp_path: Path, example_model_bytes: bytes) -> Any:
    settings = Settings(
        registry_dir=tmp_path / "r", address="127.0.0.1:0", max_concurrent_inverts=1, shutdown_grace_seconds=0
    )
    running = start_server(settings)
    stubs = connect(running.address)
    register(stubs, "difficulty", example_model_bytes)
    yield running, stubs
    stubs.channel.close()
    running.stop()


def in_flight(running: RunningServer, rpc: str = "Invert") -> float:
    return running.server.metrics.in_flight.labels(rpc)._value.get()


def wait_idle(running: RunningServer, timeout: float = 20) -> None:
    """Until no Invert stream is in flight, then check the process is not burning CPU."""
    deadline = time.monotonic() + timeout
    while in_flight(running) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight(running) == 0
    # Work stopped: over the next second this process uses well under one core.
    time.sleep(0.3)
    cpu = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - cpu < 0.5


def test_calls_beyond_the_limit_queue_and_run_when_a_slot_frees(limited: tuple[RunningServer, Stubs]) -> None:
    running, stubs = limited
    first = stubs.inference.Invert(long_invert(max_seconds=30))
    next(first)  # the first stream holds the only slot
    second = stubs.inference.Invert(long_invert(max_seconds=1), timeout=60)
    metrics = running.server.metrics.registry
    deadline = time.monotonic() + 10
    while metrics.get_sample_value("preimage_queue_depth", {"rpc": "Invert"}) != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metrics.get_sample_value("preimage_queue_depth", {"rpc": "Invert"}) == 1, "the second call waits"
    assert metrics.get_sample_value("preimage_running_calls", {"rpc": "Invert"}) == 1
    first.cancel()
    responses = list(second)
    assert responses[-1].summary.status == inference_pb2.INVERT_STATUS_BUDGET_SPENT
    assert metrics.get_sample_value("preimage_queue_depth", {"rpc": "Invert"}) == 0
    assert metrics.get_sample_value("preimage_queue_wait_seconds_count", {"rpc": "Invert"}) == 2
    wait_idle(running)


def test_a_deadline_the_queue_cannot_meet_is_refused(limited: tuple[RunningServer, Stubs]) -> None:
    running, stubs = limited
    first = stubs.inference.Invert(long_invert(max_seconds=30))
    next(first)
    # Calls have been holding their slot for 20 s on average: a caller that allows 5 s cannot be served in time.
    running.server.runtime.invert_admission.hold_seconds = 20.0
    with pytest.raises(grpc.RpcError) as caught:
        next(stubs.inference.Invert(long_invert(max_seconds=1), timeout=5))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "deadline" in caught.value.details()
    status = rpc_status.from_call(caught.value)
    assert status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    refused = running.server.metrics.registry.get_sample_value(
        "preimage_admission_refused_total", {"rpc": "Invert", "reason": "deadline"}
    )
    assert refused == 1
    first.cancel()
    wait_idle(running)


def test_concurrent_invert_limit_without_a_queue(tmp_path: Path, example_model_bytes: bytes) -> None:
    settings = Settings(
        registry_dir=tmp_path / "r",
        address="127.0.0.1:0",
        max_concurrent_inverts=1,
        invert_queue_size=0,
        shutdown_grace_seconds=0,
    )
    running = start_server(settings)
    stubs = connect(running.address)
    register(stubs, "difficulty", example_model_bytes)
    first = stubs.inference.Invert(long_invert(max_seconds=30))
    next(first)  # the first stream holds the only slot
    with pytest.raises(grpc.RpcError) as caught:
        next(stubs.inference.Invert(long_invert(max_seconds=30), timeout=10))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits" in error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert retry, "a retry hint rides along"
    first.cancel()
    wait_idle(running)
    # The slot is free again.
    response = next(stubs.inference.Invert(long_invert(max_seconds=1), timeout=30))
    assert response.WhichOneof("event") in ("patterns", "summary")
    stubs.channel.close()
    running.stop()


def test_cancel_after_first_batch_stops_worker(limited: tuple[RunningServer, Stubs]) -> None:
    running, stubs = limited
    stream = stubs.inference.Invert(long_invert(max_seconds=60))
    first = next(stream)
    assert first.WhichOneof("event") == "patterns"
    stream.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    wait_idle(running)


def test_deadline_exceeded_stops_work(limited: tuple[RunningServer, Stubs]) -> None:
    running, stubs = limited
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stubs.inference.Invert(long_invert(max_seconds=60), timeout=1.5):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_idle(running)


def test_budget_ends_with_summary(limited: tuple[RunningServer, Stubs]) -> None:
    _, stubs = limited
    responses = list(stubs.inference.Invert(long_invert(max_seconds=1.0), timeout=60))
    summary = responses[-1].summary
    assert summary.status == inference_pb2.INVERT_STATUS_BUDGET_SPENT
    assert 0 < summary.returned < 1_000_000
    assert summary.returned == sum(r.patterns.inputs.rows for r in responses[:-1])
