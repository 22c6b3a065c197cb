"""Concurrent Predict calls through a real server: coalesced into shared passes, each answer unchanged."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from preimage.server.app import start_server
from preimage.server.cli import settings_from_args
from preimage.server.settings import Settings
from preimage.v1 import inference_pb2
from tests.models import onnx_eval
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
