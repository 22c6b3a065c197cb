"""Prior distributions over an :class:`~preimage.server.engine.space.InputSpace`, and the
in-distribution penalty.

The prior is what random patterns are drawn from before the target is imposed
(docs/inversion.md states each one precisely):

* :class:`UniformPrior`: continuous columns uniform over their bounds, integers
  uniform over the integers in their bounds, binaries fair coins, categorical
  levels equally likely, all independent.
* :class:`DataPrior` (from :class:`~preimage.registry.schema.DataStatistics`):
  continuous columns follow a Gaussian copula whose correlation is the training
  data's, with each marginal the training data's (the piecewise-linear quantile
  function through the stored quantiles, else a normal with the stored mean and
  variance) truncated to the bounds, and conditioned on fixed continuous
  columns; integer, binary and categorical features are independent, each with
  its training marginal mixed with a share ``1 / (rows + 1)`` of the uniform one,
  so that no allowed value has probability zero.

Randomness comes only from the ``numpy.random.Generator`` passed in, so a seed
fixes every draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from preimage.errors import InvalidArgumentError
from preimage.registry.schema import DataStatistics
from preimage.server.engine.space import ColumnKind, InputSpace
from preimage.server.engine.types import PriorKind

__all__ = ["DataPrior", "InDistributionPenalty", "Prior", "UniformPrior", "make_prior"]


def _ndtr(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF (float64), through torch to avoid a scipy dependency."""
    return torch.special.ndtr(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def _ndtri(p: np.ndarray) -> np.ndarray:
    """Standard normal quantile function (float64)."""
    return torch.special.ndtri(torch.from_numpy(np.asarray(p, dtype=np.float64))).numpy()


class Prior:
    """A distribution over the points of an input space.

    Attributes:
        space: The space sampled.
        kind: Which prior this is, as reported in the summary.
    """

    kind: PriorKind

    def __init__(self, space: InputSpace) -> None:
        self.space = space
        self._continuous = np.flatnonzero(space.free_continuous)

    def sample(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """Draw ``k`` rows.

        Returns:
            ``k x d`` float32 rows satisfying every constraint of the space exactly.
        """
        return self._sample(rng, k)[0]

    def sample_lines(self, rng: np.random.Generator, k: int, column: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``k`` rows, and what :meth:`conditional_density` needs to know of each about ``column``.

        The rows are drawn exactly as :meth:`sample` draws them; the line sampler keeps all
        their columns but ``column`` (a free continuous one), so each row's other columns are
        a draw from the prior's marginal of those columns.

        Returns:
            ``k x d`` float32 rows and ``k x c`` float64 parameters of the conditional
            distribution of ``column`` given the others (``c = 0`` when it is independent of them).
        """
        return self.sample(rng, k), np.zeros((k, 0))

    def conditional_density(self, column: int, s: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Density of ``column`` at values ``s`` given the row's other columns (their :meth:`sample_lines` parameters).

        Args:
            column: A free continuous column.
            s: ``k`` values inside its bounds.
            params: ``k`` rows of parameters from :meth:`sample_lines`.

        Returns:
            ``k`` float64 densities (per unit of ``column``).
        """
        width = float(self.space.upper[column]) - float(self.space.lower[column])
        return np.full(np.shape(s), 1.0 / width)

    def log_weight(self, digits: np.ndarray) -> np.ndarray:
        """Log prior probability of the free discrete factors' values (``k x len(factors)`` digits)."""
        return np.zeros(digits.shape[0])

    def _sample(self, rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``k`` rows, and the latent normals behind their free continuous columns (``None`` if there are none)."""
        X = np.broadcast_to(self.space.fixed_values, (k, self.space.width)).copy()
        latent = None
        if self._continuous.size:
            X[:, self._continuous], latent = self._sample_continuous(rng, k)
        rows = np.arange(k)
        for j, factor in enumerate(self.space.factors):
            digit = self._sample_factor(rng, j, k)
            if factor.kind is ColumnKind.ONE_HOT:
                X[rows, np.asarray(factor.columns)[digit]] = 1.0
            else:
                X[:, factor.columns[0]] = (factor.low + digit).astype(np.float32)
        return X, latent

    def _sample_continuous(self, rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        lo = self.space.lower[self._continuous]
        hi = self.space.upper[self._continuous]
        # float32 draws: the model sees float32 anyway, and they cost half as much.
        X = rng.random((k, lo.size), dtype=np.float32)
        X *= hi - lo
        X += lo
        return np.clip(X, lo, hi, out=X), None

    def _sample_factor(self, rng: np.random.Generator, j: int, k: int) -> np.ndarray:
        return rng.integers(0, self.space.factors[j].levels, size=k)


class UniformPrior(Prior):
    """Uniform over the bounds and feature types, all features independent."""

    kind = PriorKind.UNIFORM


class _Marginal:
    """One continuous column's training marginal: CDF and quantile function (float64, vectorized)."""

    def __init__(self, mean: float, var: float, levels: np.ndarray, values: np.ndarray) -> None:
        self.normal = levels.size < 2
        self.mean = mean
        self.sd = math.sqrt(var) if var > 0 else 0.0
        if self.normal:
            # A zero variance is a point mass; widen it to a sliver so CDF and quantile stay defined.
            self.sd = self.sd or max(1e-6, 1e-6 * abs(mean))
            return
        q = levels.astype(np.float64)
        v = values.astype(np.float64)
        if q[0] > 0.0:
            slope = (v[1] - v[0]) / max(q[1] - q[0], 1e-12)
            q, v = np.concatenate([[0.0], q]), np.concatenate([[v[0] - slope * q[0]], v])
        if q[-1] < 1.0:
            slope = (v[-1] - v[-2]) / max(q[-1] - q[-2], 1e-12)
            q, v = np.concatenate([q, [1.0]]), np.concatenate([v, [v[-1] + slope * (1.0 - q[-1])]])
        # Ties in the quantiles (atoms in the data) would make the CDF ill-defined for np.interp.
        eps = 1e-9 * (abs(v[-1] - v[0]) + 1.0)
        for i in range(1, v.size):
            v[i] = max(v[i], v[i - 1] + eps)
        self.q, self.v = q, v
        # Evenly spaced levels (percentiles, say) let the quantile function index instead of search:
        # a tenth of np.interp's time, and sampling the data prior spends most of its time there.
        steps = q.size - 1
        self._even = bool(np.allclose(q, np.arange(q.size) / steps, rtol=0.0, atol=1e-12))
        self._steps, self._rise = steps, np.diff(v)

    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        if self.normal:
            return _ndtr((np.asarray(x, dtype=np.float64) - self.mean) / self.sd)
        return np.asarray(np.interp(x, self.v, self.q))

    def ppf(self, u: np.ndarray | float) -> np.ndarray:
        if self.normal:
            return self.mean + self.sd * _ndtri(np.clip(u, 1e-15, 1.0 - 1e-15))
        if self._even:
            x = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0) * self._steps
            i = np.minimum(x.astype(np.int64), self._steps - 1)
            return np.asarray(self.v[i] + (x - i) * self._rise[i])
        return np.asarray(np.interp(u, self.q, self.v))

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """The density: the derivative of :meth:`cdf` (piecewise constant between stored quantiles)."""
        x = np.asarray(x, dtype=np.float64)
        if self.normal:
            return np.exp(-0.5 * ((x - self.mean) / self.sd) ** 2) / (self.sd * math.sqrt(2.0 * math.pi))
        i = np.clip(np.searchsorted(self.v, x, side="right") - 1, 0, self.v.size - 2)
        inside = (x >= self.v[0]) & (x <= self.v[-1])
        return np.where(inside, (self.q[i + 1] - self.q[i]) / (self.v[i + 1] - self.v[i]), 0.0)


class DataPrior(Prior):
    """The training data's distribution, from stored statistics (see the module docstring).

    Args:
        space: The space sampled.
        statistics: Training statistics of the model (``d`` columns).
    """

    kind = PriorKind.DATA

    def __init__(self, space: InputSpace, statistics: DataStatistics) -> None:
        super().__init__(space)
        d = space.width
        mean = np.asarray(statistics.mean, dtype=np.float64)
        cov = np.asarray(statistics.covariance, dtype=np.float64).reshape(d, d)
        levels = np.asarray(statistics.quantile_levels, dtype=np.float64)
        quantiles = np.asarray(statistics.quantiles, dtype=np.float64).reshape(d, levels.size)
        self._marginals = [_Marginal(mean[c], cov[c, c], levels, quantiles[c]) for c in range(d)]
        self._mix = 1.0 / (statistics.rows + 1.0)

        # Continuous columns: Gaussian copula, conditioned on the fixed continuous columns.
        free = self._continuous
        given = np.flatnonzero((space.kinds == ColumnKind.CONTINUOUS) & space.fixed)
        both = np.concatenate([free, given])
        R = _correlation(cov[np.ix_(both, both)])
        nf = free.size
        Rff, Rfg, Rgg = R[:nf, :nf], R[:nf, nf:], R[nf:, nf:]
        z_given = np.array(
            [_ndtri(np.clip(self._marginals[c].cdf(space.fixed_values[c]), 1e-12, 1 - 1e-12)) for c in given]
        )
        if given.size:
            gain = np.linalg.solve(Rgg, Rfg.T).T
            self._z_mean = gain @ z_given
            cond = Rff - gain @ Rfg.T
        else:
            self._z_mean = np.zeros(nf)
            cond = Rff
        self._z_chol = np.linalg.cholesky(_nearest_psd(cond) + 1e-9 * np.eye(nf)) if nf else np.zeros((0, 0))
        # Each latent's normal conditional given the others (line sampling): sd 1/sqrt(P_ii) and the
        # regression row -P_ij / P_ii, P the precision matrix.
        precision = np.linalg.inv(self._z_chol @ self._z_chol.T) if nf else np.zeros((0, 0))
        self._z_cond_sd = 1.0 / np.sqrt(np.diag(precision))
        self._z_gain = -precision / np.diag(precision)[:, None]
        np.fill_diagonal(self._z_gain, 0.0)
        lo = space.lower[free].astype(np.float64)
        hi = space.upper[free].astype(np.float64)
        self._a = np.array([self._marginals[c].cdf(x) for c, x in zip(free, lo, strict=True)])
        self._b = np.array([self._marginals[c].cdf(x) for c, x in zip(free, hi, strict=True)])

        # Discrete factors: independent marginals, mixed with uniform.
        self._pmf: list[np.ndarray | None] = []
        for factor in space.factors:
            if factor.kind is ColumnKind.BINARY:
                p1 = float(np.clip(mean[factor.columns[0]], 0.0, 1.0))
                data = np.array([1.0 - p1, p1])
            elif factor.kind is ColumnKind.ONE_HOT:
                data = np.clip(mean[list(factor.columns)], 0.0, None)
                data = data / data.sum() if data.sum() > 0 else np.full(factor.levels, 1.0 / factor.levels)
            elif factor.levels <= 1 << 16:
                marginal = self._marginals[factor.columns[0]]
                edges = marginal.cdf(factor.low - 0.5 + np.arange(factor.levels + 1))
                data = np.diff(edges)
                data = data / data.sum() if data.sum() > 1e-300 else np.full(factor.levels, 1.0 / factor.levels)
            else:
                self._pmf.append(None)  # sampled through the quantile function; never enumerated
                continue
            self._pmf.append((1.0 - self._mix) * data + self._mix / factor.levels)

    def log_weight(self, digits: np.ndarray) -> np.ndarray:
        out = np.zeros(digits.shape[0])
        for j, pmf in enumerate(self._pmf):
            assert pmf is not None, "only spaces of at most 2**20 points are enumerated"
            out += np.log(pmf[digits[:, j]])
        return out

    def sample_lines(self, rng: np.random.Generator, k: int, column: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows as :meth:`sample` draws them, with the mean and sd of ``column``'s latent given the others'."""
        X, z = self._sample(rng, k)
        assert z is not None, "line sampling needs a free continuous column"
        i = int(np.flatnonzero(self._continuous == column)[0])
        mean = self._z_mean[i] + (z - self._z_mean) @ self._z_gain[i]
        return X, np.stack([mean, np.full(k, self._z_cond_sd[i])], axis=1)

    def conditional_density(self, column: int, s: np.ndarray, params: np.ndarray) -> np.ndarray:
        """``p(x_c = s | other columns)``: the latent's normal conditional, carried through ``x = h(z)``.

        With ``u = (F(s) − F(lo)) / (F(hi) − F(lo))`` and ``z = Φ⁻¹(u)`` (``u`` linear in ``s`` when the
        column has no training mass inside its bounds), the density is
        ``N(z; mean, sd²) · dz/ds = φ((z − mean)/sd) / (sd φ(z)) · du/ds``.
        """
        i = int(np.flatnonzero(self._continuous == column)[0])
        s = np.asarray(s, dtype=np.float64)
        a, b = self._a[i], self._b[i]
        if b - a > 1e-12:
            marginal = self._marginals[column]
            u = (marginal.cdf(s) - a) / (b - a)
            du = marginal.pdf(s) / (b - a)
        else:
            lo, hi = float(self.space.lower[column]), float(self.space.upper[column])
            u = (s - lo) / (hi - lo)
            du = np.full(s.shape, 1.0 / (hi - lo))
        z = _ndtri(np.clip(u, 1e-15, 1.0 - 1e-15))
        mean, sd = params[:, 0], params[:, 1]
        with np.errstate(divide="ignore"):
            log = -0.5 * ((z - mean) / sd) ** 2 + 0.5 * z * z - np.log(sd) + np.log(du)
        return np.exp(log)

    def _sample_continuous(self, rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        z = self._z_mean + rng.standard_normal((k, self._z_mean.size)) @ self._z_chol.T
        u = _ndtr(z)
        out = np.empty((k, self._continuous.size), dtype=np.float32)
        for i, c in enumerate(self._continuous):
            a, b = self._a[i], self._b[i]
            lo, hi = self.space.lower[c], self.space.upper[c]
            if b - a > 1e-12:
                x = self._marginals[c].ppf(a + u[:, i] * (b - a))
            else:  # no training mass inside the bounds: uniform over them
                x = float(lo) + u[:, i] * (float(hi) - float(lo))
            out[:, i] = np.clip(x.astype(np.float32), lo, hi)
        return out, z

    def _sample_factor(self, rng: np.random.Generator, j: int, k: int) -> np.ndarray:
        factor = self.space.factors[j]
        pmf = self._pmf[j]
        if pmf is not None:
            return np.minimum(np.searchsorted(np.cumsum(pmf), rng.random(k) * pmf.sum()), factor.levels - 1)
        marginal = self._marginals[factor.columns[0]]
        a, b = marginal.cdf(factor.low - 0.5), marginal.cdf(factor.low + factor.levels - 0.5)
        u = rng.random(k)
        uniform = rng.random(k) < self._mix
        data = np.rint(marginal.ppf(a + u * (b - a))) - factor.low
        digit = np.where(uniform | (b - a <= 1e-12), np.floor(u * factor.levels), data)
        return np.clip(digit, 0, factor.levels - 1).astype(np.int64)


def _nearest_psd(A: np.ndarray) -> np.ndarray:
    """Symmetric ``A`` with its eigenvalues floored at 1e-6."""
    if A.size == 0:
        return A
    w, V = np.linalg.eigh((A + A.T) / 2.0)
    return (V * np.maximum(w, 1e-6)) @ V.T


def _correlation(cov: np.ndarray) -> np.ndarray:
    """A valid correlation matrix from a covariance (constant columns uncorrelated)."""
    if cov.size == 0:
        return cov
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    ok = sd > 0
    R = np.eye(cov.shape[0])
    R[np.ix_(ok, ok)] = cov[np.ix_(ok, ok)] / np.outer(sd[ok], sd[ok])
    R = _nearest_psd(R)
    s = np.sqrt(np.diag(R))
    return np.asarray(R / np.outer(s, s))


def make_prior(space: InputSpace, kind: PriorKind | None, statistics: DataStatistics | None) -> Prior:
    """The prior a run uses: ``kind``, or the data prior when ``None`` and statistics exist.

    Raises:
        InvalidArgumentError: The data prior is asked for but the model has no statistics
            (field ``prior``).
    """
    if kind is None:
        kind = PriorKind.DATA if statistics is not None else PriorKind.UNIFORM
    if kind is PriorKind.UNIFORM:
        return UniformPrior(space)
    if statistics is None:
        raise InvalidArgumentError(
            "prior 'data' needs the model's training statistics, and this model has none; use prior 'uniform'",
            field="prior",
        )
    return DataPrior(space, statistics)


@dataclass(frozen=True)
class InDistributionPenalty:
    """``M(x) = ½ (x − μ)ᵀ Σ⁻¹ (x − μ) / k`` over the ``k`` free numeric columns.

    ``μ`` and ``Σ`` are the training mean and covariance when the model has statistics,
    else the uniform distribution's over the bounds (centre, ``width² / 12``). ``M`` is half
    the mean squared standardized distance, about ½ for a typical training row.

    Attributes:
        columns: The free numeric (continuous and integer) columns.
        mean: ``k`` means.
        precision: ``k x k`` inverse covariance.
    """

    columns: np.ndarray
    mean: np.ndarray
    precision: np.ndarray

    @classmethod
    def build(cls, space: InputSpace, statistics: DataStatistics | None) -> InDistributionPenalty:
        """The penalty for a space, from statistics when there are some."""
        cols = np.flatnonzero(space.free_numeric)
        if statistics is not None:
            d = space.width
            mean = np.asarray(statistics.mean, dtype=np.float64)[cols]
            cov = np.asarray(statistics.covariance, dtype=np.float64).reshape(d, d)[np.ix_(cols, cols)]
        else:
            lo, hi = space.lower[cols].astype(np.float64), space.upper[cols].astype(np.float64)
            mean = (lo + hi) / 2.0
            cov = np.diag(np.maximum((hi - lo) ** 2 / 12.0, 1e-12))
        scale = float(np.mean(np.diag(cov))) if cols.size else 1.0
        precision = np.linalg.pinv(cov + 1e-9 * max(scale, 1e-12) * np.eye(cols.size)) if cols.size else cov
        return cls(columns=cols, mean=mean, precision=precision)

    def value(self, X: np.ndarray) -> np.ndarray:
        """``M(x)`` for each row of ``X`` (``k x d``)."""
        if self.columns.size == 0:
            return np.zeros(X.shape[0])
        D = X[:, self.columns].astype(np.float64) - self.mean
        return 0.5 * np.einsum("ij,jk,ik->i", D, self.precision, D) / self.columns.size
