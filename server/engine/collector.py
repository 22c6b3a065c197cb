"""Accepting found patterns: no duplicates, an optional minimum distance, at most ``n``.

The collector is the last gate before a pattern is streamed. It re-checks every
constraint and the target (a safety net: the drivers only offer rows that pass),
drops exact duplicates (by a 64-bit hash of the float32 row; a hash collision
can only drop a distinct row, never let a duplicate through), enforces the
minimum distance greedily in arrival order, and cuts at ``n``.
"""

from __future__ import annotations

import numpy as np
import torch

from preimage.server.engine.space import InputSpace
from preimage.server.engine.targets import TargetSet
from preimage.server.engine.types import PatternBatch

__all__ = ["Collector"]

_MIX = np.uint64(0x9E3779B97F4A7C15)


class Collector:
    """Accepts patterns for one run and cuts them into :class:`PatternBatch` events.

    Args:
        space: Constraints every pattern must satisfy.
        targets: The target set every output must hit.
        n: Patterns wanted.
        min_distance: Smallest Euclidean distance between returned patterns (0 = off).
        batch_size: Most patterns per event.
    """

    def __init__(self, space: InputSpace, targets: TargetSet, n: int, min_distance: float, batch_size: int) -> None:
        self.space = space
        self.targets = targets
        self.n = n
        self.min_distance = min_distance
        self.batch_size = batch_size
        self.returned = 0
        self._hashes = _HashSet()
        self._kept: list[torch.Tensor] = []
        rng = np.random.default_rng(0x5EED)
        self._multipliers = rng.integers(1, 2**63, size=space.width, dtype=np.uint64) | np.uint64(1)

    @property
    def remaining(self) -> int:
        """Patterns still wanted."""
        return self.n - self.returned

    @property
    def done(self) -> bool:
        """Whether ``n`` patterns were accepted."""
        return self.returned >= self.n

    def add(self, X: np.ndarray, F: np.ndarray) -> list[PatternBatch]:
        """Offer found rows; return the events for those accepted (possibly none).

        Args:
            X: ``k x d`` float32 rows.
            F: ``k x m`` float32 outputs of the model for them.
        """
        if X.shape[0] == 0 or self.done:
            return []
        X = np.ascontiguousarray(X, dtype=np.float32) + np.float32(0.0)  # -0.0 → 0.0: equal values, equal bits
        F = np.asarray(F, dtype=np.float32)
        ok = self.space.contains(X) & self.targets.hits(F)
        X, F = X[ok], F[ok]
        h = self._hash(X)
        _, first = np.unique(h, return_index=True)
        first.sort()
        take = first[~self._hashes.contains(h[first])]
        if self.min_distance > 0 and take.size:
            take = take[self._spread(X[take])]
        take = take[: self.remaining]
        if take.size == 0:
            return []
        self._hashes.add(h[take])
        X, F = X[take], F[take]
        if self.min_distance > 0:
            self._kept.append(torch.from_numpy(X))
        self.returned += int(take.size)
        errors = self.targets.errors(F)
        return [
            PatternBatch(
                inputs=X[i : i + self.batch_size],
                outputs=F[i : i + self.batch_size],
                errors=errors[i : i + self.batch_size],
            )
            for i in range(0, X.shape[0], self.batch_size)
        ]

    def _hash(self, X: np.ndarray) -> np.ndarray:
        bits = X.view(np.uint32).astype(np.uint64)
        with np.errstate(over="ignore"):
            h = (bits * self._multipliers).sum(axis=1, dtype=np.uint64)
            h ^= h >> np.uint64(29)
            h *= _MIX
            h ^= h >> np.uint64(32)
        return h

    def _spread(self, X: np.ndarray) -> np.ndarray:
        """Indices of rows kept by the greedy minimum-distance rule (arrival order)."""
        cand = torch.from_numpy(X)
        ok = torch.ones(cand.shape[0], dtype=torch.bool)
        for kept in self._kept:
            for i in range(0, cand.shape[0], 4096):
                block = cand[i : i + 4096]
                ok[i : i + 4096] &= torch.cdist(block.double(), kept.double()).amin(dim=1) >= self.min_distance
        chosen: list[int] = []
        for i in ok.nonzero().squeeze(1).tolist():
            if chosen:
                gap = torch.cdist(cand[i : i + 1].double(), cand[chosen].double()).amin()
                if gap < self.min_distance:
                    continue
            chosen.append(i)
            if len(chosen) >= self.remaining:
                break
        return np.asarray(chosen, dtype=np.int64)


class _HashSet:
    """A set of uint64 hashes as sorted runs whose sizes halve (merged like a binary counter).

    Membership of ``k`` hashes costs ``O(k log² N)`` in numpy, insertion amortized ``O(log N)``
    per hash, with no Python-level loop over hashes.
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def contains(self, h: np.ndarray) -> np.ndarray:
        """``k`` booleans: which hashes are already in the set."""
        order = np.argsort(h)
        hs = h[order]  # sorted needles make the binary searches cache-friendly
        found = np.zeros(h.shape[0], dtype=bool)
        for run in self._runs:
            pos = np.minimum(np.searchsorted(run, hs), run.size - 1)
            found |= run[pos] == hs
        out = np.empty_like(found)
        out[order] = found
        return out

    def add(self, h: np.ndarray) -> None:
        """Insert hashes that are not in the set yet (distinct among themselves)."""
        run = np.sort(h)
        while self._runs and self._runs[-1].size <= run.size:
            run = np.sort(np.concatenate([self._runs.pop(), run]))
        self._runs.append(run)
