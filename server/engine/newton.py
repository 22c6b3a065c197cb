"""A pool of starts moved onto the target set by batched projected Gauss–Newton steps.

Each :meth:`NewtonPool.step` is one forward pass and one backward pass per output
over the whole pool. Per row it then does one of:

* **accept** — the output is inside the inner target interval (the forward pass
  was on exactly this float32 row, so acceptance is already verified);
* **Newton** — the minimum-norm Gauss–Newton / Levenberg–Marquardt step
  ``Δu = −J̃ᵀ (J̃ J̃ᵀ + μI)⁻¹ r̃`` on the free continuous columns, in coordinates
  scaled to the unit box (``u = (x − lower) / width``) with outputs weighted by
  their target half-widths, columns held at an active bound removed, the step capped
  at half the box per coordinate and projected onto the bounds. For one output this
  is ``x ← x − (f(x) − y) ∇f / ‖∇f‖²``;
* **backtrack** — the residual did not shrink: halve the last step;
* **discrete move** — the continuous solve failed (stationary, aged out or out of
  halvings): change the one discrete feature (binary flip, other level, integer
  ±1 or a rounded 1-D Newton jump) whose first-order predicted residual is
  smallest, and solve the continuous columns again;
* **fail** — none of the above is left: the row leaves the pool (the caller
  restarts or drops it).

With an in-distribution penalty, rows that hit keep taking steps that move them a
share ``c = λ / (1 + λ)`` towards the penalty's minimum inside the tangent space
of the level set (the null space of ``J̃``), Newton-corrected, for a few passes
before they are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from preimage.server.engine.prior import InDistributionPenalty
from preimage.server.engine.run import Run
from preimage.server.engine.space import ColumnKind, InputSpace
from preimage.server.engine.targets import TargetSet

__all__ = ["NewtonConfig", "NewtonPool"]

# Residual must shrink by this factor to count as progress.
_PROGRESS = 1e-4
# Largest step per scaled coordinate (the unit box is 1 wide).
_STEP_CAP = 0.5
# Relative Levenberg–Marquardt damping; tiny, so one output gets the exact minimum-norm step.
_DAMPING = 1e-6


@dataclass(frozen=True)
class NewtonConfig:
    """How a pool moves its rows.

    Attributes:
        center: Aim value targets at the value (optimize) instead of the nearest point of
            the target interval (sample).
        max_age: Newton passes a row gets per continuous solve.
        max_halvings: Step halvings before a solve counts as failed.
        discrete_moves: Discrete moves a row may make (0: none, as in sample mode).
        penalty_steps: Passes a hitting row spends on the in-distribution penalty first.
        penalty_rate: Share ``c`` of the way to the penalty's minimum per step.
    """

    center: bool
    max_age: int
    max_halvings: int = 3
    discrete_moves: int = 0
    penalty_steps: int = 0
    penalty_rate: float = 0.0


class NewtonPool:
    """Rows being moved onto the target set, with their per-row search state.

    Args:
        space: The input space (bounds, kinds, fixed columns).
        targets: The target set.
        run: Counts passes and tracks the closest output.
        config: Step policy.
        penalty: In-distribution penalty, used when ``config.penalty_steps > 0``.
    """

    def __init__(
        self,
        space: InputSpace,
        targets: TargetSet,
        run: Run,
        config: NewtonConfig,
        penalty: InDistributionPenalty | None = None,
    ) -> None:
        self.space = space
        self.targets = targets
        self.run = run
        self.config = config
        d, m = space.width, targets.outputs
        self.lower = torch.from_numpy(space.lower.copy())
        self.upper = torch.from_numpy(space.upper.copy())
        cols = np.flatnonzero(space.free_continuous & (space.upper > space.lower))
        self.cols = torch.from_numpy(cols)
        self.width = (self.upper - self.lower)[self.cols].double()
        self._lo = self.lower[self.cols].double()
        self._hi = self.upper[self.cols].double()
        self.scale = torch.from_numpy(targets.scale)
        self.X = torch.empty(0, d)
        self.aims = torch.empty(0, m, dtype=torch.float64)
        self.X_prev = torch.empty(0, d)
        self.r_prev = torch.empty(0, m, dtype=torch.float64)
        self.rn_prev = torch.empty(0, dtype=torch.float64)
        self.J_prev = torch.empty(0, m, d)
        self.age = torch.empty(0, dtype=torch.long)
        self.halvings = torch.empty(0, dtype=torch.long)
        self.moves = torch.empty(0, dtype=torch.long)
        self.pen = torch.empty(0, dtype=torch.long)
        self.last_discrete = torch.empty(0, dtype=torch.bool)
        self._penalty_target = _PenaltyTarget.build(space, penalty) if config.penalty_steps > 0 else None

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def add(self, X: torch.Tensor, aims: torch.Tensor | None = None) -> None:
        """Append fresh starts.

        Args:
            X: ``k x d`` float32 rows satisfying the space's constraints.
            aims: ``k x m`` output levels each row should be moved to; ``None`` lets the
                config decide (the value, or the nearest point of the aim interval).
        """
        k, m = X.shape[0], self.targets.outputs
        if aims is None:
            aims = torch.full((k, m), float("nan"), dtype=torch.float64)
        self.X = torch.cat([self.X, X])
        self.aims = torch.cat([self.aims, aims])
        self.X_prev = torch.cat([self.X_prev, X])
        self.r_prev = torch.cat([self.r_prev, torch.zeros(k, m, dtype=torch.float64)])
        self.rn_prev = torch.cat([self.rn_prev, torch.full((k,), float("inf"), dtype=torch.float64)])
        self.J_prev = torch.cat([self.J_prev, torch.zeros(k, m, X.shape[1])])
        zeros = torch.zeros(k, dtype=torch.long)
        self.age = torch.cat([self.age, zeros])
        self.halvings = torch.cat([self.halvings, zeros])
        self.moves = torch.cat([self.moves, zeros])
        self.pen = torch.cat([self.pen, zeros])
        self.last_discrete = torch.cat([self.last_discrete, torch.zeros(k, dtype=torch.bool)])

    def step(self) -> tuple[np.ndarray, np.ndarray, int]:
        """One pass over the pool (call :meth:`Run.check` first).

        Returns:
            Accepted rows (``a x d`` float32), their outputs (``a x m`` float32), and how many
            rows failed and left the pool.
        """
        cfg = self.config
        F, J = self.run.forward_jacobian(self.X)
        aim = torch.where(torch.isnan(self.aims), self.targets.aim(F, center=cfg.center), self.aims)
        r = F.double() - aim
        rn = (r / self.scale).norm(dim=1)
        rn = torch.where(torch.isfinite(rn), rn, torch.full_like(rn, float("inf")))
        hit = torch.from_numpy(self.targets.hits(F.numpy()))
        accept = hit & (self.pen >= cfg.penalty_steps)
        improved = torch.isfinite(rn) & (rn < self.rn_prev * (1.0 - _PROGRESS))
        settling = hit & ~accept
        # A row the penalty step moved off the target is corrected by Newton, whatever its residual did.
        correcting = ~hit & (self.pen > 0)
        take = (improved | settling | correcting) & ~accept
        backtrack = ~take & ~accept & ~self.last_discrete & torch.isfinite(self.rn_prev)
        backtrack &= self.halvings < cfg.max_halvings
        self.age += 1
        fail = ~accept & ~take & ~backtrack
        fail |= ~accept & ~settling & (self.age > cfg.max_age)
        take &= ~fail
        backtrack &= ~fail

        if bool(take.any()):
            idx = take.nonzero().squeeze(1)
            self.X_prev[idx] = self.X[idx]
            self.r_prev[idx] = r[idx]
            self.rn_prev[idx] = rn[idx]
            self.J_prev[idx] = J[idx]
            self.halvings[idx] = 0
            self.last_discrete[idx] = False
            stalled = self._newton(idx, r[idx], J[idx], settling[idx])
            self.pen[idx[settling[idx]]] += 1
            fail[idx[stalled]] = True
        if bool(backtrack.any()):
            idx = backtrack.nonzero().squeeze(1)
            self.X[idx] = self.X_prev[idx] + 0.5 * (self.X[idx] - self.X_prev[idx])
            self._clamp(idx)
            self.halvings[idx] += 1

        move = fail & (self.moves < cfg.discrete_moves) & torch.isfinite(self.rn_prev)
        if self.cols.numel() == 0:
            # All-discrete rows: a move that did not lower the residual ends the start.
            move &= ~(self.last_discrete & ~improved)
        if bool(move.any()) and self.space.factors:
            idx = move.nonzero().squeeze(1)
            self.X[idx] = self._discrete_move(self.X_prev[idx], self.J_prev[idx], self.r_prev[idx])
            self.moves[idx] += 1
            self.age[idx] = 0
            self.halvings[idx] = 0
            self.last_discrete[idx] = True
            if self.cols.numel():
                self.rn_prev[idx] = float("inf")
            fail[idx] = False

        accepted_X = self.X[accept].numpy().copy()
        accepted_F = F[accept].numpy().copy()
        keep = ~(accept | fail)
        failed = int(fail.sum())
        self._keep(keep)
        return accepted_X, accepted_F, failed

    # -- moves ---------------------------------------------------------------------------------

    def _newton(self, idx: torch.Tensor, r: torch.Tensor, J: torch.Tensor, settling: torch.Tensor) -> torch.Tensor:
        """Take a projected Gauss–Newton step for rows ``idx``; True where the step is zero."""
        if self.cols.numel() == 0:
            return torch.ones(idx.shape[0], dtype=torch.bool)
        X = self.X[idx]
        x = X[:, self.cols].double()
        Ju = J[:, :, self.cols].double() * self.width / self.scale[:, None]
        rt = r / self.scale
        at_lo = x <= self._lo
        at_hi = x >= self._hi
        du = _min_norm_step(Ju, rt)
        blocked = (at_lo & (du < 0)) | (at_hi & (du > 0))
        if bool(blocked.any()):
            Ju = Ju * (~blocked)[:, None, :]
            du = _min_norm_step(Ju, rt)
        if self._penalty_target is not None and bool(settling.any()):
            goal = self._penalty_target.goal(X.double())
            pull = self.config.penalty_rate * (goal - x) / self.width
            pull = pull * (~blocked)
            pull = pull - _project_rows(Ju, pull)
            du = du + torch.where(settling[:, None], pull, torch.zeros_like(pull))
        big = du.abs().amax(dim=1, keepdim=True)
        du = du * torch.clamp(_STEP_CAP / big.clamp_min(1e-300), max=1.0)
        stalled = ~(big.squeeze(1) > 1e-9) & ~settling
        x = torch.minimum(torch.maximum(x + du * self.width, self._lo), self._hi)
        X[:, self.cols] = x.float()  # float32 bounds are exact, so rounding stays inside them
        self.X[idx] = X
        return stalled

    def _clamp(self, idx: torch.Tensor) -> None:
        X = self.X[idx]
        X[:, self.cols] = torch.minimum(torch.maximum(X[:, self.cols], self.lower[self.cols]), self.upper[self.cols])
        self.X[idx] = X

    def _discrete_move(self, X: torch.Tensor, J: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Change the one discrete feature whose first-order predicted residual is smallest."""
        Jt = J.double() / self.scale[:, None]
        rt = r / self.scale
        k = X.shape[0]
        rows = torch.arange(k)
        best = torch.full((k,), float("inf"), dtype=torch.float64)
        out = X.clone()
        for factor in self.space.factors:
            cols = list(factor.columns)
            if factor.kind is ColumnKind.ONE_HOT:
                G = Jt[:, :, cols]
                current = X[:, cols].argmax(dim=1)
                base = G[rows, :, current]
                for level in range(len(cols)):
                    pred = (rt + G[:, :, level] - base).norm(dim=1)
                    better = (pred < best) & (current != level)
                    if bool(better.any()):
                        best = torch.where(better, pred, best)
                        new = torch.zeros(int(better.sum()), len(cols))
                        new[:, level] = 1.0
                        sub = out[better]
                        sub[:, cols] = new
                        sub = self._restore_others(sub, X[better], cols)
                        out[better] = sub
                continue
            c = cols[0]
            g = Jt[:, :, c]
            x = X[:, c].double()
            if factor.kind is ColumnKind.BINARY:
                candidates = [1.0 - 2.0 * x]
            else:
                jump = torch.round(-(g * rt).sum(dim=1) / (g * g).sum(dim=1).clamp_min(1e-300))
                jump = torch.where(torch.isfinite(jump), jump, torch.zeros_like(jump))
                candidates = [torch.ones_like(x), -torch.ones_like(x), jump]
            for delta in candidates:
                new = torch.clamp(x + delta, float(self.lower[c]), float(self.upper[c]))
                real = new - x
                pred = (rt + g * real[:, None]).norm(dim=1)
                better = (pred < best) & (real != 0)
                if bool(better.any()):
                    best = torch.where(better, pred, best)
                    sub = X[better].clone()
                    sub[:, c] = new[better].float()
                    out[better] = sub
        return out

    @staticmethod
    def _restore_others(sub: torch.Tensor, original: torch.Tensor, cols: list[int]) -> torch.Tensor:
        """Keep only the one-hot change: every column outside ``cols`` as in ``original``."""
        mask = torch.ones(sub.shape[1], dtype=torch.bool)
        mask[cols] = False
        sub[:, mask] = original[:, mask]
        return sub

    def _keep(self, keep: torch.Tensor) -> None:
        if bool(keep.all()):
            return
        for name in (
            "X",
            "aims",
            "X_prev",
            "r_prev",
            "rn_prev",
            "J_prev",
            "age",
            "halvings",
            "moves",
            "pen",
            "last_discrete",
        ):
            setattr(self, name, getattr(self, name)[keep])


def _min_norm_step(Ju: torch.Tensor, rt: torch.Tensor) -> torch.Tensor:
    """``−J̃ᵀ (J̃ J̃ᵀ + μI)⁻¹ r̃`` per row (``k x m x n`` Jacobians, ``k x m`` residuals)."""
    m = Ju.shape[1]
    if m == 1:
        g = Ju[:, 0, :]
        norm2 = (g * g).sum(dim=1)
        coef = rt[:, 0] / (norm2 * (1.0 + _DAMPING)).clamp_min(1e-300)
        return -coef[:, None] * g
    A = Ju @ Ju.transpose(1, 2)
    mu = _DAMPING * A.diagonal(dim1=1, dim2=2).sum(dim=1) / m + 1e-300
    A = A + mu[:, None, None] * torch.eye(m, dtype=Ju.dtype)
    solved = torch.linalg.solve(A, rt.unsqueeze(2))
    return -(Ju.transpose(1, 2) @ solved).squeeze(2)


def _project_rows(Ju: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Component of ``v`` in the row space of each ``J̃`` (``v − result`` lies in its null space)."""
    A = Ju @ Ju.transpose(1, 2)
    m = Ju.shape[1]
    A = A + (1e-12 + _DAMPING * A.diagonal(dim1=1, dim2=2).sum(dim=1) / m)[:, None, None] * torch.eye(m, dtype=Ju.dtype)
    coef = torch.linalg.solve(A, (Ju @ v.unsqueeze(2)))
    return (Ju.transpose(1, 2) @ coef).squeeze(2)


@dataclass(frozen=True)
class _PenaltyTarget:
    """Where the in-distribution penalty pulls the free continuous columns, given the others.

    ``M`` is quadratic, so with the integer columns held its minimum over the continuous
    ones is ``x_c* = μ_c − P_cc⁻¹ P_ci (x_i − μ_i)``.
    """

    cont: torch.Tensor  # columns of x (free continuous, movable)
    ints: torch.Tensor  # columns of x (free integer)
    mean_c: torch.Tensor
    mean_i: torch.Tensor
    gain: torch.Tensor  # P_cc⁻¹ P_ci

    @classmethod
    def build(cls, space: InputSpace, penalty: InDistributionPenalty | None) -> _PenaltyTarget | None:
        if penalty is None:
            return None
        cols = penalty.columns
        movable = space.free_continuous[cols] & (space.upper[cols] > space.lower[cols])
        c, i = np.flatnonzero(movable), np.flatnonzero(~movable)
        P = penalty.precision
        gain = np.linalg.solve(P[np.ix_(c, c)], P[np.ix_(c, i)]) if c.size and i.size else np.zeros((c.size, i.size))
        return cls(
            cont=torch.from_numpy(cols[c]),
            ints=torch.from_numpy(cols[i]),
            mean_c=torch.from_numpy(penalty.mean[c]),
            mean_i=torch.from_numpy(penalty.mean[i]),
            gain=torch.from_numpy(gain),
        )

    def goal(self, X: torch.Tensor) -> torch.Tensor:
        """The penalty's minimizer over the continuous columns, per row (``k x n``)."""
        goal = self.mean_c.expand(X.shape[0], -1)
        if self.ints.numel():
            goal = goal - (X[:, self.ints] - self.mean_i) @ self.gain.T
        return goal
