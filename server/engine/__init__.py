"""The numerical core: predict, invert and train on frozen torch modules.

Plain torch and numpy; never imports grpc or generated protobuf code.
"""

from __future__ import annotations

from preimage.server.engine.data import Table, TableBuilder, build_table, data_statistics, encode, infer_schema
from preimage.server.engine.export import export_onnx
from preimage.server.engine.invert import invert
from preimage.server.engine.predict import predict
from preimage.server.engine.space import InputSpace
from preimage.server.engine.train import train
from preimage.server.engine.types import (
    BoundSpec,
    FeatureOverride,
    FixedSpec,
    InvertMode,
    InvertSpec,
    InvertStatus,
    InvertSummary,
    ModelCandidate,
    OutputMetrics,
    PatternBatch,
    PriorKind,
    StopReason,
    TargetSpec,
    TrainedModel,
    TrainProgress,
    TrainSpec,
    TrainWarning,
)

__all__ = [
    "BoundSpec",
    "FeatureOverride",
    "FixedSpec",
    "InputSpace",
    "InvertMode",
    "InvertSpec",
    "InvertStatus",
    "InvertSummary",
    "ModelCandidate",
    "OutputMetrics",
    "PatternBatch",
    "PriorKind",
    "StopReason",
    "Table",
    "TableBuilder",
    "TargetSpec",
    "TrainProgress",
    "TrainSpec",
    "TrainWarning",
    "TrainedModel",
    "build_table",
    "data_statistics",
    "encode",
    "export_onnx",
    "infer_schema",
    "invert",
    "predict",
    "train",
]
