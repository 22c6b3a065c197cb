"""Tiny ONNX models built with ``onnx.helper`` and an independent evaluator.

Tests check results by evaluating the ONNX bytes with onnxruntime (or
``onnx.reference``), never with the torch module under test.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EXAMPLE_MODEL = Path(__file__).resolve().parent.parent / "examples" / "difficulty" / "difficulty.onnx"
OPSET = 17

ISSUE_SCHEMA: dict[str, Any] = {
    "inputs": [
        {"name": "speed", "kind": "continuous", "min": 0.0, "max": 1.0},
        {"name": "walls", "kind": "integer", "min": 0, "max": 12},
        {"name": "has_boss", "kind": "binary"},
        {"name": "theme", "kind": "categorical", "levels": ["ice", "lava", "forest"]},
    ],
    "outputs": [{"name": "difficulty"}],
}
"""The issue's example schema: one feature of every kind, 6 model input columns."""


def _model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    d: int,
    m: int,
    metadata: dict[str, str] | None = None,
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", m])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="preimage-tests")
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def linear_onnx(W: np.ndarray, b: np.ndarray | Sequence[float], metadata: dict[str, str] | None = None) -> bytes:
    """``y = x @ W.T + b`` with ``W`` of shape ``m x d``."""
    W = np.asarray(W, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32).reshape(-1)
    m, d = W.shape
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")]
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)]
    return _model(nodes, inits, d, m, metadata)


def mlp_onnx(sizes: Sequence[int], seed: int = 0, activation: str = "Tanh", scale: float = 1.0) -> bytes:
    """A random MLP ``sizes[0] -> ... -> sizes[-1]`` with the given ONNX activation between layers."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current = "x"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        W = (rng.standard_normal((fan_out, fan_in)) * scale / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(W, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [out if last else f"z{i}"], transB=1))
        if not last:
            nodes.append(helper.make_node(activation, [f"z{i}"], [out]))
        current = out
    return _model(nodes, inits, sizes[0], sizes[-1])


def onnx_eval(model: bytes | Path, X: np.ndarray) -> np.ndarray:
    """Evaluate an ONNX model on rows ``X`` with onnxruntime (independent of torch)."""
    import onnxruntime as ort

    data = model.read_bytes() if isinstance(model, Path) else model
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.asarray(X, dtype=np.float32)})[0])
