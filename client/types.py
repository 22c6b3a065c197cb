"""Plain dataclasses of the client's public API (no protobuf in sight).

These mirror the contract in ``protos/preimage/v1`` and the registry's schema
types, but are the client's own: the client never imports the server or the
registry, so it installs with grpcio, protobuf and numpy only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from preimage.client.errors import InvalidArgumentError

__all__ = [
    "Activation",
    "DataStatistics",
    "FeatureKind",
    "FeatureSchema",
    "FeatureValue",
    "InputFeature",
    "InvertMode",
    "InvertStatus",
    "InvertSummary",
    "ModelCandidate",
    "ModelInfo",
    "ModelSource",
    "ModelVersion",
    "OutputFeature",
    "OutputMetrics",
    "Pattern",
    "Prior",
    "TrainEvent",
    "TrainProgress",
    "TrainResult",
    "TrainWarning",
    "TrainingReport",
]

FloatArray: TypeAlias = npt.NDArray[np.float32]
FeatureValue: TypeAlias = "float | int | str"
"""A feature's value by name: a number, or a level name for a categorical feature."""


class FeatureKind(str, Enum):
    """How an input feature is typed."""

    CONTINUOUS = "continuous"
    INTEGER = "integer"
    BINARY = "binary"
    CATEGORICAL = "categorical"


class ModelSource(str, Enum):
    """How a model version got into the registry."""

    UNSPECIFIED = "unspecified"
    UPLOAD = "upload"
    TRAIN = "train"
    WATCH = "watch"


class InvertMode(str, Enum):
    """How Invert searches: converge fast (``optimize``) or draw from the preimage (``sample``)."""

    OPTIMIZE = "optimize"
    SAMPLE = "sample"


class Prior(str, Enum):
    """Distribution random patterns are drawn from before the target is imposed."""

    UNIFORM = "uniform"
    DATA = "data"


class InvertStatus(str, Enum):
    """How an Invert stream ended."""

    UNSPECIFIED = "unspecified"
    COMPLETE = "complete"
    UNREACHABLE = "unreachable"
    INFEASIBLE = "infeasible"
    EXHAUSTED = "exhausted"
    BUDGET_SPENT = "budget_spent"


class Activation(str, Enum):
    """Hidden-layer activation for Train."""

    RELU = "relu"
    TANH = "tanh"
    SILU = "silu"
    GELU = "gelu"


@dataclass(frozen=True)
class InputFeature:
    """One input feature of a model.

    Attributes:
        name: Feature name, unique within the schema.
        kind: Feature type.
        min: Lower bound (continuous, integer); ``None`` = unbounded.
        max: Upper bound (continuous, integer); ``None`` = unbounded.
        levels: Level names of a categorical feature, in column order.

    Example:
        >>> InputFeature("theme", FeatureKind.CATEGORICAL, levels=("ice", "lava")).width
        2
    """

    name: str
    kind: FeatureKind = FeatureKind.CONTINUOUS
    min: float | None = None
    max: float | None = None
    levels: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        """Number of model input columns the feature spans (one-hot for categoricals)."""
        return len(self.levels) if self.kind is FeatureKind.CATEGORICAL else 1

    def to_dict(self) -> dict[str, Any]:
        """The schema JSON form of this feature."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind.value}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.levels:
            out["levels"] = list(self.levels)
        return out

    def encode(self, value: Any) -> list[float]:
        """The model input columns for one value of this feature.

        Raises:
            InvalidArgumentError: An unknown level, or a value of the wrong type.
        """
        if self.kind is FeatureKind.CATEGORICAL:
            if not isinstance(value, str) or value not in self.levels:
                raise InvalidArgumentError(
                    f"feature {self.name!r}: unknown level {value!r}; levels are {list(self.levels)}",
                    field=self.name,
                )
            return [1.0 if level == value else 0.0 for level in self.levels]
        if isinstance(value, bool):
            return [float(value)]
        if not isinstance(value, (int, float, np.integer, np.floating)):
            raise InvalidArgumentError(
                f"feature {self.name!r} is {self.kind.value}: expected a number, got {value!r}",
                field=self.name,
            )
        return [float(value)]

    def decode(self, columns: Sequence[float]) -> FeatureValue:
        """The value of this feature in its model input columns (level name for categoricals)."""
        if self.kind is FeatureKind.CATEGORICAL:
            return self.levels[int(np.argmax(np.asarray(columns)))]
        value = float(columns[0])
        if self.kind in (FeatureKind.INTEGER, FeatureKind.BINARY) and math.isfinite(value):
            return round(value)
        return value


@dataclass(frozen=True)
class OutputFeature:
    """One model output.

    ``spread_of`` names the output whose spread (standard deviation across the members of a
    deep ensemble) this one is; ``None`` for an ordinary output.
    """

    name: str
    spread_of: str | None = None


@dataclass(frozen=True)
class FeatureSchema:
    """Names, types and ranges of a model's inputs and outputs.

    The server validates schemas; the client parses them and uses them to
    encode rows by feature name and decode patterns.

    Example:
        >>> schema = FeatureSchema.from_dict({
        ...     "inputs": [{"name": "speed", "min": 0, "max": 1},
        ...                {"name": "theme", "kind": "categorical", "levels": ["ice", "lava"]}],
        ...     "outputs": [{"name": "difficulty"}]})
        >>> schema.encode_rows([{"speed": 0.5, "theme": "lava"}]).tolist()
        [[0.5, 0.0, 1.0]]
    """

    inputs: tuple[InputFeature, ...]
    outputs: tuple[OutputFeature, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        """Parse the schema JSON form (``{"inputs": [...], "outputs": [...]}``).

        Raises:
            InvalidArgumentError: Not a schema; ``field`` says where.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("inputs"), list):
            raise InvalidArgumentError("a schema is an object with an 'inputs' list", field="schema")
        inputs = []
        for i, item in enumerate(data["inputs"]):
            where = f"schema.inputs[{i}]"
            if not isinstance(item, Mapping) or not isinstance(item.get("name", f"x{i}"), str):
                raise InvalidArgumentError(f"{where} must be an object with a string 'name'", field=where)
            try:
                kind = FeatureKind(item.get("kind", "continuous"))
            except ValueError:
                raise InvalidArgumentError(
                    f"{where}: kind {item.get('kind')!r} is not one of {[k.value for k in FeatureKind]}",
                    field=where,
                ) from None
            inputs.append(
                InputFeature(
                    name=item.get("name", f"x{i}"),
                    kind=kind,
                    min=_number(item.get("min"), f"{where}.min"),
                    max=_number(item.get("max"), f"{where}.max"),
                    levels=tuple(str(level) for level in item.get("levels", ())),
                )
            )
        outputs = []
        for i, item in enumerate(data.get("outputs", [])):
            if not isinstance(item, Mapping):
                raise InvalidArgumentError(f"schema.outputs[{i}] must be an object", field="schema.outputs")
            spread_of = item.get("spread_of")
            outputs.append(OutputFeature(str(item.get("name", f"y{i}")), None if spread_of is None else str(spread_of)))
        return cls(tuple(inputs), tuple(outputs))

    @classmethod
    def from_file(cls, path: str | Path) -> FeatureSchema:
        """Read a schema JSON file.

        Raises:
            InvalidArgumentError: The file is not JSON or not a schema.
        """
        try:
            data = json.loads(Path(path).read_text())
        except ValueError as exc:
            raise InvalidArgumentError(f"schema file {path}: not valid JSON ({exc})", field="schema") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The schema JSON form."""
        return {
            "inputs": [f.to_dict() for f in self.inputs],
            "outputs": [
                {"name": o.name} if o.spread_of is None else {"name": o.name, "spread_of": o.spread_of}
                for o in self.outputs
            ],
        }

    @property
    def input_width(self) -> int:
        """Total number of model input columns."""
        return sum(f.width for f in self.inputs)

    @property
    def feature_names(self) -> list[str]:
        """Input feature names in order."""
        return [f.name for f in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output names in order."""
        return [o.name for o in self.outputs]

    def encode_rows(self, rows: Iterable[Mapping[str, Any]]) -> FloatArray:
        """Model input columns (``n x input_width``, float32) for rows given by feature name.

        Args:
            rows: One mapping per row from every feature name to its value; level
                names for categorical features.

        Raises:
            InvalidArgumentError: A row misses a feature, names an unknown one, or has
                an unknown level; the message says which row and which name.
        """
        names = set(self.feature_names)
        encoded: list[list[float]] = []
        for r, row in enumerate(rows):
            unknown = sorted(set(row) - names)
            if unknown:
                raise InvalidArgumentError(
                    f"row {r}: unknown feature(s) {unknown}; features are {self.feature_names}",
                    field=f"rows[{r}]",
                )
            missing = [name for name in self.feature_names if name not in row]
            if missing:
                raise InvalidArgumentError(f"row {r}: missing feature(s) {missing}", field=f"rows[{r}]")
            columns: list[float] = []
            for feature in self.inputs:
                try:
                    columns.extend(feature.encode(row[feature.name]))
                except InvalidArgumentError as exc:
                    raise InvalidArgumentError(f"row {r}: {exc.message}", field=f"rows[{r}]") from None
            encoded.append(columns)
        return np.asarray(encoded, dtype=np.float32).reshape(len(encoded), self.input_width)

    def decode_row(self, x: Sequence[float] | FloatArray) -> dict[str, FeatureValue]:
        """A model input row as ``{feature name: value}``, categoricals as level names.

        Example:
            >>> FeatureSchema((InputFeature("walls", FeatureKind.INTEGER),)).decode_row([3.0])
            {'walls': 3}
        """
        values = np.asarray(x, dtype=np.float64).reshape(-1)
        out: dict[str, FeatureValue] = {}
        start = 0
        for feature in self.inputs:
            out[feature.name] = feature.decode(values[start : start + feature.width].tolist())
            start += feature.width
        return out


@dataclass(frozen=True)
class DataStatistics:
    """Statistics of the data a model was trained on, per input column.

    Attributes:
        rows: Number of training rows.
        mean: Per-column mean (``d`` values).
        covariance: ``d x d`` covariance, row-major.
        quantile_levels: Ascending levels in ``[0, 1]``.
        quantiles: ``d x len(quantile_levels)``, row-major.
    """

    rows: int
    mean: tuple[float, ...]
    covariance: tuple[float, ...]
    quantile_levels: tuple[float, ...] = ()
    quantiles: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "rows": self.rows,
            "mean": list(self.mean),
            "covariance": list(self.covariance),
            "quantile_levels": list(self.quantile_levels),
            "quantiles": list(self.quantiles),
        }


@dataclass(frozen=True)
class ModelVersion:
    """One resolved model version, as ``str()``-ed ``NAME:VERSION``."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class ModelInfo:
    """Everything the registry knows about one model version.

    Example:
        >>> info = client.model("difficulty")          # doctest: +SKIP
        >>> info.ref, info.input_width, info.schema.feature_names[:2]
        ('difficulty:1', 10, ['enemy_density', 'enemy_speed'])
    """

    name: str
    version: int
    aliases: tuple[str, ...]
    sha256: str
    size_bytes: int
    created_at: datetime | None
    input_width: int
    output_width: int
    schema: FeatureSchema
    source: ModelSource = ModelSource.UNSPECIFIED
    statistics: DataStatistics | None = None
    latest: bool = False
    training: TrainingReport | None = None
    """How Train fitted this version (``None`` for uploaded models and older servers)."""

    @property
    def ref(self) -> str:
        """``NAME:VERSION``, a reference that always resolves to exactly this version."""
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``preimage models --json`` prints)."""
        return {
            "name": self.name,
            "version": self.version,
            "aliases": list(self.aliases),
            "latest": self.latest,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "input_width": self.input_width,
            "output_width": self.output_width,
            "source": self.source.value,
            "schema": self.schema.to_dict(),
            "statistics": self.statistics.to_dict() if self.statistics else None,
            "training": self.training.to_dict() if self.training else None,
        }


@dataclass(frozen=True)
class TrainingReport:
    """What Train reported when it registered a model: how the fit ended and how good it is."""

    stop_reason: str
    epochs_run: int
    rows: int
    hidden_sizes: tuple[int, ...]
    batch_size: int
    metrics: tuple[OutputMetrics, ...]
    elapsed_seconds: float
    ensemble: int = 0
    """Members of a deep ensemble (0 for one network); the metrics are then the mean's."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            **_fields(self),
            "hidden_sizes": list(self.hidden_sizes),
            "metrics": [_fields(m) for m in self.metrics],
        }


@dataclass(frozen=True)
class Pattern:
    """One input pattern whose model output hits the target.

    Attributes:
        input: The ``d`` model input columns (float32).
        output: The ``m`` outputs the model gives for it (float32).
        error: Per output, the distance to the target (0 inside a range).
        features: ``{feature name: value}`` (categoricals as level names) when the
            stream was opened with ``named=True``, else ``None``.
    """

    input: FloatArray
    output: FloatArray
    error: FloatArray
    features: dict[str, FeatureValue] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"input": [...], "output": [...], "error": [...]}`` (plus ``"features"`` when named)."""
        out: dict[str, Any] = {
            "input": self.input.tolist(),
            "output": self.output.tolist(),
            "error": self.error.tolist(),
        }
        if self.features is not None:
            out["features"] = self.features
        return out


@dataclass(frozen=True)
class InvertSummary:
    """The end of an Invert stream: how it ended and what it cost.

    Attributes:
        model: The version that answered.
        status: How the call ended; ``UNREACHABLE``/``INFEASIBLE``/``EXHAUSTED``/``BUDGET_SPENT``
            are results, not errors.
        message: A sentence explaining the status.
        requested: Patterns asked for.
        returned: Patterns returned.
        elapsed_seconds: Server wall-clock time.
        forward_passes: Batched forward passes.
        backward_passes: Batched backward passes.
        rows_evaluated: Rows pushed through the model.
        closest_output: The output closest to the target found.
        closest_error: Its largest per-output distance to the target.
        mode: Search mode used.
        prior: Prior used.
        seed: Seed used (replays the stream); 0 when ``shared``.
        preimage_size: Size of the exact preimage when it was enumerated.
        shared: The patterns are a disjoint slice of a run the server shared with other
            concurrent unseeded calls (same distribution, not reproducible; pass a seed for that).
    """

    model: ModelVersion
    status: InvertStatus
    message: str
    requested: int
    returned: int
    elapsed_seconds: float
    forward_passes: int
    backward_passes: int
    rows_evaluated: int
    closest_output: tuple[float, ...]
    closest_error: float
    mode: InvertMode | None
    prior: Prior | None
    seed: int
    preimage_size: int | None = None
    shared: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "model": str(self.model),
            "status": self.status.value,
            "message": self.message,
            "requested": self.requested,
            "returned": self.returned,
            "elapsed_seconds": self.elapsed_seconds,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "rows_evaluated": self.rows_evaluated,
            "closest_output": list(self.closest_output),
            "closest_error": self.closest_error,
            "mode": self.mode.value if self.mode else None,
            "prior": self.prior.value if self.prior else None,
            "seed": self.seed,
            "preimage_size": self.preimage_size,
            "shared": self.shared,
        }


@dataclass(frozen=True)
class TrainProgress:
    """Progress after one training epoch (losses are standardized MSE)."""

    epoch: int
    epochs: int
    train_loss: float
    validation_loss: float
    elapsed_seconds: float
    eta_seconds: float
    best_validation_loss: float
    candidate: int = 0
    candidates: int = 1
    learning_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict tagged ``"event": "progress"``."""
        return {"event": "progress", **_fields(self)}


@dataclass(frozen=True)
class TrainWarning:
    """Something about the data that does not stop training (e.g. a constant column)."""

    message: str
    column: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict tagged ``"event": "warning"``."""
        return {"event": "warning", "message": self.message, "column": self.column}


@dataclass(frozen=True)
class OutputMetrics:
    """Validation metrics of one output, in raw units."""

    output: str
    mse: float
    mae: float
    r2: float
    residual_std: float = 0.0
    residual_p95: float = 0.0
    spread_median: float = 0.0
    """Deep ensembles: median spread over the validation rows (0 for one network)."""
    spread_p95: float = 0.0
    """Deep ensembles: 95th percentile of the spread over the validation rows."""


@dataclass(frozen=True)
class ModelCandidate:
    """One network a Train run tried, with its best validation loss (standardized MSE)."""

    hidden_sizes: tuple[int, ...]
    validation_loss: float
    epochs_run: int
    stop_reason: str
    selected: bool


@dataclass(frozen=True)
class TrainResult:
    """The registered model and its validation metrics: the last event of a Train run."""

    model: ModelInfo
    metrics: tuple[OutputMetrics, ...]
    epochs_run: int
    elapsed_seconds: float
    rows: int
    stop_reason: str = "unspecified"
    """``converged``, ``max_epochs``, ``time_budget`` or ``diverged`` (``unspecified`` from older servers)."""
    candidates: tuple[ModelCandidate, ...] = ()
    hidden_sizes: tuple[int, ...] = ()
    batch_size: int = 0
    ensemble: int = 0
    """Members of a deep ensemble (0 for one network); the metrics are then the mean's."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict tagged ``"event": "result"``."""
        return {
            "event": "result",
            "model": self.model.ref,
            "metrics": [_fields(m) for m in self.metrics],
            "epochs_run": self.epochs_run,
            "elapsed_seconds": self.elapsed_seconds,
            "rows": self.rows,
            "stop_reason": self.stop_reason,
            "hidden_sizes": list(self.hidden_sizes),
            "batch_size": self.batch_size,
            "ensemble": self.ensemble,
            "candidates": [{**_fields(c), "hidden_sizes": list(c.hidden_sizes)} for c in self.candidates],
            "schema": self.model.schema.to_dict(),
        }


TrainEvent: TypeAlias = "TrainProgress | TrainWarning | TrainResult"
"""What a Train run yields: progress and warnings, then one result."""


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{where} must be a number, got {value!r}", field=where)
    return float(value)
