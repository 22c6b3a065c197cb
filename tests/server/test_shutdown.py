"""SIGTERM drains: in-flight streams finish within the grace period, new calls are refused, exit 0."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from preimage.v1 import inference_pb2, registry_pb2
from tests.process import ServerProcess
from tests.server.conftest import connect, register


def stream_request(seconds: float) -> inference_pb2.InvertRequest:
    return inference_pb2.InvertRequest(
        model_ref="difficulty",
        targets=[inference_pb2.Target(value=7.0)],
        count=1_000_000,
        seed=2,
        budget=inference_pb2.InvertBudget(max_seconds=seconds),
    )


def consume(stream: Any, into: list[Any]) -> None:
    try:
        for response in stream:
            into.append(response)
    except grpc.RpcError as exc:
        into.append(exc)


def test_sigterm_lets_stream_finish(tmp_path: Path, example_model_bytes: bytes) -> None:
    with ServerProcess(tmp_path / "r", "--shutdown-grace", "30", "--log-format", "json") as server:
        server.wait_serving()
        stubs = connect(server.address)
        register(stubs, "difficulty", example_model_bytes)
        stream = stubs.inference.Invert(stream_request(seconds=4.0), timeout=60)
        received: list[Any] = [next(stream)]
        reader = threading.Thread(target=consume, args=(stream, received))
        reader.start()
        assert server.terminate_async() is None
        time.sleep(0.5)
        # Draining: new calls are refused.
        fresh = connect(server.address)
        with pytest.raises(grpc.RpcError) as caught:
            fresh.registry.ListModels(registry_pb2.ListModelsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        fresh.channel.close()
        reader.join(60)
        assert not any(isinstance(r, grpc.RpcError) for r in received), received[-1]
        summary = received[-1].summary
        assert summary.status == inference_pb2.INVERT_STATUS_BUDGET_SPENT and summary.returned > 0
        assert server.process.wait(60) == 0
        stubs.channel.close()
        # One structured access-log line per request, in JSON.
        access = [json.loads(line) for line in server.stderr_lines if '"logger": "preimage.access"' in line]
        assert {entry["rpc"] for entry in access} >= {"RegisterModel", "Invert"}
        invert_line = next(entry for entry in access if entry["rpc"] == "Invert")
        assert invert_line["code"] == "OK" and invert_line["model_ref"] == "difficulty:1"
        assert invert_line["duration_ms"] > 0 and invert_line["request_id"]


def test_sigterm_cancels_streams_past_grace(tmp_path: Path, example_model_bytes: bytes) -> None:
    with ServerProcess(tmp_path / "r", "--shutdown-grace", "1") as server:
        server.wait_serving()
        stubs = connect(server.address)
        register(stubs, "difficulty", example_model_bytes)
        stream = stubs.inference.Invert(stream_request(seconds=60.0), timeout=120)
        received: list[Any] = [next(stream)]
        started = time.monotonic()
        server.terminate_async()
        consume(stream, received)
        assert isinstance(received[-1], grpc.RpcError)
        assert received[-1].code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert server.process.wait(60) == 0
        assert time.monotonic() - started < 30
        stubs.channel.close()


def test_request_id_from_metadata_is_logged(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "r", "--log-format", "json") as server:
        server.wait_serving()
        stubs = connect(server.address)
        with pytest.raises(grpc.RpcError):
            stubs.registry.GetModel(
                registry_pb2.GetModelRequest(model_ref="nosuch"), metadata=[("x-request-id", "abc123")]
            )
        stubs.channel.close()
        assert server.terminate() == 0
    lines = [json.loads(line) for line in server.stderr_lines if "abc123" in line]
    assert lines and lines[0]["code"] == "NOT_FOUND" and lines[0]["model_ref"] == "nosuch"
