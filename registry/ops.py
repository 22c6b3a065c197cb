"""Which ONNX operators the registry can convert, and the converters it adds to onnx2torch.

onnx2torch 1.5 stops at operator set 17 for several operators, while current
exporters (``torch.onnx.export`` in torch 2.x) write opset 18 and later. The
registry closes the gap in three ways, all checked again by the parity test at
registration (the converted module must agree with ``onnx.reference``):

* **Type-only versions.** An operator version whose attributes (with defaults),
  inputs, outputs and documentation are identical to the newest version
  onnx2torch converts differs only in the tensor types it accepts (``Reshape-19``
  adds float8, for example), so the same converter is registered for it. The
  rule is computed against the installed onnx, and stops at the first version
  that changes anything else.
* **Cast 19 and later**, whose new attributes only act on 8-bit floats, which
  the Cast converter refuses anyway.
* **New converters** for ``Gelu`` (opset 20), for ``Reshape`` with
  ``allowzero=1`` (the dynamo exporter writes it on every Reshape), and for the
  two ``ai.onnx.ml`` operators scikit-learn's linear models and scalers export
  to (``LinearRegressor``, ``Scaler``).
* **Down-conversion.** A model that still has an unconvertible operator at its
  opset is converted with ``onnx.version_converter`` to opset
  :data:`DOWNGRADE_OPSET` and tried again (``ReduceMean-18`` with ``axes`` as an
  input becomes ``ReduceMean-13``, for example).

onnx2torch's converter registry is its documented extension point
(``onnx2torch.node_converters.registry.add_converter``); importing this module
registers the additions once per process, and lets onnx2torch name modules of
``ai.onnx.ml`` nodes (torch refuses the dots in the domain).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import onnx
import torch
from onnx import defs, version_converter
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import nn

from preimage.registry.errors import UnsupportedOperatorError

__all__ = [
    "DOWNGRADE_OPSET",
    "STANDARD_DOMAINS",
    "AddedConverter",
    "added_converters",
    "convertible_model",
    "find_unsupported",
    "normalize_domains",
]

log = logging.getLogger(__name__)

ML_DOMAIN = "ai.onnx.ml"
STANDARD_DOMAINS = frozenset({"", ML_DOMAIN})
"""Operator domains that are not custom ("ai.onnx" is normalized to "")."""

DOWNGRADE_OPSET = 17
"""The ai.onnx opset a model is down-converted to when its own opset has operators onnx2torch lacks."""


@dataclass(frozen=True)
class AddedConverter:
    """One converter this module added to onnx2torch."""

    domain: str
    op_type: str
    version: int
    reason: str


_ADDED: list[AddedConverter] = []


def added_converters() -> tuple[AddedConverter, ...]:
    """Every converter this module registered with onnx2torch in this process."""
    return tuple(_ADDED)


def _register(domain: str, op_type: str, version: int, converter: object, reason: str) -> None:
    key = OperationDescription(domain=domain, operation_type=op_type, version=version)
    # A newer onnx2torch may already convert it; its own converter wins.
    if key not in _CONVERTER_REGISTRY:
        _CONVERTER_REGISTRY[key] = converter
        _ADDED.append(AddedConverter(domain, op_type, version, reason))


# -- type-only versions ------------------------------------------------------------------------


def _contract(schema: defs.OpSchema) -> tuple[object, ...]:
    attributes = sorted((name, a.default_value.SerializeToString()) for name, a in schema.attributes.items())
    inputs = [(i.name, i.option) for i in schema.inputs]
    outputs = [(o.name, o.option) for o in schema.outputs]
    return attributes, inputs, outputs, schema.doc


def _register_type_only_versions() -> None:
    converted: dict[tuple[str, str], set[int]] = defaultdict(set)
    for key in list(_CONVERTER_REGISTRY):
        converted[(key.domain, key.operation_type)].add(key.version)
    history: dict[tuple[str, str], list[defs.OpSchema]] = defaultdict(list)
    for schema in defs.get_all_schemas_with_history():
        history[(schema.domain, schema.name)].append(schema)
    for (domain, op_type), versions in sorted(converted.items()):
        newest = max(versions)
        try:
            base = defs.get_schema(op_type, newest, domain)
        except defs.SchemaError:
            continue
        converter = _CONVERTER_REGISTRY[OperationDescription(domain, op_type, newest)]
        for schema in sorted(history[(domain, op_type)], key=lambda s: s.since_version):
            if schema.since_version <= newest:
                continue
            if _contract(schema) != _contract(base):
                break  # a real change: this and every later version need their own converter
            _register(
                domain,
                op_type,
                schema.since_version,
                converter,
                f"same attributes, inputs and documentation as {op_type}-{base.since_version}",
            )


def _register_cast_versions() -> None:
    # Cast-19 added "saturate" and Cast-24 "round_mode"; both only act on casts to 8-bit (and smaller)
    # float types, which onnx2torch's Cast converter refuses anyway. For every type it converts, the
    # newer versions mean exactly what Cast-13 means.
    converter = _CONVERTER_REGISTRY.get(OperationDescription("", "Cast", 13))
    if converter is None:
        return
    for schema in defs.get_all_schemas_with_history():
        if schema.domain == "" and schema.name == "Cast" and schema.since_version > 13:
            _register("", "Cast", schema.since_version, converter, "Cast-13 (saturate/round_mode: 8-bit floats only)")


# -- new converters ------------------------------------------------------------------------------


class _Gelu(nn.Module, OnnxToTorchModule):
    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate=self.approximate)


def _convert_gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu approximate={approximate!r}")
    return OperationConverterResult(_Gelu(approximate), onnx_mapping_from_node(node))


class _LinearRegressor(nn.Module, OnnxToTorchModule):
    """``ai.onnx.ml.LinearRegressor`` with ``post_transform="NONE"``: ``X @ W.T + b``."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)  # the operator reads a 1-D input as one row
        return x.to(self.weight.dtype) @ self.weight.T + self.bias


def _convert_linear_regressor(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attributes = node.attributes
    if attributes.get("post_transform", "NONE") != "NONE":
        raise NotImplementedError(f"LinearRegressor post_transform={attributes['post_transform']!r}")
    targets = int(attributes.get("targets", 1))
    coefficients = torch.tensor(attributes.get("coefficients", []), dtype=torch.float32)
    if targets < 1 or coefficients.numel() == 0 or coefficients.numel() % targets:
        raise NotImplementedError(f"LinearRegressor with {coefficients.numel()} coefficients for {targets} targets")
    intercepts = torch.tensor(attributes.get("intercepts", [0.0] * targets), dtype=torch.float32)
    if intercepts.numel() != targets:
        raise NotImplementedError(f"LinearRegressor with {intercepts.numel()} intercepts for {targets} targets")
    weight = coefficients.reshape(targets, -1)
    return OperationConverterResult(_LinearRegressor(weight, intercepts), onnx_mapping_from_node(node))


class _Scaler(nn.Module, OnnxToTorchModule):
    """``ai.onnx.ml.Scaler``: ``(X - offset) * scale`` as float32."""

    offset: torch.Tensor
    scale: torch.Tensor

    def __init__(self, offset: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("offset", offset)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) - self.offset) * self.scale


def _convert_scaler(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    offset = torch.tensor(node.attributes.get("offset", [0.0]), dtype=torch.float32)
    scale = torch.tensor(node.attributes.get("scale", [1.0]), dtype=torch.float32)
    return OperationConverterResult(_Scaler(offset, scale), onnx_mapping_from_node(node))


class _ReshapeAllowZero(nn.Module, OnnxToTorchModule):
    """``Reshape`` with ``allowzero=1``: a 0 in the shape is a literal empty dimension, as in torch."""

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.reshape(x, [int(size) for size in shape])


def _with_allowzero(converter: Callable[[OnnxNode, OnnxGraph], OperationConverterResult]) -> object:
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        if node.attributes.get("allowzero", 0) == 1:
            return OperationConverterResult(_ReshapeAllowZero(), onnx_mapping_from_node(node))
        return converter(node, graph)

    return convert


def _register_reshape_allowzero() -> None:
    # onnx2torch refuses allowzero=1, which torch.onnx.export(dynamo=True) writes on every Reshape.
    for key in [k for k in _CONVERTER_REGISTRY if k.domain == "" and k.operation_type == "Reshape"]:
        if key.version >= 14:  # allowzero exists since Reshape-14
            _CONVERTER_REGISTRY[key] = _with_allowzero(_CONVERTER_REGISTRY[key])
            _ADDED.append(AddedConverter("", "Reshape", key.version, "allowzero=1 as torch.reshape"))


def _patch_node_names() -> None:
    """onnx2torch names each torch submodule after its node's domain and name, and torch refuses the dots
    of ``ai.onnx.ml``: replace them with ``/``, as onnx2torch already does inside node names."""
    original = OnnxGraph.generate_node_name

    def generate_node_name(node: onnx.NodeProto) -> str:
        return str(original(node)).replace(".", "/")

    OnnxGraph.generate_node_name = staticmethod(generate_node_name)


_register_type_only_versions()
_register_cast_versions()
_register_reshape_allowzero()
_register("", "Gelu", 20, _convert_gelu, "Gelu-20 (opset 20) as torch.nn.functional.gelu")
_register(ML_DOMAIN, "LinearRegressor", 1, _convert_linear_regressor, "scikit-learn linear models")
_register(ML_DOMAIN, "Scaler", 1, _convert_scaler, "scikit-learn StandardScaler and friends")
_patch_node_names()


# -- support checks --------------------------------------------------------------------------------


def normalize_domains(model: onnx.ModelProto) -> None:
    """Spell the default domain ``""`` everywhere (``"ai.onnx"`` is the same domain), in place.

    onnx2torch only recognizes the empty spelling.
    """
    for opset in model.opset_import:
        if opset.domain == "ai.onnx":
            opset.domain = ""
    for node in _nodes(model.graph):
        if node.domain == "ai.onnx":
            node.domain = ""


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _nodes(sub)


def find_unsupported(model: onnx.ModelProto) -> UnsupportedOperatorError | None:
    """The first top-level node with no converter at the model's opset, as an error, or ``None``.

    Control-flow operators (whose subgraphs hold the other nodes) have no
    converter themselves, so checking the top level is enough. The model's
    domains must already be normalized (:func:`normalize_domains`).
    """
    functions = {(f.domain, f.name) for f in model.functions}
    opsets = {opset.domain: opset.version for opset in model.opset_import}
    for node in model.graph.node:
        domain = node.domain
        version = opsets.get(domain)
        if domain not in STANDARD_DOMAINS or (domain, node.op_type) in functions:
            return UnsupportedOperatorError(node.op_type, domain, version, custom=True)
        if version is None:
            continue  # the checker refuses a domain with no opset import, with its own message
        try:
            get_converter(node.op_type, version, domain)
        except NotImplementedError:
            return UnsupportedOperatorError(node.op_type, domain, version, custom=False)
    return None


def convertible_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a down-converted copy, whose every operator onnx2torch can convert.

    Raises:
        UnsupportedOperatorError: naming the first operator no converter handles, at the
            model's own opset.
    """
    problem = find_unsupported(model)
    if problem is None:
        return model
    opset = next((o.version for o in model.opset_import if o.domain == ""), 0)
    if problem.custom or opset <= DOWNGRADE_OPSET:
        raise problem
    try:
        downgraded = version_converter.convert_version(model, DOWNGRADE_OPSET)
    except Exception as exc:  # the C++ converter raises several unrelated types
        log.debug("down-conversion to opset %d failed: %s", DOWNGRADE_OPSET, exc)
        raise problem from None
    if find_unsupported(downgraded) is not None:
        raise problem
    log.info("converting via opset %d: %s has no converter at opset %d", DOWNGRADE_OPSET, problem.op_type, opset)
    return downgraded
