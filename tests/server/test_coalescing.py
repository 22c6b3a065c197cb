"""Concurrent Predict calls through a real server: coalesced into shared passes, each answer unchanged."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from preimage.server.app import start_server
from preimage.server.cli import settings_from_args
from preimage.server.settings import Settings
from preimage.v1 import inference_pb2, registry_pb2
from tests.models import mlp_onnx, onnx_eval
from tests.server.conftest import connect, register
from tests.server.test_end_to_end import as_array, to_matrix


def predict_all(stubs, requests: list[np.ndarray]) -> list[np.ndarray]:
    start = threading.Barrier(len(requests))

    def one(X: np.ndarray) -> np.ndarray:
        start.wait(timeout=30)
        message = inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(X))
        return as_array(stubs.inference.Predict(message, timeout=60).outputs)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_concurrent_predicts_share_passes_and_answer_as_alone(tmp_path: Path, example_model_bytes: bytes) -> None:
    settings = Settings(registry_dir=tmp_path / "r", address="127.0.0.1:0", predict_batch_delay_ms=20)
    rng = np.random.default_rng(5)
    requests = [rng.random((int(k), 10), dtype=np.float32) for k in rng.integers(1, 30, size=16)]
    with start_server(settings) as running:
        stubs = connect(running.address)
        register(stubs, "difficulty", example_model_bytes)
        alone = [predict_all(stubs, [X])[0] for X in requests]
        metrics = running.server.metrics.registry
        before = metrics.get_sample_value("preimage_predict_passes_total")
        together = predict_all(stubs, requests)
        passes = metrics.get_sample_value("preimage_predict_passes_total") - before
        stubs.channel.close()
    for X, a, t in zip(requests, alone, together, strict=False):
        np.testing.assert_array_equal(t, a)
        np.testing.assert_allclose(t, onnx_eval(example_model_bytes, X), rtol=1e-5, atol=1e-5)
    assert passes < len(requests), "concurrent calls shared passes"


def test_device_must_be_one_torch_can_use(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    with pytest.raises(ValueError, match="device"):
        Settings(device="gpu0")
    assert settings_from_args(["--device", "cpu"]).device == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as caught:
            settings_from_args(["--device", "cuda"])
        assert caught.value.code == 2
        assert "--device: device 'cuda' is not usable here" in capsys.readouterr().err


def test_small_predicts_run_inline_and_follow_every_registry_change(tmp_path: Path, example_model_bytes: bytes) -> None:
    settings = Settings(registry_dir=tmp_path / "r", address="127.0.0.1:0")
    other = mlp_onnx([10, 16, 1], seed=9)
    X = np.random.default_rng(9).random((3, 10), dtype=np.float32)

    def predict(stubs) -> tuple[int, np.ndarray]:
        response = stubs.inference.Predict(
            inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(X)), timeout=60
        )
        return response.model.version, as_array(response.outputs)

    with start_server(settings) as running:
        metrics = running.server.metrics.registry

        def inline() -> float:
            return metrics.get_sample_value("preimage_predict_inline_calls_total")

        stubs = connect(running.address)
        register(stubs, "difficulty", example_model_bytes)
        first = predict(stubs)  # cold: resolved and warmed in a worker
        assert inline() == 0
        again = predict(stubs)
        assert inline() == 1, "a warm small call skips the worker hop"
        assert again[0] == first[0] == 1
        np.testing.assert_array_equal(again[1], first[1])
        np.testing.assert_allclose(again[1], onnx_eval(example_model_bytes, X), rtol=1e-5, atol=1e-5)

        register(stubs, "difficulty", other)  # the name now resolves to version 2
        version, out = predict(stubs)
        assert version == 2 and inline() == 1, "a registry write sends the call back through a worker"
        np.testing.assert_allclose(out, onnx_eval(other, X), rtol=1e-5, atol=1e-5)
        assert predict(stubs)[0] == 2 and inline() == 2

        stubs.registry.DeleteModel(registry_pb2.DeleteModelRequest(model_ref="difficulty:2"), timeout=30)
        version, out = predict(stubs)
        assert version == 1
        np.testing.assert_array_equal(out, first[1])
        stubs.registry.DeleteModel(registry_pb2.DeleteModelRequest(model_ref="difficulty", all_versions=True))
        with pytest.raises(grpc.RpcError) as caught:
            predict(stubs)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        stubs.channel.close()


def test_inline_predict_can_be_turned_off(tmp_path: Path, example_model_bytes: bytes) -> None:
    settings = settings_from_args(
        ["--registry", str(tmp_path / "r"), "--address", "127.0.0.1:0", "--predict-inline-max-ms", "0"]
    )
    assert settings.predict_inline_max_ms == 0
    with start_server(settings) as running:
        stubs = connect(running.address)
        register(stubs, "difficulty", example_model_bytes)
        request = inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(np.zeros((1, 10), np.float32)))
        for _ in range(3):
            stubs.inference.Predict(request, timeout=60)
        assert running.server.metrics.registry.get_sample_value("preimage_predict_inline_calls_total") == 0
        stubs.channel.close()


def test_another_process_registering_is_seen_within_the_generation_window(
    tmp_path: Path, example_model_bytes: bytes
) -> None:
    from preimage.registry import Registry
    from preimage.server.runtime import GENERATION_WINDOW

    settings = Settings(registry_dir=tmp_path / "r", address="127.0.0.1:0")
    other = mlp_onnx([10, 16, 1], seed=11)
    X = np.random.default_rng(11).random((2, 10), dtype=np.float32)
    with start_server(settings) as running:
        stubs = connect(running.address)
        register(stubs, "difficulty", example_model_bytes)

        def version() -> int:
            message = inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(X))
            return int(stubs.inference.Predict(message, timeout=60).model.version)

        assert version() == 1 and version() == 1  # warm: the second runs inline
        elsewhere = Registry.open(tmp_path / "r")  # another process's registry on the same folder
        try:
            elsewhere.register_bytes("difficulty", other)
        finally:
            elsewhere.close()
        registered = time.monotonic()
        while version() != 2:
            assert time.monotonic() - registered < GENERATION_WINDOW + 5, "the other process's version never appeared"
            time.sleep(GENERATION_WINDOW / 4)
        stubs.channel.close()
