"""The classic inversion baselines preimage is measured against (not part of the engine).

* :func:`neural_adjoint` — a re-implementation of neural-adjoint search (Ren, Padilla,
  Malof, NeurIPS 2020): 2048 starts drawn uniformly inside the bounds, 300 Adam steps
  on ``(f(x) − y)² + 0.1 · boundary loss`` with learning rate 0.5 halved on plateaus, the
  frozen model's weights untouched. Candidates are ranked by the model's own loss, as
  the paper does, and every candidate is returned.
* :func:`one_at_a_time` — the textbook answer: one input at a time, Adam on
  ``(f(x) − y)²`` from a uniform random start until the model says it is within the
  tolerance (or a step limit), clamped to the bounds.

Both take a frozen torch module, ``2 x d`` bounds and one target vector, and return
candidate rows in float32; the caller decides which are valid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BaselineResult", "neural_adjoint", "one_at_a_time"]


@dataclass(frozen=True)
class BaselineResult:
    """Candidates of one baseline run for one target.

    Attributes:
        inputs: ``k x d`` float32 candidates, best first (by the model's own loss).
        seconds: Wall-clock seconds spent.
        passes: Batched forward + backward passes.
    """

    inputs: np.ndarray
    seconds: float
    passes: int


def _outputs(module: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    out = module(X)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.reshape(X.shape[0], -1)


def neural_adjoint(
    module: torch.nn.Module,
    bounds: np.ndarray,
    target: np.ndarray,
    *,
    starts: int = 2048,
    steps: int = 300,
    lr: float = 0.5,
    boundary_weight: float = 0.1,
    seed: int = 0,
) -> BaselineResult:
    """Neural-adjoint search for one target.

    Args:
        module: Frozen model.
        bounds: ``2 x d`` lower and upper bounds (the boundary loss keeps ``x`` inside
            ``mean ± range / 2``; nothing clamps it).
        target: ``m`` target outputs.
        starts: Random starts, optimized together.
        steps: Adam steps.
        lr: Initial learning rate, halved when the loss plateaus (patience 10).
        boundary_weight: Weight of the boundary loss.
        seed: Seed of the starts.
    """
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    lo = torch.as_tensor(bounds[0], dtype=torch.float32)
    hi = torch.as_tensor(bounds[1], dtype=torch.float32)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    y = torch.as_tensor(target, dtype=torch.float32).reshape(1, -1)
    X = (lo + torch.rand(starts, lo.numel(), generator=gen) * (hi - lo)).requires_grad_(True)
    opt = torch.optim.Adam([X], lr=lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    passes = 0
    for _ in range(steps):
        opt.zero_grad()
        F = _outputs(module, X)
        fit = ((F - y) ** 2).mean(dim=1)
        boundary = torch.relu((X - mid).abs() - half).sum(dim=1)
        loss = (fit + boundary_weight * boundary).mean()
        loss.backward()
        opt.step()
        plateau.step(loss.item())
        passes += 2
    with torch.no_grad():
        F = _outputs(module, X)
        order = torch.argsort(((F - y) ** 2).mean(dim=1))
    passes += 1
    return BaselineResult(X.detach()[order].numpy().copy(), time.perf_counter() - t0, passes)


def one_at_a_time(
    module: torch.nn.Module,
    bounds: np.ndarray,
    target: np.ndarray,
    *,
    count: int,
    tolerance: float,
    lr: float = 0.01,
    max_steps: int = 1000,
    seed: int = 0,
) -> BaselineResult:
    """Gradient descent on one input at a time until ``count`` candidates are produced.

    Each candidate starts uniformly inside the bounds and takes Adam steps on
    ``(f(x) − y)²`` (clamped to the bounds) until the model puts it within
    ``tolerance`` or ``max_steps`` pass; both kinds of end are returned.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    lo = torch.as_tensor(bounds[0], dtype=torch.float32)
    hi = torch.as_tensor(bounds[1], dtype=torch.float32)
    y = torch.as_tensor(target, dtype=torch.float32).reshape(1, -1)
    rows, passes = [], 0
    for _ in range(count):
        x = torch.as_tensor(rng.uniform(bounds[0], bounds[1]), dtype=torch.float32).reshape(1, -1)
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(max_steps):
            opt.zero_grad()
            err = _outputs(module, x) - y
            passes += 1
            if bool((err.abs() <= tolerance).all()):
                break
            (err**2).sum().backward()
            passes += 1
            opt.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
        rows.append(x.detach().numpy()[0].copy())
    return BaselineResult(np.asarray(rows, dtype=np.float32), time.perf_counter() - t0, passes)
