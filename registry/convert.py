"""ONNX to a frozen torch module, and the checks that the module is the model.

At registration the converted module must agree with ``onnx.reference``'s
evaluator (an implementation independent of both onnx2torch and torch) on a
batch of random rows inside the model's bounds and on a single row, and must
give gradients with respect to its input. A cold load after a restart converts
again and runs only :func:`quick_check`.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator
from onnx2torch import convert

from preimage.registry.errors import (
    BatchError,
    ConversionError,
    NotDifferentiableError,
    ParityError,
    ReferenceEvaluationError,
    TensorShapeError,
)
from preimage.registry.lowering import lower
from preimage.registry.schema import FeatureKind, FeatureSchema

__all__ = [
    "PARITY_ATOL",
    "PARITY_RTOL",
    "check_gradient",
    "check_parity",
    "freeze",
    "quick_check",
    "sample_rows",
    "to_module",
]

PARITY_ATOL = 1e-4
"""Absolute part of the parity tolerance: ``|torch - reference| <= ATOL + RTOL * |reference|``."""
PARITY_RTOL = 1e-3
"""Relative part of the parity tolerance (float32 sums taken in a different order differ by this much)."""


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no parameter gradients, in place; gradients still flow to the input."""
    module.eval()
    module.requires_grad_(False)
    return module


def to_module(model: onnx.ModelProto) -> torch.nn.Module:
    """Convert with onnx2torch, freeze, and lower its simple layers to plain calls (:func:`lower`).

    Raises:
        ConversionError: onnx2torch cannot convert the model.
    """
    try:
        module = convert(model)
    except Exception as exc:  # onnx2torch raises anything from KeyError to NotImplementedError
        raise ConversionError(f"{type(exc).__name__}: {exc}") from None
    return lower(freeze(module))


def sample_rows(schema: FeatureSchema, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Random float32 rows that respect the schema.

    Bounded continuous columns are uniform in their bounds, integer ones uniform
    integers, binary ones 0 or 1, categorical features one-hot; an unbounded side
    is reached with a standard normal (a half-normal past a single bound).
    """
    columns: list[np.ndarray] = []
    for feature in schema.inputs:
        if feature.kind is FeatureKind.BINARY:
            columns.append(rng.integers(0, 2, rows).astype(np.float64))
        elif feature.kind is FeatureKind.CATEGORICAL:
            columns.extend(np.eye(len(feature.levels))[rng.integers(0, len(feature.levels), rows)].T)
        else:
            columns.append(_sample_numeric(feature.kind, feature.min, feature.max, rows, rng))
    return np.stack(columns, axis=1).astype(np.float32)


def _sample_numeric(
    kind: FeatureKind, lower: float | None, upper: float | None, rows: int, rng: np.random.Generator
) -> np.ndarray:
    if lower is not None and upper is not None:
        if kind is FeatureKind.INTEGER:
            return rng.integers(math.ceil(lower), math.floor(upper) + 1, rows).astype(np.float64)
        return rng.uniform(lower, upper, rows)
    noise = rng.standard_normal(rows)
    if lower is not None:
        values = lower + np.abs(noise)
    elif upper is not None:
        values = upper - np.abs(noise)
    else:
        values = noise
    return np.round(values) if kind is FeatureKind.INTEGER else values


def check_parity(
    model: onnx.ModelProto, input_name: str, output_name: str, module: torch.nn.Module, X: np.ndarray
) -> int:
    """Compare the module with the reference evaluator on the first row of ``X`` alone, then on all of ``X``.

    A failure on the single row is a model or conversion problem; one that appears
    only with several rows means the model cannot take a batch (a fixed batch size
    inside the graph, rows mixed together), which the engine needs.

    Args:
        model: The model as uploaded (the reference evaluates this one).
        input_name: Its graph input.
        output_name: Its graph output.
        module: The converted, frozen module.
        X: ``rows x d`` float32 rows inside the model's bounds, ``rows >= 2``.

    Returns:
        The output width ``m`` the model produces.

    Raises:
        ReferenceEvaluationError, ConversionError, BatchError, TensorShapeError, ParityError: naming what failed.
    """
    try:
        reference = ReferenceEvaluator(model)
    except Exception as exc:
        raise ReferenceEvaluationError(1, f"{type(exc).__name__}: {exc}") from None
    width: int | None = None
    for batch in (X[:1], X):
        rows = len(batch)
        try:
            outputs = reference.run(None, {input_name: batch})
            expected = np.asarray(next(iter(outputs)))
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if rows == 1:
                raise ReferenceEvaluationError(rows, detail) from None
            raise BatchError(rows, f"the ONNX reference evaluator fails on it ({detail})") from None
        if expected.ndim != 2:
            raise TensorShapeError(
                "output", output_name, str(list(expected.shape)), f"for {rows} rows; the output must be [batch, m]"
            )
        if expected.shape[0] != rows:
            raise BatchError(rows, f"it returned {expected.shape[0]} rows (shape {list(expected.shape)})")
        if width is not None and expected.shape[1] != width:
            raise BatchError(rows, f"its output width changed from {width} to {expected.shape[1]} with the batch size")
        width = int(expected.shape[1])
        try:
            with torch.no_grad():
                actual = _forward(module, batch)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if rows == 1:
                raise ConversionError(f"the converted module fails on one row: {detail}") from None
            raise BatchError(rows, f"the converted module fails on it ({detail})") from None
        if actual.shape != expected.shape:
            raise BatchError(
                rows,
                f"the converted module returned shape {list(actual.shape)} where the reference "
                f"returned {list(expected.shape)}",
            )
        _compare(actual, expected)
    assert width is not None
    return width


def _forward(module: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    output = module(torch.from_numpy(np.ascontiguousarray(batch)))
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the module returned {type(output).__name__}, not a tensor")
    return output.detach().to(torch.float64).numpy()


def _compare(actual: np.ndarray, expected: np.ndarray) -> None:
    expected = expected.astype(np.float64)
    agree_nonfinite = (np.isnan(actual) & np.isnan(expected)) | (
        np.isinf(actual) & np.isinf(expected) & (np.sign(actual) == np.sign(expected))
    )
    with np.errstate(invalid="ignore"):
        deviation = np.abs(actual - expected)
    deviation = np.where(agree_nonfinite, 0.0, np.nan_to_num(deviation, nan=np.inf, posinf=np.inf))
    allowed = PARITY_ATOL + PARITY_RTOL * np.abs(np.nan_to_num(expected, nan=0.0, posinf=0.0, neginf=0.0))
    excess = deviation / allowed
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
    if excess[worst] > 1.0:
        row, column = int(worst[0]), int(worst[1])
        raise ParityError(float(deviation[worst]), row, column, float(actual[worst]), float(expected[worst]))


def check_gradient(module: torch.nn.Module, X: np.ndarray) -> None:
    """Refuse a module that gives no gradient with respect to its input on rows ``X``.

    Raises:
        NotDifferentiableError: The backward pass fails, or the output does not depend on the input.
    """
    inputs = torch.from_numpy(np.ascontiguousarray(X)).requires_grad_(True)
    try:
        output = module(inputs)
        if not output.requires_grad:
            raise NotDifferentiableError("the output does not depend on the input through differentiable operations")
        output.sum().backward()
    except NotDifferentiableError:
        raise
    except Exception as exc:
        raise NotDifferentiableError(f"{type(exc).__name__}: {exc}") from None
    if inputs.grad is None:
        raise NotDifferentiableError("no gradient reached the input")


def quick_check(module: torch.nn.Module, X: np.ndarray, output_width: int) -> None:
    """The check a cold load runs: one forward pass on ``X`` gives ``len(X) x output_width``.

    Raises:
        ConversionError: The module fails or returns another shape.
    """
    try:
        with torch.no_grad():
            shape = tuple(_forward(module, X).shape)
    except Exception as exc:
        raise ConversionError(f"the reconverted module fails on {len(X)} rows: {type(exc).__name__}: {exc}") from None
    if shape != (len(X), output_width):
        raise ConversionError(f"the reconverted module returns shape {list(shape)}, not [{len(X)}, {output_width}]")
