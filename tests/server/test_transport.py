"""Transport details: message limits, a 100,000-row Predict, reflection, the non-loopback warning."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
import pytest

from preimage.server.app import SERVICE_NAMES, start_server
from preimage.server.settings import Settings
from preimage.v1 import inference_pb2, tensor_pb2
from tests.models import onnx_eval
from tests.server.conftest import Stubs, connect, register
from tests.server.test_end_to_end import as_array, to_matrix


def test_hundred_thousand_row_predict(stubs: Stubs, example_model_bytes: bytes) -> None:
    register(stubs, "difficulty", example_model_bytes)
    X = np.random.default_rng(3).random((100_000, 10), dtype=np.float32)
    out = stubs.inference.Predict(
        inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(X)), timeout=120
    )
    assert out.outputs.rows == 100_000
    np.testing.assert_allclose(as_array(out.outputs), onnx_eval(example_model_bytes, X), rtol=1e-5, atol=1e-5)


def raw_matrix(X: np.ndarray) -> tensor_pb2.Matrix:
    return tensor_pb2.Matrix(rows=X.shape[0], cols=X.shape[1], raw=np.ascontiguousarray(X, dtype="<f4").tobytes())


def from_raw(matrix: tensor_pb2.Matrix) -> np.ndarray:
    assert not matrix.values, "a raw answer carries no packed values"
    return np.frombuffer(matrix.raw, dtype="<f4").reshape(matrix.rows, matrix.cols)


@pytest.mark.parametrize("raw_in", [False, True], ids=["values-in", "raw-in"])
@pytest.mark.parametrize("raw_out", [False, True], ids=["values-out", "raw-out"])
def test_predict_matrix_encodings(stubs: Stubs, example_model_bytes: bytes, raw_in: bool, raw_out: bool) -> None:
    register(stubs, "difficulty", example_model_bytes)
    X = np.random.default_rng(5).random((257, 10), dtype=np.float32)
    request = inference_pb2.PredictRequest(
        model_ref="difficulty", inputs=raw_matrix(X) if raw_in else to_matrix(X), raw_outputs=raw_out
    )
    out = stubs.inference.Predict(request, timeout=60).outputs
    got = from_raw(out) if raw_out else as_array(out)
    assert not raw_out or len(out.raw) == 4 * 257
    np.testing.assert_allclose(got, onnx_eval(example_model_bytes, X), rtol=1e-5, atol=1e-5)


def test_invert_raw_patterns(stubs: Stubs, example_model_bytes: bytes) -> None:
    register(stubs, "difficulty", example_model_bytes)
    request = inference_pb2.InvertRequest(
        model_ref="difficulty", targets=[inference_pb2.Target(value=7.0)], count=300, seed=3, raw_outputs=True
    )
    batches = [r.patterns for r in stubs.inference.Invert(request, timeout=120) if r.WhichOneof("event") == "patterns"]
    X = np.concatenate([from_raw(b.inputs) for b in batches])
    outputs = np.concatenate([from_raw(b.outputs) for b in batches])
    assert X.shape == (300, 10)
    independent = onnx_eval(example_model_bytes, X)
    np.testing.assert_allclose(outputs, independent, atol=1e-5)
    assert np.all(np.abs(independent - 7.0) <= 1e-3 + 1e-5)


def test_message_over_limit_is_resource_exhausted(tmp_path: Path, example_model_bytes: bytes) -> None:
    settings = Settings(registry_dir=tmp_path / "r", address="127.0.0.1:0", max_message_bytes=4 * 2**20)
    with start_server(settings) as running:
        stubs = connect(running.address)
        register(stubs, "difficulty", example_model_bytes)  # chunked uploads fit any limit
        X = np.zeros((200_000, 10), dtype=np.float32)  # 8 MB of floats
        with pytest.raises(grpc.RpcError) as caught:
            stubs.inference.Predict(inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(X)))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Still serving.
        small = stubs.inference.Predict(inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(X[:10])))
        assert small.outputs.rows == 10
        stubs.channel.close()


def test_reflection_behind_flag(tmp_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def services(reflect: bool) -> list[str] | grpc.StatusCode:
        settings = Settings(registry_dir=tmp_path / f"r{reflect}", address="127.0.0.1:0", reflection=reflect)
        with start_server(settings) as running, grpc.insecure_channel(running.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            try:
                response = next(stub.ServerReflectionInfo(iter([request]), timeout=10))
            except grpc.RpcError as exc:
                return exc.code()
            return [s.name for s in response.list_services_response.service]

    assert services(False) == grpc.StatusCode.UNIMPLEMENTED
    listed = services(True)
    assert isinstance(listed, list) and set(SERVICE_NAMES) <= set(listed)
    assert "grpc.health.v1.Health" in listed


def test_non_loopback_without_tls_or_tokens_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests bind only to loopback: the server is told 0.0.0.0, the socket really binds 127.0.0.1.
    real_server = grpc.aio.server

    def loopback_only(*args: object, **kwargs: object) -> grpc.aio.Server:
        server = real_server(*args, **kwargs)  # type: ignore[arg-type]
        bind = server.add_insecure_port
        server.add_insecure_port = lambda address: bind("127.0.0.1:0")  # type: ignore[method-assign]
        return server

    monkeypatch.setattr(grpc.aio, "server", loopback_only)
    with caplog.at_level(logging.WARNING, logger="preimage.server"):
        with start_server(Settings(registry_dir=tmp_path / "a", address="0.0.0.0:0")):
            pass
    assert any("non-loopback" in r.getMessage() and "TLS and tokens" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="preimage.server"):
        with start_server(Settings(registry_dir=tmp_path / "b", address="[::1]:0" if _has_ipv6() else "127.0.0.1:0")):
            pass
    assert not any("non-loopback" in r.getMessage() for r in caplog.records)


def _has_ipv6() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
