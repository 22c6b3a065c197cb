"""Coalesce concurrent Predict calls on one model into shared forward passes.

The idea of Triton's dynamic batcher, with threads: the first caller becomes the *leader*
and runs a pass; callers that arrive while a pass runs queue up, and when it ends the
oldest of them leads the next pass for all of them at once (optionally after waiting
``delay_seconds`` for more). No thread sits idle as a dispatcher, and a lone call runs at
once.

A call's outputs must not depend on who else is in its pass. Rows do not interact in a
per-row network, but a matrix kernel may round a row differently with the row's position
in the batch or with the batch size. So every call's rows are padded to a multiple of
:data:`ALIGN` rows (with copies of its first row), alone or not, and :func:`coalescing_is_exact`
checks once per model that a segment evaluated alone and at aligned offsets of larger
batches gives identical bits. Where it does not, calls are never coalesced.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from preimage.server.engine.predict import checked_rows, forward

__all__ = ["ALIGN", "SMALL_ROWS", "PredictBatcher", "coalescing_is_exact"]

ALIGN = 8
"""Rows of every call are padded to a multiple of this, so segments start at aligned offsets."""

SMALL_ROWS = 64
"""Passes of at most this many rows are timed as one class (their cost is per pass, not per row)."""

_log = logging.getLogger(__name__)


class _Call:
    __slots__ = ("X", "done", "error", "lead", "result", "rows")

    def __init__(self, X: np.ndarray) -> None:
        self.X = X
        self.rows = X.shape[0]
        self.done = threading.Event()
        self.lead = False
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None

    def outcome(self) -> np.ndarray:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class PredictBatcher:
    """Thread-safe ``X -> outputs`` for one frozen module, coalescing concurrent calls.

    Args:
        module: The frozen model, on the device it runs on.
        width: Input columns it takes (``None``: read from its graph where possible).
        coalesce: Whether concurrent calls may share a pass (see :func:`coalescing_is_exact`).
        delay_seconds: How long a pass's leader waits for more calls before running it.
        max_rows: Most rows in one coalesced pass; a larger call runs on its own.
        on_pass: Called with ``(calls, rows)`` after each pass (metrics).

    Example:
        >>> net = torch.nn.Linear(3, 1).eval().requires_grad_(False)
        >>> PredictBatcher(net, 3)(np.zeros((2, 3), dtype=np.float32)).shape
        (2, 1)
    """

    def __init__(
        self,
        module: torch.nn.Module,
        width: int | None,
        *,
        coalesce: bool = True,
        delay_seconds: float = 0.0,
        max_rows: int = 65536,
        on_pass: Callable[[int, int], None] | None = None,
    ) -> None:
        self.module = module
        self.width = width
        self.coalesce = coalesce
        self.delay_seconds = delay_seconds
        self.max_rows = max_rows
        self._on_pass = on_pass
        self._lock = threading.Lock()
        self._pending: deque[_Call] = deque()
        self._leading = False
        self._small_seconds: float | None = None
        self._row_seconds: float | None = None

    @property
    def small_pass_seconds(self) -> float | None:
        """A running average of the time a pass of at most :data:`SMALL_ROWS` rows takes (``None``: none yet)."""
        return self._small_seconds

    def estimated_seconds(self, rows: int) -> float | None:
        """What a pass over ``rows`` rows is expected to take, from the passes so far (``None``: not yet known).

        Passes of at most :data:`SMALL_ROWS` rows cost about the same whatever their size (the
        running average of their times); larger ones cost their padded rows times the running
        average of the seconds per row of the larger passes so far.
        """
        if rows <= SMALL_ROWS:
            return self._small_seconds
        per_row = self._row_seconds
        return None if per_row is None else per_row * _aligned(rows)

    def try_inline(self, X: np.ndarray, *, max_seconds: float) -> np.ndarray | None:
        """Run a call on the calling thread at once, if its pass is cheap and no pass is under way.

        For an event loop that would otherwise hand the call to a worker thread, when the thread
        hop (two wake-ups, a few hundred microseconds on a busy small machine) is a large part of
        the call. The call runs alone, padded as always, so its outputs are the bits it would get
        from :meth:`__call__`. Returns ``None`` (nothing ran) where a pass is running or queued
        (join it through :meth:`__call__`), where calls wait ``delay_seconds`` for company, or
        where passes of its size are not yet known (:meth:`estimated_seconds`) to take at most
        ``max_seconds``.

        Raises:
            InvalidArgumentError: Bad rows, as :meth:`__call__`.
        """
        estimate = self.estimated_seconds(int(np.shape(X)[0])) if np.ndim(X) == 2 else None
        if estimate is None or estimate > max_seconds or self.delay_seconds > 0:
            return None
        X32 = checked_rows(self.module, X, self.width)
        call = _Call(X32)
        with self._lock:
            if self._leading:
                return None
            self._leading = True
            self._pending.append(call)
        self._lead(alone=True)
        return call.outcome()

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """The model's ``n x m`` float32 outputs for ``n x d`` rows ``X``.

        Raises:
            InvalidArgumentError: Bad rows (shape, width, NaN), field ``inputs``; a bad call
                never fails the calls it would have shared a pass with.
        """
        X32 = checked_rows(self.module, X, self.width)
        if not self.coalesce or X32.shape[0] > self.max_rows:
            return self._run([_Call(X32)])[0]
        call = _Call(X32)
        with self._lock:
            self._pending.append(call)
            follower = self._leading
            self._leading = True
        if follower:
            call.done.wait()
            if not call.lead:
                return call.outcome()
        self._lead()
        return call.outcome()

    def _lead(self, *, alone: bool = False) -> None:
        """Run one pass for the oldest queued calls (only the oldest if ``alone``), then hand the lead on."""
        if self.delay_seconds > 0 and not alone:
            time.sleep(self.delay_seconds)
        with self._lock:
            batch = [self._pending.popleft()]
            rows = _aligned(batch[0].rows)
            while not alone and self._pending and rows + _aligned(self._pending[0].rows) <= self.max_rows:
                rows += _aligned(self._pending[0].rows)
                batch.append(self._pending.popleft())
        try:
            try:
                for call, result in zip(batch, self._run(batch), strict=False):
                    call.result = result
            except Exception as exc:
                if len(batch) == 1:
                    batch[0].error = exc
                else:  # one call's rows may be what the model rejects: every call on its own
                    for call in batch:
                        try:
                            call.result = self._run([call])[0]
                        except Exception as single:
                            call.error = single
        finally:
            with self._lock:
                successor = self._pending[0] if self._pending else None
                if successor is not None:
                    successor.lead = True
                else:
                    self._leading = False
            for call in batch:
                call.done.set()
            if successor is not None:
                successor.done.set()

    def _run(self, calls: list[_Call]) -> list[np.ndarray]:
        """One forward pass over the calls' aligned segments; each call's rows of the output."""
        parts = [_padded(call.X) for call in calls]
        X = parts[0] if len(parts) == 1 else np.concatenate(parts)
        start = time.perf_counter()
        out = forward(self.module, X)
        took = time.perf_counter() - start
        # Racy updates lose a sample at worst.
        if X.shape[0] <= SMALL_ROWS:
            small = self._small_seconds
            self._small_seconds = took if small is None else 0.8 * small + 0.2 * took
        else:
            per_row, row = self._row_seconds, took / X.shape[0]
            self._row_seconds = row if per_row is None else 0.8 * per_row + 0.2 * row
        if self._on_pass is not None:
            self._on_pass(len(calls), X.shape[0])
        results, offset = [], 0
        for call, part in zip(calls, parts, strict=False):
            results.append(out[offset : offset + call.rows])
            offset += part.shape[0]
        return results


def coalescing_is_exact(module: torch.nn.Module, width: int, *, trials: int = 8, seed: int = 0) -> bool:
    """Whether a call's outputs are bit-identical alone and inside larger coalesced passes.

    Evaluates random segments of several sizes alone (padded to :data:`ALIGN`) and at
    aligned offsets of batches of other segments, on the module's device, and compares bits.
    A check, not a proof: it samples the sizes and offsets that coalescing produces.
    """
    rng = np.random.default_rng(seed)
    sizes = (1, 3, ALIGN, 13, 64, 257)
    for _ in range(trials):
        segments = [rng.standard_normal((int(k), width)).astype(np.float32) for k in rng.permutation(sizes)]
        alone = [forward(module, _padded(S))[: S.shape[0]] for S in segments]
        together = forward(module, np.concatenate([_padded(S) for S in segments]))
        offset = 0
        for S, out in zip(segments, alone, strict=False):
            if not np.array_equal(together[offset : offset + S.shape[0]], out, equal_nan=True):
                return False
            offset += _aligned(S.shape[0])
    return True


def _aligned(rows: int) -> int:
    return -(-rows // ALIGN) * ALIGN


def _padded(X: np.ndarray) -> np.ndarray:
    extra = _aligned(X.shape[0]) - X.shape[0]
    if extra == 0:
        return X
    return np.concatenate([X, np.repeat(X[:1], extra, axis=0)])
