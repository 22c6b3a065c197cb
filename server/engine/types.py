"""Plain data types the engine takes and yields.

The transport translates protobuf messages into these and back
(``preimage.server.convert``); the engine never sees a protobuf message.
Arrays are numpy, float32 for model inputs and outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from preimage.errors import InvalidArgumentError
from preimage.registry.schema import DataStatistics, FeatureKind, FeatureSchema, InputFeature

__all__ = [
    "BoundSpec",
    "FeatureOverride",
    "FixedSpec",
    "InvertMode",
    "InvertSpec",
    "InvertStatus",
    "InvertSummary",
    "ModelCandidate",
    "OutputMetrics",
    "PatternBatch",
    "PriorKind",
    "StopReason",
    "TargetSpec",
    "TrainProgress",
    "TrainSpec",
    "TrainWarning",
    "TrainedModel",
]


class InvertMode(str, Enum):
    """How Invert searches (see docs/inversion.md)."""

    OPTIMIZE = "optimize"
    SAMPLE = "sample"


class PriorKind(str, Enum):
    """Distribution random patterns are drawn from before the target is imposed."""

    UNIFORM = "uniform"
    DATA = "data"


class StopReason(str, Enum):
    """Why a Train run's fitting ended."""

    CONVERGED = "converged"
    """The validation loss stopped improving (early stopping after ``patience`` epochs)."""
    MAX_EPOCHS = "max_epochs"
    """The ``epochs`` maximum was reached while the validation loss was still improving."""
    TIME_BUDGET = "time_budget"
    """The wall-clock budget ran out."""
    DIVERGED = "diverged"
    """The validation loss became NaN or infinite after some finite epochs."""


class InvertStatus(str, Enum):
    """How an Invert run ended."""

    COMPLETE = "complete"
    UNREACHABLE = "unreachable"
    INFEASIBLE = "infeasible"
    EXHAUSTED = "exhausted"
    BUDGET_SPENT = "budget_spent"


@dataclass(frozen=True)
class TargetSpec:
    """What one output must equal: a value (within the tolerance) or a closed range.

    Exactly one of ``value`` or the pair ``lower``/``upper`` is set.
    """

    value: float | None = None
    lower: float | None = None
    upper: float | None = None

    def interval(self, tolerance: float) -> tuple[float, float]:
        """The accepted output interval ``[lo, hi]``."""
        if self.value is not None:
            return self.value - tolerance, self.value + tolerance
        assert self.lower is not None and self.upper is not None
        return self.lower, self.upper

    def validate(self, where: str) -> None:
        """Raise :class:`InvalidArgumentError` naming ``where`` when malformed."""
        if self.value is not None:
            if self.lower is not None or self.upper is not None:
                raise InvalidArgumentError(f"{where}: give a value or a range, not both", field=where)
            if not math.isfinite(self.value):
                raise InvalidArgumentError(f"{where}: target value must be finite, got {self.value}", field=where)
            return
        if self.lower is None or self.upper is None:
            raise InvalidArgumentError(f"{where}: a target needs a value or a range", field=where)
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise InvalidArgumentError(
                f"{where}: target range must be finite, got [{self.lower}, {self.upper}]", field=where
            )
        if self.lower > self.upper:
            raise InvalidArgumentError(
                f"{where}: target range lower end {self.lower} is above upper end {self.upper}", field=where
            )


@dataclass(frozen=True)
class BoundSpec:
    """A bound from the request. ``feature=None`` applies to every continuous and integer feature."""

    feature: str | None
    lower: float
    upper: float


@dataclass(frozen=True)
class FixedSpec:
    """A feature held fixed: ``value`` for numeric kinds, ``level`` for categorical ones."""

    feature: str
    value: float | None = None
    level: str | None = None


@dataclass(frozen=True, kw_only=True)
class InvertSpec:
    """Options of one Invert run (validated by the engine, not here).

    Attributes:
        targets: One per model output, spread outputs excepted (see ``invert``'s ``spreads``).
        n: Patterns wanted.
        tolerance: Allowed ``|f(x) - y|`` for value targets.
        seed: Random seed; ``None`` lets the engine draw one (reported in the summary).
        mode: Search mode.
        prior: ``None`` = data prior when statistics exist, else uniform.
        min_distance: Minimum Euclidean distance between returned patterns (0 = off).
        in_distribution_weight: Weight of the in-distribution penalty (0 = off).
        max_seconds: Wall-clock budget; the run ends with ``BUDGET_SPENT`` when it is spent.
        max_passes: Budget of batched model passes (forward + backward).
        batch_size: Most patterns per yielded :class:`PatternBatch`.
        max_uncertainty: Largest spread allowed on every spread output of a deep ensemble
            (``None`` = the spreads are not constrained).
    """

    targets: tuple[TargetSpec, ...]
    n: int
    tolerance: float = 1e-3
    seed: int | None = None
    mode: InvertMode = InvertMode.SAMPLE
    prior: PriorKind | None = None
    min_distance: float = 0.0
    in_distribution_weight: float = 0.0
    max_seconds: float | None = None
    max_passes: int | None = None
    batch_size: int = 256
    max_uncertainty: float | None = None


@dataclass(frozen=True)
class PatternBatch:
    """Patterns that hit the target.

    Attributes:
        inputs: ``k x d`` float32 model inputs.
        outputs: ``k x m`` float32 model outputs for them.
        errors: ``k x m`` float32 distances of each output to its target (0 inside a range).
    """

    inputs: np.ndarray
    outputs: np.ndarray
    errors: np.ndarray

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass(frozen=True)
class InvertSummary:
    """The last event of an Invert run."""

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
    mode: InvertMode
    prior: PriorKind
    seed: int
    preimage_size: int | None = None
    shared: bool = False
    """The patterns are a slice of a run shared with concurrent calls (``seed`` is 0 then)."""


@dataclass(frozen=True)
class FeatureOverride:
    """A client's correction of one inferred feature, matched by name.

    Unlike an :class:`InputFeature` override (whose kind always replaces the inferred
    one), every field left ``None`` or empty here keeps what was inferred from the data,
    so ``FeatureOverride("walls", max=20)`` widens a bound without touching the kind.
    """

    name: str
    kind: FeatureKind | None = None
    min: float | None = None
    max: float | None = None
    levels: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """Options of one Train run (defaults match the proto's documented defaults).

    ``hidden_sizes=None`` searches :data:`preimage.server.engine.train.SEARCH_CANDIDATES`
    and keeps the network with the lowest validation loss; ``batch_size=None`` scales
    the mini-batch to the table (see :func:`preimage.server.engine.train.auto_batch_size`).
    ``epochs`` is a maximum: training normally ends earlier, when the validation loss
    has stopped improving for ``patience`` epochs. ``max_seconds`` is the wall-clock
    budget of the whole run (every candidate of a search included). ``ensemble = k >= 2``
    fits ``k`` networks of the chosen shape from different seeds and exports their mean
    and spread (0 and 1 = a single network).
    """

    name: str
    target_columns: tuple[str, ...]
    feature_columns: tuple[str, ...] = ()
    categorical_columns: tuple[str, ...] = ()
    hidden_sizes: tuple[int, ...] | None = None
    activation: str = "silu"
    epochs: int = 1000
    batch_size: int | None = None
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    validation_fraction: float = 0.2
    patience: int = 20
    seed: int | None = None
    feature_overrides: tuple[InputFeature | FeatureOverride, ...] = ()
    max_seconds: float | None = None
    ensemble: int = 0


@dataclass(frozen=True)
class TrainProgress:
    """Progress after one epoch (losses are MSE on standardized targets).

    In a network search, ``candidate`` (0-based) of ``candidates`` says which network
    the epoch belongs to; ``epoch`` counts from 1 for each candidate.
    """

    epoch: int
    epochs: int
    train_loss: float
    validation_loss: float
    best_validation_loss: float
    elapsed_seconds: float
    eta_seconds: float
    candidate: int = 0
    candidates: int = 1
    learning_rate: float = 0.0


@dataclass(frozen=True)
class TrainWarning:
    """A problem with the data that does not stop training."""

    message: str
    column: str = ""


@dataclass(frozen=True)
class OutputMetrics:
    """Validation metrics of one output, in raw units.

    ``residual_std`` is the standard deviation of ``prediction - target`` and
    ``residual_p95`` the 95th percentile of ``|prediction - target|``: how far a
    pattern's real value may lie from what the model predicts for it. For a deep
    ensemble the metrics are the members' mean's, and ``spread_median`` / ``spread_p95``
    are the median and 95th percentile of the output's spread (standard deviation across
    the members) over the validation rows (0 for a single network).
    """

    output: str
    mse: float
    mae: float
    r2: float
    residual_std: float = 0.0
    residual_p95: float = 0.0
    spread_median: float = 0.0
    spread_p95: float = 0.0


@dataclass(frozen=True)
class ModelCandidate:
    """One network tried by a Train run, with its best validation loss (standardized MSE)."""

    hidden_sizes: tuple[int, ...]
    validation_loss: float
    epochs_run: int
    stop_reason: StopReason
    selected: bool = False


@dataclass(frozen=True)
class TrainedModel:
    """The last event of a Train run: an exported model ready to register.

    ``ensemble`` is the number of members of a deep ensemble (0 for a single network);
    ``epochs_run`` and ``stop_reason`` are then the first member's.
    """

    onnx_bytes: bytes
    schema: FeatureSchema
    statistics: DataStatistics
    metrics: tuple[OutputMetrics, ...]
    epochs_run: int
    elapsed_seconds: float
    rows: int
    warnings: tuple[TrainWarning, ...] = field(default=())
    stop_reason: StopReason = StopReason.CONVERGED
    hidden_sizes: tuple[int, ...] = ()
    batch_size: int = 0
    candidates: tuple[ModelCandidate, ...] = ()
    ensemble: int = 0
