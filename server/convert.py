"""Every protobuf ⇄ plain-type conversion of the transport, in one module.

Servicers call these and nothing else to cross the proto boundary; the engine
and the registry never see a protobuf message. Malformed messages raise
:class:`~preimage.errors.InvalidArgumentError` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict
from datetime import timezone
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from preimage.errors import InvalidArgumentError
from preimage.registry.records import TrainingReport, ValidationMetrics
from preimage.registry.schema import DataStatistics, FeatureKind, FeatureSchema, InputFeature, OutputFeature
from preimage.server.engine.types import (
    BoundSpec,
    FeatureOverride,
    FixedSpec,
    InvertMode,
    InvertSpec,
    InvertStatus,
    InvertSummary,
    PatternBatch,
    PriorKind,
    StopReason,
    TargetSpec,
    TrainedModel,
    TrainProgress,
    TrainSpec,
    TrainWarning,
)
from preimage.v1 import inference_pb2, registry_pb2, schema_pb2, tensor_pb2

__all__ = [
    "columns_from_chunk",
    "invert_request_to_spec",
    "invert_summary_to_proto",
    "matrix_from_proto",
    "matrix_to_proto",
    "model_info_to_proto",
    "pattern_batch_to_proto",
    "required_ref",
    "schema_from_proto",
    "schema_to_proto",
    "split_stream",
    "statistics_from_proto",
    "statistics_to_proto",
    "train_config_to_spec",
    "train_event_to_proto",
    "train_result_to_proto",
    "training_report",
]

_KIND_FROM_PROTO = {
    schema_pb2.FEATURE_KIND_UNSPECIFIED: FeatureKind.CONTINUOUS,
    schema_pb2.FEATURE_KIND_CONTINUOUS: FeatureKind.CONTINUOUS,
    schema_pb2.FEATURE_KIND_INTEGER: FeatureKind.INTEGER,
    schema_pb2.FEATURE_KIND_BINARY: FeatureKind.BINARY,
    schema_pb2.FEATURE_KIND_CATEGORICAL: FeatureKind.CATEGORICAL,
}
_KIND_TO_PROTO = {
    FeatureKind.CONTINUOUS: schema_pb2.FEATURE_KIND_CONTINUOUS,
    FeatureKind.INTEGER: schema_pb2.FEATURE_KIND_INTEGER,
    FeatureKind.BINARY: schema_pb2.FEATURE_KIND_BINARY,
    FeatureKind.CATEGORICAL: schema_pb2.FEATURE_KIND_CATEGORICAL,
}
_MODE_FROM_PROTO = {
    inference_pb2.INVERT_MODE_UNSPECIFIED: InvertMode.SAMPLE,
    inference_pb2.INVERT_MODE_OPTIMIZE: InvertMode.OPTIMIZE,
    inference_pb2.INVERT_MODE_SAMPLE: InvertMode.SAMPLE,
}
_MODE_TO_PROTO = {
    InvertMode.OPTIMIZE: inference_pb2.INVERT_MODE_OPTIMIZE,
    InvertMode.SAMPLE: inference_pb2.INVERT_MODE_SAMPLE,
}
_PRIOR_FROM_PROTO = {
    inference_pb2.PRIOR_UNSPECIFIED: None,
    inference_pb2.PRIOR_UNIFORM: PriorKind.UNIFORM,
    inference_pb2.PRIOR_DATA: PriorKind.DATA,
}
_PRIOR_TO_PROTO = {PriorKind.UNIFORM: inference_pb2.PRIOR_UNIFORM, PriorKind.DATA: inference_pb2.PRIOR_DATA}
_STATUS_TO_PROTO = {
    InvertStatus.COMPLETE: inference_pb2.INVERT_STATUS_COMPLETE,
    InvertStatus.UNREACHABLE: inference_pb2.INVERT_STATUS_UNREACHABLE,
    InvertStatus.INFEASIBLE: inference_pb2.INVERT_STATUS_INFEASIBLE,
    InvertStatus.EXHAUSTED: inference_pb2.INVERT_STATUS_EXHAUSTED,
    InvertStatus.BUDGET_SPENT: inference_pb2.INVERT_STATUS_BUDGET_SPENT,
}
_ACTIVATIONS = {
    inference_pb2.ACTIVATION_UNSPECIFIED: "silu",
    inference_pb2.ACTIVATION_RELU: "relu",
    inference_pb2.ACTIVATION_TANH: "tanh",
    inference_pb2.ACTIVATION_SILU: "silu",
    inference_pb2.ACTIVATION_GELU: "gelu",
}
_MODEL_SOURCES = {
    "upload": registry_pb2.MODEL_SOURCE_UPLOAD,
    "train": registry_pb2.MODEL_SOURCE_TRAIN,
    "watch": registry_pb2.MODEL_SOURCE_WATCH,
}


# -- requests -------------------------------------------------------------------------------


def required_ref(ref: str) -> str:
    """A request's model reference; an empty one is INVALID_ARGUMENT on ``model_ref``."""
    if not ref:
        raise InvalidArgumentError("model_ref is empty; give NAME, NAME:VERSION or NAME@ALIAS", field="model_ref")
    return ref


async def split_stream(
    messages: AsyncIterator[Any], *, rpc: str, head: str, rest: str, hint: str = ""
) -> tuple[Any, AsyncIterator[Any]]:
    """Split a ``oneof payload`` request stream into its first message's ``head`` and the ``rest`` payloads.

    Client-streaming RPCs (RegisterModel, Train) send one header-like message, then payloads.

    Returns:
        The first message's ``head`` field, and an async iterator over the following messages' ``rest``
        fields; a message of another kind raises :class:`InvalidArgumentError` on field ``rest`` when
        the iterator reaches it.
    """
    stream = aiter(messages)
    first = await anext(stream, None)
    if first is None or first.WhichOneof("payload") != head:
        raise InvalidArgumentError(f"the first {rpc} message must be the {head}{hint}", field=head)

    async def payloads() -> AsyncIterator[Any]:
        number = 1
        async for message in stream:
            if message.WhichOneof("payload") != rest:
                raise InvalidArgumentError(
                    f"message {number} of the stream is not {rest}: only the first message may be the {head}",
                    field=rest,
                )
            yield getattr(message, rest)
            number += 1

    return getattr(first, head), payloads()


# -- tensors --------------------------------------------------------------------------------


def matrix_from_proto(matrix: tensor_pb2.Matrix, field: str) -> np.ndarray:
    """A ``rows x cols`` float32 array from a :class:`Matrix` in either encoding, checking its size."""
    expected = matrix.rows * matrix.cols
    if matrix.raw:
        if matrix.values:
            raise InvalidArgumentError(
                f"{field}: set either raw or values, not both ({len(matrix.values)} values and "
                f"{len(matrix.raw)} raw bytes)",
                field=field,
            )
        if len(matrix.raw) != 4 * expected:
            raise InvalidArgumentError(
                f"{field}: {matrix.rows} rows x {matrix.cols} columns need {4 * expected} raw bytes "
                f"(little-endian float32), got {len(matrix.raw)}",
                field=field,
            )
        # A copy: frombuffer views the (read-only) message bytes and torch wants writable arrays.
        return np.frombuffer(matrix.raw, dtype="<f4").astype(np.float32).reshape(matrix.rows, matrix.cols)
    if len(matrix.values) != expected:
        raise InvalidArgumentError(
            f"{field}: {matrix.rows} rows x {matrix.cols} columns need {expected} values, got {len(matrix.values)}",
            field=field,
        )
    return np.asarray(matrix.values, dtype=np.float32).reshape(matrix.rows, matrix.cols)


def matrix_to_proto(array: np.ndarray, *, raw: bool = False) -> tensor_pb2.Matrix:
    """A :class:`Matrix` from a 2-D array (converted to float32), as ``raw`` bytes or packed ``values``."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    rows, cols = array.shape
    if raw:
        return tensor_pb2.Matrix(rows=rows, cols=cols, raw=np.ascontiguousarray(array, dtype="<f4").tobytes())
    matrix = tensor_pb2.Matrix(rows=rows, cols=cols)
    # tolist() then extend is the fastest bulk path into a packed repeated field.
    matrix.values.extend(array.ravel().tolist())
    return matrix


# -- schemas and model records --------------------------------------------------------------


def schema_from_proto(schema: schema_pb2.FeatureSchema, field: str = "schema") -> FeatureSchema:
    """A validated :class:`FeatureSchema` (widths are checked later against the model)."""
    inputs = []
    for feature in schema.inputs:
        kind = _KIND_FROM_PROTO.get(feature.kind)
        if kind is None:
            raise InvalidArgumentError(f"{field}: unknown feature kind {feature.kind}", field=field)
        inputs.append(
            InputFeature(
                name=feature.name,
                kind=kind,
                min=feature.min if feature.HasField("min") else None,
                max=feature.max if feature.HasField("max") else None,
                levels=tuple(feature.levels),
            )
        )
    outputs = tuple(OutputFeature(name=o.name, spread_of=o.spread_of or None) for o in schema.outputs)
    return FeatureSchema(inputs=tuple(inputs), outputs=outputs).validated()


def schema_to_proto(schema: FeatureSchema) -> schema_pb2.FeatureSchema:
    """The proto form of a schema."""
    message = schema_pb2.FeatureSchema()
    for feature in schema.inputs:
        item = message.inputs.add(name=feature.name, kind=_KIND_TO_PROTO[feature.kind], levels=list(feature.levels))
        if feature.min is not None:
            item.min = feature.min
        if feature.max is not None:
            item.max = feature.max
    for output in schema.outputs:
        message.outputs.add(name=output.name, spread_of=output.spread_of or "")
    return message


def statistics_from_proto(stats: schema_pb2.DataStatistics) -> DataStatistics:
    """Validated :class:`DataStatistics` from the proto."""
    return DataStatistics(
        rows=stats.rows,
        mean=tuple(stats.mean),
        covariance=tuple(stats.covariance),
        quantile_levels=tuple(stats.quantile_levels),
        quantiles=tuple(stats.quantiles),
    ).validated()


def statistics_to_proto(stats: DataStatistics) -> schema_pb2.DataStatistics:
    """The proto form of training statistics."""
    return schema_pb2.DataStatistics(
        rows=stats.rows,
        mean=list(stats.mean),
        covariance=list(stats.covariance),
        quantile_levels=list(stats.quantile_levels),
        quantiles=list(stats.quantiles),
    )


def model_info_to_proto(record: Any) -> registry_pb2.ModelInfo:
    """A :class:`ModelInfo` from a registry ``ModelRecord``."""
    created = Timestamp()
    created.FromDatetime(record.created_at.astimezone(timezone.utc))
    info = registry_pb2.ModelInfo(
        name=record.name,
        version=record.version,
        aliases=sorted(record.aliases),
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        create_time=created,
        input_width=record.input_width,
        output_width=record.output_width,
        schema=schema_to_proto(record.schema),
        source=_MODEL_SOURCES.get(_enum_value(record.source), registry_pb2.MODEL_SOURCE_UNSPECIFIED),
        latest=record.latest,
    )
    if record.statistics is not None:
        info.statistics.CopyFrom(statistics_to_proto(record.statistics))
    training = getattr(record, "training", None)
    if training is not None:
        info.training.CopyFrom(
            registry_pb2.TrainingReport(
                stop_reason=training.stop_reason,
                epochs_run=training.epochs_run,
                rows=training.rows,
                hidden_sizes=training.hidden_sizes,
                batch_size=training.batch_size,
                metrics=[registry_pb2.ValidationMetrics(**asdict(m)) for m in training.metrics],
                elapsed_seconds=training.elapsed_seconds,
                ensemble=training.ensemble,
            )
        )
    return info


def _enum_value(value: Any) -> Any:
    return getattr(value, "value", value)


# -- invert ---------------------------------------------------------------------------------


def invert_request_to_spec(
    request: inference_pb2.InvertRequest, *, batch_size: int
) -> tuple[InvertSpec, tuple[BoundSpec, ...], tuple[FixedSpec, ...]]:
    """The engine's spec, bounds and fixed features from an :class:`InvertRequest`.

    Checks only what the proto itself can get wrong (an unset target, NaN in a
    bound); the engine validates everything that depends on the model.
    """
    targets = []
    for i, target in enumerate(request.targets):
        which = target.WhichOneof("kind")
        if which == "value":
            targets.append(TargetSpec(value=target.value))
        elif which == "range":
            targets.append(TargetSpec(lower=target.range.lower, upper=target.range.upper))
        else:
            raise InvalidArgumentError(f"targets[{i}]: set a value or a range", field=f"targets[{i}]")
        targets[-1].validate(f"targets[{i}]")
    bounds = []
    for i, bound in enumerate(request.bounds):
        where = f"bounds[{i}]"
        if not (math.isfinite(bound.lower) and math.isfinite(bound.upper)):
            raise InvalidArgumentError(
                f"{where}: bounds must be finite, got [{bound.lower}, {bound.upper}]", field=where
            )
        if bound.lower > bound.upper:
            raise InvalidArgumentError(
                f"{where}: lower bound {bound.lower} is above upper bound {bound.upper}"
                + (f" for feature {bound.feature!r}" if bound.feature else ""),
                field=where,
            )
        bounds.append(BoundSpec(feature=bound.feature or None, lower=bound.lower, upper=bound.upper))
    fixed: list[FixedSpec] = []
    for i, item in enumerate(request.fixed_features):
        where = f"fixed_features[{i}]"
        if not item.feature:
            raise InvalidArgumentError(f"{where}: name the feature to fix", field=where)
        value_kind = item.WhichOneof("value")
        if value_kind == "number":
            if not math.isfinite(item.number):
                raise InvalidArgumentError(f"{where}: value must be finite, got {item.number}", field=where)
            fixed.append(FixedSpec(feature=item.feature, value=item.number))
        elif value_kind == "level":
            fixed.append(FixedSpec(feature=item.feature, level=item.level))
        else:
            raise InvalidArgumentError(f"{where}: give a number or a level for {item.feature!r}", field=where)
    if request.count <= 0:
        raise InvalidArgumentError(f"count must be positive, got {request.count}", field="count")
    tolerance = request.tolerance if request.HasField("tolerance") else 1e-3
    if not math.isfinite(tolerance) or tolerance < 0:
        raise InvalidArgumentError(f"tolerance must be a finite number >= 0, got {tolerance}", field="tolerance")
    for name in ("min_distance", "in_distribution_weight"):
        value = getattr(request, name)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {value}", field=name)
    if not math.isfinite(request.budget.max_seconds) or request.budget.max_seconds < 0:
        raise InvalidArgumentError(
            f"budget.max_seconds must be a finite number >= 0, got {request.budget.max_seconds}",
            field="budget.max_seconds",
        )
    mode = _MODE_FROM_PROTO.get(request.mode)
    if mode is None:
        raise InvalidArgumentError(f"unknown mode {request.mode}", field="mode")
    if request.prior not in _PRIOR_FROM_PROTO:
        raise InvalidArgumentError(f"unknown prior {request.prior}", field="prior")
    spec = InvertSpec(
        targets=tuple(targets),
        n=request.count,
        tolerance=tolerance,
        seed=request.seed if request.HasField("seed") else None,
        mode=mode,
        prior=_PRIOR_FROM_PROTO[request.prior],
        min_distance=request.min_distance,
        in_distribution_weight=request.in_distribution_weight,
        max_seconds=request.budget.max_seconds or None,
        max_passes=request.budget.max_passes or None,
        batch_size=request.batch_size or batch_size,
        max_uncertainty=request.max_uncertainty if request.HasField("max_uncertainty") else None,
    )
    return spec, tuple(bounds), tuple(fixed)


def pattern_batch_to_proto(batch: PatternBatch, *, raw: bool = False) -> inference_pb2.InvertResponse:
    """An Invert stream message carrying a batch of patterns (matrices as ``raw`` bytes when asked)."""
    return inference_pb2.InvertResponse(
        patterns=inference_pb2.PatternBatch(
            inputs=matrix_to_proto(batch.inputs, raw=raw),
            outputs=matrix_to_proto(batch.outputs, raw=raw),
            errors=matrix_to_proto(batch.errors, raw=raw),
        )
    )


def invert_summary_to_proto(summary: InvertSummary, name: str, version: int) -> inference_pb2.InvertResponse:
    """The final Invert stream message."""
    message = inference_pb2.InvertSummary(
        model=tensor_pb2.ModelVersionRef(name=name, version=version),
        status=_STATUS_TO_PROTO[summary.status],
        message=summary.message,
        requested=summary.requested,
        returned=summary.returned,
        elapsed_seconds=summary.elapsed_seconds,
        forward_passes=summary.forward_passes,
        backward_passes=summary.backward_passes,
        rows_evaluated=summary.rows_evaluated,
        closest_output=list(summary.closest_output),
        closest_error=summary.closest_error,
        mode=_MODE_TO_PROTO[summary.mode],
        prior=_PRIOR_TO_PROTO[summary.prior],
        seed=summary.seed,
        shared=summary.shared,
    )
    if summary.preimage_size is not None:
        message.preimage_size = summary.preimage_size
    return inference_pb2.InvertResponse(summary=message)


# -- train ----------------------------------------------------------------------------------


def train_config_to_spec(config: inference_pb2.TrainConfig, *, max_seconds: float) -> TrainSpec:
    """The engine's :class:`TrainSpec` from the first Train message; unset numbers take defaults."""
    defaults = TrainSpec(name=config.name, target_columns=tuple(config.target_columns))
    if config.HasField("time_budget") and not (math.isfinite(config.time_budget) and config.time_budget > 0):
        raise InvalidArgumentError(
            f"config.time_budget: must be a positive number of seconds, got {config.time_budget}",
            field="config.time_budget",
        )
    if config.activation not in _ACTIVATIONS:
        raise InvalidArgumentError(
            f"config.activation: unknown activation {config.activation}", field="config.activation"
        )
    overrides = []
    for i, feature in enumerate(config.feature_overrides):
        where = f"config.feature_overrides[{i}]"
        if not feature.name:
            raise InvalidArgumentError(f"{where}: overrides are matched by name; name is empty", field=where)
        if feature.kind not in _KIND_FROM_PROTO:
            raise InvalidArgumentError(f"{where}: unknown feature kind {feature.kind}", field=where)
        # An unset kind, bound or level list keeps what Train infers from the data.
        overrides.append(
            FeatureOverride(
                name=feature.name,
                kind=None if feature.kind == schema_pb2.FEATURE_KIND_UNSPECIFIED else _KIND_FROM_PROTO[feature.kind],
                min=feature.min if feature.HasField("min") else None,
                max=feature.max if feature.HasField("max") else None,
                levels=tuple(feature.levels),
            )
        )
    return TrainSpec(
        name=config.name,
        target_columns=tuple(config.target_columns),
        feature_columns=tuple(config.feature_columns),
        categorical_columns=tuple(config.categorical_columns),
        hidden_sizes=tuple(config.hidden_sizes) or None,
        activation=_ACTIVATIONS[config.activation],
        epochs=config.epochs or defaults.epochs,
        batch_size=config.batch_size or None,
        learning_rate=config.learning_rate if config.HasField("learning_rate") else defaults.learning_rate,
        weight_decay=config.weight_decay if config.HasField("weight_decay") else defaults.weight_decay,
        validation_fraction=(
            config.validation_fraction if config.HasField("validation_fraction") else defaults.validation_fraction
        ),
        patience=config.patience or defaults.patience,
        seed=config.seed if config.HasField("seed") else None,
        feature_overrides=tuple(overrides),
        max_seconds=min(config.time_budget, max_seconds) if config.HasField("time_budget") else max_seconds,
        ensemble=config.ensemble,
    )


def columns_from_chunk(chunk: inference_pb2.TrainDataChunk, index: int) -> Mapping[str, np.ndarray | Sequence[str]]:
    """Plain columns from one data chunk: float64 arrays for numbers, lists for text."""
    columns: dict[str, np.ndarray | Sequence[str]] = {}
    for column in chunk.columns:
        where = f"data[{index}].columns[{column.name!r}]"
        if column.name in columns:
            raise InvalidArgumentError(f"{where}: column sent twice in one chunk", field=where)
        if len(column.numbers) and len(column.strings):
            raise InvalidArgumentError(f"{where}: send numbers or strings, not both", field=where)
        if len(column.strings):
            columns[column.name] = list(column.strings)
        else:
            columns[column.name] = np.asarray(column.numbers, dtype=np.float64)
    return columns


def train_event_to_proto(event: TrainProgress | TrainWarning) -> inference_pb2.TrainResponse:
    """A progress or warning message of the Train response stream."""
    if isinstance(event, TrainWarning):
        return inference_pb2.TrainResponse(
            warning=inference_pb2.TrainWarning(message=event.message, column=event.column)
        )
    return inference_pb2.TrainResponse(
        progress=inference_pb2.TrainProgress(
            epoch=event.epoch,
            epochs=event.epochs,
            train_loss=event.train_loss,
            validation_loss=event.validation_loss,
            elapsed_seconds=event.elapsed_seconds,
            eta_seconds=event.eta_seconds,
            best_validation_loss=event.best_validation_loss,
            candidate=event.candidate,
            candidates=event.candidates,
            learning_rate=event.learning_rate,
        )
    )


def training_report(trained: TrainedModel) -> TrainingReport:
    """What the registry stores of a Train run beside the model."""
    return TrainingReport(
        stop_reason=trained.stop_reason.value,
        epochs_run=trained.epochs_run,
        rows=trained.rows,
        hidden_sizes=trained.hidden_sizes,
        batch_size=trained.batch_size,
        metrics=tuple(
            ValidationMetrics(
                m.output, m.mse, m.mae, m.r2, m.residual_std, m.residual_p95, m.spread_median, m.spread_p95
            )
            for m in trained.metrics
        ),
        elapsed_seconds=trained.elapsed_seconds,
        ensemble=trained.ensemble,
    )


def train_result_to_proto(trained: TrainedModel, record: Any) -> inference_pb2.TrainResponse:
    """The final Train message: the registered model and its validation metrics."""
    return inference_pb2.TrainResponse(
        result=inference_pb2.TrainResult(
            model=model_info_to_proto(record),
            metrics=[
                inference_pb2.OutputMetrics(
                    output=m.output,
                    mse=m.mse,
                    mae=m.mae,
                    r2=m.r2,
                    residual_std=m.residual_std,
                    residual_p95=m.residual_p95,
                    spread_median=m.spread_median,
                    spread_p95=m.spread_p95,
                )
                for m in trained.metrics
            ],
            epochs_run=trained.epochs_run,
            elapsed_seconds=trained.elapsed_seconds,
            rows=trained.rows,
            stop_reason=_STOP_REASONS[trained.stop_reason],
            candidates=[
                inference_pb2.ModelCandidate(
                    hidden_sizes=c.hidden_sizes,
                    validation_loss=c.validation_loss,
                    epochs_run=c.epochs_run,
                    stop_reason=_STOP_REASONS[c.stop_reason],
                    selected=c.selected,
                )
                for c in trained.candidates
            ],
            hidden_sizes=trained.hidden_sizes,
            batch_size=trained.batch_size,
            ensemble=trained.ensemble,
        )
    )


_STOP_REASONS = {
    StopReason.CONVERGED: inference_pb2.STOP_REASON_CONVERGED,
    StopReason.MAX_EPOCHS: inference_pb2.STOP_REASON_MAX_EPOCHS,
    StopReason.TIME_BUDGET: inference_pb2.STOP_REASON_TIME_BUDGET,
    StopReason.DIVERGED: inference_pb2.STOP_REASON_DIVERGED,
}
