"""Request builders and stream state shared by :class:`Client` and :class:`AsyncClient`.

Everything here is transport-free: the blocking and the asyncio client differ
only in how they wait, so every request they send is built, and every stream
they read is interpreted, by the code below.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from preimage.client import _wire, convert
from preimage.client.errors import InternalError, InvalidArgumentError
from preimage.client.table import DEFAULT_CHUNK_BYTES, Table, csv_table, mapping_table
from preimage.client.types import (
    Activation,
    FeatureSchema,
    FeatureValue,
    FloatArray,
    InvertMode,
    InvertSummary,
    ModelInfo,
    Pattern,
    Prior,
)
from preimage.v1 import inference_pb2, registry_pb2, schema_pb2

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "CapturingIterator",
    "InvertState",
    "PatternArrays",
    "Upload",
    "invert_request",
    "new_request_id",
    "predict_slices",
    "register_requests",
    "rows_argument",
    "train_requests",
]

DEFAULT_CHUNK_SIZE = 1 << 20
"""Bytes of ONNX per RegisterModel message: well below gRPC's 4 MiB default limit."""

# Predict requests are cut to about this many payload bytes, so any batch fits the
# server's message limit however many rows the caller passes.
_PREDICT_BYTES = 2 << 20

T = TypeVar("T")
R = TypeVar("R")


def new_request_id() -> str:
    """A fresh request id (32 hex digits), sent as ``x-request-id`` metadata."""
    return uuid.uuid4().hex


class PatternArrays(NamedTuple):
    """Patterns as arrays: ``inputs`` ``n x d``, ``outputs`` and ``errors`` ``n x m`` (float32)."""

    inputs: FloatArray
    outputs: FloatArray
    errors: FloatArray


class CapturingIterator(Generic[T]):
    """Wraps a request iterator and keeps the exception it raised.

    gRPC consumes request iterators on its own thread and, when one raises,
    cancels the call with a generic status; the caller then re-raises the real
    exception from :attr:`error`.
    """

    def __init__(self, inner: Iterator[T]) -> None:
        self._inner = inner
        self.error: BaseException | None = None

    def __iter__(self) -> CapturingIterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return next(self._inner)
        except StopIteration:
            raise
        except BaseException as exc:
            self.error = exc
            raise


@dataclass(frozen=True)
class Upload:
    """ONNX bytes to register, from memory or a file, with their size and sha256."""

    data: bytes | None
    path: Path | None
    size: int
    sha256: str

    @classmethod
    def of(cls, source: str | Path | bytes | bytearray | memoryview) -> Upload:
        """Measure and hash ``source`` (a file is read twice: once here, once streaming it).

        Raises:
            InvalidArgumentError: The file cannot be read.
        """
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            return cls(data, None, len(data), hashlib.sha256(data).hexdigest())
        path = Path(source)
        digest = hashlib.sha256()
        size = 0
        try:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(DEFAULT_CHUNK_SIZE), b""):
                    digest.update(block)
                    size += len(block)
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read {path}: {exc.strerror or exc}", field="model") from None
        return cls(None, path, size, digest.hexdigest())

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        """The bytes in pieces of at most ``chunk_size``."""
        if self.data is not None:
            for start in range(0, len(self.data), chunk_size):
                yield self.data[start : start + chunk_size]
            return
        assert self.path is not None
        with self.path.open("rb") as handle:
            yield from iter(lambda: handle.read(chunk_size), b"")


def register_requests(
    upload: Upload,
    name: str,
    schema: FeatureSchema | None,
    bounds: Sequence[float] | None,
    chunk_size: int,
) -> Iterator[registry_pb2.RegisterModelRequest]:
    """The RegisterModel stream: the header (with size and sha256, so a torn upload fails), then chunks."""
    header = registry_pb2.RegisterModelHeader(name=name, size_bytes=upload.size, sha256=upload.sha256)
    if schema is not None:
        header.schema.CopyFrom(convert.schema_to_proto(schema))
    if bounds is not None:
        header.default_min, header.default_max = convert.pair(bounds, "bounds")
    yield registry_pb2.RegisterModelRequest(header=header)
    for chunk in upload.chunks(chunk_size):
        yield registry_pb2.RegisterModelRequest(chunk=chunk)


@dataclass(frozen=True)
class Unary(Generic[R]):
    """One unary call, described once for both clients.

    Attributes:
        service: ``"registry"``, ``"inference"`` or ``"health"``.
        method: The RPC method name.
        request: The request message (a request iterator for client-streaming calls).
        idempotent: Whether UNAVAILABLE may be retried.
        parse: Turns the response message into the method's result.
    """

    service: str
    method: str
    request: Any
    idempotent: bool
    parse: Callable[[Any], R]


_HEALTH_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def health_call(service: str) -> Unary[str]:
    """``grpc.health.v1.Health/Check``; the result is the status name (``"SERVING"``, ...)."""
    return Unary(
        "health",
        "Check",
        _wire.HealthCheckRequest(service=service),
        True,
        lambda r: _HEALTH_NAMES.get(int(r.status), "UNKNOWN"),
    )


def register_call(
    upload: Upload,
    name: str,
    schema: FeatureSchema | Mapping[str, Any] | str | Path | None,
    bounds: Sequence[float] | None,
    chunk_size: int,
) -> Unary[ModelInfo]:
    """RegisterModel: never retried (a lost reply does not mean nothing was stored)."""
    requests = CapturingIterator(register_requests(upload, name, convert.schema_argument(schema), bounds, chunk_size))
    return Unary("registry", "RegisterModel", requests, False, lambda r: convert.model_info_from_proto(r.model))


def list_call(name: str | None, all_versions: bool) -> Unary[list[ModelInfo]]:
    """ListModels."""
    request = registry_pb2.ListModelsRequest(name=name or "", all_versions=all_versions)
    return Unary(
        "registry", "ListModels", request, True, lambda r: [convert.model_info_from_proto(m) for m in r.models]
    )


def get_call(ref: str) -> Unary[ModelInfo]:
    """GetModel."""
    request = registry_pb2.GetModelRequest(model_ref=ref)
    return Unary("registry", "GetModel", request, True, lambda r: convert.model_info_from_proto(r.model))


def delete_call(ref: str, all_versions: bool) -> Unary[list[ModelInfo]]:
    """DeleteModel."""
    request = registry_pb2.DeleteModelRequest(model_ref=ref, all_versions=all_versions)
    return Unary(
        "registry", "DeleteModel", request, False, lambda r: [convert.model_info_from_proto(m) for m in r.deleted]
    )


def alias_call(name: str, alias: str, version: int) -> Unary[ModelInfo]:
    """SetAlias."""
    request = registry_pb2.SetAliasRequest(name=name, alias=alias, version=version)
    return Unary("registry", "SetAlias", request, False, lambda r: convert.model_info_from_proto(r.model))


def unalias_call(name: str, alias: str) -> Unary[None]:
    """DeleteAlias."""
    request = registry_pb2.DeleteAliasRequest(name=name, alias=alias)
    return Unary("registry", "DeleteAlias", request, False, lambda r: None)


def predict_call(ref: str, X: FloatArray) -> Unary[FloatArray]:
    """Predict on one slice of rows (see :func:`predict_slices`)."""
    request = inference_pb2.PredictRequest(model_ref=ref, inputs=convert.matrix_to_proto(X), raw_outputs=True)
    return Unary("inference", "Predict", request, True, lambda r: convert.matrix_from_proto(r.outputs))


def stack(outputs: Sequence[FloatArray]) -> FloatArray:
    """The outputs of consecutive Predict slices as one array."""
    return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


def rows_argument(rows: Any) -> tuple[FloatArray | None, list[Mapping[str, Any]] | None]:
    """Split Predict's ``rows`` into a raw ``n x d`` array or a list of by-name rows.

    A single mapping is one row by name; a 1-D array is one raw row.

    Raises:
        InvalidArgumentError: Not numeric, or more than two dimensions.
    """
    if isinstance(rows, Mapping):
        return None, [rows]
    if isinstance(rows, Sequence) and not isinstance(rows, (str, bytes)) and rows and isinstance(rows[0], Mapping):
        return None, list(rows)
    try:
        array = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"rows: not a numeric array ({exc})", field="rows") from None
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise InvalidArgumentError(f"rows: expected n x d, got shape {array.shape}", field="rows")
    return array, None


def predict_slices(X: FloatArray) -> Iterator[FloatArray]:
    """Consecutive row slices of ``X`` small enough for one Predict message each."""
    rows = max(1, _PREDICT_BYTES // max(4 * X.shape[1], 1))
    if X.shape[0] == 0:
        yield X
        return
    for start in range(0, X.shape[0], rows):
        yield X[start : start + rows]


def _targets(
    target: float | Sequence[float] | None,
    target_range: Sequence[float] | Sequence[Sequence[float]] | None,
) -> list[inference_pb2.Target]:
    if (target is None) == (target_range is None):
        raise InvalidArgumentError("give exactly one of target or target_range", field="targets")
    if target is not None:
        values = [target] if isinstance(target, (int, float, np.number)) else list(target)
        try:
            return [inference_pb2.Target(value=float(v)) for v in values]
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"target must be numbers, got {target!r}", field="targets") from None
    assert target_range is not None
    ranges = list(target_range)
    pairs: list[Any] = [ranges] if ranges and isinstance(ranges[0], (int, float, np.number)) else ranges
    out = []
    for i, item in enumerate(pairs):
        lo, hi = convert.pair(item, f"target_range[{i}]")
        out.append(inference_pb2.Target(range=inference_pb2.Interval(lower=lo, upper=hi)))
    return out


def invert_request(
    ref: str,
    *,
    target: float | Sequence[float] | None,
    target_range: Sequence[float] | Sequence[Sequence[float]] | None,
    n: int,
    tolerance: float | None,
    seed: int | None,
    bounds: Sequence[float] | Mapping[str, Sequence[float]] | None,
    fixed: Mapping[str, FeatureValue] | None,
    mode: InvertMode | str | None,
    prior: Prior | str | None,
    min_distance: float,
    in_distribution_weight: float,
    max_seconds: float | None,
    max_passes: int | None,
    batch_size: int,
    max_uncertainty: float | None = None,
) -> inference_pb2.InvertRequest:
    """Build an ``InvertRequest`` from :meth:`Client.invert`'s arguments (see there)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InvalidArgumentError(f"n must be a non-negative whole number, got {n!r}", field="count")
    request = inference_pb2.InvertRequest(
        model_ref=ref,
        targets=_targets(target, target_range),
        count=int(n),
        mode=convert.mode_to_proto(mode),
        prior=convert.prior_to_proto(prior),
        min_distance=float(min_distance),
        in_distribution_weight=float(in_distribution_weight),
        batch_size=int(batch_size),
        raw_outputs=True,
    )
    if tolerance is not None:
        request.tolerance = float(tolerance)
    if max_uncertainty is not None:
        request.max_uncertainty = float(max_uncertainty)
    if seed is not None:
        request.seed = int(seed)
    if bounds is not None:
        named = bounds.items() if isinstance(bounds, Mapping) else [("", bounds)]
        for feature, pair in named:
            lo, hi = convert.pair(pair, f"bounds[{feature!r}]" if feature else "bounds")
            request.bounds.add(feature=feature, lower=lo, upper=hi)
    for feature, value in (fixed or {}).items():
        if isinstance(value, str):
            request.fixed_features.add(feature=feature, level=value)
        else:
            request.fixed_features.add(feature=feature, number=float(value))
    if max_seconds is not None:
        request.budget.max_seconds = float(max_seconds)
    if max_passes is not None:
        request.budget.max_passes = int(max_passes)
    return request


class InvertState:
    """Reads Invert responses into patterns and a summary.

    Patterns are kept as whole batches (arrays) so collecting a million of them
    costs a concatenation, not a million objects.
    """

    def __init__(self, schema: FeatureSchema | None) -> None:
        self.schema = schema
        self._batches: deque[PatternArrays] = deque()
        self._offset = 0  # patterns of the head batch already handed out
        self.summary: InvertSummary | None = None
        self.received = 0  # messages read, for retry decisions
        self.width: tuple[int, int] | None = None

    def accept(self, response: inference_pb2.InvertResponse) -> None:
        """Take one response message."""
        self.received += 1
        which = response.WhichOneof("event")
        if which == "patterns":
            batch = response.patterns
            arrays = PatternArrays(
                convert.matrix_from_proto(batch.inputs),
                convert.matrix_from_proto(batch.outputs),
                convert.matrix_from_proto(batch.errors),
            )
            self.width = (arrays.inputs.shape[1], arrays.outputs.shape[1])
            if len(arrays.inputs):
                self._batches.append(arrays)
        elif which == "summary":
            self.summary = convert.summary_from_proto(response.summary)

    def finished(self) -> None:
        """The stream ended; it must have ended with a summary.

        Raises:
            InternalError: The server closed the stream without a summary.
        """
        if self.summary is None:
            raise InternalError("the Invert stream ended without a summary")

    @property
    def buffered(self) -> bool:
        """Whether patterns are waiting to be handed out."""
        return bool(self._batches)

    def pop_pattern(self) -> Pattern:
        """The next buffered pattern (call only when :attr:`buffered`)."""
        head = self._batches[0]
        i = self._offset
        x = head.inputs[i]
        features = self.schema.decode_row(x) if self.schema is not None else None
        pattern = Pattern(x, head.outputs[i], head.errors[i], features)
        self._offset += 1
        if self._offset == len(head.inputs):
            self._batches.popleft()
            self._offset = 0
        return pattern

    def pop_batch(self) -> PatternArrays:
        """Every pattern of the head batch not yet handed out (call only when :attr:`buffered`)."""
        head = self._batches.popleft()
        i, self._offset = self._offset, 0
        return PatternArrays(head.inputs[i:], head.outputs[i:], head.errors[i:])

    def take_all(self) -> PatternArrays:
        """Every buffered pattern, as arrays."""
        parts = []
        while self._batches:
            parts.append(self.pop_batch())
        if not parts:
            d, m = self.width or (0, len(self.summary.closest_output) if self.summary else 0)
            empty = np.zeros((0, d), np.float32)
            return PatternArrays(empty, np.zeros((0, m), np.float32), np.zeros((0, m), np.float32))
        return PatternArrays(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))

    def clear(self) -> None:
        """Drop buffered patterns (after a cancel)."""
        self._batches.clear()
        self._offset = 0


def train_table(data: Mapping[str, Any] | str | Path) -> Table:
    """A training table from a column mapping or a CSV path."""
    if isinstance(data, Mapping):
        return mapping_table(data)
    return csv_table(data)


def train_requests(
    data: Mapping[str, Any] | str | Path,
    *,
    name: str,
    target: str | Sequence[str],
    features: Sequence[str] | None,
    categorical: Sequence[str] | None,
    hidden: Sequence[int] | None,
    activation: Activation | str | None,
    epochs: int | None,
    batch_size: int | None,
    learning_rate: float | None,
    weight_decay: float | None,
    validation_fraction: float | None,
    patience: int | None,
    seed: int | None,
    overrides: Mapping[str, Mapping[str, Any]] | None,
    time_budget: float | None = None,
    ensemble: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[inference_pb2.TrainRequest]:
    """The Train stream: the configuration, then the table in column chunks (see :meth:`Client.train`).

    The table is opened (and a CSV's header read) before the first message, so
    a missing file fails before anything is sent.
    """
    table = train_table(data)
    config = inference_pb2.TrainConfig(
        name=name,
        feature_columns=list(features or ()),
        target_columns=[target] if isinstance(target, str) else list(target),
        categorical_columns=list(categorical or ()),
        hidden_sizes=[int(h) for h in hidden or ()],
        activation=convert.activation_to_proto(activation),
        epochs=int(epochs or 0),
        batch_size=int(batch_size or 0),
        patience=int(patience or 0),
        total_rows=table.rows,
        ensemble=int(ensemble or 0),
    )
    for field_name, value in (
        ("learning_rate", learning_rate),
        ("weight_decay", weight_decay),
        ("validation_fraction", validation_fraction),
        ("time_budget", time_budget),
    ):
        if value is not None:
            setattr(config, field_name, float(value))
    if seed is not None:
        config.seed = int(seed)
    for feature_name, override in (overrides or {}).items():
        schema = FeatureSchema.from_dict({"inputs": [{"name": feature_name, **override}]})
        config.feature_overrides.append(_one_input(convert.schema_to_proto(schema)))
    return _train_stream(config, table, list(categorical or ()), chunk_bytes)


def _one_input(schema: schema_pb2.FeatureSchema) -> schema_pb2.InputFeature:
    return schema.inputs[0]


def _train_stream(
    config: inference_pb2.TrainConfig, table: Table, categorical: list[str], chunk_bytes: int
) -> Iterator[inference_pb2.TrainRequest]:
    yield inference_pb2.TrainRequest(config=config)
    for chunk in table.chunks(categorical, chunk_bytes):
        yield inference_pb2.TrainRequest(data=chunk)
