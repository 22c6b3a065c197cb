"""What the search drivers share within one Invert run, and how they end.

A driver (:mod:`~preimage.server.engine.optimize`, :mod:`~preimage.server.engine.sample`,
:mod:`~preimage.server.engine.enumeration`) is a generator over a :class:`Context`: it
yields candidate patterns as ``(X, F)`` pairs (float32 rows and their outputs), reads
``ctx.collector`` to learn how many are still wanted, and returns an :class:`Outcome`.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from preimage.server.engine.collector import Collector
from preimage.server.engine.prior import InDistributionPenalty, Prior
from preimage.server.engine.run import Run
from preimage.server.engine.space import InputSpace
from preimage.server.engine.targets import TargetSet

if TYPE_CHECKING:
    from preimage.server.engine.sample import PilotCache

__all__ = ["Candidates", "Context", "Driver", "Outcome"]

Candidates = tuple[np.ndarray, np.ndarray]


class Outcome(str, Enum):
    """Why a driver stopped."""

    DONE = "done"
    BUDGET = "budget"
    UNREACHABLE = "unreachable"
    EXHAUSTED = "exhausted"
    UNKNOWN = "unknown"


Driver = Generator[Candidates, None, Outcome]


@dataclass
class Context:
    """State shared by the drivers of one run.

    Attributes:
        space: Constraints.
        targets: Target set.
        prior: Distribution random starts and samples are drawn from.
        rng: The run's only source of randomness (seeded).
        run: Pass counters, budget, stop event, closest output.
        collector: Accepted patterns so far.
        weight: In-distribution weight ``λ`` (0 = off).
        penalty: The in-distribution penalty ``M`` when ``λ > 0``.
        preimage_size: Set by the enumeration: points of the exact preimage.
        pilots: Where sample mode keeps the pilots of this model (``None``: measured per run).
    """

    space: InputSpace
    targets: TargetSet
    prior: Prior
    rng: np.random.Generator
    run: Run
    collector: Collector
    weight: float = 0.0
    penalty: InDistributionPenalty | None = None
    preimage_size: int | None = None
    pilots: PilotCache | None = None

    def thin(self, X: np.ndarray, F: np.ndarray) -> Candidates:
        """Keep each row with probability ``exp(−λ M(x))``: the in-distribution tilt of sample mode.

        Thinning a draw from a distribution ``q`` this way yields a draw from
        ``q(x) exp(−λ M(x))`` normalized; with ``λ = 0`` every row is kept and no
        random number is used.
        """
        if self.penalty is None or self.weight <= 0 or X.shape[0] == 0:
            return X, F
        keep = self.rng.random(X.shape[0]) < np.exp(-self.weight * self.penalty.value(X))
        return X[keep], F[keep]
