"""The target set of one Invert run: an interval per output, with a float32 safety margin.

A value target ``y`` with tolerance ``t`` is the interval ``[y − t, y + t]``; a range
target is its own interval. The engine accepts a pattern only when its output lies
in the *inner* interval, shrunk at each end by a margin ``δ`` (see :func:`margin`), so
that another float32 runtime (onnxruntime, say), which sums in a different order,
still finds it inside the full interval. Newton steps aim at the *aim* interval,
shrunk by ``2δ``, so that the last step's linearization error stays inside
(:class:`~preimage.server.engine.newton.NewtonPool` reads these arrays).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from preimage.errors import InvalidArgumentError
from preimage.server.engine.types import TargetSpec

__all__ = ["TargetSet", "margin"]

# Relative size of the safety margin against float32 differences between runtimes.
_RELATIVE_MARGIN = 3e-5
# A target interval must span at least this many float32 steps at its magnitude.
_MIN_ULPS = 8


def margin(lower: float, upper: float) -> float:
    """The safety margin ``δ`` kept inside ``[lower, upper]``.

    ``δ = min(h / 4, 3e-5 · (1 + max(|lower|, |upper|)))`` with ``h`` the half-width:
    runtimes that evaluate the same float32 network differ by a few float32 steps
    of the output's magnitude, far below this.
    """
    half = (upper - lower) / 2.0
    return min(half / 4.0, _RELATIVE_MARGIN * (1.0 + max(abs(lower), abs(upper))))


@dataclass(frozen=True)
class TargetSet:
    """Accepted output intervals (``m`` outputs), as float64 arrays.

    Attributes:
        lower: Lower ends of the accepted intervals.
        upper: Upper ends.
        value: Target values (NaN for range targets).
        inner_lower: Lower ends shrunk by the margin: what the engine accepts.
        inner_upper: Upper ends shrunk by the margin.
        aim_lower: Lower ends shrunk by twice the margin: where Newton steps aim.
        aim_upper: Upper ends shrunk by twice the margin.
        scale: Half-widths, the unit in which outputs are weighted against each other.
    """

    lower: np.ndarray
    upper: np.ndarray
    value: np.ndarray
    inner_lower: np.ndarray
    inner_upper: np.ndarray
    aim_lower: np.ndarray
    aim_upper: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_spec(cls, targets: Sequence[TargetSpec], tolerance: float, outputs: int) -> TargetSet:
        """Validate the targets against the model's output count and build the set.

        Raises:
            InvalidArgumentError: Not one target per output (field ``targets``); a target not
                finite or with its range reversed (``targets[i]``); a tolerance that is negative,
                not finite, or zero while some target is a value (``tolerance``); an interval
                narrower than float32 can resolve at its magnitude.
        """
        if len(targets) != outputs:
            raise InvalidArgumentError(
                f"the model has {outputs} output{'s' if outputs != 1 else ''} but {len(targets)} "
                f"target{'s were' if len(targets) != 1 else ' was'} given: give one per output",
                field="targets",
            )
        if not math.isfinite(tolerance) or tolerance < 0:
            raise InvalidArgumentError(f"tolerance must be a finite number >= 0, got {tolerance}", field="tolerance")
        lower, upper, value = [], [], []
        for i, target in enumerate(targets):
            where = f"targets[{i}]"
            target.validate(where)
            if target.value is not None and tolerance == 0:
                raise InvalidArgumentError(
                    "tolerance must be positive for a value target: float32 evaluation differs between runtimes "
                    "in the last bits, so no output can be promised to equal a value exactly "
                    "(use a range target for an interval)",
                    field="tolerance",
                )
            lo, hi = target.interval(tolerance)
            resolution = _MIN_ULPS * float(np.spacing(np.float32(max(abs(lo), abs(hi)))))
            if hi - lo < resolution:
                field = "tolerance" if target.value is not None else where
                raise InvalidArgumentError(
                    f"{where}: the accepted interval [{lo}, {hi}] is narrower than float32 resolves at that "
                    f"magnitude (at least {resolution:.3g} wide); widen the "
                    f"{'tolerance' if target.value is not None else 'range'}",
                    field=field,
                )
            lower.append(lo)
            upper.append(hi)
            value.append(math.nan if target.value is None else float(target.value))
        lo_a, hi_a = np.array(lower), np.array(upper)
        delta = np.array([margin(a, b) for a, b in zip(lower, upper, strict=True)])
        return cls(
            lower=lo_a,
            upper=hi_a,
            value=np.array(value),
            inner_lower=lo_a + delta,
            inner_upper=hi_a - delta,
            aim_lower=lo_a + 2 * delta,
            aim_upper=hi_a - 2 * delta,
            scale=(hi_a - lo_a) / 2.0,
        )

    @property
    def outputs(self) -> int:
        """Number of outputs ``m``."""
        return int(self.lower.shape[0])

    @property
    def center(self) -> np.ndarray:
        """Midpoints of the intervals (the value, for value targets)."""
        return (self.lower + self.upper) / 2.0

    # -- numpy (float64) ---------------------------------------------------------------------

    def distance(self, F: np.ndarray) -> np.ndarray:
        """``k x m`` distances of outputs to the accepted intervals (0 inside; inf if not finite)."""
        F = np.asarray(F, dtype=np.float64)
        d = np.maximum(np.maximum(self.lower - F, F - self.upper), 0.0)
        return np.where(np.isfinite(F), d, np.inf)

    def inner_distance(self, F: np.ndarray) -> np.ndarray:
        """``k x m`` distances to the inner intervals (0 inside; inf if not finite)."""
        F = np.asarray(F, dtype=np.float64)
        d = np.maximum(np.maximum(self.inner_lower - F, F - self.inner_upper), 0.0)
        return np.where(np.isfinite(F), d, np.inf)

    def hits(self, F: np.ndarray) -> np.ndarray:
        """``k`` booleans: every output finite and inside its inner interval."""
        return np.asarray((self.inner_distance(F) == 0.0).all(axis=1), dtype=bool)

    def errors(self, F: np.ndarray) -> np.ndarray:
        """``k x m`` float32 errors: ``|f − y|`` for value targets, distance to the range otherwise."""
        F = np.asarray(F, dtype=np.float64)
        err = np.where(np.isnan(self.value), self.distance(F), np.abs(F - self.value))
        return err.astype(np.float32)
