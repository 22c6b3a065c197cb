"""What the registry hands out: records of stored versions and loaded modules."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from preimage.registry.schema import DataStatistics, FeatureSchema

if TYPE_CHECKING:
    import torch

__all__ = ["LoadedModel", "ModelRecord", "ModelSource", "TrainingReport", "ValidationMetrics"]


class ModelSource(str, Enum):
    """How a stored model got into the registry."""

    UPLOAD = "upload"
    TRAIN = "train"
    WATCH = "watch"


@dataclass(frozen=True)
class ValidationMetrics:
    """Validation metrics of one output of a trained model, in raw units."""

    output: str
    mse: float
    mae: float
    r2: float
    residual_std: float
    residual_p95: float
    spread_median: float = 0.0
    """Deep ensembles: median spread (std across members) over the validation rows; 0 otherwise."""
    spread_p95: float = 0.0
    """Deep ensembles: 95th percentile of the spread over the validation rows; 0 otherwise."""


@dataclass(frozen=True)
class TrainingReport:
    """What Train reported when it registered a model (stored as JSON beside it)."""

    stop_reason: str
    epochs_run: int
    rows: int
    hidden_sizes: tuple[int, ...]
    batch_size: int
    metrics: tuple[ValidationMetrics, ...]
    elapsed_seconds: float
    ensemble: int = 0
    """Members of a deep ensemble (0 for a single network); the metrics are then the mean's."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "hidden_sizes": list(self.hidden_sizes), "metrics": [asdict(m) for m in self.metrics]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingReport:
        """The inverse of :meth:`to_dict`."""
        return cls(
            stop_reason=str(data["stop_reason"]),
            epochs_run=int(data["epochs_run"]),
            rows=int(data["rows"]),
            hidden_sizes=tuple(int(h) for h in data["hidden_sizes"]),
            batch_size=int(data["batch_size"]),
            metrics=tuple(ValidationMetrics(**m) for m in data["metrics"]),
            elapsed_seconds=float(data["elapsed_seconds"]),
            ensemble=int(data.get("ensemble", 0)),  # absent from reports stored before ensembles
        )


@dataclass(frozen=True)
class ModelRecord:
    """Everything the registry knows about one stored model version.

    Attributes:
        name: Model name.
        version: Version, counted per name from 1 and never reused.
        aliases: Aliases pointing at this version, sorted.
        sha256: Lower-case hex sha256 of the ONNX bytes.
        size_bytes: Size of the ONNX bytes.
        created_at: When the version was registered (aware, UTC).
        input_width: Number of input columns ``d``.
        output_width: Number of outputs ``m``.
        schema: The feature schema (a default one when none was given).
        statistics: Training-data statistics, when given.
        source: How the model got here.
        latest: Whether ``NAME`` alone resolves to this version.
        training: How Train fitted it, for models Train registered.
    """

    name: str
    version: int
    aliases: tuple[str, ...]
    sha256: str
    size_bytes: int
    created_at: datetime
    input_width: int
    output_width: int
    schema: FeatureSchema
    statistics: DataStatistics | None
    source: ModelSource
    latest: bool
    training: TrainingReport | None = None

    @property
    def ref(self) -> str:
        """``NAME:VERSION`` of this record."""
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class LoadedModel:
    """A stored version together with its frozen torch module.

    The module maps a float32 ``n x d`` tensor to an ``n x m`` tensor, is in eval
    mode, and has no parameter that requires a gradient; gradients flow to its
    input. It stays valid for as long as this object is held, even if the version
    is deleted or evicted from the cache meanwhile.

    Attributes:
        record: The version.
        module: The frozen module.
        schema: ``record.schema``.
        statistics: ``record.statistics``.
    """

    record: ModelRecord
    module: torch.nn.Module
    schema: FeatureSchema
    statistics: DataStatistics | None
