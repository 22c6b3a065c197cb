"""``optimize`` mode: many random starts converged onto the target by batched Newton steps.

Starts are drawn from the prior (so discrete features start at prior draws and are
held while the continuous columns are solved), moved by a :class:`NewtonPool`
(minimum-norm Gauss–Newton steps aimed at the target value, forward-only secant
steps along each Newton line for one output, discrete local moves when the
continuous solve fails), and replaced by fresh prior draws when they hit or fail.
For one output, a fresh start's first gradient serves :data:`_FAN_OUT` lines (the
Newton line and others at random angles up to 60° from it), so one backward pass
yields several patterns. The pool starts small (a first batch comes back after a
few cheap passes) and doubles per pass up to :data:`MAX_POOL` rows.

The target is declared unreachable when, with nothing found after at least
:data:`_STALL_PASSES` passes, the closest output seen has not moved nearer (by a
relative 1e-3) over the last :data:`_STALL_WINDOW` passes: every start, fresh or
old, keeps ending at the same best distance, a local extremum of the model over the
constraints.
"""

from __future__ import annotations

import math

import torch

from preimage.server.engine.context import Context, Driver, Outcome
from preimage.server.engine.newton import NewtonConfig, NewtonPool

__all__ = ["MAX_POOL", "optimize"]

MAX_POOL = 8192
_MIN_POOL = 64
_FIRST_POOL = 256
_STALL_PASSES = 24
_STALL_WINDOW = 16
_PENALTY_STEPS = 4
_FAN_OUT = 4


def optimize(ctx: Context, *, probe_passes: int | None = None) -> Driver:
    """Yield patterns found by Newton from prior starts until enough, budget or unreachable.

    Args:
        ctx: The run's shared state.
        probe_passes: Used as a reachability probe: stop after this many passes with
            :attr:`Outcome.UNKNOWN` (the caller stops at the first yield).
    """
    factors = len(ctx.space.factors)
    penalize = ctx.penalty is not None and ctx.weight > 0
    config = NewtonConfig(
        center=True,
        max_age=20,
        discrete_moves=2 * factors + 2 if factors else 0,
        penalty_steps=_PENALTY_STEPS if penalize else 0,
        penalty_rate=ctx.weight / (1.0 + ctx.weight),
        fan_out=_FAN_OUT,
    )
    pool = NewtonPool(ctx.space, ctx.targets, ctx.run, config, ctx.penalty, ctx.rng)
    cost = 2 + ctx.targets.outputs  # a gradient sub-pass (1 + m) and a forward-only one
    cap = _FIRST_POOL
    found = passes = 0
    history: list[float] = []
    while True:
        want = min(MAX_POOL, cap, max(_MIN_POOL, 2 * ctx.collector.remaining))
        if len(pool) < want:
            fresh = ctx.prior.sample(ctx.rng, want - len(pool))
            pool.add(torch.from_numpy(fresh))
        if not ctx.run.check(cost):
            return Outcome.BUDGET
        X, F, _ = pool.step()
        passes += 1
        cap = min(2 * cap, MAX_POOL)
        if X.shape[0]:
            found += X.shape[0]
            yield X, F
            if ctx.collector.done:
                return Outcome.DONE
        if probe_passes is not None and passes >= probe_passes:
            return Outcome.UNKNOWN
        history.append(ctx.run.closest_error)
        if (
            found == 0
            and passes >= _STALL_PASSES
            and math.isfinite(history[-1])
            and history[-1] >= history[-_STALL_WINDOW] * (1.0 - 1e-3)
        ):
            return Outcome.UNREACHABLE
