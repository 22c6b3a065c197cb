"""Models as users export them, from PyTorch and scikit-learn, register and match onnxruntime."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from preimage.registry import (
    BatchError,
    ModelCheckerError,
    Registry,
    UnsupportedOperatorError,
)
from tests.registry.checks import assert_matches_onnxruntime


class ConvNet(nn.Module):
    """16 features seen as a 4x4 image: conv, batch norm, SiLU, max pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(self.norm(self.conv(x.reshape(-1, 1, 4, 4))))
        return self.head(nn.functional.max_pool2d(h, 2).flatten(1))


class ActivationNet(nn.Module):
    """Layer and batch normalization and eight activations in one MLP."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(6, 12), nn.LayerNorm(12), nn.GELU()]
        for activation in (nn.Sigmoid(), nn.Softplus(), nn.LeakyReLU(0.1), nn.ELU(), nn.Tanh(), nn.ReLU()):
            layers += [nn.Linear(12, 12), nn.BatchNorm1d(12), activation]
        layers += [nn.Linear(12, 12), nn.SiLU(), nn.Linear(12, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _trained_like(module: nn.Module) -> nn.Module:
    # Non-trivial running statistics, so batch normalization is not the identity.
    torch.manual_seed(0)
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.running_mean.uniform_(-0.5, 0.5)
            child.running_var.uniform_(0.5, 2.0)
            child.weight.data.uniform_(0.5, 1.5)
            child.bias.data.uniform_(-0.2, 0.2)
    return module.eval()


def _export(module: nn.Module, d: int, dynamo: bool) -> bytes:
    x = torch.randn(3, d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(
                module, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False
            )
            assert program is not None
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(
            module,
            (x,),
            buffer,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
        return buffer.getvalue()


def _ops(data: bytes) -> set[str]:
    return {node.op_type for node in onnx.load_model_from_string(data).graph.node}


@pytest.fixture(scope="module")
def torch_exports() -> dict[str, tuple[bytes, int]]:
    """Each network through both exporters: ``{name: (onnx bytes, input width)}``."""
    torch.manual_seed(0)
    exports = {}
    for name, factory, d in (("conv", ConvNet, 16), ("activations", ActivationNet, 6)):
        module = _trained_like(factory())
        for dynamo in (False, True):
            exports[f"{name}-{'dynamo' if dynamo else 'legacy'}"] = (_export(module, d, dynamo), d)
    return exports


def test_torch_exports_cover_the_operators(torch_exports: dict[str, tuple[bytes, int]]) -> None:
    ops = set().union(*(_ops(data) for data, _ in torch_exports.values()))
    wanted = {"Conv", "MaxPool", "Reshape", "BatchNormalization", "LayerNormalization", "Sigmoid", "Softplus"}
    wanted |= {"LeakyRelu", "Elu", "Tanh", "Relu", "Mul", "Gemm"}
    assert wanted <= ops
    assert {"Gelu", "Erf"} & ops


@pytest.mark.parametrize("name", ["conv-legacy", "conv-dynamo", "activations-legacy", "activations-dynamo"])
def test_torch_export_registers_and_matches(
    registry: Registry, torch_exports: dict[str, tuple[bytes, int]], name: str
) -> None:
    data, d = torch_exports[name]
    record = registry.register_bytes(name, data)
    assert record.input_width == d
    X = np.random.default_rng(1).standard_normal((7, d)).astype(np.float32)
    assert_matches_onnxruntime(registry, name, data, X)
    inputs = torch.from_numpy(X).requires_grad_(True)
    registry.load(name).module(inputs).sum().backward()
    assert inputs.grad is not None and torch.isfinite(inputs.grad).all()


def _sklearn_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (300, 4)).astype(np.float32)
    y = X @ np.array([1.0, 2.0, -1.0, 0.5]) + 0.3 * np.sin(3 * X[:, 0])
    return X, y


def _sklearn_models() -> Iterator[tuple[str, object]]:
    from sklearn.linear_model import ElasticNet, LinearRegression, Ridge
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    yield "linear-regression", LinearRegression()
    yield "ridge", Ridge(alpha=0.5)
    yield "elastic-net", ElasticNet(alpha=0.01)
    for activation in ("relu", "tanh", "logistic", "identity"):
        yield (
            f"mlp-{activation}",
            MLPRegressor(hidden_layer_sizes=(16,), activation=activation, max_iter=400, random_state=0),
        )
    yield "standard-scaler-linear", make_pipeline(StandardScaler(), LinearRegression())
    yield (
        "min-max-mlp",
        make_pipeline(MinMaxScaler(), MLPRegressor(hidden_layer_sizes=(8, 8), max_iter=400, random_state=0)),
    )


def _to_onnx(model: object, X: np.ndarray, y: np.ndarray) -> bytes:
    from skl2onnx import to_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)  # type: ignore[attr-defined]
        return to_onnx(model, X[:1]).SerializeToString()


@pytest.mark.parametrize(("name", "model"), list(_sklearn_models()), ids=[n for n, _ in _sklearn_models()])
def test_sklearn_model_registers_and_matches(registry: Registry, name: str, model: object) -> None:
    X, y = _sklearn_data()
    data = _to_onnx(model, X, y)
    record = registry.register_bytes(name, data, default_bounds=(-1.0, 1.0))
    assert (record.input_width, record.output_width) == (4, 1)
    assert_matches_onnxruntime(registry, name, data, X[:20])


def test_sklearn_models_onnx2torch_cannot_serve_are_refused_by_name(registry: Registry) -> None:
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.neural_network import MLPRegressor
    from sklearn.svm import SVR
    from sklearn.tree import DecisionTreeRegressor

    X, y = _sklearn_data()
    cases: list[tuple[object, np.ndarray, type[Exception], str]] = [
        (DecisionTreeRegressor(max_depth=3), y, UnsupportedOperatorError, "ai.onnx.ml::TreeEnsembleRegressor"),
        (SVR(), y, UnsupportedOperatorError, "ai.onnx.ml::SVMRegressor"),
        (KNeighborsRegressor(), y, UnsupportedOperatorError, "ai.onnx::Scan"),
        # skl2onnx folds a two-output MLPRegressor's [batch, 2] into [2 * batch, 1].
        (
            MLPRegressor(hidden_layer_sizes=(8,), max_iter=50, random_state=0),
            np.stack([y, -y], 1),
            BatchError,
            "returned 2 rows",
        ),
    ]
    for model, target, error, fragment in cases:
        with pytest.raises(error, match=fragment):
            registry.register_bytes("refused", _to_onnx(model, X, target))
    assert registry.list() == []


def test_pls_regression_with_a_wrong_declared_shape_is_refused(registry: Registry) -> None:
    from sklearn.cross_decomposition import PLSRegression

    X, y = _sklearn_data()
    with pytest.raises(ModelCheckerError, match="Inferred shape and existing shape differ"):
        registry.register_bytes("pls", _to_onnx(PLSRegression(2), X, y))
