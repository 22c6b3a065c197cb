"""Small ONNX graphs built with ``onnx.helper`` for the registry tests, good and bad.

Bad models are built without ``onnx.checker`` so each carries exactly the defect
its test is about.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def value(name: str, dims: Sequence[int | str | None], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A tensor value info; ``None`` dims are left unknown."""
    return helper.make_tensor_value_info(name, dtype, list(dims))


def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    opsets: dict[str, int] | None = None,
    ir_version: int = 8,
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """A model from parts, unchecked."""
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    opsets = opsets or {"": OPSET}
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    proto.ir_version = ir_version
    if metadata:
        helper.set_model_props(proto, metadata)
    return proto


def gemm(
    d: int = 3, m: int = 1, *, seed: int = 0, W: np.ndarray | None = None, metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """``y = x @ W.T + b``, with ``x`` of shape ``[batch, d]``."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((m, d)).astype(np.float32) if W is None else np.asarray(W, np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    return model(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
        [value("x", ["batch", d])],
        [value("y", ["batch", m])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")],
        metadata=metadata,
    )


def unary(op: str, d: int = 3, **attributes: object) -> onnx.ModelProto:
    """``y = op(x)`` elementwise on ``[batch, d]``."""
    return model(
        [helper.make_node(op, ["x"], ["y"], **attributes)], [value("x", ["batch", d])], [value("y", ["batch", d])]
    )


def big_mlp(hidden: int, d: int = 8, seed: int = 0) -> bytes:
    """A two-layer tanh MLP whose first weight matrix makes the file about ``4 * hidden * (d + 1)`` bytes."""
    rng = np.random.default_rng(seed)
    W0 = (rng.standard_normal((hidden, d)) / np.sqrt(d)).astype(np.float32)
    b0 = np.zeros(hidden, np.float32)
    W1 = (rng.standard_normal((1, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b1 = np.zeros(1, np.float32)
    proto = model(
        [
            helper.make_node("Gemm", ["x", "W0", "b0"], ["z"], transB=1),
            helper.make_node("Tanh", ["z"], ["h"]),
            helper.make_node("Gemm", ["h", "W1", "b1"], ["y"], transB=1),
        ],
        [value("x", ["batch", d])],
        [value("y", ["batch", 1])],
        [numpy_helper.from_array(a, n) for a, n in ((W0, "W0"), (b0, "b0"), (W1, "W1"), (b1, "b1"))],
    )
    onnx.checker.check_model(proto)
    return proto.SerializeToString()
