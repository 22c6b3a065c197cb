"""The numerical core: predict, invert and train on frozen torch modules.

Plain torch and numpy; never imports grpc or generated protobuf code.
"""

from __future__ import annotations

from preimage.server.engine.types import (
    BoundSpec,
    FixedSpec,
    InvertMode,
    InvertSpec,
    InvertStatus,
    InvertSummary,
    OutputMetrics,
    PatternBatch,
    PriorKind,
    TargetSpec,
    TrainedModel,
    TrainProgress,
    TrainSpec,
    TrainWarning,
)

__all__ = [
    "BoundSpec",
    "FixedSpec",
    "InvertMode",
    "InvertSpec",
    "InvertStatus",
    "InvertSummary",
    "OutputMetrics",
    "PatternBatch",
    "PriorKind",
    "TargetSpec",
    "TrainProgress",
    "TrainSpec",
    "TrainWarning",
    "TrainedModel",
]
