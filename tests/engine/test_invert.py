"""invert: known answers, every constraint kind, both modes, ranges, vector outputs, validation.

Every pattern is checked by onnxruntime on the ONNX bytes and by plain numpy
constraint checks (tests.engine.helpers), never by the torch module under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from preimage.errors import InvalidArgumentError
from preimage.server.engine import BoundSpec, FixedSpec, InvertMode, InvertStatus, PriorKind, invert
from preimage.server.engine.types import InvertSpec, TargetSpec
from tests.engine.helpers import (
    BOX,
    EXAMPLE_SCHEMA,
    LINEAR,
    LINEAR_W,
    MIXED,
    MIXED_SCHEMA,
    check_constraints,
    check_targets,
    module_of,
    run_invert,
    space_of,
    spec,
)
from tests.models import EXAMPLE_MODEL, mlp_onnx, onnx_eval

MODES = [InvertMode.OPTIMIZE, InvertMode.SAMPLE]
W = LINEAR_W


@pytest.mark.parametrize("mode", MODES)
def test_linear_model_has_an_exact_preimage(mode: InvertMode) -> None:
    space = space_of(BOX)
    result = run_invert(LINEAR, space, spec(1.2, n=400, mode=mode))
    assert result.summary.status is InvertStatus.COMPLETE and result.summary.returned == 400
    X = result.X
    check_constraints(BOX, X)
    check_targets(LINEAR, X, [1.2], 1e-3)
    exact = X.astype(np.float64) @ W[0] + 0.5  # the true preimage, in exact arithmetic
    assert np.abs(exact - 1.2).max() <= 1e-3
    np.testing.assert_allclose(result.F[:, 0], onnx_eval(LINEAR, X)[:, 0], atol=1e-5)
    errors = np.concatenate([b.errors for b in result.batches])[:, 0]
    np.testing.assert_allclose(errors, np.abs(result.F[:, 0].astype(np.float64) - 1.2), atol=1e-7)
    if mode is InvertMode.OPTIMIZE:
        # a Newton step solves a linear model to float precision (unless the bounds cut it short)
        assert np.median(np.abs(exact - 1.2)) < 1e-5
    assert len({row.tobytes() for row in X}) == 400  # no duplicates
    assert X.std(axis=0).min() > 0.1  # spread over the preimage, not piled at one point


@pytest.mark.parametrize("mode", MODES)
def test_example_model_difficulty_seven(mode: InvertMode) -> None:
    model = EXAMPLE_MODEL.read_bytes()
    schema = EXAMPLE_SCHEMA
    result = run_invert(model, space_of(schema), spec(7.0, n=2000, mode=mode, batch_size=300))
    assert result.summary.status is InvertStatus.COMPLETE
    check_constraints(schema, result.X)
    check_targets(model, result.X, [7.0], 1e-3)
    assert max(len(b) for b in result.batches) <= 300


@pytest.mark.parametrize("mode", MODES)
def test_every_constraint_kind_holds_exactly(mode: InvertMode) -> None:
    rows = _mixed_rows(20000)
    f = onnx_eval(MIXED, rows)[:, 0]
    y = float(np.median(f))
    result = run_invert(MIXED, space_of(MIXED_SCHEMA), spec(y, n=500, mode=mode, tolerance=1e-3))
    assert result.summary.status is InvertStatus.COMPLETE
    X = result.X
    check_constraints(MIXED_SCHEMA, X)
    check_targets(MIXED, X, [y], 1e-3)
    # the discrete features are searched, not frozen: every integer value that clearly reaches y is used
    clearly = {k for k in range(-2, 4) if f[rows[:, 2] == k].min() < y - 0.01 < y + 0.01 < f[rows[:, 2] == k].max()}
    assert len(clearly) >= 2 and clearly <= set(np.unique(X[:, 2]).tolist())
    assert set(np.unique(X[:, 3])) == {0.0, 1.0}
    assert (X[:, 4:].sum(axis=0) > 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_range_targets(mode: InvertMode) -> None:
    y = onnx_eval(MIXED, _mixed_rows(2000))[:, 0]
    lo, hi = float(np.quantile(y, 0.6)), float(np.quantile(y, 0.7))
    result = run_invert(MIXED, space_of(MIXED_SCHEMA), spec((lo, hi), n=300, mode=mode))
    assert result.summary.status is InvertStatus.COMPLETE
    F = check_targets(MIXED, result.X, [(lo, hi)], 0.0)
    errors = np.concatenate([b.errors for b in result.batches])
    assert (errors == 0).all()  # inside a range the distance is 0
    if mode is InvertMode.SAMPLE:
        # sample mode fills the range rather than piling on its edges
        assert F.std() > (hi - lo) / 6


@pytest.mark.parametrize("mode", MODES)
def test_vector_outputs_with_a_value_and_a_range(mode: InvertMode) -> None:
    model = mlp_onnx([4, 16, 2], seed=1)
    y = onnx_eval(model, np.random.default_rng(1).uniform(-1, 1, (1, 4)))[0]
    targets = (float(y[0]), (float(y[1]) - 0.05, float(y[1]) + 0.05))
    result = run_invert(model, space_of(BOX), spec(*targets, n=300, mode=mode, tolerance=2e-3))
    assert result.summary.status is InvertStatus.COMPLETE
    check_constraints(BOX, result.X)
    check_targets(model, result.X, targets, 2e-3)
    assert result.summary.backward_passes >= 2 * (result.summary.forward_passes > 1)  # one backward per output


@pytest.mark.parametrize("mode", MODES)
def test_fixed_features_are_held_and_the_rest_solved(mode: InvertMode) -> None:
    y = float(np.median(onnx_eval(MIXED, _mixed_rows(2000))))
    fixed = (FixedSpec("a", value=0.3), FixedSpec("c", level="r"), FixedSpec("k", value=1.0))
    space = space_of(MIXED_SCHEMA, bounds=(BoundSpec("b", 0.5, 1.5),), fixed=fixed)
    result = run_invert(MIXED, space, spec(y, n=200, mode=mode, tolerance=5e-3))
    assert result.summary.status is InvertStatus.COMPLETE
    check_constraints(MIXED_SCHEMA, result.X, bounds={"b": (0.5, 1.5)}, fixed={"a": 0.3, "c": "r", "k": 1.0})
    check_targets(MIXED, result.X, [y], 5e-3)


def test_request_bounds_override_the_schema() -> None:
    result = run_invert(
        LINEAR, space_of(BOX, bounds=(BoundSpec(None, 0.0, 0.5), BoundSpec("x3", 0.2, 0.3))), spec(1.0, n=100)
    )
    check_constraints(BOX, result.X, bounds={"x0": (0, 0.5), "x1": (0, 0.5), "x2": (0, 0.5), "x3": (0.2, 0.3)})
    check_targets(LINEAR, result.X, [1.0], 1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_min_distance_spreads_patterns(mode: InvertMode) -> None:
    result = run_invert(LINEAR, space_of(BOX), spec(1.2, n=60, mode=mode, min_distance=0.3))
    X = result.X.astype(np.float64)
    gaps = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=2) + np.eye(len(X)) * 10
    assert gaps.min() >= 0.3
    check_targets(LINEAR, result.X, [1.2], 1e-3)


def test_tolerance_is_honoured_tightly() -> None:
    model = EXAMPLE_MODEL.read_bytes()
    schema = EXAMPLE_SCHEMA
    for tolerance in (1e-2, 1e-5):
        result = run_invert(model, space_of(schema), spec(4.5, n=200, tolerance=tolerance))
        check_targets(model, result.X, [4.5], tolerance)


def test_summary_fields() -> None:
    result = run_invert(LINEAR, space_of(BOX), spec(1.2, n=50, mode=InvertMode.OPTIMIZE, seed=9))
    s = result.summary
    assert (s.requested, s.returned, s.seed, s.mode, s.prior) == (50, 50, 9, InvertMode.OPTIMIZE, PriorKind.UNIFORM)
    assert s.forward_passes > 0 and s.backward_passes > 0 and s.rows_evaluated >= 50
    assert s.elapsed_seconds > 0 and s.preimage_size is None
    assert len(s.closest_output) == 1 and abs(s.closest_output[0] - 1.2) <= 1e-3 and s.closest_error == 0.0
    assert "50" in s.message


@pytest.mark.parametrize(
    ("invert_spec", "field", "fragment"),
    [
        (spec(1.0, n=0), "count", "positive"),
        (spec(1.0, n=5, tolerance=-1.0), "tolerance", ">= 0"),
        (spec(1.0, n=5, tolerance=float("nan")), "tolerance", "finite"),
        (spec(1.0, n=5, tolerance=0.0), "tolerance", "positive"),
        (spec(1e6, n=5, tolerance=1e-3), "tolerance", "float32"),
        (spec(1.0, 2.0, n=5), "targets", "1 output but 2 targets"),
        (spec(float("inf"), n=5), "targets[0]", "finite"),
        (spec((2.0, 1.0), n=5), "targets[0]", "above"),
        (spec((1.0, 1.0), n=5), "targets[0]", "narrower"),
        (spec(1.0, n=5, seed=-1), "seed", "2^64"),
        (spec(1.0, n=5, min_distance=-0.1), "min_distance", ">= 0"),
        (spec(1.0, n=5, in_distribution_weight=float("inf")), "in_distribution_weight", "finite"),
        (spec(1.0, n=5, max_seconds=0.0), "budget.max_seconds", "positive"),
        (spec(1.0, n=5, max_passes=0), "budget.max_passes", "positive"),
        (spec(1.0, n=5, batch_size=0), "batch_size", "positive"),
        (spec(1.0, n=5, prior=PriorKind.DATA), "prior", "statistics"),
        (InvertSpec(targets=(TargetSpec(value=1.0, lower=0.0, upper=2.0),), n=5), "targets[0]", "not both"),
    ],
)
def test_invalid_specs_name_the_field(invert_spec: InvertSpec, field: str, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        invert(module_of(LINEAR), space_of(BOX), invert_spec)  # raised eagerly, before any work
    assert info.value.field == field
    assert fragment in info.value.message


def test_a_model_of_the_wrong_width_is_rejected() -> None:
    schema = {"inputs": [{"name": f"x{i}", "min": -1.0, "max": 1.0} for i in range(3)]}
    with pytest.raises(InvalidArgumentError, match="3 input columns"):
        invert(module_of(LINEAR), space_of(schema), spec(1.0, n=5))


def _mixed_rows(k: int) -> np.ndarray:
    """Uniform rows of MIXED_SCHEMA's space (for picking reachable targets)."""
    rng = np.random.default_rng(123)
    X = np.zeros((k, 7), dtype=np.float32)
    X[:, 0] = rng.uniform(-1, 1, k)
    X[:, 1] = rng.uniform(0, 2, k)
    X[:, 2] = rng.integers(-2, 4, k)
    X[:, 3] = rng.integers(0, 2, k)
    X[np.arange(k), 4 + rng.integers(0, 3, k)] = 1.0
    return X
