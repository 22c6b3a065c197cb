"""Invert: stream input patterns whose model outputs hit a target, then a summary.

``invert`` validates everything eagerly (so a bad request fails before any work),
then returns a generator that picks a driver — enumeration for small all-discrete
spaces, else :mod:`optimize` or :mod:`sample` by mode — feeds what it finds through
the :class:`Collector`, yields :class:`PatternBatch` events as they come, and ends
with exactly one :class:`InvertSummary`. docs/inversion.md describes the algorithms
and the distributions.
"""

from __future__ import annotations

import math
import secrets
import threading
import weakref
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from preimage.errors import InvalidArgumentError
from preimage.registry.schema import DataStatistics
from preimage.server.engine.collector import Collector
from preimage.server.engine.context import Context, Driver, Outcome
from preimage.server.engine.enumeration import enumerate_space
from preimage.server.engine.optimize import optimize
from preimage.server.engine.prior import InDistributionPenalty, Prior, make_prior
from preimage.server.engine.run import OutputColumns, Run, model_device, model_outputs
from preimage.server.engine.sample import PilotCache, sample
from preimage.server.engine.space import InputSpace
from preimage.server.engine.targets import TargetSet
from preimage.server.engine.types import (
    InvertMode,
    InvertSpec,
    InvertStatus,
    InvertSummary,
    PatternBatch,
    PriorKind,
    TargetSpec,
)

__all__ = ["DEFAULT_MAX_PASSES", "DEFAULT_MAX_SECONDS", "invert"]

DEFAULT_MAX_SECONDS = 60.0
"""Wall-clock budget when the spec sets none."""
DEFAULT_MAX_PASSES = 100_000
"""Pass budget when the spec sets none."""

_SEED_LIMIT = 2**64


def invert(
    module: torch.nn.Module,
    space: InputSpace,
    spec: InvertSpec,
    *,
    statistics: DataStatistics | None = None,
    stop: threading.Event | None = None,
    pilots: PilotCache | None = None,
    spreads: Sequence[int] = (),
) -> Iterator[PatternBatch | InvertSummary]:
    """Find input patterns whose outputs hit the targets.

    Args:
        module: The frozen model (eval mode, no parameter gradients); rows must not interact.
        space: Bounds, kinds and fixed features (:meth:`InputSpace.from_schema`).
        spec: Targets, count, mode, prior, budget and the other options.
        statistics: The model's training statistics (data prior, in-distribution penalty).
        stop: Set it (from any thread) to cancel; the run raises
            :class:`~preimage.errors.CancelledError` at its next step.
        pilots: The model's warm state for sample mode: a pilot measured once per input
            space and target is reused by later runs (their patterns are the same either way).
        spreads: Indices of the model's spread outputs (a deep ensemble's, schema
            ``spread_of``). ``spec.targets`` then covers the other outputs only; the spreads
            are searched only with ``spec.max_uncertainty``, as range targets
            ``[-U, U]`` (a spread is never negative, so that is ``spread <= U``).

    Returns:
        An iterator of :class:`PatternBatch` events (``k x d`` inputs, ``k x m`` outputs and
        errors, ``k <= spec.batch_size``), then exactly one :class:`InvertSummary`. Every
        pattern satisfies every constraint of ``space`` exactly and puts every output inside
        its target interval with a float32 safety margin; none repeats. With ``spreads``
        the ``m`` outputs are the targeted ones (the model's columns without the spreads),
        or every column when ``spec.max_uncertainty`` is set.

    Raises:
        InvalidArgumentError: A spec field is invalid (the error names it: ``count``,
            ``targets``, ``tolerance``, ``seed``, ``min_distance``, ``in_distribution_weight``,
            ``budget.max_seconds``, ``budget.max_passes``, ``batch_size``, ``prior``,
            ``statistics``, ``max_uncertainty``), or the model does not take ``space.width`` columns.
        CancelledError: From the iterator, once ``stop`` is set.

    Example:
        >>> import torch
        >>> from preimage.registry.schema import FeatureSchema
        >>> from preimage.server.engine.types import BoundSpec, TargetSpec
        >>> net = torch.nn.Linear(2, 1).eval().requires_grad_(False)
        >>> space = InputSpace.from_schema(FeatureSchema.default(2, 1), bounds=(BoundSpec(None, -1, 1),))
        >>> spec = InvertSpec(targets=(TargetSpec(value=0.1),), n=5, seed=0)
        >>> events = list(invert(net, space, spec))
        >>> events[-1].status.value, events[-1].returned
        ('complete', 5)
    """
    _validate(spec)
    if statistics is not None:
        statistics.validated(space.width)
    module, wanted, width = _searched_outputs(module, _output_width(module, space), spec, spreads)
    targets = TargetSet.from_spec(wanted, spec.tolerance, width)
    prior = make_prior(space, spec.prior, statistics)
    penalty = InDistributionPenalty.build(space, statistics) if spec.in_distribution_weight > 0 else None
    return _stream(module, space, spec, targets, prior, penalty, stop, pilots)


def _stream(
    module: torch.nn.Module,
    space: InputSpace,
    spec: InvertSpec,
    targets: TargetSet,
    prior: Prior,
    penalty: InDistributionPenalty | None,
    stop: threading.Event | None,
    pilots: PilotCache | None,
) -> Iterator[PatternBatch | InvertSummary]:
    seed = spec.seed if spec.seed is not None else secrets.randbits(63)
    run = Run(
        module,
        targets,
        stop,
        max_seconds=spec.max_seconds if spec.max_seconds is not None else DEFAULT_MAX_SECONDS,
        max_passes=spec.max_passes if spec.max_passes is not None else DEFAULT_MAX_PASSES,
    )
    collector = Collector(space, targets, spec.n, spec.min_distance, spec.batch_size)
    ctx = Context(
        space=space,
        targets=targets,
        prior=prior,
        rng=np.random.default_rng(seed),
        run=run,
        collector=collector,
        weight=spec.in_distribution_weight,
        penalty=penalty,
        pilots=pilots,
    )
    run.check(cost=0)  # a stop set before the first step cancels at once
    if space.infeasible is not None:
        yield _summary(ctx, spec, seed, InvertStatus.INFEASIBLE, f"The constraints admit no input: {space.infeasible}.")
        return
    driver: Driver
    if space.enumerable:
        driver = enumerate_space(ctx, spec.mode)
    elif spec.mode is InvertMode.OPTIMIZE:
        driver = optimize(ctx)
    else:
        driver = sample(ctx)
    while True:
        try:
            X, F = next(driver)
        except StopIteration as end:
            outcome = Outcome(end.value)
            break
        yield from collector.add(X, F)
    status, message = _status(ctx, spec, outcome)
    if spec.max_uncertainty is not None and status in (InvertStatus.UNREACHABLE, InvertStatus.BUDGET_SPENT):
        message += (
            f" Every spread output was held to at most max_uncertainty = {spec.max_uncertainty:g} (the closest "
            "output lists the means, then the spreads); a larger max_uncertainty may reach the target."
        )
    yield _summary(ctx, spec, seed, status, message)


def _status(ctx: Context, spec: InvertSpec, outcome: Outcome) -> tuple[InvertStatus, str]:
    """The summary status and its sentence."""
    run, returned, n = ctx.run, ctx.collector.returned, spec.n
    closest = _closest_text(ctx)
    if returned >= n:
        return InvertStatus.COMPLETE, f"Returned all {n} requested pattern{'s' if n != 1 else ''}."
    if outcome is Outcome.EXHAUSTED:
        size = ctx.preimage_size
        spread = (
            f"; the minimum distance {spec.min_distance} let {returned} of them through"
            if spec.min_distance > 0 and returned < (size or 0)
            else ""
        )
        return (
            InvertStatus.EXHAUSTED,
            f"The exact preimage holds {size} pattern{'s' if size != 1 else ''}, fewer than the {n} "
            f"requested, and all were searched{spread}; returned {returned}.",
        )
    if outcome is Outcome.UNREACHABLE:
        how = (
            f"all {ctx.space.discrete_size} points of the space were evaluated"
            if ctx.preimage_size is not None
            else f"the search converged after {run.passes} passes over {run.rows_evaluated} rows"
        )
        return (
            InvertStatus.UNREACHABLE,
            f"No input within the constraints reaches the target ({how}); {closest}.",
        )
    assert outcome is Outcome.BUDGET
    what = f"time budget of {run.max_seconds:g} s" if run.spent == "time" else f"pass budget of {run.max_passes} passes"
    found = f"{returned} of {n} patterns were found" if returned else f"no pattern was found; {closest}"
    return InvertStatus.BUDGET_SPENT, f"The {what} ran out before {n} patterns were found: {found}."


def _closest_text(ctx: Context) -> str:
    out = ctx.run.closest_output
    if out is None:
        return "no output was evaluated"
    values = ", ".join(f"{v:.6g}" for v in out)
    return f"the closest output found is [{values}], {ctx.run.closest_error:.6g} from the target"


def _summary(ctx: Context, spec: InvertSpec, seed: int, status: InvertStatus, message: str) -> InvertSummary:
    run = ctx.run
    closest = run.closest_output
    return InvertSummary(
        status=status,
        message=message,
        requested=spec.n,
        returned=ctx.collector.returned,
        elapsed_seconds=run.elapsed,
        forward_passes=run.forward_passes,
        backward_passes=run.backward_passes,
        rows_evaluated=run.rows_evaluated,
        closest_output=tuple(float(v) for v in closest) if closest is not None else (),
        closest_error=run.closest_error,
        mode=spec.mode,
        prior=ctx.prior.kind,
        seed=seed,
        preimage_size=ctx.preimage_size,
    )


def _validate(spec: InvertSpec) -> None:
    """Check the model-independent fields of the spec."""
    if isinstance(spec.n, bool) or not isinstance(spec.n, int) or spec.n <= 0:
        raise InvalidArgumentError(f"count must be a positive integer, got {spec.n}", field="count")
    if spec.seed is not None and (
        isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or not 0 <= spec.seed < _SEED_LIMIT
    ):
        raise InvalidArgumentError(f"seed must be an integer in [0, 2^64), got {spec.seed}", field="seed")
    if not isinstance(spec.mode, InvertMode):
        raise InvalidArgumentError(
            f"mode must be one of {[m.value for m in InvertMode]}, got {spec.mode}", field="mode"
        )
    if spec.prior is not None and not isinstance(spec.prior, PriorKind):
        raise InvalidArgumentError(
            f"prior must be one of {[p.value for p in PriorKind]}, got {spec.prior}", field="prior"
        )
    for name in ("min_distance", "in_distribution_weight"):
        value = getattr(spec, name)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {value}", field=name)
    if spec.max_seconds is not None and not (math.isfinite(spec.max_seconds) and spec.max_seconds > 0):
        raise InvalidArgumentError(
            f"budget.max_seconds must be a positive finite number, got {spec.max_seconds}", field="budget.max_seconds"
        )
    if spec.max_passes is not None and (not isinstance(spec.max_passes, int) or spec.max_passes <= 0):
        raise InvalidArgumentError(
            f"budget.max_passes must be a positive integer, got {spec.max_passes}", field="budget.max_passes"
        )
    if not isinstance(spec.batch_size, int) or spec.batch_size <= 0:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {spec.batch_size}", field="batch_size")
    if not spec.targets:
        raise InvalidArgumentError("give one target per model output", field="targets")
    limit = spec.max_uncertainty
    # Below this the interval [-U, U] is narrower than float32 resolves (subnormal numbers).
    if limit is not None and not (math.isfinite(limit) and limit >= 1e-30):
        raise InvalidArgumentError(
            f"max_uncertainty must be a positive finite number (at least 1e-30), got {limit}",
            field="max_uncertainty",
        )


def _searched_outputs(
    module: torch.nn.Module, width: int, spec: InvertSpec, spreads: Sequence[int]
) -> tuple[torch.nn.Module, tuple[TargetSpec, ...], int]:
    """The model as the drivers see it, the targets, and the number of columns it gives.

    Without spread outputs that is the model and ``spec.targets``. With them, the
    targets name the other outputs; the spreads join (target ``[-U, U]``) only with
    ``max_uncertainty = U``, else the model is seen through its other columns only.
    """
    spread_set = set(spreads)
    limit = spec.max_uncertainty
    if limit is not None and not spread_set:
        raise InvalidArgumentError(
            "max_uncertainty needs a model with spread outputs (a deep ensemble: Train with ensemble >= 2); "
            "this model has none",
            field="max_uncertainty",
        )
    if not spread_set:
        return module, spec.targets, width  # TargetSet.from_spec checks one target per column
    means = [j for j in range(width) if j not in spread_set]
    if len(spec.targets) != len(means):
        raise InvalidArgumentError(
            f"the model has {len(means)} output{'s' if len(means) != 1 else ''} to target and {len(spread_set)} "
            f"spread output{'s' if len(spread_set) != 1 else ''} (bounded by max_uncertainty, not targeted), but "
            f"{len(spec.targets)} target{'s were' if len(spec.targets) != 1 else ' was'} given: give one per output "
            "that is not a spread",
            field="targets",
        )
    if limit is None:
        return OutputColumns(module, means), spec.targets, len(means)
    given = iter(spec.targets)
    wanted = tuple(TargetSpec(lower=-limit, upper=limit) if j in spread_set else next(given) for j in range(width))
    return module, wanted, width


_OUTPUT_WIDTHS: weakref.WeakKeyDictionary[torch.nn.Module, dict[int, int]] = weakref.WeakKeyDictionary()
"""Output width per module and input width, learned once: a warm call skips the probe pass."""


def _output_width(module: torch.nn.Module, space: InputSpace) -> int:
    """Run one row through the model to learn its output width ``m`` (and that it takes ``d`` columns).

    Remembered per module and ``d`` (a frozen module's widths do not change); failures are not.
    """
    known = _OUTPUT_WIDTHS.get(module)
    if known is not None and space.width in known:
        return known[space.width]
    X = torch.from_numpy(space.lower.copy()).reshape(1, -1).to(model_device(module))
    try:
        with torch.no_grad():
            F = model_outputs(module(X), 1)
    except RuntimeError as exc:
        raise InvalidArgumentError(
            f"the model does not take the {space.width} input columns the schema describes: {str(exc).splitlines()[0]}",
            field="bounds",
        ) from None
    width = int(F.shape[1])
    _OUTPUT_WIDTHS.setdefault(module, {})[space.width] = width
    return width
