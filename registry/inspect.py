"""Static checks of ONNX bytes: everything that can be refused without running the model.

The bytes are parsed with ``onnx.load_model_from_string`` and never with a base
path, so no tensor is ever read from a file the model names; a model holding
any external tensor is refused before anything else reads its tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, defs, helper, numpy_helper

from preimage.registry.errors import (
    ExternalDataError,
    GraphCycleError,
    ModelCheckerError,
    NonFiniteWeightError,
    NotOnnxError,
    TensorCountError,
    TensorShapeError,
    TensorTypeError,
    UnsupportedVersionError,
)
from preimage.registry.ops import ML_DOMAIN, convertible_model, normalize_domains

__all__ = ["SCHEMA_METADATA_KEY", "Inspection", "inspect_model", "parse_model"]

SCHEMA_METADATA_KEY = "preimage.schema"
"""The ``metadata_props`` key whose value, when present, is the model's feature schema as JSON."""

_NEWEST_ML_OPSET = max(row[3] for row in helper.VERSION_TABLE)
_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


@dataclass(frozen=True)
class Inspection:
    """A model that passed every static check.

    Attributes:
        model: The parsed model, domains normalized (``"ai.onnx"`` spelled ``""``).
        convertible: ``model``, or a down-converted copy, that onnx2torch can convert.
        input_name: Name of the single graph input.
        input_width: ``n`` of its ``[batch, n]`` shape.
        output_name: Name of the single graph output.
        declared_output_width: ``m`` of the output's declared ``[batch, m]`` shape, when fixed.
        metadata_schema: The ``preimage.schema`` metadata value, when present.
    """

    model: onnx.ModelProto
    convertible: onnx.ModelProto
    input_name: str
    input_width: int
    output_name: str
    declared_output_width: int | None
    metadata_schema: str | None


def parse_model(data: bytes) -> onnx.ModelProto:
    """Parse serialized ONNX bytes into a model with normalized domains. Raises :class:`NotOnnxError`."""
    if not data:
        raise NotOnnxError("the file is empty (0 bytes)")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        hint = " (it looks like text)" if _looks_like_text(data) else " (truncated or corrupt?)"
        raise NotOnnxError(f"the bytes do not parse as an ONNX protobuf{hint}: {exc}") from None
    # Random bytes sometimes parse as a protobuf with none of the fields an ONNX model needs.
    missing = [
        what
        for what, ok in (
            ("an IR version", model.ir_version > 0),
            ("a graph", model.HasField("graph")),
            ("an operator-set import", len(model.opset_import) > 0),
        )
        if not ok
    ]
    if missing:
        raise NotOnnxError(f"it parses as protobuf but has no {' and no '.join(missing)} (truncated or random bytes?)")
    normalize_domains(model)
    return model


def inspect_model(data: bytes) -> Inspection:
    """Run every static check on ONNX bytes.

    Raises:
        InvalidModelError: A subclass naming the first problem found.
    """
    model = parse_model(data)
    _check_versions(model)
    for name, tensor in _tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            raise ExternalDataError(name, location)
    graph = model.graph
    initializers = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    # Before IR 4 every initializer was also listed as a graph input; those are not real inputs.
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise TensorCountError("input", [v.name for v in inputs])
    if len(graph.output) != 1:
        raise TensorCountError("output", [v.name for v in graph.output])
    input_width = _check_value(inputs[0], "input")
    assert input_width is not None  # _check_value refuses an input without a fixed width
    declared_output_width = _check_value(graph.output[0], "output")
    _check_acyclic(graph, {inputs[0].name} | initializers)
    convertible = convertible_model(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelCheckerError(_first_line(str(exc))) from None
    _check_finite(model)
    metadata = next((p.value for p in model.metadata_props if p.key == SCHEMA_METADATA_KEY), None)
    return Inspection(
        model, convertible, inputs[0].name, input_width, graph.output[0].name, declared_output_width, metadata
    )


def _check_versions(model: onnx.ModelProto) -> None:
    if model.ir_version > onnx.IR_VERSION:
        raise UnsupportedVersionError("IR version", model.ir_version, onnx.IR_VERSION)
    for opset in model.opset_import:
        if opset.domain == "" and opset.version > defs.onnx_opset_version():
            raise UnsupportedVersionError("opset", opset.version, defs.onnx_opset_version())
        if opset.domain == ML_DOMAIN and opset.version > _NEWEST_ML_OPSET:
            raise UnsupportedVersionError(f"opset ({ML_DOMAIN})", opset.version, _NEWEST_ML_OPSET)


def _check_value(value: onnx.ValueInfoProto, role: str) -> int | None:
    """Check a graph input or output is a float32 ``[batch, n]`` tensor; return ``n`` when fixed."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise TensorTypeError(role, value.name, f"a {kind or 'value of unknown type'}, not a tensor")
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type != TensorProto.FLOAT:
        dtype = TensorProto.DataType.Name(tensor_type.elem_type).lower() if tensor_type.elem_type else "untyped"
        raise TensorTypeError(role, value.name, dtype)
    if not tensor_type.HasField("shape"):
        if role == "input":
            raise TensorShapeError(role, value.name, "unknown", "the input must declare its shape [batch, n]")
        return None  # outputs are measured by evaluation
    dims = tensor_type.shape.dim
    shown = "[" + ", ".join(d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in dims) + "]"
    if len(dims) != 2:
        raise TensorShapeError(role, value.name, shown, f"the {role} must have two dimensions, [batch, n]")
    if dims[0].HasField("dim_value"):
        raise TensorShapeError(
            role,
            value.name,
            shown,
            f"its batch dimension is fixed to {dims[0].dim_value}; export it with a dynamic batch axis "
            "(torch.onnx.export dynamic_axes / dynamic_shapes)",
        )
    if dims[1].HasField("dim_value") and dims[1].dim_value > 0:
        return int(dims[1].dim_value)
    if role == "input":
        raise TensorShapeError(role, value.name, shown, "its second dimension (the width n) must be a fixed number")
    return None


def _check_acyclic(graph: onnx.GraphProto, available: set[str]) -> None:
    """Refuse a graph whose nodes depend on each other in a cycle (checked before the checker,
    whose message would only say the nodes are not sorted)."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    # Depth-first search over "node i reads an output of node j" edges; grey nodes are on the stack.
    state = [0] * len(graph.node)
    for start in range(len(graph.node)):
        if state[start]:
            continue
        stack: list[tuple[int, Iterator[int]]] = [(start, _predecessors(graph.node[start], producer, available))]
        state[start] = 1
        while stack:
            index, preds = stack[-1]
            nxt = next(preds, None)
            if nxt is None:
                state[index] = 2
                stack.pop()
            elif state[nxt] == 1:
                path = [i for i, _ in stack]
                cycle = [*path[path.index(nxt) :], nxt]
                raise GraphCycleError([graph.node[i].name or f"#{i} {graph.node[i].op_type}" for i in cycle])
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, _predecessors(graph.node[nxt], producer, available)))


def _predecessors(node: onnx.NodeProto, producer: dict[str, int], available: set[str]) -> Iterator[int]:
    for name in node.input:
        if name and name not in available and name in producer:
            yield producer[name]


def _tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """Every tensor stored in the model: initializers, sparse tensors, tensor attributes, in subgraphs
    and in model-local functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, TensorProto]]:
    for tensor in graph.initializer:
        yield tensor.name, tensor
    for sparse in graph.sparse_initializer:
        yield sparse.values.name, sparse.values
        yield sparse.values.name + " (indices)", sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[tuple[str, TensorProto]]:
    where = node.name or node.op_type
    for attribute in node.attribute:
        label = f"{where}.{attribute.name}"
        if attribute.HasField("t"):
            yield label, attribute.t
        for tensor in attribute.tensors:
            yield label, tensor
        sparse_tensors = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
        for sparse in (*sparse_tensors, *attribute.sparse_tensors):
            yield label, sparse.values
            yield label + " (indices)", sparse.indices
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for sub in attribute.graphs:
            yield from _graph_tensors(sub)


def _check_finite(model: onnx.ModelProto) -> None:
    for name, tensor in _tensors(model):
        if tensor.data_type not in _FLOATS:
            continue
        values = numpy_helper.to_array(tensor)
        if values.dtype not in (np.float16, np.float32, np.float64):
            values = values.astype(np.float32)  # bfloat16 comes back as an ml_dtypes type
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise NonFiniteWeightError(name, bad, int(values.size))
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.name in ("value_float", "value_floats"):
                values = np.asarray([attribute.f] if attribute.name == "value_float" else attribute.floats)
                bad = int(values.size - np.count_nonzero(np.isfinite(values)))
                if bad:
                    raise NonFiniteWeightError(f"{node.name or node.op_type}.{attribute.name}", bad, int(values.size))


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:3])[:500] if lines else "no detail"
