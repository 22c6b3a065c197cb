"""predict: one batched pass, outputs checked against onnxruntime; bad rows rejected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from preimage.errors import InvalidArgumentError
from preimage.server.engine import predict
from preimage.server.engine.predict import input_width
from tests.engine.helpers import module_of
from tests.models import EXAMPLE_MODEL, linear_onnx, mlp_onnx, onnx_eval


def test_matches_onnxruntime_on_the_example_model() -> None:
    model = EXAMPLE_MODEL.read_bytes()
    X = np.random.default_rng(0).random((257, 10)).astype(np.float32)
    out = predict(module_of(model), X)
    assert out.dtype == np.float32 and out.shape == (257, 1)
    np.testing.assert_allclose(out, onnx_eval(model, X), rtol=1e-5, atol=1e-5)


def test_vector_outputs_and_float64_rows() -> None:
    model = mlp_onnx([3, 8, 2], seed=1)
    X = np.random.default_rng(1).normal(size=(5, 3))
    out = predict(module_of(model), X)
    assert out.shape == (5, 2)
    np.testing.assert_allclose(out, onnx_eval(model, X), rtol=1e-5, atol=1e-6)


def test_linear_known_answer() -> None:
    W = np.array([[1.0, -2.0, 0.5]])
    module = module_of(linear_onnx(W, [3.0]))
    out = predict(module, np.array([[1.0, 1.0, 2.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(out[:, 0], [3.0, 3.0])


def test_input_width_read_from_the_graph() -> None:
    assert input_width(module_of(EXAMPLE_MODEL.read_bytes())) == 10
    assert input_width(module_of(mlp_onnx([4, 3, 1]))) == 4
    assert input_width(torch.nn.Linear(6, 2)) == 6
    assert input_width(torch.nn.Sequential(torch.nn.Tanh())) is None


@pytest.mark.parametrize(
    ("X", "fragment"),
    [
        (np.zeros((2, 9), dtype=np.float32), "9 columns but the model takes 10"),
        (np.zeros(10, dtype=np.float32), "matrix"),
        (np.array([[0.0] * 9 + [np.nan]]), "1 NaN or infinite value(s)"),
        (np.array([[0.0] * 10, [0.0] * 4 + [np.inf] + [0.0] * 5]), "row 1, column 4"),
        (np.full((1, 10), 1e39), "NaN or infinite"),  # overflows float32
    ],
)
def test_bad_rows_are_invalid_arguments(X: np.ndarray, fragment: str) -> None:
    module = module_of(EXAMPLE_MODEL.read_bytes())
    with pytest.raises(InvalidArgumentError) as info:
        predict(module, X)
    assert info.value.field == "inputs"
    assert fragment in info.value.message


def test_width_from_the_caller_wins_and_model_errors_are_invalid_arguments() -> None:
    module = module_of(EXAMPLE_MODEL.read_bytes())
    with pytest.raises(InvalidArgumentError, match="3 columns but the model takes 4"):
        predict(module, np.zeros((1, 3)), width=4)
    wrapped = torch.nn.Sequential(torch.nn.Tanh(), module)  # width unknown: the model itself rejects the rows
    with pytest.raises(InvalidArgumentError, match="rejected inputs of 7 columns") as info:
        predict(wrapped, np.zeros((2, 7)))
    assert info.value.field == "inputs"


def test_zero_rows() -> None:
    out = predict(module_of(mlp_onnx([3, 4, 2])), np.zeros((0, 3)))
    assert out.shape == (0, 2)
