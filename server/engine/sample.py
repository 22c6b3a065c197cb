"""``sample`` mode (the default): patterns drawn from the prior restricted to the preimage.

Let ``p`` be the prior, ``T = {x : f(x) ∈ I}`` the preimage of the inner target
intervals ``I``, and ``s`` the per-output spread of ``f`` under ``p`` (measured on a
pilot of prior rows). The pilot's rows with ``f(x) ∈ I`` are accepted as they are:
**exact** draws from ``p|T``. Then one of two samplers runs:

* **lines** (:mod:`~preimage.server.engine.lines`; one output, a free continuous
  column): exact draws from ``p|T`` at a cost the tolerance does not set, when
  calibration finds a column along which the model crosses the target level at most a
  few times with light-tailed weights, and the lines are estimated cheaper per pattern
  than the windowed sampler. Requests too small to repay calibration skip it.
* **windowed**: prior rows in no-gradient screening passes; exact hits as they are and,
  when those are rarer than :data:`A_TARGET` among the pilot and continuous columns
  are free, rows inside the *widened window* ``dist(f(x), I) ≤ w·s`` — exact draws from
  ``p`` restricted to the widened preimage ``T_w`` — moved onto ``T`` by Newton steps
  along the gradient to an output level drawn uniformly from ``I`` (discrete columns
  held; a row that does not converge within a few passes is dropped). Along the
  gradient flow, the coarea formula writes ``p`` as the density ``p(x) / ‖∇f(x)‖`` over
  (level-set point, level); where that density barely changes across the window,
  moving a row to a uniform level keeps it, so the result — the push-forward of
  ``p|T_w`` through that move — tends to ``p|T`` as ``w → 0`` (for a thin value target:
  the coarea density on the level set).

``w`` (in units of ``s``) is the pilot's :data:`A_TARGET` quantile of the normalized
distance, at most :data:`W_MAX`, unless that leaves less than :data:`A_FLOOR`
acceptance, in which case the :data:`A_FLOOR` quantile. The line sampler hands over to
the windowed one when lines heavier than calibration saw make it :data:`_SWITCH` times
dearer than the windowed estimate. With an in-distribution weight ``λ`` every candidate
is kept with probability ``exp(−λ M(x))``.

When neither the pilot nor calibration reached the target, a short :func:`optimize`
probe decides reachability first (its patterns are not returned: they are not prior
draws).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator

import numpy as np
import torch

from preimage.server.engine.context import Candidates, Context, Driver, Outcome
from preimage.server.engine.lines import CALIBRATION_LINES, FINE_GRID, LineSampler, calibrate
from preimage.server.engine.newton import NewtonConfig, NewtonPool
from preimage.server.engine.optimize import optimize

__all__ = ["A_FLOOR", "A_TARGET", "PILOT", "W_MAX", "sample"]

PILOT = 8192
"""Most rows of the pilot (it is sized to the patterns wanted, at least 1024)."""
A_TARGET = 0.01
A_FLOOR = 0.002
W_MAX = 0.02
_SCREEN_MIN = 1024
_SCREEN_MAX = 32768
_PROBE_PASSES = 40
_NEWTON_AGE = 12
_NEAR_ROWS = 64
# Rows a calibration costs (two columns, 256 lines of 33 points).
_CALIBRATION_ROWS = 2 * CALIBRATION_LINES * FINE_GRID
_FIRST_LINES = 256
_MIN_LINES = 64
# Rows a window row's projection costs on average (a gradient pass and a few forward-only secant steps).
_PROJECTION_ROWS = 6.0
# Lines give way to the windowed sampler when they grow this much dearer than its estimate.
_SWITCH = 2.0

_log = logging.getLogger(__name__)


def sample(ctx: Context) -> Driver:
    """Yield draws from the prior restricted to the preimage until enough or the budget ends."""
    run, targets = ctx.run, ctx.targets
    if not run.check():
        return Outcome.BUDGET
    pilot = int(min(PILOT, max(_SCREEN_MIN, 2 * ctx.collector.remaining / A_TARGET)))
    X0 = ctx.prior.sample(ctx.rng, pilot)
    F0 = run.forward(torch.from_numpy(X0)).numpy()
    spread = _spread(F0, targets.scale)
    D0 = (targets.inner_distance(F0) / spread).max(axis=1)
    hit0 = D0 == 0.0
    Xa, Fa = ctx.thin(X0[hit0], F0[hit0])
    if Xa.shape[0]:
        yield Xa, Fa
        if ctx.collector.done:
            return Outcome.DONE
    w = 0.0
    if ctx.space.free_continuous.any() and hit0.mean() < A_TARGET:
        w = _window(D0)
    window = ~hit0 & (D0 <= w)

    window_cost = _window_cost(pilot, int(hit0.sum()), int(window.sum()))
    calibration = None
    # Calibrating lines costs about as much as a few hundred windowed patterns: small requests skip it.
    if targets.outputs == 1 and ctx.collector.remaining * window_cost > _CALIBRATION_ROWS:
        near = X0[np.argsort(D0, kind="stable")[:_NEAR_ROWS]]
        calibration = calibrate(ctx, near, spend=ctx.collector.remaining * window_cost)
        if calibration is None:
            return Outcome.BUDGET
    if not hit0.any() and not (calibration is not None and calibration.reached):
        probe = optimize(ctx, probe_passes=_PROBE_PASSES)
        try:
            next(probe)
        except StopIteration as end:
            if end.value in (Outcome.UNREACHABLE, Outcome.BUDGET):
                return Outcome(end.value)
        finally:
            probe.close()

    plan = calibration.plan if calibration is not None else None
    if plan is not None and plan.cost < window_cost:
        _log.debug("sample: line sampler (%s; windowed sampler ~%.3g rows per pattern)", plan, window_cost)
        outcome = yield from _lines(ctx, LineSampler(ctx, plan), window_cost)
        if outcome is not None:
            return outcome
    else:
        _log.debug("sample: windowed sampler, w = %.3g (~%.3g rows per pattern; lines: %s)", w, window_cost, plan)
    return (yield from _windowed(ctx, spread, w, X0[window], screened=pilot, found=int(hit0.sum())))


def _lines(ctx: Context, sampler: LineSampler, window_cost: float) -> Generator[Candidates, None, Outcome | None]:
    """Batches of lines, doubling from :data:`_FIRST_LINES`, sized to what is still wanted.

    Returns:
        How the run ended, or ``None`` to hand over to the windowed sampler: lines heavier than the
        calibration saw raised the cap until a pattern costs :data:`_SWITCH` times the windowed estimate.
    """
    size = _FIRST_LINES
    while True:
        want = math.ceil(1.25 * ctx.collector.remaining / max(sampler.acceptance, 1e-6))
        got = sampler.draw(int(min(size, sampler.max_lines, max(_MIN_LINES, want))))
        if got is None:
            return Outcome.BUDGET
        X, F = ctx.thin(*got)
        if X.shape[0]:
            yield X, F
            if ctx.collector.done:
                return Outcome.DONE
        size *= 2
        if sampler.cost > _SWITCH * window_cost:
            _log.debug("sample: lines cost %.3g rows per pattern; switching to the windowed sampler", sampler.cost)
            return None


def _windowed(ctx: Context, spread: np.ndarray, w: float, X_window: np.ndarray, *, screened: int, found: int) -> Driver:
    """Screening passes of prior rows: exact hits as they are, rows inside the window ``w`` projected onto ``T``."""
    run, targets = ctx.run, ctx.targets
    pool = NewtonPool(ctx.space, targets, run, NewtonConfig(center=False, max_age=_NEWTON_AGE))
    if X_window.shape[0]:  # the pilot's window rows are draws like any other: project them too
        pool.add(torch.from_numpy(X_window), torch.from_numpy(_levels(ctx, X_window.shape[0])))
    cost = 2 + targets.outputs  # a gradient sub-pass (1 + m) and a forward-only one
    while True:
        while len(pool):
            if not run.check(cost):
                return Outcome.BUDGET
            Xa, Fa, _ = pool.step()
            Xa, Fa = ctx.thin(Xa, Fa)
            if Xa.shape[0]:
                found += Xa.shape[0]
                yield Xa, Fa
                if ctx.collector.done:
                    return Outcome.DONE
        rate = max(found, 1) / screened
        size = int(min(_SCREEN_MAX, max(_SCREEN_MIN, 2 ** math.ceil(math.log2(2 * ctx.collector.remaining / rate)))))
        if not run.check():
            return Outcome.BUDGET
        X = ctx.prior.sample(ctx.rng, size)
        F = run.forward(torch.from_numpy(X)).numpy()
        screened += size
        D = (targets.inner_distance(F) / spread).max(axis=1)
        inside = D == 0.0
        Xa, Fa = ctx.thin(X[inside], F[inside])
        if Xa.shape[0]:
            found += Xa.shape[0]
            yield Xa, Fa
            if ctx.collector.done:
                return Outcome.DONE
        window = ~inside & (D <= w)
        if window.any():
            pool.add(torch.from_numpy(X[window]), torch.from_numpy(_levels(ctx, int(window.sum()))))


def _window_cost(pilot: int, hits: int, window: int) -> float:
    """Rows per pattern the windowed sampler would spend, from the pilot (inf when nothing was near)."""
    if hits + window == 0:
        return math.inf
    return (pilot + _PROJECTION_ROWS * window) / (hits + window)


def _levels(ctx: Context, k: int) -> np.ndarray:
    """Output levels, uniform over the aim intervals, that ``k`` window rows are moved to."""
    lo, hi = ctx.targets.aim_lower, ctx.targets.aim_upper
    return lo + ctx.rng.random((k, lo.size)) * (hi - lo)


def _spread(F: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per-output standard deviation over the finite pilot outputs (the half-width where degenerate)."""
    out = fallback.astype(np.float64).copy()
    for j in range(F.shape[1]):
        col = F[:, j][np.isfinite(F[:, j])].astype(np.float64)
        if col.size > 1 and col.std() > 0:
            out[j] = col.std()
    return out


def _window(D: np.ndarray) -> float:
    """The widened window ``w`` (units of the output spread) from the pilot's distances ``D``."""
    finite = np.sort(D[np.isfinite(D)])
    if finite.size == 0:
        return 0.0

    def quantile(share: float) -> float:
        return float(finite[min(finite.size - 1, math.ceil(share * D.size) - 1)])

    w = min(quantile(A_TARGET), W_MAX)
    if np.mean(D <= w) < A_FLOOR:
        w = quantile(A_FLOOR)
    return w
