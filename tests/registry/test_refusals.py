"""Every refusal: a specific error whose message names the problem, and a registry left unchanged."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from preimage.errors import InvalidArgumentError, ResourceExhaustedError
from preimage.registry import (
    BatchError,
    ExternalDataError,
    GraphCycleError,
    InvalidModelNameError,
    ModelCheckerError,
    ModelTooLargeError,
    NonFiniteWeightError,
    NotDifferentiableError,
    NotOnnxError,
    ParityError,
    Registry,
    TensorCountError,
    TensorShapeError,
    TensorTypeError,
    UnsupportedOperatorError,
    UnsupportedVersionError,
)
from preimage.registry import validate as validate_module
from tests.registry.builders import OPSET, gemm, model, unary, value
from tests.registry.checks import assert_empty, assert_matches_onnxruntime


def _bytes(proto: onnx.ModelProto) -> bytes:
    return proto.SerializeToString()


def _external(tensor: onnx.TensorProto, location: str) -> onnx.TensorProto:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    return tensor


def _truncated() -> bytes:
    data = _bytes(gemm(d=64, m=8))
    return data[: len(data) // 2]


def _newer_opset() -> bytes:
    proto = gemm()
    proto.opset_import[0].version = 999
    return _bytes(proto)


def _newer_ir() -> bytes:
    proto = gemm()
    proto.ir_version = 99
    return _bytes(proto)


def _custom_domain() -> bytes:
    node = helper.make_node("Scramble", ["x"], ["y"], domain="com.example")
    return _bytes(
        model([node], [value("x", ["batch", 3])], [value("y", ["batch", 3])], opsets={"": OPSET, "com.example": 1})
    )


def _checker_failure() -> bytes:
    # Relu has no attribute "alpha": onnx.checker refuses it, nothing earlier does.
    return _bytes(unary("Relu", alpha=0.5))


def _typed(input_type: int, output_type: int) -> bytes:
    node = helper.make_node("Identity", ["x"], ["y"])
    return _bytes(model([node], [value("x", ["batch", 3], input_type)], [value("y", ["batch", 3], output_type)]))


def _no_input() -> bytes:
    const = numpy_helper.from_array(np.ones((2, 3), np.float32), "c")
    return _bytes(model([helper.make_node("Constant", [], ["y"], value=const)], [], [value("y", [2, 3])]))


def _two_inputs() -> bytes:
    node = helper.make_node("Add", ["x", "z"], ["y"])
    return _bytes(model([node], [value("x", ["batch", 3]), value("z", ["batch", 3])], [value("y", ["batch", 3])]))


def _shaped(dims: list[int | str | None]) -> bytes:
    node = helper.make_node("Identity", ["x"], ["y"])
    return _bytes(model([node], [value("x", dims)], [value("y", dims)]))


def _cycle() -> bytes:
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
        helper.make_node("Identity", ["a"], ["y"], name="out"),
    ]
    return _bytes(model(nodes, [value("x", ["batch", 3])], [value("y", ["batch", 3])]))


def _nan_weight() -> bytes:
    W = np.ones((1, 3), np.float32)
    W[0, 1] = np.nan
    return _bytes(gemm(W=W))


def _inf_constant() -> bytes:
    const = numpy_helper.from_array(np.array([1.0, np.inf, 2.0], np.float32), "c")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=const, name="offsets"),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    return _bytes(model(nodes, [value("x", ["batch", 3])], [value("y", ["batch", 3])]))


def _unbatched_reshape() -> bytes:
    # A [batch, 2] result folded into one column: 2 * batch rows come out (skl2onnx does this for
    # multi-output MLPRegressor).
    shape = numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["z"], transB=1),
        helper.make_node("Reshape", ["z", "shape"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.ones((2, 3), np.float32), "W"),
        numpy_helper.from_array(np.zeros(2, np.float32), "b"),
        shape,
    ]
    return _bytes(model(nodes, [value("x", ["batch", 3])], [value("y", [None, 1])], inits))


def _fixed_batch_inside() -> bytes:
    # Works for one row only: the graph reshapes to [1, 3] whatever the batch.
    shape = numpy_helper.from_array(np.array([1, 3], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    return _bytes(model(nodes, [value("x", ["batch", 3])], [value("y", ["batch", 3])], [shape]))


def _constant_output() -> bytes:
    # Float zeros shaped like x: defined for every batch, but no gradient reaches x.
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ConstantOfShape", ["s"], ["y"])]
    return _bytes(model(nodes, [value("x", ["batch", 3])], [value("y", ["batch", 3])]))


REFUSALS: list[tuple[str, Callable[[], bytes], type[Exception], str]] = [
    ("empty", lambda: b"", NotOnnxError, "empty"),
    ("random", lambda: np.random.default_rng(0).bytes(4096), NotOnnxError, "not an ONNX model"),
    ("text", lambda: b"this is a text file, not a model\n" * 20, NotOnnxError, "looks like text"),
    ("truncated", _truncated, NotOnnxError, "not an ONNX model"),
    ("checker", _checker_failure, ModelCheckerError, "alpha"),
    ("unsupported-op", lambda: _bytes(unary("Hardmax")), UnsupportedOperatorError, "ai.onnx::Hardmax"),
    ("custom-domain", _custom_domain, UnsupportedOperatorError, "com.example::Scramble"),
    ("newer-opset", _newer_opset, UnsupportedVersionError, "opset 999"),
    ("newer-ir", _newer_ir, UnsupportedVersionError, "IR version 99"),
    ("int-input", lambda: _typed(TensorProto.INT64, TensorProto.INT64), TensorTypeError, "input 'x' is int64"),
    ("double-input", lambda: _typed(TensorProto.DOUBLE, TensorProto.DOUBLE), TensorTypeError, "double"),
    ("half-output", lambda: _typed(TensorProto.FLOAT, TensorProto.FLOAT16), TensorTypeError, "output 'y' is float16"),
    ("no-input", _no_input, TensorCountError, "exactly one input"),
    ("two-inputs", _two_inputs, TensorCountError, "it has 2 ('x', 'z')"),
    ("rank-3", lambda: _shaped(["batch", 2, 3]), TensorShapeError, "two dimensions"),
    ("fixed-batch", lambda: _shaped([1, 3]), TensorShapeError, "batch dimension is fixed to 1"),
    ("unknown-width", lambda: _shaped(["batch", "n"]), TensorShapeError, "width n"),
    ("cycle", _cycle, GraphCycleError, "first -> second -> first"),
    ("nan-weight", _nan_weight, NonFiniteWeightError, "tensor 'W' holds 1 NaN or infinite"),
    ("inf-constant", _inf_constant, NonFiniteWeightError, "offsets.value"),
    ("rows-folded", _unbatched_reshape, BatchError, "a single row: it returned 2 rows"),
    ("one-row-only", _fixed_batch_inside, BatchError, "batch of 8 rows"),
    ("no-gradient", _constant_output, NotDifferentiableError, "does not depend on the input"),
]


@pytest.mark.parametrize(("data", "error", "fragment"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refused_with_a_specific_message(
    registry: Registry, data: Callable[[], bytes], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as caught:
        registry.register_bytes("m", data())
    assert isinstance(caught.value, InvalidArgumentError)
    assert fragment in str(caught.value)
    assert_empty(registry)


def test_initializers_listed_as_inputs_are_not_inputs(registry: Registry) -> None:
    # IR 3 models list every initializer among the graph inputs; only x is a real input.
    proto = gemm(d=3, m=2)
    proto.graph.input.extend([value("W", [2, 3]), value("b", [2])])
    proto.ir_version = 3
    proto.opset_import[0].version = 9
    data = _bytes(proto)
    record = registry.register_bytes("old-ir", data)
    assert (record.input_width, record.output_width) == (3, 2)
    assert_matches_onnxruntime(registry, "old-ir", data, np.random.default_rng(1).standard_normal((5, 3)))


def test_parity_failure_gives_the_largest_deviation(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    # A conversion that is off by 0.5 on output 0 only: the check must catch it and say so.
    real = validate_module.to_module

    class Shifted(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            return out + torch.tensor([0.5, 0.0])

    monkeypatch.setattr(validate_module, "to_module", lambda proto: Shifted(real(proto)))
    with pytest.raises(ParityError, match=r"largest deviation 0\.5 at row \d+, output 0") as caught:
        registry.register_bytes("m", _bytes(gemm(d=3, m=2)))
    assert caught.value.deviation == pytest.approx(0.5, abs=1e-5)
    assert_empty(registry)


def test_external_data_is_refused_without_opening_the_file(registry: Registry, tmp_path: Path) -> None:
    secret = tmp_path / "weights.bin"
    secret.write_bytes(np.ones(3, np.float32).tobytes())
    opened: list[str] = []

    def audit(event: str, args: tuple[object, ...]) -> None:
        if event == "open" and args and str(args[0]).endswith("weights.bin"):
            opened.append(str(args[0]))

    sys.addaudithook(audit)  # hooks cannot be removed; this one only records opens of weights.bin
    for location in (str(secret), "weights.bin", "../weights.bin"):
        proto = gemm()
        _external(proto.graph.initializer[0], location)
        with pytest.raises(ExternalDataError, match=r"tensor 'W' is stored as external data"):
            registry.register_bytes("m", _bytes(proto))
    assert opened == []
    assert_empty(registry)


def test_external_data_in_a_constant_node_is_refused(registry: Registry) -> None:
    const = _external(numpy_helper.from_array(np.ones(3, np.float32), "c"), "/etc/hostname")
    nodes = [helper.make_node("Constant", [], ["c"], value=const, name="k"), helper.make_node("Add", ["x", "c"], ["y"])]
    with pytest.raises(ExternalDataError, match="'/etc/hostname'"):
        registry.register_bytes("m", _bytes(model(nodes, [value("x", ["batch", 3])], [value("y", ["batch", 3])])))


def test_over_the_size_limit(tmp_path: Path) -> None:
    data = _bytes(gemm(d=64, m=8))
    small = Registry.open(tmp_path / "small", max_model_bytes=len(data) - 1, parity_rows=4)
    try:
        with pytest.raises(ModelTooLargeError, match=f"over the limit of {len(data) - 1} bytes") as caught:
            small.register_bytes("m", data)
        assert isinstance(caught.value, ResourceExhaustedError)
        # Streamed without a declared size: refused by the write that passes the limit.
        with small.begin_upload() as upload:
            upload.write(data[:100])
            with pytest.raises(ModelTooLargeError, match=f"already {len(data)} bytes"):
                upload.write(data[100:])
        assert_empty(small)
    finally:
        small.close()


@pytest.mark.parametrize("name", ["", "Upper", "-lead", ".lead", "a/b", "a:b", "a@b", "x" * 65, "spa ce"])
def test_bad_names(registry: Registry, name: str) -> None:
    with pytest.raises(InvalidModelNameError, match="must match"):
        registry.register_bytes(name, _bytes(gemm()))
    assert_empty(registry)


def test_the_longest_name_is_accepted(registry: Registry) -> None:
    name = "a" + "b._-9" * 12 + "xyz"
    assert len(name) == 64
    assert registry.register_bytes(name, _bytes(gemm())).name == name


def test_external_data_in_a_sparse_initializer_is_refused(registry: Registry) -> None:
    proto = gemm()
    values = _external(numpy_helper.from_array(np.ones(2, np.float32), "W"), "sparse.bin")
    indices = numpy_helper.from_array(np.array([0, 2], np.int64), "W_indices")
    del proto.graph.initializer[0]
    proto.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1, 3]))
    with pytest.raises(ExternalDataError, match=r"tensor 'W' is stored as external data \('sparse.bin'\)"):
        registry.register_bytes("m", _bytes(proto))
    assert_empty(registry)


def test_external_data_inside_a_subgraph_is_refused(registry: Registry) -> None:
    def branch(name: str, location: str | None) -> onnx.GraphProto:
        tensor = numpy_helper.from_array(np.ones(3, np.float32), f"{name}_value")
        if location is not None:
            _external(tensor, location)
        node = helper.make_node("Constant", [], [f"{name}_out"], value=tensor, name=f"{name}_const")
        return helper.make_graph([node], name, [], [value(f"{name}_out", [3])])

    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [
        helper.make_node("If", ["cond"], ["c"], then_branch=branch("then", None), else_branch=branch("else", "x.bin")),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    proto = model(nodes, [value("x", ["batch", 3])], [value("y", ["batch", 3])], [cond])
    with pytest.raises(ExternalDataError, match=r"tensor 'else_const.value' is stored as external data \('x.bin'\)"):
        registry.register_bytes("m", _bytes(proto))
    assert_empty(registry)
