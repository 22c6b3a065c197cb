"""Errors the registry raises.

Each subclasses a base in :mod:`preimage.errors` (which fixes its gRPC status),
builds its message in the constructor and keeps the structured fields a caller
may want. Every refusal of a model at registration is an :class:`InvalidModelError`
subclass (``INVALID_ARGUMENT``) whose message names the problem; a model over the
size limit is a :class:`ModelTooLargeError` (``RESOURCE_EXHAUSTED``).
"""

from __future__ import annotations

from collections.abc import Sequence

from preimage.errors import (
    InvalidArgumentError,
    NotFoundError,
    PreimageError,
    ResourceExhaustedError,
    UnavailableError,
)

__all__ = [
    "BatchError",
    "BlobStoreUnavailableError",
    "ChecksumMismatchError",
    "ConversionError",
    "ExternalDataError",
    "GraphCycleError",
    "InvalidAliasError",
    "InvalidModelError",
    "InvalidModelNameError",
    "InvalidModelRefError",
    "ModelCheckerError",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ModelTooLargeError",
    "NonFiniteWeightError",
    "NotDifferentiableError",
    "NotOnnxError",
    "ParityError",
    "ReferenceEvaluationError",
    "RegistryUnavailableError",
    "SizeMismatchError",
    "TensorCountError",
    "TensorShapeError",
    "TensorTypeError",
    "UnsupportedOperatorError",
    "UnsupportedVersionError",
]


# -- names and references ---------------------------------------------------------------


class InvalidModelNameError(InvalidArgumentError):
    """A model name outside ``[a-z0-9][a-z0-9._-]{0,63}``."""

    def __init__(self, name: str, pattern: str) -> None:
        super().__init__(f"invalid model name {name!r}: a name must match {pattern}", field="name")
        self.name = name


class InvalidAliasError(InvalidArgumentError):
    """An alias outside ``[a-z][a-z0-9_-]{0,31}`` (so never a number)."""

    def __init__(self, alias: str, pattern: str) -> None:
        hint = " (an alias cannot be a number: NAME:N already means version N)" if alias.isdigit() else ""
        super().__init__(f"invalid alias {alias!r}: an alias must match {pattern}{hint}", field="alias")
        self.alias = alias


class InvalidModelRefError(InvalidArgumentError):
    """A model reference that is not ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(
            f"invalid model reference {ref!r}: {reason}; expected NAME, NAME:VERSION or NAME@ALIAS",
            field="model_ref",
        )
        self.ref = ref
        self.reason = reason


class ModelNotFoundError(NotFoundError):
    """No model, version or alias by that name.

    Args:
        name: The model name.
        version: The missing version, when one was asked for.
        alias: The missing alias, when one was asked for.
    """

    def __init__(self, name: str, version: int | None = None, alias: str | None = None) -> None:
        if version is not None:
            message = f"model {name!r} has no version {version}"
        elif alias is not None:
            message = f"model {name!r} has no alias {alias!r}"
        else:
            message = f"no model named {name!r}"
        super().__init__(message)
        self.name = name
        self.version = version
        self.alias = alias


# -- uploads ------------------------------------------------------------------------------


class ModelTooLargeError(ResourceExhaustedError):
    """An upload passed the registry's size limit.

    Args:
        size: Bytes received (or declared) so far.
        limit: The limit in bytes.
        declared: Whether ``size`` is the size the caller declared up front.
    """

    def __init__(self, size: int, limit: int, *, declared: bool = False) -> None:
        what = "declared size" if declared else "upload"
        more = "" if declared else " already"
        super().__init__(f"model too large: the {what} is{more} {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit
        self.declared = declared


class SizeMismatchError(InvalidArgumentError):
    """The bytes received differ in number from the declared size."""

    def __init__(self, declared: int, received: int) -> None:
        super().__init__(f"the upload declared {declared} bytes but {received} bytes arrived", field="size_bytes")
        self.declared = declared
        self.received = received


class ChecksumMismatchError(InvalidArgumentError):
    """The bytes received do not have the declared sha256."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"the upload's sha256 is {actual}, not the declared {expected}", field="sha256")
        self.expected = expected
        self.actual = actual


# -- refusals of a model ------------------------------------------------------------------


class InvalidModelError(InvalidArgumentError):
    """The bytes are not a model the registry can serve; the message says why."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"model refused: {problem}", field="model")
        self.problem = problem


class NotOnnxError(InvalidModelError):
    """Empty, random, text or truncated bytes: not a serialized ONNX ``ModelProto``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"not an ONNX model: {reason}")
        self.reason = reason


class UnsupportedVersionError(InvalidModelError):
    """An IR version or operator-set version newer than the installed onnx knows."""

    def __init__(self, what: str, version: int, newest: int) -> None:
        super().__init__(
            f"{what} {version} is newer than the newest the installed onnx knows ({newest}); "
            f"export with an older {what.split()[0]} or upgrade the server"
        )
        self.what = what
        self.version = version
        self.newest = newest


class ExternalDataError(InvalidModelError):
    """A tensor stored outside the model file; models must be self-contained."""

    def __init__(self, tensor: str, location: str) -> None:
        super().__init__(
            f"tensor {tensor!r} is stored as external data ({location!r}); models must be self-contained "
            "(save with save_as_external_data=False); the registry never opens a path a model names"
        )
        self.tensor = tensor
        self.location = location


class TensorCountError(InvalidModelError):
    """Not exactly one graph input, or not exactly one graph output."""

    def __init__(self, role: str, names: Sequence[str]) -> None:
        found = f"{len(names)} ({', '.join(repr(n) for n in names)})" if names else "none"
        super().__init__(f"the graph must have exactly one {role} of shape [batch, n]; it has {found}")
        self.role = role
        self.names = tuple(names)


class TensorTypeError(InvalidModelError):
    """A graph input or output that is not a float32 tensor."""

    def __init__(self, role: str, name: str, dtype: str) -> None:
        super().__init__(
            f"{role} {name!r} is {dtype}; inputs and outputs must be float32 tensors "
            "(float16 and float64 are refused: re-export with float32)"
        )
        self.role = role
        self.name = name
        self.dtype = dtype


class TensorShapeError(InvalidModelError):
    """A graph input or output whose shape is not ``[batch, n]``."""

    def __init__(self, role: str, name: str, shape: str, detail: str) -> None:
        super().__init__(f"{role} {name!r} has shape {shape}; {detail}")
        self.role = role
        self.name = name
        self.shape = shape


class GraphCycleError(InvalidModelError):
    """The graph's nodes form a cycle."""

    def __init__(self, nodes: Sequence[str]) -> None:
        shown = " -> ".join(nodes[:8]) + (" -> ..." if len(nodes) > 8 else "")
        super().__init__(f"the graph has a cycle through nodes {shown}")
        self.nodes = tuple(nodes)


class UnsupportedOperatorError(InvalidModelError):
    """An operator the registry cannot convert to torch, or one from a custom domain."""

    def __init__(self, op_type: str, domain: str, opset: int | None, *, custom: bool) -> None:
        shown = f"{domain or 'ai.onnx'}::{op_type}"
        at = f" (opset {opset})" if opset is not None else ""
        if custom:
            why = (
                f"operator {shown}{at} is from custom domain {domain!r}; only standard ONNX operators "
                "(ai.onnx, and some of ai.onnx.ml) can be served"
            )
        else:
            why = f"operator {shown}{at} cannot be converted to torch by onnx2torch"
        super().__init__(why)
        self.op_type = op_type
        self.domain = domain
        self.opset = opset
        self.custom = custom


class ModelCheckerError(InvalidModelError):
    """``onnx.checker.check_model(full_check=True)`` refused the model."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"onnx.checker failed: {detail}")
        self.detail = detail


class NonFiniteWeightError(InvalidModelError):
    """A weight (initializer or constant) holds NaN or infinity."""

    def __init__(self, tensor: str, count: int, size: int) -> None:
        super().__init__(f"tensor {tensor!r} holds {count} NaN or infinite values (of {size})")
        self.tensor = tensor
        self.count = count


class ConversionError(InvalidModelError):
    """onnx2torch failed on the model."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"onnx2torch cannot convert the model: {detail}")
        self.detail = detail


class ReferenceEvaluationError(InvalidModelError):
    """``onnx.reference.ReferenceEvaluator`` cannot evaluate the model."""

    def __init__(self, rows: int, detail: str) -> None:
        super().__init__(f"the ONNX reference evaluator cannot evaluate {_rows(rows)}: {detail}")
        self.rows = rows
        self.detail = detail


class BatchError(InvalidModelError):
    """The model cannot take a batch of several rows, or returns the wrong number of rows."""

    def __init__(self, rows: int, detail: str) -> None:
        super().__init__(f"the model cannot take {_rows(rows)}: {detail}")
        self.rows = rows
        self.detail = detail


class ParityError(InvalidModelError):
    """The converted module disagrees with the ONNX reference evaluator.

    Args:
        deviation: The largest absolute difference found.
        row: Row of the parity batch where it occurred.
        column: Output column where it occurred.
        module_value: What the converted torch module gave.
        reference_value: What the reference evaluator gave.
    """

    def __init__(self, deviation: float, row: int, column: int, module_value: float, reference_value: float) -> None:
        super().__init__(
            f"the converted torch module disagrees with the ONNX reference evaluator: largest deviation "
            f"{deviation:.6g} at row {row}, output {column} (torch {module_value:.8g}, "
            f"reference {reference_value:.8g})"
        )
        self.deviation = deviation
        self.row = row
        self.column = column


class NotDifferentiableError(InvalidModelError):
    """The converted module gives no gradient with respect to its input."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the converted module cannot be differentiated with respect to its input ({detail}); "
            "Invert needs input gradients"
        )
        self.detail = detail


# -- storage --------------------------------------------------------------------------------


class RegistryUnavailableError(UnavailableError):
    """The index cannot be read or written (missing, corrupt, locked, or the registry is closed)."""

    def __init__(self, root: str, reason: str) -> None:
        super().__init__(f"the model registry at {root} is unavailable: {reason}")
        self.root = root
        self.reason = reason


class BlobStoreUnavailableError(UnavailableError):
    """The shared object store holding the blobs cannot be reached or refused a request (UNAVAILABLE)."""

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"the blob store {store} is unavailable: {reason}")
        self.store = store
        self.reason = reason


class ModelIntegrityError(PreimageError):
    """A stored blob is missing or no longer matches its sha256 (a storage defect: INTERNAL)."""

    def __init__(self, name: str, version: int, sha256: str, detail: str) -> None:
        super().__init__(f"stored model {name}:{version} (sha256 {sha256}) is damaged: {detail}")
        self.name = name
        self.version = version
        self.sha256 = sha256


def _rows(rows: int) -> str:
    return "a single row" if rows == 1 else f"a batch of {rows} rows"
