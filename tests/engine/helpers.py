"""Helpers for the predict/invert tests: ONNX → frozen module, running Invert, checking patterns.

Every check of a returned pattern evaluates the ONNX bytes with onnxruntime
(``tests.models.onnx_eval``) and tests the constraints with plain numpy written
here, never with the engine's own ``InputSpace.contains`` or the torch module.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx2torch import convert

from preimage.registry.schema import FeatureSchema
from preimage.server.engine import InputSpace, InvertSummary, PatternBatch, invert
from preimage.server.engine.types import BoundSpec, FixedSpec, InvertSpec, TargetSpec
from tests.models import linear_onnx, mlp_onnx, onnx_eval

__all__ = [
    "BINARY10",
    "BINARY10_SCHEMA",
    "BOX",
    "EXAMPLE_SCHEMA",
    "LINEAR",
    "LINEAR_W",
    "MIXED",
    "MIXED_SCHEMA",
    "Result",
    "all_binary_rows",
    "check_constraints",
    "check_targets",
    "module_of",
    "run_invert",
    "space_of",
    "spec",
]

# Shared models and schemas of the engine tests.
LINEAR_W = np.array([[1.0, -2.0, 0.5, 3.0]])
LINEAR = linear_onnx(LINEAR_W, [0.5])
BOX: dict[str, Any] = {"inputs": [{"name": f"x{i}", "min": -1.0, "max": 1.0} for i in range(4)]}
EXAMPLE_SCHEMA: dict[str, Any] = {"inputs": [{"name": f"f{i}", "min": 0.0, "max": 1.0} for i in range(10)]}
MIXED_SCHEMA: dict[str, Any] = {
    "inputs": [
        {"name": "a", "min": -1.0, "max": 1.0},
        {"name": "b", "min": 0.0, "max": 2.0},
        {"name": "k", "kind": "integer", "min": -2, "max": 3},
        {"name": "z", "kind": "binary"},
        {"name": "c", "kind": "categorical", "levels": ["p", "q", "r"]},
    ]
}
MIXED = mlp_onnx([7, 16, 1], seed=3)
BINARY10 = mlp_onnx([10, 16, 1], seed=5)
BINARY10_SCHEMA: dict[str, Any] = {"inputs": [{"name": f"b{i}", "kind": "binary"} for i in range(10)]}


def module_of(model: bytes) -> torch.nn.Module:
    """Convert ONNX bytes with onnx2torch and freeze the result (eval, no parameter grads)."""
    module = convert(onnx.load_from_string(model)).eval()
    module.requires_grad_(False)
    return module


def space_of(
    schema: dict[str, Any] | FeatureSchema,
    bounds: Sequence[BoundSpec] = (),
    fixed: Sequence[FixedSpec] = (),
) -> InputSpace:
    """An input space from a schema dict (or schema) and request constraints."""
    if not isinstance(schema, FeatureSchema):
        schema = FeatureSchema.from_dict(schema)
    return InputSpace.from_schema(schema, bounds=bounds, fixed=fixed)


def spec(*targets: float | tuple[float, float], **options: Any) -> InvertSpec:
    """An InvertSpec: floats are value targets, pairs are ranges; ``seed`` defaults to 0."""
    parsed = tuple(
        TargetSpec(lower=t[0], upper=t[1]) if isinstance(t, tuple) else TargetSpec(value=float(t)) for t in targets
    )
    options.setdefault("seed", 0)
    return InvertSpec(targets=parsed, **options)


@dataclass
class Result:
    """Everything one Invert run streamed."""

    batches: list[PatternBatch]
    summary: InvertSummary

    @property
    def X(self) -> np.ndarray:
        if not self.batches:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate([b.inputs for b in self.batches])

    @property
    def F(self) -> np.ndarray:
        return np.concatenate([b.outputs for b in self.batches])


def run_invert(model: bytes, space: InputSpace, invert_spec: InvertSpec, **kwargs: Any) -> Result:
    """Run Invert to the end; assert the stream is batches then exactly one summary."""
    events = list(invert(module_of(model), space, invert_spec, **kwargs))
    assert isinstance(events[-1], InvertSummary)
    assert all(isinstance(e, PatternBatch) for e in events[:-1])
    for batch in events[:-1]:
        assert 0 < len(batch) <= invert_spec.batch_size
        assert batch.inputs.dtype == np.float32 and batch.outputs.dtype == np.float32
    result = Result(batches=list(events[:-1]), summary=events[-1])
    assert result.summary.returned == sum(len(b) for b in result.batches)
    return result


def check_targets(
    model: bytes, X: np.ndarray, targets: Iterable[float | tuple[float, float]], tolerance: float
) -> np.ndarray:
    """Assert onnxruntime puts every row's outputs on target; return those outputs."""
    F = onnx_eval(model, X)
    for j, target in enumerate(targets):
        if isinstance(target, tuple):
            assert (F[:, j] >= target[0]).all() and (F[:, j] <= target[1]).all(), (F[:, j].min(), F[:, j].max())
        else:
            err = np.abs(F[:, j].astype(np.float64) - target)
            assert (err <= tolerance).all(), err.max()
    return F


def check_constraints(
    schema: dict[str, Any],
    X: np.ndarray,
    bounds: dict[str, tuple[float, float]] | None = None,
    fixed: dict[str, float | str] | None = None,
) -> None:
    """Assert every row satisfies the schema's kinds and bounds (overridden by ``bounds``) and ``fixed``."""
    bounds = bounds or {}
    fixed = fixed or {}
    assert np.isfinite(X).all()
    col = 0
    for feature in schema["inputs"]:
        name, kind = feature["name"], feature.get("kind", "continuous")
        if kind == "categorical":
            levels = feature["levels"]
            block = X[:, col : col + len(levels)]
            assert np.isin(block, (0.0, 1.0)).all()
            assert (block.sum(axis=1) == 1.0).all()
            if name in fixed:
                assert (block[:, levels.index(fixed[name])] == 1.0).all()
            col += len(levels)
            continue
        x = X[:, col]
        if kind == "binary":
            assert np.isin(x, (0.0, 1.0)).all()
        else:
            lo, hi = bounds.get(name, (feature.get("min"), feature.get("max")))
            assert (x >= lo).all() and (x <= hi).all(), (name, x.min(), x.max())
            if kind == "integer":
                assert (x == np.round(x)).all()
        if name in fixed:
            assert (x == np.float32(fixed[name])).all()
        col += 1
    assert col == X.shape[1]


def all_binary_rows(d: int) -> np.ndarray:
    """Every point of ``{0, 1}^d`` in mixed-radix order (first column fastest), float32."""
    rows = np.array(list(itertools.product((0.0, 1.0), repeat=d)), dtype=np.float32)
    return rows[:, ::-1].copy()
