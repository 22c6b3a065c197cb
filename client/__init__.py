"""Typed Python client for preimage: blocking :class:`Client` and asyncio :class:`AsyncClient`.

Needs only grpcio, protobuf and numpy (``pip install preimage``); never torch.

Example:
    >>> from preimage.client import Client
    >>> with Client("127.0.0.1:50051") as client:                          # doctest: +SKIP
    ...     info = client.register("examples/difficulty/difficulty.onnx", "difficulty")
    ...     with client.invert(info.ref, target=7.0, n=10, seed=0, named=True) as stream:
    ...         for pattern in stream:
    ...             print(pattern.output, pattern.features)
    ...     print(stream.summary.status)
"""

from __future__ import annotations

from preimage.client._channel import RetryPolicy
from preimage.client._requests import PatternArrays
from preimage.client.aio import AsyncClient, AsyncInvertStream, AsyncTrainRun
from preimage.client.errors import (
    Cancelled,
    CancelledError,
    DeadlineExceeded,
    DeadlineExceededError,
    Internal,
    InternalError,
    InvalidArgument,
    InvalidArgumentError,
    ModelNotFound,
    ModelNotFoundError,
    PermissionDenied,
    PermissionDeniedError,
    PreimageError,
    ResourceExhausted,
    ResourceExhaustedError,
    Unauthenticated,
    UnauthenticatedError,
    Unavailable,
    UnavailableError,
    Unimplemented,
    UnimplementedError,
)
from preimage.client.sync import Client, InvertStream, TrainRun
from preimage.client.types import (
    Activation,
    DataStatistics,
    FeatureKind,
    FeatureSchema,
    FeatureValue,
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
    Pattern,
    Prior,
    TrainEvent,
    TrainingReport,
    TrainProgress,
    TrainResult,
    TrainWarning,
)

__all__ = [
    "Activation",
    "AsyncClient",
    "AsyncInvertStream",
    "AsyncTrainRun",
    "Cancelled",
    "CancelledError",
    "Client",
    "DataStatistics",
    "DeadlineExceeded",
    "DeadlineExceededError",
    "FeatureKind",
    "FeatureSchema",
    "FeatureValue",
    "InputFeature",
    "Internal",
    "InternalError",
    "InvalidArgument",
    "InvalidArgumentError",
    "InvertMode",
    "InvertStatus",
    "InvertStream",
    "InvertSummary",
    "ModelCandidate",
    "ModelInfo",
    "ModelNotFound",
    "ModelNotFoundError",
    "ModelSource",
    "ModelVersion",
    "OutputFeature",
    "OutputMetrics",
    "Pattern",
    "PatternArrays",
    "PermissionDenied",
    "PermissionDeniedError",
    "PreimageError",
    "Prior",
    "ResourceExhausted",
    "ResourceExhaustedError",
    "RetryPolicy",
    "TrainEvent",
    "TrainProgress",
    "TrainResult",
    "TrainRun",
    "TrainWarning",
    "TrainingReport",
    "Unauthenticated",
    "UnauthenticatedError",
    "Unavailable",
    "UnavailableError",
    "Unimplemented",
    "UnimplementedError",
]
