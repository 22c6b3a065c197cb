"""Sample mode draws from the prior restricted to the preimage: goodness-of-fit tests, fixed seeds.

References are built independently: the exact preimage of a small discrete space
by enumerating it through onnxruntime, and the restricted prior of a continuous
space by rejection (prior draws kept when onnxruntime puts them on target).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from preimage.registry.schema import DataStatistics
from preimage.server.engine import InvertMode, PriorKind, invert
from preimage.server.engine.prior import DataPrior, InDistributionPenalty
from tests.engine.helpers import (
    BINARY10,
    BINARY10_SCHEMA,
    all_binary_rows,
    check_constraints,
    check_targets,
    module_of,
    run_invert,
    space_of,
    spec,
)
from tests.models import linear_onnx, mlp_onnx, onnx_eval


def _preimage(y_quantile: float, tol: float) -> tuple[float, np.ndarray]:
    rows = all_binary_rows(10)
    f = onnx_eval(BINARY10, rows)[:, 0].astype(np.float64)
    y = float(np.quantile(f, y_quantile))
    assert np.abs(np.abs(f - y) - tol).min() > 2e-4  # no point at the interval's float-rounding edge
    return y, rows[np.abs(f - y) <= tol]


def _first_patterns(y: float, tol: float, runs: int, statistics: DataStatistics | None = None) -> np.ndarray:
    module = module_of(BINARY10)
    space = space_of(BINARY10_SCHEMA)
    firsts = []
    for seed in range(runs):
        batch = next(invert(module, space, spec(y, n=1, tolerance=tol, seed=seed), statistics=statistics))
        firsts.append(batch.inputs[0])  # type: ignore[union-attr]
    return np.asarray(firsts)


def _counts(X: np.ndarray, preimage: np.ndarray) -> np.ndarray:
    index = {row.tobytes(): i for i, row in enumerate(preimage)}
    counts = np.zeros(len(preimage))
    for row in X:
        counts[index[row.tobytes()]] += 1  # KeyError if a pattern is outside the exact preimage
    return counts


def test_binary10_draws_are_uniform_over_the_exact_preimage() -> None:
    y, preimage = _preimage(0.9, 0.011)
    assert 8 <= len(preimage) <= 40
    runs = 10 * len(preimage)
    counts = _counts(_first_patterns(y, 0.011, runs), preimage)
    result = stats.chisquare(counts)
    assert result.pvalue >= 0.01, (counts, result)


def test_binary10_draws_follow_the_data_prior() -> None:
    y, preimage = _preimage(0.9, 0.011)
    p1 = np.linspace(0.15, 0.85, 10)
    statistics = DataStatistics(rows=10**6, mean=tuple(p1), covariance=tuple(np.diag(p1 * (1 - p1)).ravel()))
    runs = 12 * len(preimage)
    counts = _counts(_first_patterns(y, 0.011, runs, statistics), preimage)
    eps = 1.0 / (statistics.rows + 1)
    p = (1 - eps) * p1 + eps / 2
    weight = np.prod(np.where(preimage == 1.0, p, 1 - p), axis=1)
    expected = runs * weight / weight.sum()
    keep = expected >= 5  # pool the rare cells so the chi-square approximation holds
    observed = np.append(counts[keep], counts[~keep].sum())
    pooled = np.append(expected[keep], expected[~keep].sum())
    assert stats.chisquare(observed, pooled).pvalue >= 0.01
    flat = np.full(len(preimage), runs / len(preimage))  # the test has the power to see a uniform sampler
    assert (
        stats.chisquare(np.append(counts[keep], counts[~keep].sum()), np.append(flat[keep], flat[~keep].sum())).pvalue
        < 1e-6
    )


TWO_D = mlp_onnx([2, 32, 1], seed=11, scale=3.0)
SQUARE = {"inputs": [{"name": "u", "min": -1.0, "max": 1.0}, {"name": "v", "min": -1.0, "max": 1.0}]}


def _ks(X: np.ndarray, ref: np.ndarray) -> list[float]:
    """Two-sample KS p-values on both coordinates and a diagonal projection."""
    return [
        stats.ks_2samp(X @ d, ref @ d).pvalue
        for d in (np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.6, 0.8]))
    ]


@pytest.mark.parametrize(("quantile", "tolerance", "seed"), [(0.5, 1e-3, 1), (0.9, 1e-3, 2), (0.3, 1e-2, 3)])
def test_continuous_draws_match_rejection_sampling(quantile: float, tolerance: float, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    prior = rng.uniform(-1.0, 1.0, (2_000_000, 2)).astype(np.float32)
    f = onnx_eval(TWO_D, prior)[:, 0].astype(np.float64)
    y = float(np.quantile(f, quantile))
    reference = prior[np.abs(f - y) <= tolerance]
    assert len(reference) > 1000
    result = run_invert(TWO_D, space_of(SQUARE), spec(y, n=1000, tolerance=tolerance, seed=seed))
    check_targets(TWO_D, result.X, [y], tolerance)
    assert min(_ks(result.X, reference)) >= 0.01 / 3  # Bonferroni over the three projections


def test_data_prior_restricted_matches_rejection_from_the_same_prior() -> None:
    statistics = DataStatistics(
        rows=5000,
        mean=(0.2, -0.1),
        covariance=(0.16, 0.1, 0.1, 0.25),
        quantile_levels=(0.0, 0.25, 0.5, 0.75, 1.0),
        quantiles=(-1.0, -0.1, 0.2, 0.5, 1.0, -1.0, -0.4, -0.1, 0.3, 1.0),
    )
    space = space_of(SQUARE)
    draws = DataPrior(space, statistics).sample(np.random.default_rng(7), 1_500_000)
    f = onnx_eval(TWO_D, draws)[:, 0].astype(np.float64)
    y, tolerance = float(np.quantile(f, 0.4)), 2e-3
    reference = draws[np.abs(f - y) <= tolerance]
    result = run_invert(TWO_D, space, spec(y, n=800, tolerance=tolerance, seed=4), statistics=statistics)
    assert result.summary.prior is PriorKind.DATA  # the default when the model has statistics
    check_targets(TWO_D, result.X, [y], tolerance)
    assert min(_ks(result.X, reference)) >= 0.01 / 3
    uniform = run_invert(
        TWO_D, space, spec(y, n=800, tolerance=tolerance, seed=4, prior=PriorKind.UNIFORM), statistics=statistics
    )
    assert uniform.summary.prior is PriorKind.UNIFORM
    assert min(_ks(uniform.X, reference)) < 1e-4  # the test can tell the priors apart


IGNORING_SCHEMA = {
    "inputs": [
        {"name": "x0", "min": 0.0, "max": 1.0},
        {"name": "x1", "min": 0.0, "max": 1.0},
        {"name": "flag", "kind": "binary"},
        {"name": "tint", "kind": "categorical", "levels": ["r", "g", "b"]},
    ]
}
IGNORING = linear_onnx(np.array([[1.0, 2.0, 0.0, 0.0, 0.0, 0.0]]), [0.0])  # flag and tint are ignored


def test_ignored_features_keep_their_prior_distribution() -> None:
    result = run_invert(IGNORING, space_of(IGNORING_SCHEMA), spec(1.7, n=3000, seed=8))
    X = result.X
    check_constraints(IGNORING_SCHEMA, X)
    check_targets(IGNORING, X, [1.7], 1e-3)
    assert stats.binomtest(int(X[:, 2].sum()), len(X), 0.5).pvalue >= 0.01
    assert stats.chisquare(X[:, 3:].sum(axis=0)).pvalue >= 0.01
    # the continuous part follows the restricted uniform prior: x0 on the segment x0 + 2 x1 = 1.7 in the box,
    # uniform along it (constant gradient), so x0 is uniform on [0, 1]
    assert stats.kstest(X[:, 0], "uniform").pvalue >= 0.01


@pytest.mark.parametrize("mode", [InvertMode.OPTIMIZE, InvertMode.SAMPLE])
def test_in_distribution_penalty_pulls_towards_the_data(mode: InvertMode) -> None:
    statistics = DataStatistics(rows=1000, mean=(0.3, 0.2), covariance=(0.1, 0.0, 0.0, 0.1))
    space = space_of(SQUARE)
    penalty = InDistributionPenalty.build(space, statistics)
    y = float(np.quantile(onnx_eval(TWO_D, np.random.default_rng(0).uniform(-1, 1, (4000, 2))), 0.5))
    plain = run_invert(TWO_D, space, spec(y, n=300, mode=mode, prior=PriorKind.UNIFORM), statistics=statistics)
    pulled = run_invert(
        TWO_D,
        space,
        spec(y, n=300, mode=mode, prior=PriorKind.UNIFORM, in_distribution_weight=1.0),
        statistics=statistics,
    )
    check_targets(TWO_D, pulled.X, [y], 1e-3)
    check_constraints({"inputs": SQUARE["inputs"]}, pulled.X)
    assert np.mean(penalty.value(pulled.X)) < 0.8 * np.mean(penalty.value(plain.X))
