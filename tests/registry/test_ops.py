"""What the registry adds to onnx2torch: newer opsets, Gelu, Reshape allowzero, ai.onnx.ml, down-conversion."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import defs, helper, numpy_helper

from preimage.registry import ConversionError, Registry, UnsupportedOperatorError
from preimage.registry.ops import added_converters
from tests.registry.builders import model, value
from tests.registry.checks import assert_matches_onnxruntime

X = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)


def _weights(name: str, rows: int = 4, cols: int = 4, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [
        numpy_helper.from_array(rng.standard_normal((rows, cols)).astype(np.float32), f"{name}W"),
        numpy_helper.from_array(rng.standard_normal(rows).astype(np.float32), f"{name}b"),
    ]


def _register(registry: Registry, name: str, nodes: list, initializers: list, opsets: dict[str, int]) -> bytes:
    proto = model(
        nodes, [value("x", ["batch", 4])], [value("y", ["batch", 4])], initializers, opsets=opsets, ir_version=10
    )
    data = proto.SerializeToString()
    registry.register_bytes(name, data)
    assert_matches_onnxruntime(registry, name, data, X)
    return data


def test_type_only_versions_keep_the_same_contract() -> None:
    aliases = [c for c in added_converters() if c.reason.startswith("same attributes")]
    assert {("", "Reshape", 19), ("", "Constant", 19), ("", "Identity", 19)} <= {
        (c.domain, c.op_type, c.version) for c in aliases
    }
    for added in aliases:
        base_version = int(added.reason.rsplit("-", 1)[1])
        new, base = (
            defs.get_schema(added.op_type, added.version, added.domain),
            defs.get_schema(added.op_type, base_version, added.domain),
        )
        assert sorted(new.attributes) == sorted(base.attributes)
        assert [i.name for i in new.inputs] == [i.name for i in base.inputs]
        assert new.doc == base.doc


def test_opset_22_activations(registry: Registry) -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "aW", "ab"], ["h"], transB=1),
        helper.make_node("Softplus", ["h"], ["s"]),
        helper.make_node("Elu", ["s"], ["e"], alpha=0.7),
        helper.make_node("HardSigmoid", ["e"], ["y"]),
    ]
    _register(registry, "opset22", nodes, _weights("a"), {"": 22})


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_20(registry: Registry, approximate: str) -> None:
    nodes = [helper.make_node("Gemm", ["x", "aW", "ab"], ["h"], transB=1)]
    nodes.append(helper.make_node("Gelu", ["h"], ["y"], approximate=approximate))
    _register(registry, f"gelu-{approximate}", nodes, _weights("a"), {"": 20})


def test_reshape_allowzero(registry: Registry) -> None:
    shape = numpy_helper.from_array(np.array([-1, 2, 2], np.int64), "shape")
    back = numpy_helper.from_array(np.array([-1, 4], np.int64), "back")
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], allowzero=1),
        helper.make_node("Tanh", ["r"], ["t"]),
        helper.make_node("Reshape", ["t", "back"], ["y"], allowzero=1),
    ]
    _register(registry, "allowzero", nodes, [shape, back], {"": 19})


def test_reduce_18_goes_through_down_conversion(registry: Registry) -> None:
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=1),
        helper.make_node("Sub", ["x", "mean"], ["y"]),
    ]
    _register(registry, "reduce18", nodes, [axes], {"": 18})


def test_explicit_ai_onnx_domain(registry: Registry) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"], domain="ai.onnx")]
    _register(registry, "spelled", nodes, [], {"ai.onnx": 17})


def test_ml_linear_regressor_and_scaler(registry: Registry) -> None:
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node(
            "Scaler", ["x"], ["s"], domain="ai.onnx.ml", offset=rng.standard_normal(4).tolist(), scale=[0.5] * 4
        ),
        helper.make_node(
            "LinearRegressor",
            ["s"],
            ["y"],
            domain="ai.onnx.ml",
            coefficients=rng.standard_normal(16).tolist(),
            intercepts=rng.standard_normal(4).tolist(),
            targets=4,
        ),
    ]
    _register(registry, "ml", nodes, [], {"": 17, "ai.onnx.ml": 3})


def test_ml_linear_regressor_post_transform_is_refused(registry: Registry) -> None:
    node = helper.make_node(
        "LinearRegressor", ["x"], ["y"], domain="ai.onnx.ml", coefficients=[1.0] * 4, post_transform="PROBIT"
    )
    proto = model([node], [value("x", ["batch", 4])], [value("y", ["batch", 1])], opsets={"": 17, "ai.onnx.ml": 3})
    with pytest.raises(ConversionError, match="post_transform='PROBIT'"):
        registry.register_bytes("probit", proto.SerializeToString())


def test_no_down_conversion_past_an_operator_without_one(registry: Registry) -> None:
    # Gelu-20 has no opset-17 form, so ReduceMean-18 cannot be down-converted beside it.
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("Gelu", ["x"], ["g"]),
        helper.make_node("ReduceMean", ["g", "axes"], ["m"], keepdims=1),
        helper.make_node("Sub", ["g", "m"], ["y"]),
    ]
    proto = model(nodes, [value("x", ["batch", 4])], [value("y", ["batch", 4])], [axes], opsets={"": 20})
    with pytest.raises(UnsupportedOperatorError, match=r"ai\.onnx::ReduceMean \(opset 20\)"):
        registry.register_bytes("mixed", proto.SerializeToString())
