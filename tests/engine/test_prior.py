"""Priors: the uniform prior and the data prior draw what docs/inversion.md says they draw."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from preimage.errors import InvalidArgumentError
from preimage.registry.schema import DataStatistics
from preimage.server.engine import BoundSpec, FixedSpec, PriorKind
from preimage.server.engine.prior import DataPrior, InDistributionPenalty, UniformPrior, _Marginal, make_prior
from tests.engine.helpers import check_constraints, space_of

MIXED = {
    "inputs": [
        {"name": "a", "min": -1.0, "max": 3.0},
        {"name": "k", "kind": "integer", "min": 2, "max": 6},
        {"name": "z", "kind": "binary"},
        {"name": "c", "kind": "categorical", "levels": ["p", "q", "r"]},
        {"name": "b", "min": 0.0, "max": 1.0},
    ]
}


def test_uniform_prior_is_uniform_over_bounds_and_types() -> None:
    space = space_of(MIXED)
    X = UniformPrior(space).sample(np.random.default_rng(0), 30000)
    assert X.dtype == np.float32 and X.shape == (30000, 7)
    check_constraints(MIXED, X)
    assert stats.kstest((X[:, 0] + 1) / 4, "uniform").pvalue >= 0.01
    assert stats.kstest(X[:, 6], "uniform").pvalue >= 0.01
    assert stats.chisquare(np.bincount(X[:, 1].astype(int))[2:]).pvalue >= 0.01
    assert stats.binomtest(int(X[:, 2].sum()), len(X)).pvalue >= 0.01
    assert stats.chisquare(X[:, 3:6].sum(axis=0)).pvalue >= 0.01


def test_same_generator_seed_same_draws() -> None:
    space = space_of(MIXED)
    a = UniformPrior(space).sample(np.random.default_rng(3), 100)
    b = UniformPrior(space).sample(np.random.default_rng(3), 100)
    np.testing.assert_array_equal(a, b)


def _statistics() -> DataStatistics:
    d = 7
    mean = np.array([0.5, 4.5, 0.8, 0.6, 0.3, 0.1, 0.4])
    sd = np.array([0.5, 1.0, 0.4, 0.49, 0.46, 0.3, 0.2])
    corr = np.eye(d)
    corr[0, 6] = corr[6, 0] = 0.7
    cov = corr * np.outer(sd, sd)
    levels = (0.0, 0.1, 0.5, 0.9, 1.0)
    quantiles = np.zeros((d, len(levels)))
    quantiles[0] = (-1.0, -0.2, 0.4, 1.5, 3.0)  # a skewed marginal for column a
    for c in range(1, d):
        quantiles[c] = mean[c] + sd[c] * np.array([-3.0, -1.28, 0.0, 1.28, 3.0])
    return DataStatistics(
        rows=10_000,
        mean=tuple(mean),
        covariance=tuple(cov.ravel()),
        quantile_levels=levels,
        quantiles=tuple(quantiles.ravel()),
    )


def test_data_prior_marginals_follow_the_quantiles() -> None:
    space = space_of(MIXED)
    statistics = _statistics()
    X = DataPrior(space, statistics).sample(np.random.default_rng(1), 40000)
    check_constraints(MIXED, X)
    # column a: piecewise-linear quantile function through the stored quantiles, bounds [-1, 3] cover it
    q = np.quantile(X[:, 0], [0.1, 0.5, 0.9])
    np.testing.assert_allclose(q, [-0.2, 0.4, 1.5], atol=0.03)
    # binary: mean 0.8 mixed with a 1/(rows+1) share of the uniform
    eps = 1 / (statistics.rows + 1)
    assert stats.binomtest(int(X[:, 2].sum()), len(X), (1 - eps) * 0.8 + eps / 2).pvalue >= 0.01
    # categorical: the one-hot means 0.6, 0.3, 0.1
    expected = ((1 - eps) * np.array([0.6, 0.3, 0.1]) + eps / 3) * len(X)
    assert stats.chisquare(X[:, 3:6].sum(axis=0), expected).pvalue >= 0.01


def test_data_prior_carries_the_correlation_through_a_gaussian_copula() -> None:
    space = space_of(MIXED)
    X = DataPrior(space, _statistics()).sample(np.random.default_rng(2), 40000)
    rho = stats.spearmanr(X[:, 0], X[:, 6]).statistic
    expected = 6 / np.pi * np.arcsin(0.7 / 2)  # Spearman's rho of a Gaussian copula with correlation 0.7
    assert abs(rho - expected) < 0.03
    assert abs(stats.spearmanr(X[:, 0], X[:, 2]).statistic) < 0.03  # discrete features are independent


def test_data_prior_truncates_to_the_bounds_and_conditions_on_fixed_columns() -> None:
    statistics = _statistics()
    narrow = space_of(MIXED, bounds=(BoundSpec("a", 0.0, 0.5),))
    X = DataPrior(narrow, statistics).sample(np.random.default_rng(3), 20000)
    assert X[:, 0].min() >= 0.0 and X[:, 0].max() <= 0.5
    low = space_of(MIXED, fixed=(FixedSpec("a", value=-0.5),))
    high = space_of(MIXED, fixed=(FixedSpec("a", value=2.5),))
    b_low = DataPrior(low, statistics).sample(np.random.default_rng(4), 20000)[:, 6]
    b_high = DataPrior(high, statistics).sample(np.random.default_rng(4), 20000)[:, 6]
    assert b_high.mean() > b_low.mean() + 0.1  # b is positively correlated with a


def test_data_prior_integers_and_log_weights_agree_with_sampling() -> None:
    space = space_of(MIXED, fixed=(FixedSpec("a", value=0.0), FixedSpec("b", value=0.5)))
    prior = DataPrior(space, _statistics())
    X = prior.sample(np.random.default_rng(5), 60000)
    digits = space.digits(X)
    # the frequency of each integer value matches exp(log_weight) marginalised over the other factors
    rows = space.decode(np.arange(space.discrete_size))
    weights = np.exp(prior.log_weight(space.digits(rows)))
    assert abs(weights.sum() - 1.0) < 1e-9
    for value in range(5):
        expected = weights[space.digits(rows)[:, 0] == value].sum()
        observed = np.mean(digits[:, 0] == value)
        assert abs(observed - expected) < 4 * np.sqrt(expected * (1 - expected) / len(X)) + 1e-3


def test_make_prior_defaults_and_errors() -> None:
    space = space_of(MIXED)
    assert make_prior(space, None, None).kind is PriorKind.UNIFORM
    assert make_prior(space, None, _statistics()).kind is PriorKind.DATA
    assert make_prior(space, PriorKind.UNIFORM, _statistics()).kind is PriorKind.UNIFORM
    with pytest.raises(InvalidArgumentError) as info:
        make_prior(space, PriorKind.DATA, None)
    assert info.value.field == "prior"


def test_penalty_is_half_the_mean_squared_standardized_distance() -> None:
    space = space_of(MIXED)
    statistics = _statistics()
    penalty = InDistributionPenalty.build(space, statistics)
    assert penalty.columns.tolist() == [0, 1, 6]  # continuous and integer columns
    mean = np.array(statistics.mean)
    at_mean = mean.reshape(1, -1).astype(np.float32)
    assert penalty.value(at_mean)[0] == pytest.approx(0.0, abs=1e-9)
    cov = np.array(statistics.covariance).reshape(7, 7)[np.ix_([0, 1, 6], [0, 1, 6])]
    X = np.zeros((20000, 7), dtype=np.float32)
    X[:, [0, 1, 6]] = np.random.default_rng(6).multivariate_normal(mean[[0, 1, 6]], cov, size=20000)
    assert penalty.value(X).mean() == pytest.approx(0.5, abs=0.02)  # E[chi2_k / k] / 2 on Gaussian data
    uniform = InDistributionPenalty.build(space, None)  # no statistics: the uniform's moments over the bounds
    np.testing.assert_allclose(uniform.mean, [1.0, 4.0, 0.5])


def _conditional_cdf(prior: UniformPrior | DataPrior, column: int, X: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Per row: the conditional CDF of ``column`` at the row's own value, and the total mass (trapezoid rule)."""
    lo, hi = float(prior.space.lower[column]), float(prior.space.upper[column])
    # Points crowd towards the bounds, where a truncated conditional can pile up its mass.
    grid = lo + (hi - lo) * (1.0 - np.cos(np.pi * np.linspace(0.0, 1.0, 4001))) / 2.0
    density = np.stack([prior.conditional_density(column, np.full(len(X), s), params) for s in grid], axis=1)
    areas = np.diff(grid) * (density[:, 1:] + density[:, :-1]) / 2
    cumulative = np.concatenate([np.zeros((len(X), 1)), np.cumsum(areas, axis=1)], axis=1)
    own = np.array([np.interp(x, grid, c) for x, c in zip(X[:, column].astype(np.float64), cumulative, strict=True)])
    return np.stack([own, cumulative[:, -1]], axis=1)


@pytest.mark.parametrize(
    ("kind", "column", "bounds", "fixed"),
    [
        ("uniform", 0, (), ()),
        ("data", 0, (), ()),  # skewed piecewise-linear marginal, correlated with column 6
        ("data", 6, (BoundSpec("b", 0.1, 0.8),), ()),  # truncated
        ("data", 6, (), (FixedSpec("a", value=2.0),)),  # conditioned on a fixed correlated column
        ("data", 6, (BoundSpec("b", 5.0, 6.0),), ()),  # no training mass inside the bounds: uniform there
        ("normal", 0, (), ()),  # no stored quantiles: normal marginals
    ],
)
def test_conditional_density_is_the_law_of_a_column_given_the_others(
    kind: str, column: int, bounds: tuple[BoundSpec, ...], fixed: tuple[FixedSpec, ...]
) -> None:
    # Line sampling weighs roots by p(x_c | other columns): it must integrate to one over the bounds
    # and put each drawn row's own value at a uniform conditional quantile (probability integral transform).
    space = space_of(MIXED, bounds=bounds, fixed=fixed)
    statistics = _statistics()
    if kind == "normal":
        statistics = DataStatistics(rows=statistics.rows, mean=statistics.mean, covariance=statistics.covariance)
    prior = UniformPrior(space) if kind == "uniform" else DataPrior(space, statistics)
    X, params = prior.sample_lines(np.random.default_rng(8), 1500, column)
    check_constraints(MIXED, X, bounds={b.feature: (b.lower, b.upper) for b in bounds if b.feature})
    pit, total = _conditional_cdf(prior, column, X, params).T
    np.testing.assert_allclose(total, 1.0, atol=2e-3)
    assert stats.kstest(pit, "uniform").pvalue >= 0.01
    # Given the others, not just marginally: the quantile tells nothing about the correlated column
    # (the marginal density would pass the test above but leave a Spearman correlation of about 0.7).
    other = X[:, 6 if column == 0 else 0]
    if np.ptp(other) > 0:
        assert abs(stats.spearmanr(pit, other).statistic) < 0.1


def test_evenly_spaced_quantiles_take_the_indexed_path_and_agree_with_interpolation() -> None:
    values = np.sort(np.random.default_rng(9).normal(size=101)) * 2.0
    values[40:45] = values[40]  # ties (atoms in the data)
    marginal = _Marginal(0.0, 4.0, np.linspace(0.0, 1.0, 101), values)
    assert marginal._even
    u = np.concatenate([np.random.default_rng(10).random(5000), [0.0, 0.01, 0.4, 0.999999, 1.0]])
    np.testing.assert_allclose(marginal.ppf(u), np.interp(u, marginal.q, marginal.v), rtol=0, atol=1e-12)
    assert not _Marginal(0.0, 4.0, np.array([0.0, 0.1, 0.5, 0.9, 1.0]), values[::25])._even
