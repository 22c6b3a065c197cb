"""The whole check a model passes before it is stored: static checks, schema, conversion, parity.

Nothing here touches the disk or the index, so a refusal leaves the registry unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from preimage.registry.convert import check_gradient, check_parity, quick_check, sample_rows, to_module
from preimage.registry.inspect import inspect_model, parse_model
from preimage.registry.ops import convertible_model
from preimage.registry.schema import DataStatistics, FeatureSchema, SchemaError

__all__ = ["GRADIENT_ROWS", "PreparedModel", "prepare_model", "reload_module", "resolve_schema"]

log = logging.getLogger(__name__)

GRADIENT_ROWS = 4
"""Rows of the parity batch also pushed through a backward pass."""
_RELOAD_ROWS = 2


@dataclass(frozen=True)
class PreparedModel:
    """A model that passed every check, ready to be stored.

    Attributes:
        module: The converted, frozen module.
        input_width: ``d``.
        output_width: ``m``.
        schema: The schema, fitted to ``d`` and ``m``.
        statistics: The statistics, checked against ``d``, when given.
    """

    module: torch.nn.Module
    input_width: int
    output_width: int
    schema: FeatureSchema
    statistics: DataStatistics | None


def resolve_schema(
    given: FeatureSchema | None,
    metadata: str | None,
    input_width: int,
    default_bounds: tuple[float, float] | None,
) -> FeatureSchema:
    """The schema a model is stored with, checked against its input width (outputs not yet fitted).

    The given schema wins, then the model's ``preimage.schema`` metadata, then a default of
    unbounded continuous features; ``default_bounds`` then fills every missing continuous or integer bound.

    Raises:
        SchemaError: Malformed (the metadata one says so), or spanning another width than the model's.
    """
    if given is not None:
        schema = given
    elif metadata is not None:
        try:
            schema = FeatureSchema.from_json(metadata)
        except SchemaError as exc:
            detail = exc.message.removeprefix("invalid schema: ")
            raise SchemaError(f"in the model's metadata_props 'preimage.schema': {detail}") from None
    else:
        schema = FeatureSchema.default(input_width, 0)
    if default_bounds is not None:
        schema = schema.with_default_bounds(*default_bounds)
    schema.check_input_width(input_width)
    return schema


def prepare_model(
    data: bytes,
    *,
    schema: FeatureSchema | None = None,
    statistics: DataStatistics | None = None,
    default_bounds: tuple[float, float] | None = None,
    parity_rows: int = 32,
    seed: int = 0,
) -> PreparedModel:
    """Check ONNX bytes completely and convert them.

    Args:
        data: The serialized model.
        schema: The caller's schema, if any.
        statistics: Training-data statistics, if any.
        default_bounds: ``(lower, upper)`` for every continuous or integer feature without bounds.
        parity_rows: Rows in the parity batch (at least 2, so batching is exercised).
        seed: Seed of the parity rows (fixed, so a registration is reproducible).

    Raises:
        InvalidModelError: A subclass naming the problem.
        SchemaError: The schema or statistics do not fit the model.
    """
    inspection = inspect_model(data)
    d = inspection.input_width
    fitted_inputs = resolve_schema(schema, inspection.metadata_schema, d, default_bounds)
    if statistics is not None:
        statistics = statistics.validated(d)
    module = to_module(inspection.convertible)
    X = sample_rows(fitted_inputs, max(2, parity_rows), np.random.default_rng(seed))
    m = check_parity(inspection.model, inspection.input_name, inspection.output_name, module, X)
    if inspection.declared_output_width is not None and inspection.declared_output_width != m:
        # onnxruntime accepts such a model too; the width actually produced is what counts.
        log.warning(
            "output %r is declared %d wide but the model produces %d columns; using %d",
            inspection.output_name,
            inspection.declared_output_width,
            m,
            m,
        )
    check_gradient(module, X[:GRADIENT_ROWS])
    return PreparedModel(module, d, m, fitted_inputs.fit(d, m), statistics)


def reload_module(data: bytes, schema: FeatureSchema, output_width: int, *, seed: int = 0) -> torch.nn.Module:
    """Convert stored bytes again (a cold load) and run the cheap check.

    The bytes passed every check at registration; only conversion and one forward pass run here.

    Raises:
        InvalidModelError: Conversion now fails (e.g. after an onnx2torch change).
    """
    model: onnx.ModelProto = parse_model(data)
    module = to_module(convertible_model(model))
    quick_check(module, sample_rows(schema, _RELOAD_ROWS, np.random.default_rng(seed)), output_width)
    return module
