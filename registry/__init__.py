"""ONNX model registry: storage, validation, conversion to frozen torch modules.

Knows nothing of gRPC. See docs/architecture.md for the public API.
"""

from __future__ import annotations

from preimage.registry.schema import (
    Column,
    DataStatistics,
    FeatureKind,
    FeatureSchema,
    InputFeature,
    OutputFeature,
    SchemaError,
)

__all__ = [
    "Column",
    "DataStatistics",
    "FeatureKind",
    "FeatureSchema",
    "InputFeature",
    "OutputFeature",
    "SchemaError",
]
