"""``sample`` mode (the default): patterns drawn from the prior restricted to the preimage.

Let ``p`` be the prior, ``T = {x : f(x) ∈ I}`` the preimage of the inner target
intervals ``I``, and ``s`` the per-output spread of ``f`` under ``p``, measured on a
:class:`Pilot` of prior rows drawn from a generator of its own. The pilot depends on the
model, constraints, target and prior only, so a :class:`PilotCache` keeps it (the
server's warm state); the run's own seed alone decides its patterns. Then one of two
samplers runs:

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
probe (its own generator; its patterns are not returned: they are not prior draws)
decides reachability first, and a "reachable" verdict is kept with the pilot.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass, replace

import numpy as np
import torch

from preimage.server.engine.collector import Collector
from preimage.server.engine.context import Candidates, Context, Driver, Outcome
from preimage.server.engine.lines import Calibration, LineSampler, calibrate
from preimage.server.engine.newton import NewtonConfig, NewtonPool
from preimage.server.engine.optimize import optimize
from preimage.server.engine.space import InputSpace

__all__ = [
    "A_FLOOR",
    "A_TARGET",
    "CALIBRATION_SEED",
    "PILOT",
    "PILOT_SEED",
    "PROBE_SEED",
    "W_MAX",
    "Pilot",
    "PilotCache",
    "sample",
]

PILOT = 8192
"""Rows of the pilot."""
PILOT_SEED = 0x9E3779B97F4A7C15
"""Seed of the pilot's own generator."""
PROBE_SEED = 0xD1B54A32D192ED03
"""Seed of the reachability probe's own generator."""
CALIBRATION_SEED = 0x94D049BB133111EB
"""Seed of the line calibration's own generator."""
A_TARGET = 0.01
A_FLOOR = 0.002
W_MAX = 0.02
_SCREEN_MIN = 1024
_SCREEN_MAX = 32768
_PROBE_PASSES = 40
_NEWTON_AGE = 12
_NEAR_ROWS = 64
_FIRST_LINES = 256
_MIN_LINES = 64
# Rows a window row's projection costs on average (a gradient pass and a few forward-only secant steps).
_PROJECTION_ROWS = 6.0
# Lines give way to the windowed sampler when they grow this much dearer than its estimate.
_SWITCH = 2.0

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pilot:
    """What sample mode measures of one (model, constraints, target) before it draws.

    Measured on :data:`PILOT` prior rows drawn from a generator of its own
    (:data:`PILOT_SEED`), so it is the same for every call with that key: a call's
    patterns depend on its seed only, whether the pilot was measured for it or taken
    from a :class:`PilotCache`.

    Attributes:
        spread: Per-output standard deviation of the outputs (``s``).
        window: The widened window ``w`` in units of ``s`` (0: exact hits only).
        rows: Rows of the pilot.
        hits: Pilot rows inside the target (exact draws).
        inside_window: Pilot rows in the widened window but not the target.
        near: The :data:`_NEAR_ROWS` rows nearest the target (where line calibration starts).
        reachable: ``True`` when the target is known to be reachable (a pilot hit, or a
            probe found a pattern), ``None`` while unknown.
        calibration: The line sampler's calibration (one output), measured from a generator of
            its own (:data:`CALIBRATION_SEED`) by the first run that needs it; ``None`` until then.
    """

    spread: np.ndarray
    window: float
    rows: int
    hits: int
    inside_window: int
    near: np.ndarray
    reachable: bool | None
    calibration: Calibration | None = None

    @property
    def window_cost(self) -> float:
        """Rows per pattern the windowed sampler is expected to spend."""
        return _window_cost(self.rows, self.hits, self.inside_window)


class PilotCache:
    """Pilots per input space and target: part of a model version's warm state.

    An :class:`InputSpace` must belong to one model (the server builds one per model
    version and constraint set). Thread-safe; an entry lives as long as its space does
    (at most ``per_space`` targets each, least recently used first out).
    """

    def __init__(self, per_space: int = 64) -> None:
        self.per_space = per_space
        self._lock = threading.Lock()
        self._spaces: weakref.WeakKeyDictionary[InputSpace, OrderedDict[tuple[object, ...], Pilot]] = (
            weakref.WeakKeyDictionary()
        )

    def __len__(self) -> int:
        with self._lock:
            return sum(len(pilots) for pilots in self._spaces.values())

    def get(self, space: InputSpace, key: tuple[object, ...]) -> Pilot | None:
        with self._lock:
            pilots = self._spaces.get(space)
            pilot = pilots.get(key) if pilots is not None else None
            if pilot is not None:
                pilots.move_to_end(key)  # type: ignore[union-attr]
            return pilot

    def put(self, space: InputSpace, key: tuple[object, ...], pilot: Pilot) -> None:
        with self._lock:
            pilots = self._spaces.setdefault(space, OrderedDict())
            pilots[key] = pilot
            while len(pilots) > self.per_space:
                pilots.popitem(last=False)


def sample(ctx: Context) -> Driver:
    """Yield draws from the prior restricted to the preimage until enough or the budget ends."""
    run, targets = ctx.run, ctx.targets
    if not run.check():
        return Outcome.BUDGET
    pilot = _pilot(ctx)
    window_cost = pilot.window_cost
    calibration = None
    if targets.outputs == 1:
        calibrated = _calibrated(ctx, pilot)
        if calibrated is None:
            return Outcome.BUDGET
        pilot, calibration = calibrated, calibrated.calibration
    if not (calibration is not None and calibration.reached):
        outcome = _reachable(ctx, pilot)
        if outcome is not None:
            return outcome

    plan = calibration.plan if calibration is not None else None
    if plan is not None and plan.cost < window_cost:
        _log.debug("sample: line sampler (%s; windowed sampler ~%.3g rows per pattern)", plan, window_cost)
        outcome = yield from _lines(ctx, LineSampler(ctx, plan), window_cost)
        if outcome is not None:
            return outcome
    else:
        _log.debug(
            "sample: windowed sampler, w = %.3g (~%.3g rows per pattern; lines: %s)", pilot.window, window_cost, plan
        )
    # The pilot's rates size the first screening pass: its exact hits and window rows, nearly all of
    # which the projection moves onto the target.
    return (
        yield from _windowed(
            ctx, pilot.spread, pilot.window, screened=pilot.rows, found=pilot.hits + pilot.inside_window
        )
    )


def _pilot(ctx: Context) -> Pilot:
    """The pilot of this run's model, constraints and target: from the cache, else measured (and cached)."""
    cache, key = ctx.pilots, _pilot_key(ctx)
    if cache is not None and (pilot := cache.get(ctx.space, key)) is not None:
        return pilot
    run, targets = ctx.run, ctx.targets
    X0 = ctx.prior.sample(np.random.default_rng(PILOT_SEED), PILOT)
    F0 = run.forward(torch.from_numpy(X0)).numpy()
    spread = _spread(F0, targets.scale)
    D0 = (targets.inner_distance(F0) / spread).max(axis=1)
    hit0 = D0 == 0.0
    w = 0.0
    if ctx.space.free_continuous.any() and hit0.mean() < A_TARGET:
        w = _window(D0)
    pilot = Pilot(
        spread=spread,
        window=w,
        rows=PILOT,
        hits=int(hit0.sum()),
        inside_window=int((~hit0 & (D0 <= w)).sum()),
        near=X0[np.argsort(D0, kind="stable")[:_NEAR_ROWS]],
        reachable=True if hit0.any() else None,
    )
    if cache is not None:
        cache.put(ctx.space, key, pilot)
    return pilot


def _calibrated(ctx: Context, pilot: Pilot) -> Pilot | None:
    """The pilot with its line calibration: cached, else measured from its own generator (and cached).

    Like the pilot, the calibration depends on the model, constraints, target and prior only, so a
    run's patterns depend on its seed alone, and a warm server runs even a 20-pattern request on the
    line sampler without paying the calibration's 17,000 rows again. ``None`` when the budget ran out.
    """
    if pilot.calibration is not None:
        return pilot
    calibration = calibrate(replace(ctx, rng=np.random.default_rng(CALIBRATION_SEED)), pilot.near)
    if calibration is None:
        return None
    pilot = replace(pilot, calibration=calibration)
    if ctx.pilots is not None:
        ctx.pilots.put(ctx.space, _pilot_key(ctx), pilot)
    return pilot


def _pilot_key(ctx: Context) -> tuple[object, ...]:
    return (ctx.targets.lower.tobytes(), ctx.targets.upper.tobytes(), ctx.prior.kind, ctx.weight)


def _reachable(ctx: Context, pilot: Pilot) -> Outcome | None:
    """Whether the target can be reached: ``None`` when it can, else the outcome to end with.

    Known from the pilot or an earlier probe, else a short :func:`optimize` probe decides; its
    patterns are not returned (they are not prior draws), it draws from a generator of its own
    (:data:`PROBE_SEED`), and a verdict of "reachable" is kept with the pilot.
    """
    if pilot.reachable:
        return None
    probe_ctx = replace(
        ctx,
        rng=np.random.default_rng(PROBE_SEED),
        collector=Collector(ctx.space, ctx.targets, 1, 0.0, 1),
        pilots=None,
    )
    probe = optimize(probe_ctx, probe_passes=_PROBE_PASSES)
    try:
        next(probe)
    except StopIteration as end:
        if end.value in (Outcome.UNREACHABLE, Outcome.BUDGET):
            return Outcome(end.value)
        return None  # inconclusive within the probe's passes: sample and see
    finally:
        probe.close()
    if ctx.pilots is not None:
        ctx.pilots.put(ctx.space, _pilot_key(ctx), replace(pilot, reachable=True))
    return None


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


def _windowed(ctx: Context, spread: np.ndarray, w: float, *, screened: int, found: int) -> Driver:
    """Screening passes of prior rows: exact hits as they are, rows inside the window ``w`` projected onto ``T``.

    ``found / screened`` (the pilot's, at first) sizes each screening pass.
    """
    run, targets = ctx.run, ctx.targets
    pool = NewtonPool(ctx.space, targets, run, NewtonConfig(center=False, max_age=_NEWTON_AGE))
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
