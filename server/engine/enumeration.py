"""Small all-discrete spaces: evaluate every point, then draw from the exact preimage.

When no free column is continuous and the space holds at most
:data:`~preimage.server.engine.space.MAX_ENUMERATION` points, every point is
evaluated (in chunks, one budget check per chunk) and the exact preimage — the
points whose outputs lie in the inner target intervals — is known, with its size.

* ``sample`` returns it in the order of successive sampling without replacement
  with probability proportional to ``p(x) exp(−λ M(x))`` (Gumbel-top-k keys): the
  first pattern is an exact draw from the prior restricted to the preimage, each
  later one an exact draw from it conditioned on differing from those before.
* ``optimize`` returns it ordered by distance to the target value (random among ties).

A preimage smaller than ``n`` is returned whole (EXHAUSTED); an empty one means
the target is unreachable, with the exact closest output.
"""

from __future__ import annotations

import numpy as np
import torch

from preimage.server.engine.context import Context, Driver, Outcome
from preimage.server.engine.types import InvertMode

__all__ = ["enumerate_space"]

_CHUNK = 65536


def enumerate_space(ctx: Context, mode: InvertMode) -> Driver:
    """Evaluate the whole space, then yield the exact preimage in the order ``mode`` asks for."""
    space, targets = ctx.space, ctx.targets
    size = space.discrete_size
    assert size is not None
    found_X, found_F = [], []
    for start in range(0, size, _CHUNK):
        if not ctx.run.check():
            return Outcome.BUDGET
        X = space.decode(np.arange(start, min(size, start + _CHUNK)))
        F = ctx.run.forward(torch.from_numpy(X)).numpy()
        hit = targets.hits(F)
        found_X.append(X[hit])
        found_F.append(F[hit])
    X = np.concatenate(found_X)
    F = np.concatenate(found_F)
    ctx.preimage_size = int(X.shape[0])
    if X.shape[0] == 0:
        return Outcome.UNREACHABLE
    if mode is InvertMode.OPTIMIZE:
        value = np.where(np.isnan(targets.value), targets.center, targets.value)
        gap = np.where(np.isnan(targets.value), 0.0, np.abs(F.astype(np.float64) - value) / targets.scale).max(axis=1)
        order = np.lexsort((ctx.rng.random(X.shape[0]), gap))
    else:
        key = ctx.prior.log_weight(space.digits(X))
        if ctx.penalty is not None and ctx.weight > 0:
            key = key - ctx.weight * ctx.penalty.value(X)
        key = key + ctx.rng.gumbel(size=X.shape[0])
        order = np.argsort(-key, kind="stable")
    for start in range(0, order.size, _CHUNK):
        take = order[start : start + _CHUNK]
        yield X[take], F[take]
        if ctx.collector.done:
            return Outcome.DONE
    return Outcome.EXHAUSTED
