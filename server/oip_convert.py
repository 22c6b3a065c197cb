"""Open Inference Protocol (KServe v2) messages ⇄ plain types.

The protocol's counterpart of :mod:`preimage.server.convert`: the OIP servicer
calls these and nothing else to cross its proto boundary. Every registered
model is one FP32 input tensor ``input`` of shape ``[-1, d]`` and one FP32
output tensor ``output`` of shape ``[-1, m]`` (docs/clients.md, "Open
Inference Protocol"). Malformed requests raise
:class:`~preimage.errors.InvalidArgumentError` naming the tensor; an unknown
model or version raises :class:`~preimage.errors.NotFoundError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from preimage.errors import InvalidArgumentError, NotFoundError
from preimage.oip import grpc_predict_v2_pb2 as oip_pb2
from preimage.registry.refs import ALIAS_PATTERN, NAME_PATTERN

__all__ = [
    "DATATYPE",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "InferInput",
    "infer_request_to_input",
    "infer_response",
    "input_error",
    "model_metadata",
    "model_ref",
]

INPUT_NAME = "input"
"""The one input tensor of every model."""
OUTPUT_NAME = "output"
"""The one output tensor of every model."""
DATATYPE = "FP32"
"""The datatype of both tensors."""
PLATFORM = "onnx"
"""``ModelMetadataResponse.platform``: models are stored as ONNX (and run as torch modules converted from it)."""

_NAME = re.compile(NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_VERSION = re.compile(r"[1-9][0-9]{0,9}")
# Typed-contents fields that hold some other datatype than FP32.
_OTHER_CONTENTS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp64_contents",
    "bytes_contents",
)


def model_ref(name: str, version: str) -> str:
    """The registry reference for an OIP model name and version string.

    ``version`` is empty (the latest version), a version number (``"3"``) or an
    alias name (``"prod"``).

    Raises:
        InvalidArgumentError: ``name`` is empty.
        NotFoundError: ``name`` or ``version`` cannot name anything in a registry.

    Example:
        >>> model_ref("difficulty", ""), model_ref("difficulty", "2"), model_ref("difficulty", "prod")
        ('difficulty', 'difficulty:2', 'difficulty@prod')
    """
    if not name:
        raise InvalidArgumentError("model_name is empty: name a registered model", field="model_name")
    if not _NAME.fullmatch(name):
        raise NotFoundError(f"no model named {name!r} (model names match {NAME_PATTERN})")
    if not version:
        return name
    if _VERSION.fullmatch(version):
        return f"{name}:{version}"
    if _ALIAS.fullmatch(version):
        return f"{name}@{version}"
    raise NotFoundError(f"model {name!r} has no version {version!r} (give a version number, an alias or nothing)")


def _tensor(name: str, width: int) -> oip_pb2.ModelMetadataResponse.TensorMetadata:
    return oip_pb2.ModelMetadataResponse.TensorMetadata(name=name, datatype=DATATYPE, shape=[-1, width])


def model_metadata(
    name: str, versions: list[int], input_width: int, output_width: int
) -> oip_pb2.ModelMetadataResponse:
    """``ModelMetadataResponse`` of one model version.

    Args:
        name: The model name.
        versions: Every stored version of the model.
        input_width: ``d`` of the version asked about.
        output_width: ``m`` of the version asked about.
    """
    return oip_pb2.ModelMetadataResponse(
        name=name,
        versions=[str(v) for v in versions],
        platform=PLATFORM,
        inputs=[_tensor(INPUT_NAME, input_width)],
        outputs=[_tensor(OUTPUT_NAME, output_width)],
    )


@dataclass(frozen=True)
class InferInput:
    """A checked ``ModelInferRequest``.

    Attributes:
        X: ``n x d`` float32 rows.
        raw: Whether the request sent raw bytes (the response answers in kind).
    """

    X: np.ndarray
    raw: bool


def infer_request_to_input(request: oip_pb2.ModelInferRequest) -> InferInput:
    """The rows of a ``ModelInferRequest``: its one FP32 input of shape ``[n, d]``.

    The model's width ``d`` is checked by the forward path (:meth:`Runtime.predict`),
    whose error :func:`input_error` names the input.

    Raises:
        InvalidArgumentError: Not exactly one input named ``input``, a datatype other
            than FP32, a shape that is not ``[n, d]``, contents that do not match the
            shape, or a requested output other than ``output``.
    """
    if len(request.inputs) != 1:
        names = ", ".join(repr(t.name) for t in request.inputs) or "none"
        raise InvalidArgumentError(
            f"the model takes one input tensor {INPUT_NAME!r}, got {len(request.inputs)} ({names})", field="inputs"
        )
    tensor = request.inputs[0]
    field = "inputs[0]"
    if tensor.name != INPUT_NAME:
        raise InvalidArgumentError(
            f"input {tensor.name!r}: the model has no such input; its one input is {INPUT_NAME!r}", field=field
        )
    if tensor.datatype != DATATYPE:
        raise InvalidArgumentError(
            f"input {tensor.name!r}: datatype {tensor.datatype or '(empty)'} but the model takes {DATATYPE}",
            field=field,
        )
    shape = list(tensor.shape)
    if len(shape) != 2 or min(shape) < 0:
        raise InvalidArgumentError(
            f"input {tensor.name!r}: shape {shape} but the model takes [n, d] (n rows of d features)", field=field
        )
    rows, width = shape
    count = rows * width
    for output in request.outputs:
        if output.name != OUTPUT_NAME:
            raise InvalidArgumentError(
                f"requested output {output.name!r}: the model has no such output; its one output is {OUTPUT_NAME!r}",
                field="outputs",
            )
    contents = tensor.contents
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidArgumentError(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input", field=field
            )
        if any(contents.ListFields()):
            raise InvalidArgumentError(
                f"input {tensor.name!r}: set either raw_input_contents or contents, not both", field=field
            )
        raw = request.raw_input_contents[0]
        if len(raw) != 4 * count:
            raise InvalidArgumentError(
                f"input {tensor.name!r}: shape {shape} needs {4 * count} raw bytes (little-endian FP32), "
                f"got {len(raw)}",
                field=field,
            )
        # A copy: frombuffer views the (read-only) message bytes and torch wants writable arrays.
        X = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(rows, width)
        return InferInput(X, raw=True)
    for other in _OTHER_CONTENTS:
        if len(getattr(contents, other)):
            raise InvalidArgumentError(
                f"input {tensor.name!r}: datatype {DATATYPE} carries its values in contents.fp32_contents, "
                f"got contents.{other}",
                field=field,
            )
    if len(contents.fp32_contents) != count:
        raise InvalidArgumentError(
            f"input {tensor.name!r}: shape {shape} needs {count} values in contents.fp32_contents "
            f"(or raw_input_contents), got {len(contents.fp32_contents)}",
            field=field,
        )
    return InferInput(np.asarray(contents.fp32_contents, dtype=np.float32).reshape(rows, width), raw=False)


def input_error(X: np.ndarray, exc: InvalidArgumentError) -> InvalidArgumentError:
    """The forward path's complaint about the rows (``exc``, field ``inputs``), naming the OIP input."""
    return InvalidArgumentError(f"input {INPUT_NAME!r} of shape {list(X.shape)}: {exc.message}", field="inputs[0]")


def infer_response(
    request: oip_pb2.ModelInferRequest, name: str, version: int, outputs: np.ndarray, *, raw: bool
) -> oip_pb2.ModelInferResponse:
    """``ModelInferResponse`` with ``n x m`` outputs, as raw bytes or typed ``fp32_contents``."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if outputs.ndim == 1:
        outputs = outputs.reshape(-1, 1)
    response = oip_pb2.ModelInferResponse(model_name=name, model_version=str(version), id=request.id)
    tensor = response.outputs.add(name=OUTPUT_NAME, datatype=DATATYPE, shape=list(outputs.shape))
    if raw:
        response.raw_output_contents.append(np.ascontiguousarray(outputs, dtype="<f4").tobytes())
    else:
        # tolist() then extend is the fastest bulk path into a packed repeated field.
        tensor.contents.fp32_contents.extend(outputs.ravel().tolist())
    return response
