"""Every protobuf ⇄ client-type conversion, in one place.

The sync and async clients both build requests and read responses only
through these functions, so the two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timezone
from typing import Any

import numpy as np

from preimage.client.errors import InvalidArgumentError
from preimage.client.types import (
    Activation,
    DataStatistics,
    FeatureKind,
    FeatureSchema,
    FloatArray,
    InputFeature,
    InvertMode,
    InvertStatus,
    InvertSummary,
    ModelCandidate,
    ModelInfo,
    ModelSource,
    ModelVersion,
    OutputFeature,
    OutputMetrics,
    Prior,
    TrainEvent,
    TrainingReport,
    TrainProgress,
    TrainResult,
    TrainWarning,
)
from preimage.v1 import inference_pb2, registry_pb2, schema_pb2, tensor_pb2

__all__ = [
    "activation_to_proto",
    "matrix_from_proto",
    "matrix_to_proto",
    "mode_to_proto",
    "model_info_from_proto",
    "prior_to_proto",
    "schema_from_proto",
    "schema_to_proto",
    "summary_from_proto",
    "train_event_from_proto",
]

_KIND_TO_PROTO = {
    FeatureKind.CONTINUOUS: schema_pb2.FEATURE_KIND_CONTINUOUS,
    FeatureKind.INTEGER: schema_pb2.FEATURE_KIND_INTEGER,
    FeatureKind.BINARY: schema_pb2.FEATURE_KIND_BINARY,
    FeatureKind.CATEGORICAL: schema_pb2.FEATURE_KIND_CATEGORICAL,
}
_KIND_FROM_PROTO = {v: k for k, v in _KIND_TO_PROTO.items()}
_SOURCE_FROM_PROTO = {
    registry_pb2.MODEL_SOURCE_UPLOAD: ModelSource.UPLOAD,
    registry_pb2.MODEL_SOURCE_TRAIN: ModelSource.TRAIN,
    registry_pb2.MODEL_SOURCE_WATCH: ModelSource.WATCH,
}
_MODE_TO_PROTO = {
    InvertMode.OPTIMIZE: inference_pb2.INVERT_MODE_OPTIMIZE,
    InvertMode.SAMPLE: inference_pb2.INVERT_MODE_SAMPLE,
}
_MODE_FROM_PROTO = {v: k for k, v in _MODE_TO_PROTO.items()}
_PRIOR_TO_PROTO = {Prior.UNIFORM: inference_pb2.PRIOR_UNIFORM, Prior.DATA: inference_pb2.PRIOR_DATA}
_PRIOR_FROM_PROTO = {v: k for k, v in _PRIOR_TO_PROTO.items()}
_STATUS_FROM_PROTO = {
    inference_pb2.INVERT_STATUS_COMPLETE: InvertStatus.COMPLETE,
    inference_pb2.INVERT_STATUS_UNREACHABLE: InvertStatus.UNREACHABLE,
    inference_pb2.INVERT_STATUS_INFEASIBLE: InvertStatus.INFEASIBLE,
    inference_pb2.INVERT_STATUS_EXHAUSTED: InvertStatus.EXHAUSTED,
    inference_pb2.INVERT_STATUS_BUDGET_SPENT: InvertStatus.BUDGET_SPENT,
}
_ACTIVATION_TO_PROTO = {
    Activation.RELU: inference_pb2.ACTIVATION_RELU,
    Activation.TANH: inference_pb2.ACTIVATION_TANH,
    Activation.SILU: inference_pb2.ACTIVATION_SILU,
    Activation.GELU: inference_pb2.ACTIVATION_GELU,
}


def _enum(cls: type[Any], value: Any, field: str) -> Any:
    """Coerce ``value`` (an enum member or its string value) to ``cls``, naming ``field`` on failure."""
    try:
        return cls(value)
    except ValueError:
        choices = [member.value for member in cls]
        raise InvalidArgumentError(f"{field} must be one of {choices}, got {value!r}", field=field) from None


def mode_to_proto(mode: InvertMode | str | None) -> inference_pb2.InvertMode.ValueType:
    """``None`` lets the server choose (its default is ``sample``)."""
    if mode is None:
        return inference_pb2.INVERT_MODE_UNSPECIFIED
    return _MODE_TO_PROTO[_enum(InvertMode, mode, "mode")]


def prior_to_proto(prior: Prior | str | None) -> inference_pb2.Prior.ValueType:
    """``None`` lets the server choose (data when the model has statistics, else uniform)."""
    if prior is None:
        return inference_pb2.PRIOR_UNSPECIFIED
    return _PRIOR_TO_PROTO[_enum(Prior, prior, "prior")]


def activation_to_proto(activation: Activation | str | None) -> inference_pb2.Activation.ValueType:
    """``None`` lets the server choose (SiLU)."""
    if activation is None:
        return inference_pb2.ACTIVATION_UNSPECIFIED
    return _ACTIVATION_TO_PROTO[_enum(Activation, activation, "activation")]


def matrix_to_proto(X: Any, *, field: str = "inputs") -> tensor_pb2.Matrix:
    """A 2-D array-like as a row-major float32 ``Matrix``.

    Raises:
        InvalidArgumentError: ``X`` is not 2-D numeric.
    """
    try:
        array = np.ascontiguousarray(X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{field}: not a numeric array ({exc})", field=field) from None
    if array.ndim != 2:
        raise InvalidArgumentError(
            f"{field}: expected a 2-D array (rows x columns), got shape {array.shape}", field=field
        )
    rows, cols = array.shape
    # Raw little-endian bytes: one memcpy instead of a float object per element.
    return tensor_pb2.Matrix(rows=rows, cols=cols, raw=array.astype("<f4", copy=False).tobytes())


def matrix_from_proto(matrix: tensor_pb2.Matrix) -> FloatArray:
    """A ``Matrix`` in either encoding (``raw`` bytes or packed ``values``) as a ``rows x cols`` float32 array."""
    shape = (int(matrix.rows), int(matrix.cols))
    if matrix.raw:
        # frombuffer views the message's bytes (read-only); copy so callers own a writable array.
        return np.frombuffer(matrix.raw, dtype="<f4").astype(np.float32).reshape(shape)
    return np.asarray(matrix.values, dtype=np.float32).reshape(shape)


def schema_to_proto(schema: FeatureSchema) -> schema_pb2.FeatureSchema:
    """The client schema as its protobuf message."""
    message = schema_pb2.FeatureSchema()
    for feature in schema.inputs:
        item = message.inputs.add(name=feature.name, kind=_KIND_TO_PROTO[feature.kind], levels=feature.levels)
        if feature.min is not None:
            item.min = feature.min
        if feature.max is not None:
            item.max = feature.max
    for output in schema.outputs:
        message.outputs.add(name=output.name)
    return message


def schema_from_proto(message: schema_pb2.FeatureSchema) -> FeatureSchema:
    """A protobuf schema as the client's dataclass."""
    inputs = tuple(
        InputFeature(
            name=item.name,
            kind=_KIND_FROM_PROTO.get(item.kind, FeatureKind.CONTINUOUS),
            min=item.min if item.HasField("min") else None,
            max=item.max if item.HasField("max") else None,
            levels=tuple(item.levels),
        )
        for item in message.inputs
    )
    return FeatureSchema(inputs, tuple(OutputFeature(o.name, o.spread_of or None) for o in message.outputs))


def model_info_from_proto(message: registry_pb2.ModelInfo) -> ModelInfo:
    """A protobuf ``ModelInfo`` as the client's dataclass."""
    created = message.create_time.ToDatetime(tzinfo=timezone.utc) if message.HasField("create_time") else None
    statistics = None
    if message.HasField("statistics"):
        s = message.statistics
        statistics = DataStatistics(
            rows=int(s.rows),
            mean=tuple(s.mean),
            covariance=tuple(s.covariance),
            quantile_levels=tuple(s.quantile_levels),
            quantiles=tuple(s.quantiles),
        )
    return ModelInfo(
        name=message.name,
        version=int(message.version),
        aliases=tuple(message.aliases),
        sha256=message.sha256,
        size_bytes=int(message.size_bytes),
        created_at=created,
        input_width=int(message.input_width),
        output_width=int(message.output_width),
        schema=schema_from_proto(message.schema),
        source=_SOURCE_FROM_PROTO.get(message.source, ModelSource.UNSPECIFIED),
        statistics=statistics,
        latest=bool(message.latest),
        training=_training_from_proto(message.training) if message.HasField("training") else None,
    )


def _training_from_proto(t: registry_pb2.TrainingReport) -> TrainingReport:
    return TrainingReport(
        stop_reason=t.stop_reason,
        epochs_run=int(t.epochs_run),
        rows=int(t.rows),
        hidden_sizes=tuple(int(h) for h in t.hidden_sizes),
        batch_size=int(t.batch_size),
        metrics=_metrics_from_proto(t.metrics),
        elapsed_seconds=float(t.elapsed_seconds),
        ensemble=int(t.ensemble),
    )


def _metrics_from_proto(metrics: Any) -> tuple[OutputMetrics, ...]:
    """``OutputMetrics`` (Train result) or ``ValidationMetrics`` (stored report) messages as dataclasses."""
    return tuple(
        OutputMetrics(m.output, m.mse, m.mae, m.r2, m.residual_std, m.residual_p95, m.spread_median, m.spread_p95)
        for m in metrics
    )


def summary_from_proto(message: inference_pb2.InvertSummary) -> InvertSummary:
    """The protobuf summary of an Invert stream as the client's dataclass."""
    return InvertSummary(
        model=ModelVersion(message.model.name, int(message.model.version)),
        status=_STATUS_FROM_PROTO.get(message.status, InvertStatus.UNSPECIFIED),
        message=message.message,
        requested=int(message.requested),
        returned=int(message.returned),
        elapsed_seconds=float(message.elapsed_seconds),
        forward_passes=int(message.forward_passes),
        backward_passes=int(message.backward_passes),
        rows_evaluated=int(message.rows_evaluated),
        closest_output=tuple(message.closest_output),
        closest_error=float(message.closest_error),
        mode=_MODE_FROM_PROTO.get(message.mode),
        prior=_PRIOR_FROM_PROTO.get(message.prior),
        seed=int(message.seed),
        preimage_size=int(message.preimage_size) if message.HasField("preimage_size") else None,
        shared=bool(message.shared),
    )


def stop_reason_from_proto(value: int) -> str:
    """``converged``, ``max_epochs``, ... from a ``StopReason`` number (``unspecified`` for unknown ones)."""
    names: dict[int, str] = {int(number): name for name, number in inference_pb2.StopReason.items()}
    return names.get(value, "STOP_REASON_UNSPECIFIED").removeprefix("STOP_REASON_").lower()


def train_event_from_proto(message: inference_pb2.TrainResponse) -> TrainEvent | None:
    """One Train response as a progress, warning or result event; ``None`` for an empty message."""
    which = message.WhichOneof("event")
    if which == "progress":
        p = message.progress
        return TrainProgress(
            epoch=int(p.epoch),
            epochs=int(p.epochs),
            train_loss=float(p.train_loss),
            validation_loss=float(p.validation_loss),
            elapsed_seconds=float(p.elapsed_seconds),
            eta_seconds=float(p.eta_seconds),
            best_validation_loss=float(p.best_validation_loss),
            candidate=int(p.candidate),
            candidates=int(p.candidates) or 1,
            learning_rate=float(p.learning_rate),
        )
    if which == "warning":
        return TrainWarning(message.warning.message, message.warning.column or None)
    if which == "result":
        r = message.result
        return TrainResult(
            model=model_info_from_proto(r.model),
            metrics=_metrics_from_proto(r.metrics),
            epochs_run=int(r.epochs_run),
            elapsed_seconds=float(r.elapsed_seconds),
            rows=int(r.rows),
            stop_reason=stop_reason_from_proto(r.stop_reason),
            candidates=tuple(
                ModelCandidate(
                    tuple(int(h) for h in c.hidden_sizes),
                    float(c.validation_loss),
                    int(c.epochs_run),
                    stop_reason_from_proto(c.stop_reason),
                    bool(c.selected),
                )
                for c in r.candidates
            ),
            hidden_sizes=tuple(int(h) for h in r.hidden_sizes),
            batch_size=int(r.batch_size),
            ensemble=int(r.ensemble),
        )
    return None


def schema_argument(schema: FeatureSchema | Mapping[str, Any] | str | Any | None) -> FeatureSchema | None:
    """Accept a schema as a :class:`FeatureSchema`, a dict, or a JSON file path."""
    if schema is None or isinstance(schema, FeatureSchema):
        return schema
    if isinstance(schema, Mapping):
        return FeatureSchema.from_dict(schema)
    return FeatureSchema.from_file(schema)


def pair(value: Sequence[float], field: str) -> tuple[float, float]:
    """A ``(lo, hi)`` pair of floats; the server checks their order and finiteness.

    Raises:
        InvalidArgumentError: Not two numbers.
    """
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{field} must be a (lower, upper) pair, got {value!r}", field=field) from None
    return lo, hi
