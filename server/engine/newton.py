"""A pool of starts moved onto the target set by batched projected Gauss–Newton steps.

Each :meth:`NewtonPool.step` is one forward pass and one backward pass per output
over the rows that need a gradient, and one forward pass over the rows on a
secant line. Per row it then does one of:

* **accept** — the output is inside the inner target interval (the forward pass
  was on exactly this float32 row, so acceptance is already verified);
* **secant** — for one output, a row that has just taken a Newton step stays on the
  line of that step and moves along it by secant steps, each needing only a
  forward pass (a third of a gradient pass), until it hits, stops progressing or
  has taken :data:`_LINE_STEPS` of them; then it takes a gradient pass again
  (the first step on a line is the root of the quadratic through ``r(0)``,
  ``r'(0)`` and ``r(1)``). With ``fan_out > 1`` a fresh start's first gradient
  also seeds lines at random angles from the Newton direction (new pool rows);
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
# Secant steps along one Newton line before the gradient is taken again.
_LINE_STEPS = 6


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
        fan_out: Lines a fresh start's first gradient serves (one output; optimize mode): the
            Newton line and ``fan_out − 1`` lines at random angles of up to 60° from it, each
            with its own Newton step length, so one backward pass yields several patterns.
    """

    center: bool
    max_age: int
    max_halvings: int = 3
    discrete_moves: int = 0
    penalty_steps: int = 0
    penalty_rate: float = 0.0
    fan_out: int = 1


class NewtonPool:
    """Rows being moved onto the target set, with their per-row search state.

    Args:
        space: The input space (bounds, kinds, fixed columns).
        targets: The target set.
        run: Counts passes and tracks the closest output.
        config: Step policy.
        penalty: In-distribution penalty, used when ``config.penalty_steps > 0``.
        rng: Source of the fan-out directions (needed when ``config.fan_out > 1``).
    """

    def __init__(
        self,
        space: InputSpace,
        targets: TargetSet,
        run: Run,
        config: NewtonConfig,
        penalty: InDistributionPenalty | None = None,
        rng: np.random.Generator | None = None,
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
        self._aim_lo = torch.from_numpy(targets.aim_lower)
        self._aim_hi = torch.from_numpy(targets.aim_upper)
        self._value = torch.from_numpy(targets.value)
        self._inner_lo = torch.from_numpy(targets.inner_lower)
        self._inner_hi = torch.from_numpy(targets.inner_upper)
        self._is_range = torch.isnan(self._value)
        k = self.cols.numel()
        self._m, self._k = m, k
        # Per-row state, packed by dtype so that dropping rows costs a handful of indexing calls:
        # float32 rows (current point, last gradient point, line base), float64 numbers (aims,
        # residual at the gradient point, line direction, its norm, secant parameters), counters,
        # flags, and the Jacobian at the gradient point (kept only for discrete moves).
        self._rows = torch.empty(0, 3, d)
        self._f64 = torch.empty(0, 2 * m + k + 5, dtype=torch.float64)
        self._int = torch.empty(0, 5, dtype=torch.long)
        self._flags = torch.empty(0, 3, dtype=torch.bool)
        self._jac: torch.Tensor | None = torch.empty(0, m, d) if space.factors else None
        self._secant = m == 1 and config.penalty_steps == 0
        self._fan_out = config.fan_out if self._secant and k > 1 else 1
        self._rng = rng
        self._penalty_target = _PenaltyTarget.build(space, penalty) if config.penalty_steps > 0 else None

    # Views into the packed state (valid until the next add or drop).
    X = property(lambda self: self._rows[:, 0], doc="Current points.")
    X_prev = property(lambda self: self._rows[:, 1], doc="Points of the last gradient pass that made progress.")
    base = property(lambda self: self._rows[:, 2], doc="Base points of the secant lines.")
    aims = property(lambda self: self._f64[:, : self._m], doc="Per-row output aims (NaN: the config's).")
    r_prev = property(lambda self: self._f64[:, self._m : 2 * self._m], doc="Residuals at ``X_prev``.")
    dir = property(
        lambda self: self._f64[:, 2 * self._m : 2 * self._m + self._k], doc="Line directions (free columns)."
    )
    slope = property(lambda self: self._f64[:, -5], doc="Weighted residual's derivative along the line at 0.")
    rn_prev = property(lambda self: self._f64[:, -4], doc="Weighted residual norms at ``X_prev``.")
    t_a = property(lambda self: self._f64[:, -3], doc="Previous line parameter.")
    r_a = property(lambda self: self._f64[:, -2], doc="Weighted residual at ``t_a``.")
    t_b = property(lambda self: self._f64[:, -1], doc="Line parameter of the current point.")
    age = property(lambda self: self._int[:, 0], doc="Passes since the start or the last discrete move.")
    halvings = property(lambda self: self._int[:, 1], doc="Step halvings since the last progress.")
    moves = property(lambda self: self._int[:, 2], doc="Discrete moves made.")
    pen = property(lambda self: self._int[:, 3], doc="Penalty steps taken.")
    line_steps = property(lambda self: self._int[:, 4], doc="Secant steps on the current line.")
    last_discrete = property(lambda self: self._flags[:, 0], doc="The last move was a discrete one.")
    line = property(lambda self: self._flags[:, 1], doc="On a secant line (the next pass is forward-only).")
    no_line = property(lambda self: self._flags[:, 2], doc="The next Newton step is a plain one.")

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    def add(self, X: torch.Tensor, aims: torch.Tensor | None = None) -> None:
        """Append fresh starts.

        Args:
            X: ``k x d`` float32 rows satisfying the space's constraints.
            aims: ``k x m`` output levels each row should be moved to; ``None`` lets the
                config decide (the value, or the nearest point of the aim interval).
        """
        k, m = X.shape[0], self._m
        f64 = torch.zeros(k, self._f64.shape[1], dtype=torch.float64)
        f64[:, :m] = float("nan") if aims is None else aims
        f64[:, -4] = float("inf")
        self._rows = torch.cat([self._rows, X.unsqueeze(1).expand(k, 3, X.shape[1])])
        self._f64 = torch.cat([self._f64, f64])
        self._int = torch.cat([self._int, torch.zeros(k, 5, dtype=torch.long)])
        self._flags = torch.cat([self._flags, torch.zeros(k, 3, dtype=torch.bool)])
        if self._jac is not None:
            self._jac = torch.cat([self._jac, torch.zeros(k, m, X.shape[1])])

    def step(self) -> tuple[np.ndarray, np.ndarray, int]:
        """One pass over the pool (call :meth:`Run.check` first).

        Rows on a secant line get a forward pass, the others a forward and a backward pass;
        each block is handled with its state gathered once and scattered back once.

        Returns:
            Accepted rows (``a x d`` float32), their outputs (``a x m`` float32), and how many
            rows failed and left the pool.
        """
        line = self.line
        li = line.nonzero().squeeze(1)
        gi = (~line).nonzero().squeeze(1)
        self._int[:, 0] += 1  # age
        accepted: list[tuple[torch.Tensor, torch.Tensor]] = []
        failed: list[torch.Tensor] = []
        stuck = torch.empty(0, dtype=torch.long)
        if gi.numel():
            F, J = self.run.forward_jacobian(self.X.index_select(0, gi))
            stuck = self._gradient_block(gi, F, J, accepted, failed)
        if li.numel():
            if gi.numel():
                self.run.raise_if_cancelled()
            F = self.run.forward(self.X.index_select(0, li))
            self._line_block(li, F, accepted, failed)
        fail = torch.zeros(len(self), dtype=torch.bool)
        for idx in failed:
            fail[idx] = True
        self._discrete_moves(fail, stuck)
        keep = ~fail
        index = torch.cat([a[0] for a in accepted]) if accepted else torch.empty(0, dtype=torch.long)
        outputs = torch.cat([a[1] for a in accepted]) if accepted else torch.empty(0, self._m)
        order = torch.argsort(index)  # pool order, whichever block a row came from
        index, outputs = index[order], outputs[order]
        keep[index] = False
        accepted_X = self.X.index_select(0, index).numpy().copy()
        n_failed = int(fail.sum())
        self.line[fail] = False
        self._keep(keep)
        return accepted_X, outputs.numpy().copy(), n_failed

    def _residual(self, idx: torch.Tensor, F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residuals to the aims, their weighted norms, and which rows hit (rows ``idx``, outputs ``F``)."""
        Fd = F.double()
        aim = torch.minimum(torch.maximum(Fd, self._aim_lo), self._aim_hi)
        if self.config.center:
            aim = torch.where(self._is_range, aim, self._value)
        own = self.aims.index_select(0, idx)
        aim = torch.where(torch.isnan(own), aim, own)
        r = Fd - aim
        rn = (r / self.scale).norm(dim=1)
        rn = torch.where(torch.isfinite(rn), rn, torch.full_like(rn, float("inf")))
        hit = ((Fd >= self._inner_lo) & (Fd <= self._inner_hi)).all(dim=1)  # NaN compares False
        return r, rn, hit

    def _line_block(
        self,
        li: torch.Tensor,
        F: torch.Tensor,
        accepted: list[tuple[torch.Tensor, torch.Tensor]],
        failed: list[torch.Tensor],
    ) -> None:
        """Rows on a secant line: accept, take the next secant step, or fail with age."""
        r, _, hit = self._residual(li, F)
        old = self.age.index_select(0, li) > self.config.max_age
        accepted.append((li[hit], F[hit]))
        failed.append(li[~hit & old])
        go = ~hit & ~old
        if bool(go.any()):
            self._secant_step(li[go], r[go, 0] / self.scale[0])

    def _gradient_block(
        self,
        gi: torch.Tensor,
        F: torch.Tensor,
        J: torch.Tensor,
        accepted: list[tuple[torch.Tensor, torch.Tensor]],
        failed: list[torch.Tensor],
    ) -> torch.Tensor:
        """Rows with a fresh gradient: accept, Newton step, backtrack or fail.

        Returns:
            Rows (pool indices) whose last discrete move did not help (all-discrete spaces).
        """
        cfg = self.config
        r, rn, hit = self._residual(gi, F)
        f64, ints, flags = self._f64.index_select(0, gi), self._int.index_select(0, gi), self._flags.index_select(0, gi)
        rn_prev, age, halvings, pen = f64[:, -4], ints[:, 0], ints[:, 1], ints[:, 3]
        last_discrete, no_line = flags[:, 0], flags[:, 2]
        accept = hit & (pen >= cfg.penalty_steps)
        improved = torch.isfinite(rn) & (rn < rn_prev * (1.0 - _PROGRESS))
        settling = hit & ~accept
        # A row the penalty step moved off the target is corrected by Newton, whatever its residual did.
        correcting = ~hit & (pen > 0)
        take = (improved | settling | correcting) & ~accept
        backtrack = ~take & ~accept & ~last_discrete & torch.isfinite(rn_prev) & (halvings < cfg.max_halvings)
        fail = ~accept & ~take & ~backtrack
        fail |= ~accept & ~settling & (age > cfg.max_age)
        take &= ~fail
        backtrack &= ~fail
        accepted.append((gi[accept], F[accept]))

        if bool(take.any()):
            t = gi[take]
            self.X_prev[t] = self.X.index_select(0, t)
            self.r_prev[t] = r[take]
            self.rn_prev[t] = rn[take]
            if self._jac is not None:
                self._jac[t] = J[take]
            self.halvings[t] = 0
            self.last_discrete[t] = False
            stalled, slope, grad_u = self._newton(t, r[take], J[take], settling[take])
            self.pen[t[settling[take]]] += 1
            fail[take.nonzero().squeeze(1)[stalled]] = True
            if self._secant:
                enter = ~stalled & ~settling[take] & ~no_line[take]
                self.no_line[t] = False
                line = t[enter]
                self.line[line] = True
                self.t_a[line] = 0.0
                self.r_a[line] = r[take][enter, 0] / self.scale[0]
                self.t_b[line] = 1.0
                self.slope[line] = slope[enter]
                self.line_steps[line] = 0
                fresh = enter & (age[take] == 1)
                if self._fan_out > 1 and bool(fresh.any()):
                    self._fan(t[fresh], r[take][fresh, 0] / self.scale[0], grad_u[fresh])
        if bool(backtrack.any()):
            b = gi[backtrack]
            self.X[b] = self.X_prev[b] + 0.5 * (self.X[b] - self.X_prev[b])
            self._clamp(b)
            self.halvings[b] += 1
        failed.append(gi[fail])
        if self.cols.numel() == 0:
            # All-discrete rows: a move that did not lower the residual ends the start.
            return gi[fail & last_discrete & ~improved]
        return torch.empty(0, dtype=torch.long)

    def _discrete_moves(self, fail: torch.Tensor, stuck: torch.Tensor) -> None:
        """Give failed rows with moves left a discrete move instead (clearing their ``fail``)."""
        if not self.space.factors or self.config.discrete_moves == 0 or not bool(fail.any()):
            return
        move = fail & (self.moves < self.config.discrete_moves) & torch.isfinite(self.rn_prev)
        move[stuck] = False
        if not bool(move.any()):
            return
        idx = move.nonzero().squeeze(1)
        assert self._jac is not None
        self.X[idx] = self._discrete_move(self.X_prev[idx], self._jac[idx], self.r_prev[idx])
        self.moves[idx] += 1
        self.age[idx] = 0
        self.halvings[idx] = 0
        self.last_discrete[idx] = True
        self.line[idx] = False
        if self.cols.numel():
            self.rn_prev[idx] = float("inf")
        fail[idx] = False

    # -- moves ---------------------------------------------------------------------------------

    def _secant_step(self, idx: torch.Tensor, rb: torch.Tensor) -> None:
        """Move line rows ``idx`` (weighted residual ``rb`` at ``t_b``) by a secant step, or off the line."""
        # Gather each packed block once, update it, scatter it back once: this runs every pass.
        f64, ints, flags = self._f64[idx], self._int[idx], self._flags[idx]
        k = self._k
        slope, _, ta, ra, tb = f64[:, -5], f64[:, -4], f64[:, -3], f64[:, -2], f64[:, -1]
        steps = ints[:, 4]
        denom = rb - ra
        tn = tb - rb * (tb - ta) / denom
        # First step on a line: r(0), r'(0) and r(1) are known, so the quadratic through them
        # (Hermite) bends with the model where the secant would not.
        first = steps == 0
        if bool(first.any()):
            tn = torch.where(first, _quadratic_root(ra, slope, rb, tn), tn)
        bracket = (rb * ra) < 0
        progress = rb.abs() < 0.9 * ra.abs()
        go = torch.isfinite(tn) & (denom != 0) & (bracket | progress) & (steps < _LINE_STEPS)
        # Without a sign change the secant extrapolates: keep it within a few step lengths.
        tn = torch.where(bracket, tn, tn.clamp(-1.0, 4.0))
        tn = torch.where(go, tn, torch.where(rb.abs() < ra.abs(), tb, ta))
        stop = ~go
        f64[:, -3] = torch.where(go, tb, ta)
        f64[:, -2] = torch.where(go, rb, ra)
        f64[:, -1] = tn
        # Leaving the line: the next pass takes a gradient, counting as progress; leaving at the
        # base point means the line failed there, so the next step there is a plain one.
        f64[:, -4] = torch.where(stop, torch.full_like(tn, float("inf")), f64[:, -4])
        ints[:, 4] += 1
        ints[:, 1] = torch.where(stop, torch.zeros_like(ints[:, 1]), ints[:, 1])
        flags[:, 1] = go
        flags[:, 2] = stop & (tn == 0.0)
        self._f64[idx], self._int[idx], self._flags[idx] = f64, ints, flags
        X = self.base.index_select(0, idx)
        direction = f64[:, 2 * self._m : 2 * self._m + k]
        x = torch.minimum(torch.maximum(X[:, self.cols].double() + tn[:, None] * direction, self._lo), self._hi)
        X[:, self.cols] = x.float()
        self.X[idx] = X

    def _newton(
        self, idx: torch.Tensor, r: torch.Tensor, J: torch.Tensor, settling: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Take a projected Gauss–Newton step for rows ``idx``.

        Returns:
            True where the step is zero; the first output's weighted residual derivative along
            the step (``r̃'(0)``, −r̃ for an unconstrained full step); and that output's weighted
            gradient in scaled coordinates, zero on columns held at a bound.
        """
        if self.cols.numel() == 0:
            none = torch.zeros(idx.shape[0], dtype=torch.float64)
            return torch.ones(idx.shape[0], dtype=torch.bool), none, none[:, None]
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
        self.base[idx] = X
        self.dir[idx] = du * self.width
        slope = (Ju[:, 0, :] * du).sum(dim=1)
        x = torch.minimum(torch.maximum(x + du * self.width, self._lo), self._hi)
        X[:, self.cols] = x.float()  # float32 bounds are exact, so rounding stays inside them
        self.X[idx] = X
        return stalled, slope, Ju[:, 0, :]

    def _fan(self, idx: torch.Tensor, rt: torch.Tensor, g: torch.Tensor) -> None:
        """Append ``fan_out − 1`` line rows per row ``idx``, sharing its base point and gradient.

        Each new line leaves the base at a random angle θ ~ U(0°, 60°) from the gradient
        (a random direction orthogonal to it, on the columns not held at a bound) and takes
        the Newton step length along that direction, ``−r̃ / (∇r̃ · v)``.
        """
        assert self._rng is not None, "fan-out needs a random generator"
        copies = self._fan_out - 1
        k, n = idx.shape[0], g.shape[1]
        parent = idx.repeat_interleave(copies)
        g = g.repeat_interleave(copies, dim=0)
        rt = rt.repeat_interleave(copies)
        unit = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
        e = torch.from_numpy(self._rng.standard_normal((k * copies, n))) * (g != 0)
        e = e - (e * unit).sum(dim=1, keepdim=True) * unit
        e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-300)
        theta = torch.from_numpy(self._rng.random(k * copies)) * (torch.pi / 3)
        v = torch.cos(theta)[:, None] * unit + torch.sin(theta)[:, None] * e
        du = -(rt / (g * v).sum(dim=1).clamp_min(1e-300))[:, None] * v
        big = du.abs().amax(dim=1, keepdim=True)
        du = du * torch.clamp(_STEP_CAP / big.clamp_min(1e-300), max=1.0)
        ok = torch.isfinite(du).all(dim=1) & (big.squeeze(1) > 1e-9)
        parent, du, g = parent[ok], du[ok], g[ok]
        if parent.numel() == 0:
            return
        rows, f64 = self._rows[parent], self._f64[parent]
        ints, flags = self._int[parent], self._flags[parent]
        base = rows[:, 2]
        x = torch.minimum(torch.maximum(base[:, self.cols].double() + du * self.width, self._lo), self._hi)
        rows[:, 0, self.cols] = x.float()
        f64[:, 2 * self._m : 2 * self._m + self._k] = du * self.width
        f64[:, -5] = (g * du).sum(dim=1)
        self._rows = torch.cat([self._rows, rows])
        self._f64 = torch.cat([self._f64, f64])
        self._int = torch.cat([self._int, ints])
        self._flags = torch.cat([self._flags, flags])
        if self._jac is not None:
            self._jac = torch.cat([self._jac, self._jac[parent]])

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
        self._rows, self._f64, self._int, self._flags = (
            self._rows[keep],
            self._f64[keep],
            self._int[keep],
            self._flags[keep],
        )
        if self._jac is not None:
            self._jac = self._jac[keep]


def _quadratic_root(r0: torch.Tensor, s0: torch.Tensor, r1: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Root of the quadratic with value ``r0`` and slope ``s0`` at 0 and value ``r1`` at 1, nearest the linear one.

    Where the quadratic has no real root (or is degenerate), ``fallback``.
    """
    c = r1 - r0 - s0
    disc = s0 * s0 - 4.0 * c * r0
    sq = torch.sqrt(disc.clamp_min(0.0))
    # The root continuing the linear model's one (-r0 / s0): the numerically stable form.
    q = -0.5 * (s0 + torch.sign(s0) * sq)
    root = torch.where(q != 0, r0 / q, fallback)
    ok = (disc >= 0) & torch.isfinite(root) & (s0 != 0)
    return torch.where(ok, root, fallback)


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
