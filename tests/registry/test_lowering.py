"""Lowering a converted module's simple layers to function calls keeps its bits and its gradients."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx2torch import convert
from torch import fx, nn

from preimage.registry import lowering
from preimage.registry.convert import to_module
from preimage.registry.lowering import lower
from preimage.server.engine.predict import input_width
from tests.models import EXAMPLE_MODEL, mlp_onnx, onnx_eval

ACTIVATIONS = ("Tanh", "Sigmoid", "Relu", "Softplus", "Elu", "LeakyRelu")


def _converted(model: bytes) -> nn.Module:
    return convert(onnx.load_from_string(model)).eval().requires_grad_(False)


def _module_calls(module: nn.Module) -> list[type]:
    assert isinstance(module, fx.GraphModule)
    return [type(module.get_submodule(str(n.target))) for n in module.graph.nodes if n.op == "call_module"]


def _outputs_and_gradients(module: nn.Module, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.from_numpy(X).requires_grad_(True)
    out = module(inputs)
    (gradient,) = torch.autograd.grad(out.sum(), inputs)
    return out.detach(), gradient


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_lowered_mlp_has_the_bits_and_gradients_of_the_converted_module(activation: str) -> None:
    model = mlp_onnx([6, 16, 16, 2], seed=3, activation=activation)
    converted = _converted(model)
    lowered = to_module(onnx.load_from_string(model))
    assert _module_calls(lowered) == [], "every layer of a plain MLP becomes a function call"
    assert input_width(lowered) == 6
    for rows in (1, 5, 64, 1000):
        X = np.random.default_rng(rows).normal(size=(rows, 6)).astype(np.float32)
        out, gradient = _outputs_and_gradients(lowered, X)
        expected_out, expected_gradient = _outputs_and_gradients(converted, X)
        assert torch.equal(out, expected_out)
        assert torch.equal(gradient, expected_gradient)
        # and the model itself, by an evaluator that is neither onnx2torch nor torch
        np.testing.assert_allclose(out.numpy(), onnx_eval(model, X), rtol=1e-5, atol=1e-5)


def test_example_model_lowers_silu_as_sigmoid_times_input() -> None:
    data = EXAMPLE_MODEL.read_bytes()
    lowered = to_module(onnx.load_from_string(data))
    assert _module_calls(lowered) == []
    X = np.random.default_rng(0).random((300, 10), dtype=np.float32)
    with torch.no_grad():
        out = lowered(torch.from_numpy(X)).numpy()
        np.testing.assert_array_equal(out, _converted(data)(torch.from_numpy(X)).numpy())
    np.testing.assert_allclose(out, onnx_eval(data, X), rtol=1e-5, atol=1e-4)


def test_unknown_layers_stay_module_calls() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 1))
    traced = fx.symbolic_trace(net.eval().requires_grad_(False))
    lowered = lower(traced)
    assert _module_calls(lowered) == [nn.LayerNorm]
    X = torch.randn(9, 4)
    with torch.no_grad():
        assert torch.equal(lowered(X), traced(X))


def test_a_rewrite_that_changes_bits_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mlp_onnx([3, 8, 1], seed=1, activation="Sigmoid")
    converted = _converted(model)
    wrong = dict(lowering._RULES)
    wrong[nn.Sigmoid] = lowering._plain(torch.tanh)  # not what nn.Sigmoid computes
    monkeypatch.setattr(lowering, "_RULES", wrong)
    assert lower(converted) is converted


def test_modules_that_are_not_graphs_pass_through() -> None:
    net = nn.Linear(3, 1).eval()
    assert lower(net) is net
