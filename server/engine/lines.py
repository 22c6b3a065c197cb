"""Line sampling: draws from the prior restricted to a one-output preimage, at a cost the tolerance does not set.

Let ``f`` have one output, ``I`` the inner target interval, ``p`` the prior and
``T = {x : f(x) ∈ I}``. Pick a free continuous column ``c`` (the *line column*) and write a
row as ``x = (x₋, s)``, ``s`` its value in column ``c``. Under ``p|T`` the other columns
``x₋`` have density ``∝ p(x₋) L(x₋)`` with ``L(x₋) = ∫ p(s | x₋) 1[f(x₋, s) ∈ I] ds``, and
given ``x₋``, ``s`` follows ``p(s | x₋)`` restricted to the line's preimage. So:

1. draw a row from the prior (its other columns are ``x₋``) and a level ``t`` uniform on ``I``;
2. scan ``s ↦ f(x₋, s)`` at ``G`` evenly spaced points over the column's bounds, look for
   pairs of crossings hidden in one cell around extrema of the line near the level, and
   refine every bracket to a root ``s_j`` with ``|f − t| ≤ τ`` (forward passes only:
   Anderson–Björck regula falsi, bisection when it stalls);
3. weigh each root ``w_j = p(s_j | x₋) / |∂f/∂s(s_j)|``;
4. keep the line with probability ``min(1, Σ_j w_j / W)`` and return root ``j`` with
   probability ``w_j / Σ_j w_j``.

Near root ``j`` the level and the column are tied by ``dt = |∂f/∂s| ds``, so the kept row
has density ``p(x₋) · w_j |∂f/∂s| / (|I| W) = p(x) / (|I| W)`` on ``T``: an **exact** draw
from ``p|T``, independent of every other draw, except for (a) lines heavier than the cap
``W``, kept with probability 1 and so under-represented by ``W / Σ_j w_j``; (b) roots the
scan and the extremum search miss; (c) the solve's tolerance ``τ`` (a thousandth of the
interval's half-width), which blurs the level by that much.

:func:`calibrate` keeps (a) and (b) small: it scans a few hundred lines per candidate
column at :data:`FINE_GRID` points, replays the coarser grids on them, and takes a column
only when its weights are light-tailed. Slopes come from a gradient pass, except on lines
that cross once (the 2-point grid), where a forward difference decides every line whose
weight is clear of the acceptance threshold by :data:`_MARGIN` and a gradient pass settles
the rest, so the decisions are those exact slopes would make.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from preimage.server.engine.context import Candidates, Context

__all__ = ["CALIBRATION_LINES", "FINE_GRID", "GRIDS", "Calibration", "LinePlan", "LineSampler", "calibrate"]

FINE_GRID = 33
"""Points per line of the calibration scan (32 cells; the coarser grids are subsets of it)."""
GRIDS = (2, 9, 17, 33)
"""Scan grids the sampler may use: nested in :data:`FINE_GRID`."""
CALIBRATION_LINES = 256
"""Lines scanned per candidate column."""
_RARE_LINES = 2048
_CANDIDATES = 2
_NEAR_ROWS = 64
_MISSED = 0.002
_TAIL_INDEX = 3.0
_TAIL_INDEX_CROSSING = 10.0
_MIN_ACCEPTANCE = 0.25
_MIN_CROSSING = 16
_MAX_EVALUATIONS = 64
_TAU = 1e-3
# Forward-difference step (share of the column's width) and the relative error it is trusted to.
_STEP = 2.0**-10
_MARGIN = 0.02
# A gradient pass (forward and backward) costs about three forward rows.
_GRADIENT_ROWS = 3.0
_SCAN_ROWS = 8192


@dataclass(frozen=True)
class LinePlan:
    """How the line sampler runs, from :func:`calibrate`.

    Attributes:
        column: The line column.
        grid: Scan points per line.
        cap: Initial cap ``W`` on a line's weight.
        acceptance: Estimated share of lines kept.
        cost: Estimated model rows (a gradient row counted as three) per pattern.
        tail: Hill's estimate of the tail index of the calibration lines' weights (large: light tail).
        crossing: Calibration lines of this column with at least one root.
    """

    column: int
    grid: int
    cap: float
    acceptance: float
    cost: float
    tail: float
    crossing: int


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` learnt.

    Attributes:
        plan: The cheapest way to run the line sampler, or ``None`` when no candidate column
            qualifies (or no column can carry lines).
        reached: Some calibration line reached the target (so it is reachable).
    """

    plan: LinePlan | None
    reached: bool


@dataclass
class _Roots:
    """Roots found on a batch of lines (one entry per root, ordered by line, then along it)."""

    line: np.ndarray  # index of the root's line in the batch
    X: np.ndarray  # k x d float32 rows
    F: np.ndarray  # k x 1 float32 outputs
    density: np.ndarray  # p(s | x₋)
    slope: np.ndarray  # ∂f/∂s, exact where `exact`, else a forward difference
    exact: np.ndarray  # whether the slope is the model's gradient
    evaluations: int  # rows spent after the scan (extremum searches, refinement, differences)
    refinements: int  # of which refinement
    s_grid: np.ndarray  # B x G scan positions
    r: np.ndarray  # B x G scan residuals f - t
    valid: np.ndarray  # output inside the inner interval, slope finite and non-zero

    @property
    def weight(self) -> np.ndarray:
        """``p(s | x₋) / |∂f/∂s|`` (0 where not valid)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.valid, self.density / np.abs(self.slope), 0.0)


class _Lines:
    """The scan, the root solve and the weights: what calibration and sampling share."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        targets = ctx.targets
        self.lo = float(targets.inner_lower[0])
        self.hi = float(targets.inner_upper[0])
        half = (self.hi - self.lo) / 2.0
        # The level's precision: a thousandth of the half-width, but never below what float32 resolves there.
        ulp = float(np.spacing(np.float32(max(abs(self.lo), abs(self.hi)))))
        self.tau = max(_TAU * half, 2.0 * ulp)

    def levels(self, k: int) -> np.ndarray:
        """``k`` levels uniform on the inner interval."""
        return self.lo + self.ctx.rng.random(k) * (self.hi - self.lo)

    def positions(self, column: int, grid: int) -> np.ndarray:
        """``grid`` evenly spaced float32 values from the column's lower to its upper bound (both included)."""
        lo, hi = float(self.ctx.space.lower[column]), float(self.ctx.space.upper[column])
        s = (lo + (hi - lo) * np.arange(grid) / (grid - 1)).astype(np.float32)
        s[0], s[-1] = self.ctx.space.lower[column], self.ctx.space.upper[column]
        return s

    def solve(
        self,
        rows: np.ndarray,
        columns: np.ndarray,
        grid: int,
        t: np.ndarray,
        params: list[np.ndarray],
        *,
        exact: bool = True,
    ) -> _Roots | None:
        """Scan each line, find and refine its roots, weigh them; ``None`` when the budget ran out.

        Args:
            rows: ``B x d`` prior rows (their line column is overwritten).
            columns: ``B`` line columns (one per line).
            grid: Scan points per line.
            t: ``B`` levels.
            params: Per distinct column (in ``np.unique`` order), the ``B`` rows' conditional parameters.
            exact: Slopes from a gradient pass; else from a forward difference (one more forward row).
        """
        run = self.ctx.run
        B = rows.shape[0]
        scan = np.repeat(rows, grid, axis=0)
        where = np.repeat(columns, grid)
        position = np.empty(B * grid, dtype=np.float32)
        for c in np.unique(columns):
            mine = where == c
            position[mine] = np.tile(self.positions(int(c), grid), int(mine.sum()) // grid)
        scan[np.arange(B * grid), where] = position
        if not run.check():
            return None
        r = run.forward(torch.from_numpy(scan)).numpy()[:, 0].astype(np.float64).reshape(B, grid) - t[:, None]
        s_grid = position.reshape(B, grid).astype(np.float64)
        pos = r >= 0.0
        ok = np.isfinite(r)
        line, cell = np.nonzero(ok[:, :-1] & ok[:, 1:] & (pos[:, :-1] != pos[:, 1:]))
        a, b, ra, rb = s_grid[line, cell], s_grid[line, cell + 1], r[line, cell], r[line, cell + 1]
        evaluations = 0
        if grid >= 3:
            found = self.examine(rows, columns, t, s_grid, r)
            if found is None:
                return None
            more, spent = found
            evaluations += spent
            line = np.concatenate([line, more[0]])
            a, b = np.concatenate([a, more[1]]), np.concatenate([b, more[2]])
            ra, rb = np.concatenate([ra, more[3]]), np.concatenate([rb, more[4]])
        order = np.lexsort((np.minimum(a, b), line))  # roots in line order, then along the line
        line, a, b, ra, rb = line[order], a[order], b[order], ra[order], rb[order]
        solved = self._refine(rows[line], columns[line], t[line], a, b, ra, rb)
        if solved is None:
            return None
        s, f, good, refinements = solved
        evaluations += refinements
        line, s, f = line[good], s[good], f[good]
        X = rows[line].copy()
        X[np.arange(line.size), columns[line]] = s.astype(np.float32)
        col = columns[line]
        if exact:
            measured = self._gradient(X, col)
            if measured is None:
                return None
            F, slope = measured
        else:
            F = f.astype(np.float32)[:, None]
            difference = self._difference(X, col, f)
            if difference is None:
                return None
            slope = difference
            evaluations += line.size
        density = np.zeros(line.size)
        for i, c in enumerate(np.unique(columns)):
            mine = col == c
            density[mine] = self.ctx.prior.conditional_density(int(c), s[mine], params[i][line[mine]])
        out = F[:, 0].astype(np.float64)
        valid = (out >= self.lo) & (out <= self.hi) & np.isfinite(slope) & (slope != 0.0) & np.isfinite(density)
        return _Roots(
            line=line,
            X=X,
            F=F,
            density=density,
            slope=slope,
            exact=np.full(line.size, exact),
            evaluations=evaluations,
            refinements=refinements,
            s_grid=s_grid,
            r=r,
            valid=valid,
        )

    def settle(self, roots: _Roots, idx: np.ndarray, columns: np.ndarray) -> bool:
        """Replace the slopes of roots ``idx`` by the model's gradient (False when the budget ran out)."""
        if idx.size == 0:
            return True
        measured = self._gradient(roots.X[idx], columns)
        if measured is None:
            return False
        F, slope = measured
        roots.slope[idx] = slope
        roots.exact[idx] = True
        out = F[:, 0].astype(np.float64)
        roots.valid[idx] &= np.isfinite(slope) & (slope != 0.0) & (out >= self.lo) & (out <= self.hi)
        return True

    def _gradient(self, X: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Outputs and ``∂f/∂x_c`` at rows ``X`` (column ``c`` per row) from one gradient pass."""
        run = self.ctx.run
        if X.shape[0] == 0:
            return np.zeros((0, 1), dtype=np.float32), np.zeros(0)
        if not run.check(1 + self.ctx.targets.outputs):
            return None
        F, J = run.forward_jacobian(torch.from_numpy(X))
        return F.numpy(), J[np.arange(X.shape[0]), 0, torch.from_numpy(columns)].numpy().astype(np.float64)

    def _difference(self, X: np.ndarray, columns: np.ndarray, f: np.ndarray) -> np.ndarray | None:
        """Forward differences ``(f(s ± h) − f(s)) / ±h`` with ``h = 2⁻¹⁰`` of the width, stepping inwards."""
        run = self.ctx.run
        if X.shape[0] == 0:
            return np.zeros(0)
        space = self.ctx.space
        lower, upper = space.lower[columns].astype(np.float64), space.upper[columns].astype(np.float64)
        rows = np.arange(X.shape[0])
        s = X[rows, columns].astype(np.float64)
        h = _STEP * (upper - lower)
        step = np.where(s + h <= upper, s + h, s - h).astype(np.float32)
        Xh = X.copy()
        Xh[rows, columns] = step
        if not run.check():
            return None
        fh = run.forward(torch.from_numpy(Xh)).numpy()[:, 0].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (fh - f) / (step.astype(np.float64) - s)

    def examine(
        self, rows: np.ndarray, columns: np.ndarray, t: np.ndarray, s_grid: np.ndarray, r: np.ndarray
    ) -> tuple[tuple[np.ndarray, ...], int] | None:
        """Look for pairs of crossings hidden inside one grid cell, around extrema of the line near the level.

        Two roots inside one cell leave no sign change on the grid; they straddle a local extremum
        of ``g(s) = f(x₋, s) − t`` whose value is across zero from the grid's. A grid point whose
        residual is a discrete extremum (a maximum below the level or a minimum above it) within
        reach of zero — no farther from it than the largest difference to its neighbours, four
        times what a parabola through the three points allows — starts a search: successive
        parabolic interpolation (golden-section steps where the parabola misleads) over the
        bracket of its neighbours, until a point across the level appears (two new brackets, one
        on each side of it), the bracket shrinks to a few floats, or the extremum's gains are too
        small to reach the level (less than a quarter of the remaining distance). A maximum at an
        end of the line first looks for a higher point inside its end cell.

        Returns:
            The new brackets (line, a, b, r(a), r(b)) and the rows spent; ``None`` when the budget
            ran out.
        """
        run = self.ctx.run
        G = r.shape[1]
        # Search the maximum of h = sign · r: sign +1 for a maximum below the level, -1 for a minimum above it.
        padded = np.pad(r, ((0, 0), (1, 1)), constant_values=np.nan)
        mid, left, right = padded[:, 1:-1], padded[:, :-2], padded[:, 2:]
        cand = []
        for side in (1.0, -1.0):
            h, hl, hr = side * mid, side * left, side * right
            with np.errstate(invalid="ignore"):
                peak = (h < 0.0) & ~(hl > h) & ~(hr > h) & ~(np.isnan(hl) & np.isnan(hr))
                reach = np.fmax(h - hl, h - hr)
                near = peak & (-h <= reach)
            li, gi = np.nonzero(near)
            cand.append((li, gi, np.full(li.size, side)))
        line = np.concatenate([c[0] for c in cand])
        point = np.concatenate([c[1] for c in cand])
        sign = np.concatenate([c[2] for c in cand])
        k = line.size
        empty = (np.zeros(0, dtype=np.int64),) + (np.zeros(0),) * 4
        if k == 0:
            return empty, 0
        # Bracket (l, m, r) around each extremum, with h(m) >= h(l), h(r); ends start without m.
        lp = np.clip(point - 1, 0, G - 1)
        rp = np.clip(point + 1, 0, G - 1)
        edge = (point == 0) | (point == G - 1)
        lp = np.where(point == G - 1, G - 2, lp)
        rp = np.where(point == 0, 1, rp)
        sl, sr = s_grid[line, lp], s_grid[line, rp]
        hl, hr = sign * r[line, lp], sign * r[line, rp]
        sm = s_grid[line, point]
        hm = sign * r[line, point]
        # An end point: its cell's two points are l and r; m is found by the first evaluation.
        sm = np.where(edge, np.nan, sm)
        hm = np.where(edge, -np.inf, hm)
        gain = np.full(k, np.inf)
        active = np.ones(k, dtype=bool)
        evaluations = 0
        out: list[tuple[np.ndarray, ...]] = []
        for _ in range(_MAX_EVALUATIONS // 2):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            l_, m_, r_ = sl[idx], sm[idx], sr[idx]
            fl, fm, fr = hl[idx], hm[idx], hr[idx]
            has_m = np.isfinite(m_)
            # Vertex of the parabola through the three points; an end cell starts at its midpoint.
            with np.errstate(divide="ignore", invalid="ignore"):
                p = (m_ - l_) * (fm - fr)
                q = (m_ - r_) * (fm - fl)
                v = m_ - 0.5 * ((m_ - l_) * p - (m_ - r_) * q) / (p - q)
            golden = np.where(m_ - l_ > r_ - m_, m_ - 0.382 * (m_ - l_), m_ + 0.382 * (r_ - m_))
            v = np.where(has_m & np.isfinite(v) & (v > l_) & (v < r_) & (np.abs(v - m_) > 1e-3 * (r_ - l_)), v, golden)
            v = np.where(has_m, v, 0.5 * (l_ + r_))
            v32 = v.astype(np.float32)
            lo32, hi32 = l_.astype(np.float32), r_.astype(np.float32)
            stuck = (v32 <= lo32) | (v32 >= hi32) | (v32 == m_.astype(np.float32))
            active[idx[stuck]] = False
            idx, v32 = idx[~stuck], v32[~stuck]
            if idx.size == 0:
                break
            if not run.check():
                return None
            X = rows[line[idx]].copy()
            X[np.arange(idx.size), columns[line[idx]]] = v32
            hv = sign[idx] * (run.forward(torch.from_numpy(X)).numpy()[:, 0].astype(np.float64) - t[line[idx]])
            evaluations += idx.size
            v = v32.astype(np.float64)
            l_, m_, r_, fl, fm, fr = sl[idx], sm[idx], sr[idx], hl[idx], hm[idx], hr[idx]
            bad = ~np.isfinite(hv)
            cross = ~bad & (hv >= 0.0)
            if cross.any():
                j = idx[cross]
                vc, hc = v[cross], hv[cross]
                # Neighbours below the level on each side of the crossing point (m is below it too).
                left_s = np.where(np.isfinite(m_[cross]) & (m_[cross] < vc), m_[cross], l_[cross])
                left_h = np.where(np.isfinite(m_[cross]) & (m_[cross] < vc), fm[cross], fl[cross])
                right_s = np.where(np.isfinite(m_[cross]) & (m_[cross] > vc), m_[cross], r_[cross])
                right_h = np.where(np.isfinite(m_[cross]) & (m_[cross] > vc), fm[cross], fr[cross])
                sg = sign[j]
                out.append((line[j], left_s, vc, sg * left_h, sg * hc))
                out.append((line[j], vc, right_s, sg * hc, sg * right_h))
            done = bad | cross
            go = ~done
            first = go & ~np.isfinite(m_)
            # An end cell: its inner point becomes m if it is above the end, else the end is the maximum.
            end_h = np.where(point[idx] == 0, fl, fr)
            promote = first & (hv > end_h)
            done |= first & ~promote
            better = go & ~first & (hv > fm)
            worse = go & ~first & ~better
            right = v > m_
            nl = np.where(better & right, m_, np.where(worse & ~right, v, l_))
            nfl = np.where(better & right, fm, np.where(worse & ~right, hv, fl))
            nr = np.where(better & ~right, m_, np.where(worse & right, v, r_))
            nfr = np.where(better & ~right, fm, np.where(worse & right, hv, fr))
            nm = np.where(better | promote, v, m_)
            nfm = np.where(better | promote, hv, fm)
            sl[idx], hl[idx], sr[idx], hr[idx], sm[idx], hm[idx] = nl, nfl, nr, nfr, nm, nfm
            gain[idx] = np.where(better, hv - fm, np.where(promote, np.inf, gain[idx]))
            # Give up once four times the last gain would not reach the level.
            hopeless = (better | worse) & (-nfm > 4.0 * gain[idx])
            active[idx[done | hopeless]] = False
        if not out:
            return empty, evaluations
        parts = tuple(np.concatenate([o[i] for o in out]) for i in range(5))
        return parts, evaluations

    def _refine(
        self,
        rows: np.ndarray,
        columns: np.ndarray,
        t: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        ra: np.ndarray,
        rb: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
        """Anderson–Björck regula falsi on every bracket ``[a, b]`` at once, one forward pass per round.

        ``b`` is always the latest point; a round whose new point falls on ``b``'s side scales the
        retained residual at ``a`` by ``1 − r_new / r_b`` (by ½ when that is not positive), which
        stops regula falsi from creeping from one side. A bracket that has not halved in three
        rounds takes a bisection. Points are float32, like the rows the model sees; a bracket down
        to two neighbouring floats ends at the one with the smaller residual.

        Returns:
            Per bracket: the root, the model's output there, whether it was found; and the rows
            evaluated. ``None`` when the budget ran out.
        """
        run = self.ctx.run
        k = a.size
        s = np.zeros(k)
        f = np.zeros(k)
        done = np.zeros(k, dtype=bool)
        good = np.zeros(k, dtype=bool)
        ra_true = ra.copy()
        width = np.abs(b - a)
        slow = np.zeros(k, dtype=np.int64)
        evaluations = 0
        for _ in range(_MAX_EVALUATIONS):
            idx = np.flatnonzero(~done)
            if idx.size == 0:
                break
            aa, bb, fa, fb = a[idx], b[idx], ra[idx], rb[idx]
            lo32 = np.minimum(aa, bb).astype(np.float32)
            hi32 = np.maximum(aa, bb).astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                c = bb - fb * (bb - aa) / (fb - fa)
            c32 = np.where((slow[idx] >= 3) | ~np.isfinite(c), 0.5 * (aa + bb), c).astype(np.float32)
            outside = (c32 <= lo32) | (c32 >= hi32)
            c32 = np.where(outside, (0.5 * (aa + bb)).astype(np.float32), c32)
            stuck = (c32 <= lo32) | (c32 >= hi32)  # neighbouring floats: nothing strictly between
            if stuck.any():
                j = idx[stuck]
                nearer = np.abs(ra_true[j]) < np.abs(rb[j])
                s[j] = np.where(nearer, a[j], b[j])
                f[j] = np.where(nearer, ra_true[j], rb[j]) + t[j]
                done[j] = good[j] = True
                idx, aa, bb, fa, fb, c32 = idx[~stuck], aa[~stuck], bb[~stuck], fa[~stuck], fb[~stuck], c32[~stuck]
                if idx.size == 0:
                    continue
            if not run.check():
                return None
            X = rows[idx].copy()
            X[np.arange(idx.size), columns[idx]] = c32
            out = run.forward(torch.from_numpy(X)).numpy()[:, 0]
            rc = out.astype(np.float64) - t[idx]
            evaluations += idx.size
            cc = c32.astype(np.float64)
            finite = np.isfinite(rc)
            hit = finite & (np.abs(rc) <= self.tau)
            s[idx[hit]] = cc[hit]
            f[idx[hit]] = out[hit]
            done[idx[hit]] = good[idx[hit]] = True
            lost = ~finite  # a non-finite output inside the bracket: give the bracket up
            done[idx[lost]] = True
            go = finite & ~hit
            i, c, r, fa, fb, aa = idx[go], cc[go], rc[go], fa[go], fb[go], aa[go]
            flip = (r >= 0.0) != (fb >= 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                m = 1.0 - r / fb
            m = np.where(m > 0.0, m, 0.5)
            a[i] = np.where(flip, b[i], aa)
            ra_true[i] = np.where(flip, fb, ra_true[i])
            ra[i] = np.where(flip, fb, fa * m)
            b[i], rb[i] = c, r
            new = np.abs(b[i] - a[i])
            slow[i] = np.where(new > 0.5 * width[i], slow[i] + 1, 0)
            width[i] = np.where(new > 0.5 * width[i], width[i], new)
        return s, f, good, evaluations


def calibrate(ctx: Context, near: np.ndarray, spend: float = math.inf) -> Calibration | None:
    """Choose the line column and the scan grid, and set the cap, from lines scanned at :data:`FINE_GRID` points.

    Candidates are the :data:`_CANDIDATES` free continuous columns with the largest 5 % quantile
    of ``|∂f/∂x_c| · width_c`` over ``near`` (rows whose outputs are close to the target). For
    each, :data:`CALIBRATION_LINES` lines are scanned finely (extrema near the level examined)
    and solved. Each coarser grid (a subset of the fine one) is then replayed on the same lines
    — its scan is part of the fine one, its examination is run — and it is fit for the column
    when the roots it would bracket carry all but 0.2 % of the fine roots' weight. The cap ``W``
    is the heaviest calibration line. A column is not used when its crossing lines are kept less
    than a quarter of the time at that cap, or when Hill's estimate of their weights' tail index
    (from the heaviest tenth) is below 3: both mean heavy weights, from lines nearly tangent to
    the level set (``∂f/∂s → 0``) — weights whose tail index is about 2 — which later lines would
    push above the cap. A grid finer than 2 points (lines crossing more than once) needs an
    index of 10 at least: such lines touch the level tangentially unless it stays clear of
    their extrema, and tangent lines are rare enough to be missed by a few hundred. Among the
    rest, the pair with the fewest rows per pattern,
    ``(G + evaluations + 3 · roots) · W / mean weight`` per line, wins.

    When fewer than :data:`_MIN_CROSSING` lines of every candidate cross the level (a rare
    level), a second round of :data:`_RARE_LINES` lines per candidate runs, if ``spend`` is at
    least four times its scan.

    Args:
        ctx: The run's shared state.
        near: Rows (float32) near the target level.
        spend: Rows the request is worth (what the windowed sampler would spend on it).

    Returns:
        What calibration learnt; ``None`` when the budget ran out first.
    """
    space, run = ctx.space, ctx.run
    movable = np.flatnonzero(space.free_continuous & (space.upper > space.lower))
    if movable.size == 0 or ctx.targets.outputs != 1:
        return Calibration(plan=None, reached=False)
    candidates = movable
    if movable.size > _CANDIDATES:
        if not run.check(1 + ctx.targets.outputs):
            return None
        _, J = run.forward_jacobian(torch.from_numpy(near[:_NEAR_ROWS]))
        width = (space.upper - space.lower)[movable].astype(np.float64)
        # A line's weight is 1 / |∂f/∂s| (times the prior's conditional): a column whose slope stays
        # large near the level keeps lines crossing often and weights even; one whose slope comes
        # near zero (or changes sign) does neither. Its 5 % quantile scores both.
        slope = np.nan_to_num(J[:, 0, movable].abs().double().numpy())
        score = np.quantile(slope, 0.05, axis=0) * width
        candidates = movable[np.argsort(-score, kind="stable")[:_CANDIDATES]]
    candidates = np.sort(candidates)  # the order solve() takes the parameters in
    lines = _Lines(ctx)
    reached = False
    for n in (CALIBRATION_LINES, _RARE_LINES):
        done = _round(lines, candidates, n)
        if done is None:
            return None
        best, crossing = done
        reached |= crossing.max() > 0
        # A level few lines cross: one more, larger round if the request is worth it.
        rare = best is None and 0 < crossing.max() < _MIN_CROSSING
        if not rare or spend < 4 * candidates.size * _RARE_LINES * FINE_GRID:
            break
    return Calibration(plan=best, reached=reached)


def _round(lines: _Lines, candidates: np.ndarray, n: int) -> tuple[LinePlan | None, np.ndarray] | None:
    """One calibration round of ``n`` lines per candidate: the best plan and each candidate's crossing lines."""
    ctx = lines.ctx
    drawn = [ctx.prior.sample_lines(ctx.rng, n, int(c)) for c in candidates]
    params = []
    for i, (_, P) in enumerate(drawn):
        full = np.zeros((n * candidates.size, P.shape[1]))
        full[i * n : (i + 1) * n] = P
        params.append(full)
    rows = np.concatenate([X for X, _ in drawn])
    columns = np.repeat(candidates, n)
    t = lines.levels(columns.size)
    roots = lines.solve(rows, columns, FINE_GRID, t, params)
    if roots is None:
        return None
    crossing = np.zeros(candidates.size, dtype=np.int64)
    best: LinePlan | None = None
    for i, c in enumerate(candidates):
        block = slice(i * n, (i + 1) * n)
        mine = (roots.line >= block.start) & (roots.line < block.stop) & (roots.weight > 0)
        crossing[i] = np.unique(roots.line[mine]).size
        plan = _plan(lines, int(c), roots, rows[block], t[block], block)
        if plan is None and ctx.run.spent is not None:
            return None
        if plan is not None and (best is None or plan.cost < best.cost):
            best = plan
    return best, crossing


def _plan(lines: _Lines, column: int, roots: _Roots, rows: np.ndarray, t: np.ndarray, block: slice) -> LinePlan | None:
    """The plan for one candidate column from its calibration lines (``block`` of the batch), or ``None``."""
    n = rows.shape[0]
    mine = (roots.line >= block.start) & (roots.line < block.stop)
    line, weight = roots.line[mine] - block.start, roots.weight[mine]
    s = roots.X[mine, column].astype(np.float64)
    L = np.bincount(line, weights=weight, minlength=n)
    crossing = int((L > 0).sum())
    if crossing < _MIN_CROSSING:
        return None
    heavy = np.sort(L[L > 0])[::-1]
    cap = float(heavy[0])
    acceptance = float(L.mean()) / cap
    # Heavy weights, not rare crossings, rule a column out: judge the crossing lines alone. Hill's
    # estimate of the tail index from the heaviest tenth: bounded weights give a large one; lines
    # nearly tangent to the level set (weights ~ 1 / distance to tangency) give about 2.
    top = max(8, crossing // 10)
    tail = float(1.0 / max(np.mean(np.log(heavy[:top] / heavy[top])), 1e-12))
    if tail < _TAIL_INDEX or float(heavy.mean()) / cap < _MIN_ACCEPTANCE:
        return None
    s_fine, r_fine = roots.s_grid[block], roots.r[block]
    refine = roots.refinements / max(roots.line.size, 1)  # refinement rows per root
    fine_examination = (roots.evaluations - roots.refinements) / roots.r.shape[0]
    fit: list[tuple[int, float]] = []  # (grid, examination rows per line) of the grids that pass
    for grid in GRIDS:
        if grid == FINE_GRID:
            fit.append((grid, fine_examination))
            continue
        points = np.arange(0, FINE_GRID, (FINE_GRID - 1) // (grid - 1))
        s_grid, r = s_fine[:, points], r_fine[:, points]
        pos, ok = r >= 0.0, np.isfinite(r)
        bl, bc = np.nonzero(ok[:, :-1] & ok[:, 1:] & (pos[:, :-1] != pos[:, 1:]))
        lo, hi = s_grid[bl, bc], s_grid[bl, bc + 1]
        spent = 0
        if grid >= 3:
            found = lines.examine(rows, np.full(n, column), t, s_grid, r)
            if found is None:
                return None
            more, spent = found
            bl = np.concatenate([bl, more[0]])
            lo = np.concatenate([lo, np.minimum(more[1], more[2])])
            hi = np.concatenate([hi, np.maximum(more[1], more[2])])
        if _missed(line, s, weight, bl, lo, hi) <= _MISSED:
            fit.append((grid, spent / n))
    # Two points suffice for lines that cross at most once; otherwise a finer grid than the
    # coarsest that passed, as a margin for lines the calibration did not meet.
    grid, examination = fit[0] if fit[0][0] == 2 else fit[min(1, len(fit) - 1)]
    if grid > 2 and tail < _TAIL_INDEX_CROSSING:
        # Lines that cross more than once are nearly tangent to the level set somewhere unless the
        # level stays clear of their extrema: ask for clearly bounded weights.
        return None
    cost = (grid + examination + mine.sum() / n * (refine + _GRADIENT_ROWS)) / acceptance
    return LinePlan(column, grid, cap, acceptance, float(cost), tail, crossing)


def _missed(
    line: np.ndarray, s: np.ndarray, weight: np.ndarray, bl: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> float:
    """Share of the roots' weight a coarser pass would not return: roots outside its brackets.

    A bracket holding several roots yields one of them (the solve converges to one): it is
    credited with their mean weight.

    Args:
        line, s, weight: The fine pass's roots: line, position, weight.
        bl, lo, hi: The coarser pass's brackets: line and ends.
    """
    total = weight.sum()
    if total <= 0 or line.size == 0:
        return 0.0
    if bl.size == 0:
        return 1.0
    # Brackets on one line are disjoint: sort them by (line, lower end) and find, for each root,
    # the last one starting at or before it on its line.
    order = np.lexsort((lo, bl))
    bl, lo, hi = bl[order], lo[order], hi[order]
    span = max(float(np.max(np.abs(np.concatenate([lo, hi, s])))), 1e-300)
    key = bl + 0.25 * (lo / span + 1.0)  # inside [line, line + 0.5]
    j = np.searchsorted(key, line + 0.25 * (s / span + 1.0), side="right") - 1
    j = np.maximum(j, 0)
    held = (bl[j] == line) & (lo[j] <= s) & (s <= hi[j])
    count = np.bincount(j[held], minlength=bl.size)
    mass = np.bincount(j[held], weights=weight[held], minlength=bl.size)
    found = float(np.sum(np.where(count > 0, mass / np.maximum(count, 1), 0.0)))
    return 1.0 - found / float(total)


class LineSampler:
    """Draws batches of lines with a :class:`LinePlan`, keeping the running cost estimate and the cap.

    Args:
        ctx: The run's shared state.
        plan: From :func:`calibrate`.
    """

    def __init__(self, ctx: Context, plan: LinePlan) -> None:
        self.ctx = ctx
        self.plan = plan
        self.cap = plan.cap
        self._lines = _Lines(ctx)
        self._rows = 0.0  # model rows spent, a gradient row counted as three
        self._weight = 0.0  # sum of line weights seen
        self._count = 0  # lines drawn

    @property
    def max_lines(self) -> int:
        """Most lines per batch (the scan pass holds at most 32,768 rows)."""
        return max(1, _SCAN_ROWS // self.plan.grid)

    @property
    def acceptance(self) -> float:
        """Estimated share of lines kept at the current cap."""
        if self._count == 0 or self._weight <= 0:
            return self.plan.acceptance
        return min(1.0, self._weight / self._count / self.cap)

    @property
    def cost(self) -> float:
        """Estimated rows per pattern at the current cap (the calibration's estimate until lines are drawn)."""
        if self._count == 0 or self._weight <= 0:
            return self.plan.cost
        return self._rows / self._count / max(self.acceptance, 1e-300)

    def draw(self, k: int) -> Candidates | None:
        """Draw ``k`` lines; return the kept rows and their outputs (``None`` when the budget ran out)."""
        ctx, column = self.ctx, self.plan.column
        X, params = ctx.prior.sample_lines(ctx.rng, k, column)
        t = self._lines.levels(k)
        keep_u = ctx.rng.random(k)
        pick_u = ctx.rng.random(k)
        single = self.plan.grid == 2  # at most one root per line: forward differences may decide
        roots = self._lines.solve(X, np.full(k, column), self.plan.grid, t, [params], exact=not single)
        if roots is None:
            return None
        threshold = keep_u * self.cap
        if single:
            # A difference within the margin of the threshold, or of the cap (which a heavier line
            # raises), leaves the decision open: those lines take the gradient, so every decision
            # and every cap is the one exact slopes give.
            estimate = np.bincount(roots.line, weights=roots.weight, minlength=k)[roots.line]
            bar = threshold[roots.line]
            open_ = roots.valid & (
                (np.abs(estimate - bar) <= _MARGIN * estimate) | (estimate * (1.0 + _MARGIN) > self.cap)
            )
            settle = np.flatnonzero(open_)
            if not self._lines.settle(roots, settle, np.full(settle.size, column)):
                return None
        gradients = int(roots.exact.sum())
        self._rows += k * self.plan.grid + roots.evaluations + _GRADIENT_ROWS * gradients
        L = np.bincount(roots.line, weights=roots.weight, minlength=k)
        self._count += k
        self._weight += float(L.sum())
        kept = np.flatnonzero(threshold < L)
        # Pick root j of each kept line with probability w_j / L: roots are ordered by line, so the
        # line's cumulative weights are a slice of the global ones.
        cum = np.cumsum(roots.weight)
        start = np.searchsorted(roots.line, kept, side="left")
        end = np.searchsorted(roots.line, kept, side="right")
        before = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
        chosen = np.searchsorted(cum, before + pick_u[kept] * L[kept], side="right")
        chosen = np.clip(chosen, start, end - 1)
        heaviest = float(L.max()) if k else 0.0
        if heaviest > self.cap:
            self.cap = heaviest
        return roots.X[chosen], roots.F[chosen]
