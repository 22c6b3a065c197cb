"""``sample`` mode (the default): patterns drawn from the prior restricted to the preimage.

Let ``p`` be the prior, ``T = {x : f(x) ∈ I}`` the preimage of the inner target
intervals ``I``, and ``s`` the per-output spread of ``f`` under ``p`` (measured on a
pilot). Rows are drawn from ``p`` in large no-gradient screening passes:

* rows with ``f(x) ∈ I`` are accepted as they are: **exact** draws from ``p``
  restricted to ``T``;
* when that is too rare (pilot acceptance below :data:`A_TARGET`) and continuous
  columns are free, rows inside the *widened window* ``dist(f(x), I) ≤ w·s`` — exact
  draws from ``p`` restricted to the widened preimage ``T_w`` — are moved onto ``T``
  by Newton steps along the gradient to an output level drawn uniformly from ``I``
  (discrete columns held; a row that does not converge within a few passes is
  dropped). Along the gradient flow, the coarea formula writes ``p`` as the density
  ``p(x) / ‖∇f(x)‖`` over (level-set point, level); where that density barely changes
  across the window, moving a row to a uniform level keeps it, so the result — the
  push-forward of ``p|T_w`` through that move — tends to ``p|T`` as ``w → 0`` (for a
  thin value target: the coarea density on the level set).

``w`` (in units of ``s``) is the pilot's :data:`A_TARGET` quantile of the normalized
distance, at most :data:`W_MAX`, unless that leaves less than :data:`A_FLOOR`
acceptance, in which case the :data:`A_FLOOR` quantile. With an in-distribution
weight ``λ`` every candidate is kept with probability ``exp(−λ M(x))``.

When the pilot hits nothing, a short :func:`optimize` probe decides reachability
first (its patterns are not returned: they are not prior draws).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from preimage.server.engine.context import Context, Driver, Outcome
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
    found = Xa.shape[0]
    if found:
        yield Xa, Fa
        if ctx.collector.done:
            return Outcome.DONE
    if not hit0.any():
        probe = optimize(ctx, probe_passes=_PROBE_PASSES)
        try:
            next(probe)
        except StopIteration as end:
            if end.value in (Outcome.UNREACHABLE, Outcome.BUDGET):
                return Outcome(end.value)
        finally:
            probe.close()

    w = 0.0
    if ctx.space.free_continuous.any() and hit0.mean() < A_TARGET:
        w = _window(D0)
    pool = NewtonPool(ctx.space, targets, run, NewtonConfig(center=False, max_age=_NEWTON_AGE))
    window = ~hit0 & (D0 <= w)
    if window.any():  # the pilot's window rows are draws like any other: project them too
        pool.add(torch.from_numpy(X0[window]), torch.from_numpy(_levels(ctx, int(window.sum()))))
    screened = pilot
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
