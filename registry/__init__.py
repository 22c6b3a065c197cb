"""ONNX model registry: storage, validation, conversion to frozen torch modules.

Knows nothing of gRPC. See docs/architecture.md ("Registry API") and docs/registry.md.
"""

from __future__ import annotations

from preimage.registry.errors import (
    BatchError,
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
from preimage.registry.records import LoadedModel, ModelRecord, ModelSource
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
from preimage.registry.store import Registry
from preimage.registry.upload import Upload

__all__ = [
    "BatchError",
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
    "UnsupportedOperatorError",
    "UnsupportedVersionError",
    "Upload",
]
