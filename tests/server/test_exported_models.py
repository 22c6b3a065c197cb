"""Models exported from PyTorch (conv, normalization, activations) and scikit-learn register and invert
through a real server; every pattern is checked with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from preimage.v1 import inference_pb2
from tests.models import onnx_eval
from tests.registry.test_exporters import (
    ActivationNet,
    ConvNet,
    _export,
    _sklearn_data,
    _sklearn_models,
    _to_onnx,
    _trained_like,
)
from tests.server.conftest import Stubs, register
from tests.server.test_end_to_end import as_array


def exported() -> list[tuple[str, bytes, int]]:
    import torch

    torch.manual_seed(0)
    models = [
        ("conv", _export(_trained_like(ConvNet()), 16, dynamo=True), 16),
        ("activations", _export(_trained_like(ActivationNet()), 6, dynamo=False), 6),
    ]
    X, y = _sklearn_data()
    for name, model in _sklearn_models():
        if name in ("mlp-tanh", "min-max-mlp"):
            models.append((f"sk-{name}", _to_onnx(model, X, y), 4))
    return models


@pytest.mark.parametrize(("name", "data", "width"), exported(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("mode", [inference_pb2.INVERT_MODE_SAMPLE, inference_pb2.INVERT_MODE_OPTIMIZE])
def test_exported_model_registers_and_inverts(stubs: Stubs, name: str, data: bytes, width: int, mode: int) -> None:
    register(stubs, name, data, bounds=(-1.0, 1.0))
    # A reachable target: the model's output at a random point inside the bounds.
    x0 = np.random.default_rng(2).uniform(-1, 1, (1, width)).astype(np.float32)
    y0 = onnx_eval(data, x0)[0]
    responses = list(
        stubs.inference.Invert(
            inference_pb2.InvertRequest(
                model_ref=name,
                targets=[inference_pb2.Target(value=float(v)) for v in y0],
                count=64,
                tolerance=1e-2,
                seed=3,
                mode=mode,
                budget=inference_pb2.InvertBudget(max_seconds=30),
            ),
            timeout=120,
        )
    )
    summary = responses[-1].summary
    X = np.concatenate([as_array(r.patterns.inputs) for r in responses[:-1]]) if len(responses) > 1 else None
    assert summary.returned == 64, summary.message
    assert X is not None and np.all((X >= -1) & (X <= 1))
    assert np.all(np.abs(onnx_eval(data, X) - y0[None, :]) <= 1e-2)
