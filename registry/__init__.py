"""ONNX model registry: storage, validation, conversion to frozen torch modules.

Knows nothing of gRPC. See docs/architecture.md ("Registry API") and docs/registry.md.

Records, references, schemas and errors import without torch; :class:`Registry`
(which needs torch, onnx and onnx2torch) is imported on first use, so
``preimage.registry.schema`` stays light for code that only needs the schema types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from preimage.registry.errors import (
    BatchError,
    BlobStoreUnavailableError,
    ChecksumMismatchError,
    ConversionError,
    ExternalDataError,
    GraphCycleError,
    InvalidAliasError,
    InvalidModelError,
    InvalidModelNameError,
    InvalidModelRefError,
    ModelCheckerError,
    ModelIntegrityError,
    ModelNotFoundError,
    ModelTooLargeError,
    NonFiniteWeightError,
    NotDifferentiableError,
    NotOnnxError,
    ParityError,
    ReferenceEvaluationError,
    RegistryUnavailableError,
    SizeMismatchError,
    TensorCountError,
    TensorShapeError,
    TensorTypeError,
    UnsupportedOperatorError,
    UnsupportedVersionError,
)
from preimage.registry.records import LoadedModel, ModelRecord, ModelSource, TrainingReport, ValidationMetrics
from preimage.registry.refs import ModelRef
from preimage.registry.schema import (
    Column,
    DataStatistics,
    FeatureKind,
    FeatureSchema,
    InputFeature,
    OutputFeature,
    SchemaError,
)
from preimage.registry.upload import Upload

if TYPE_CHECKING:
    from preimage.registry.store import Registry

__all__ = [
    "BatchError",
    "BlobStoreUnavailableError",
    "ChecksumMismatchError",
    "Column",
    "ConversionError",
    "DataStatistics",
    "ExternalDataError",
    "FeatureKind",
    "FeatureSchema",
    "GraphCycleError",
    "InputFeature",
    "InvalidAliasError",
    "InvalidModelError",
    "InvalidModelNameError",
    "InvalidModelRefError",
    "LoadedModel",
    "ModelCheckerError",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ModelRecord",
    "ModelRef",
    "ModelSource",
    "ModelTooLargeError",
    "NonFiniteWeightError",
    "NotDifferentiableError",
    "NotOnnxError",
    "OutputFeature",
    "ParityError",
    "ReferenceEvaluationError",
    "Registry",
    "RegistryUnavailableError",
    "SchemaError",
    "SizeMismatchError",
    "TensorCountError",
    "TensorShapeError",
    "TensorTypeError",
    "TrainingReport",
    "UnsupportedOperatorError",
    "UnsupportedVersionError",
    "Upload",
    "ValidationMetrics",
]


def __getattr__(name: str) -> Any:
    if name == "Registry":
        from preimage.registry.store import Registry

        return Registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
