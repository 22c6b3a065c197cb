"""Shared Invert runs: concurrent unseeded calls on one model and request share one engine run.

A game server asks for 20 fresh patterns of difficulty 7, many times a second. Each such
call on its own would pay a pilot pass, a window calibration and Python overhead for 20
patterns; together they are one stream of exact draws from the same distribution. So an
*unseeded* ``sample``-mode call (no seed, no minimum distance, no pass budget, at most
``invert_shared_max_count`` patterns, a space too large to enumerate) does not start a
run of its own: it joins the :class:`SharedRun` of its key — the model version and every
field of the request that shapes the distribution (targets, tolerance, bounds, fixed
features, prior, in-distribution weight, max uncertainty) — and takes the next patterns off its reservoir.

Why the result does not depend on who else is running: the shared run is an ordinary
engine run (:func:`~preimage.server.engine.invert`) with its own seed, whose patterns are
draws from the prior restricted to the preimage. Each call gets a disjoint slice of that
stream, so its patterns are draws from the same distribution a run of its own would
give, and never repeat within the call. Seeded calls never share: their stream is a
function of the seed alone, whatever the load (tests/server/test_sharing.py checks both).

The run is demand-driven: it produces while calls wait, then keeps a small reserve ready
(:data:`RESERVE` patterns) for the next callers, and ends after :data:`IDLE_SECONDS`
without a caller. Its first run is sized to the first request and each restart doubles,
up to :data:`MAX_RUN`, so a busy key converges to bulk-sized runs. A terminal outcome
(unreachable, infeasible) is given to every caller of the key until it goes idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from preimage.errors import CancelledError
from preimage.server.engine.types import (
    InvertMode,
    InvertSpec,
    InvertStatus,
    InvertSummary,
    PatternBatch,
    PriorKind,
)

if TYPE_CHECKING:
    from preimage.registry import LoadedModel
    from preimage.server.engine import InputSpace
    from preimage.server.runtime import Runtime

__all__ = ["IDLE_SECONDS", "MAX_RUN", "RESERVE", "SharedRun", "SharedRuns"]

RESERVE = 4096
"""Patterns a warm shared run keeps ready for the next callers."""
IDLE_SECONDS = 30.0
"""A shared run with no caller for this long ends and frees its memory."""
MAX_RUN = 1 << 20
"""Largest ``n`` of one engine run behind a shared key (it restarts when done)."""
_FIRST_RUN = 256
_BATCH = 512
_END = object()

_log = logging.getLogger(__name__)


class SharedRun:
    """The engine run (and its successors) behind one shared key, and the reservoir it fills.

    Only touched from the event loop thread; engine steps run in the runtime's workers.
    """

    def __init__(
        self,
        runtime: Runtime,
        loaded: LoadedModel,
        space: InputSpace,
        spec: InvertSpec,
        *,
        first_n: int,
        on_idle: Any,
    ) -> None:
        self.runtime = runtime
        self.loaded = loaded
        self.space = space
        self.spec = replace(spec, seed=None, batch_size=_BATCH, max_passes=None)
        self.prior: PriorKind = PriorKind.UNIFORM  # set by start()
        self._run_n = max(_FIRST_RUN, 2 * first_n)
        self._reservoir: deque[tuple[int, PatternBatch]] = deque()
        self.available = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._wanted = asyncio.Event()
        self._events: Any = None
        self._generation = 0
        self._stop = threading.Event()
        self._pump: asyncio.Task[None] | None = None
        self._on_idle = on_idle
        self.terminal: InvertSummary | None = None
        self._failure: BaseException | None = None
        self.last_used = time.monotonic()
        # Work of the runs so far, for each call's pro-rata share in its summary.
        self.produced = 0
        self.forward_passes = 0
        self.backward_passes = 0
        self.rows_evaluated = 0

    async def start(self) -> None:
        """Validate and start the first run; errors (a bad target, say) reach the first caller."""
        from preimage.server.engine.prior import make_prior

        await self._new_run()
        prior = await self.runtime.run(make_prior, self.space, self.spec.prior, self.loaded.statistics)
        self.prior = prior.kind
        self._pump = asyncio.get_running_loop().create_task(self._pump_loop())

    def close(self) -> None:
        """Stop the engine at its next step and wake every waiting caller."""
        self._stop.set()
        if self._pump is not None:
            self._pump.cancel()
        self._wake()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    async def take(self, n: int, deadline: float, batch_size: int) -> AsyncIterator[PatternBatch | InvertSummary]:
        """Up to ``n`` patterns off the reservoir as they come, then this call's summary.

        Args:
            n: Patterns wanted.
            deadline: ``time.monotonic()`` by which the call must end (its budget).
            batch_size: Most patterns per yielded batch.
        """
        started = time.monotonic()
        got = 0
        generations: set[int] = set()
        seen: set[bytes] | None = None
        best_error, best_output = float("inf"), None
        status = InvertStatus.COMPLETE
        try:
            while got < n:
                if self._failure is not None:
                    raise self._failure
                if not self._reservoir:
                    if self.terminal is not None:
                        status = self.terminal.status
                        break
                    if self.closed:
                        raise CancelledError("the shared Invert run this call joined was stopped (server shutdown)")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        status = InvertStatus.BUDGET_SPENT
                        break
                    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    self._wanted.set()
                    try:
                        await asyncio.wait_for(waiter, left)
                    except TimeoutError:
                        continue  # re-checks the reservoir, then ends on the budget
                    finally:
                        with contextlib.suppress(ValueError):
                            self._waiters.remove(waiter)
                    continue
                generation, batch = self._pop(min(n - got, batch_size))
                if generations and generation not in generations:
                    # Runs are independent draws: rows of two runs can coincide on discrete spaces.
                    seen = seen if seen is not None else set()
                    batch = _without(batch, seen)
                generations.add(generation)
                if seen is not None:
                    seen.update(row.tobytes() for row in batch.inputs)
                if len(batch) == 0:
                    continue
                err = batch.errors.max(axis=1)
                i = int(np.argmin(err))
                if err[i] < best_error:
                    best_error, best_output = float(err[i]), batch.outputs[i]
                got += len(batch)
                yield batch
        finally:
            self.last_used = time.monotonic()
            if self.available < RESERVE:
                self._wanted.set()
        yield self._summary(n, got, status, time.monotonic() - started, best_error, best_output)

    def _pop(self, k: int) -> tuple[int, PatternBatch]:
        generation, head = self._reservoir[0]
        if len(head) <= k:
            self._reservoir.popleft()
            self.available -= len(head)
            return generation, head
        part = PatternBatch(head.inputs[:k], head.outputs[:k], head.errors[:k])
        self._reservoir[0] = (generation, PatternBatch(head.inputs[k:], head.outputs[k:], head.errors[k:]))
        self.available -= k
        return generation, part

    def _summary(
        self, n: int, got: int, status: Any, elapsed: float, best_error: float, best_output: np.ndarray | None
    ) -> InvertSummary:
        share = got / self.produced if self.produced else 0.0
        if status is InvertStatus.COMPLETE:
            message = f"Returned all {n} requested pattern{'s' if n != 1 else ''} (from a run shared with other calls)."
        elif status is InvertStatus.BUDGET_SPENT:
            message = (
                f"The time budget ran out before {n} patterns were found: {got} of {n} patterns were found "
                "(from a run shared with other calls)."
            )
        else:
            assert self.terminal is not None
            message = self.terminal.message
        closest: tuple[float, ...] = ()
        if best_output is not None:
            closest = tuple(float(v) for v in best_output)
        elif self.terminal is not None:
            closest, best_error = self.terminal.closest_output, self.terminal.closest_error
        return InvertSummary(
            status=status,
            message=message,
            requested=n,
            returned=got,
            elapsed_seconds=elapsed,
            forward_passes=round(share * self.forward_passes),
            backward_passes=round(share * self.backward_passes),
            rows_evaluated=round(share * self.rows_evaluated),
            closest_output=closest,
            closest_error=best_error,
            mode=InvertMode.SAMPLE,
            prior=self.prior,
            seed=0,
            shared=True,
        )

    async def _new_run(self) -> None:
        from preimage.server.engine import invert

        spec = replace(self.spec, n=self._run_n, seed=secrets.randbits(63))
        self._run_n = min(2 * self._run_n, MAX_RUN)
        self._generation += 1
        self._events = await self.runtime.run(
            invert,
            self.loaded.module,
            self.space,
            spec,
            statistics=self.loaded.statistics,
            stop=self._stop,
            pilots=self.runtime.pilots,
            spreads=self.loaded.schema.spread_columns,
        )

    async def _pump_loop(self) -> None:
        metrics = self.runtime.metrics
        try:
            while not self.closed:
                if not self._waiters and self.available >= RESERVE:
                    self._wanted.clear()
                    idle = IDLE_SECONDS - (time.monotonic() - self.last_used)
                    if idle <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wanted.wait(), idle)
                    continue
                if not self._waiters and time.monotonic() - self.last_used > IDLE_SECONDS:
                    break
                if self._events is None:
                    await self._new_run()
                event = await self.runtime.run(next, self._events, _END)
                if isinstance(event, PatternBatch):
                    self._reservoir.append((self._generation, event))
                    self.available += len(event)
                    self.produced += len(event)
                    self._wake()
                    continue
                self._events = None
                if event is _END:
                    continue
                metrics.count_invert_work(event.forward_passes, event.backward_passes, event.rows_evaluated)
                self.forward_passes += event.forward_passes
                self.backward_passes += event.backward_passes
                self.rows_evaluated += event.rows_evaluated
                if event.status is InvertStatus.COMPLETE or event.returned > 0:
                    continue  # a budget spent after some patterns: the next run goes on
                # Unreachable, infeasible, or a whole budget without one pattern: every caller hears it.
                self.terminal = event
                self._wake()
                break
        except asyncio.CancelledError:
            pass
        except CancelledError:
            pass
        except Exception as exc:  # reaches every waiting caller as their own error
            _log.exception("shared Invert run failed")
            self._failure = exc
        finally:
            self._stop.set()
            self._wake()
            self._on_idle(self)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


def _without(batch: PatternBatch, seen: set[bytes]) -> PatternBatch:
    keep = np.fromiter((row.tobytes() not in seen for row in batch.inputs), dtype=bool, count=len(batch))
    if keep.all():
        return batch
    return PatternBatch(batch.inputs[keep], batch.outputs[keep], batch.errors[keep])


class SharedRuns:
    """The live :class:`SharedRun` of each key, at most ``capacity`` (least recently used ends first)."""

    def __init__(self, runtime: Runtime, capacity: int = 64) -> None:
        self.runtime = runtime
        self.capacity = capacity
        self._runs: OrderedDict[Any, SharedRun] = OrderedDict()
        self._starting: dict[Any, asyncio.Future[SharedRun]] = {}

    def __len__(self) -> int:
        return len(self._runs)

    async def get(self, key: Any, loaded: LoadedModel, space: InputSpace, spec: InvertSpec) -> SharedRun:
        """The live shared run of ``key``, started (and validated) by its first caller."""
        run = self._runs.get(key)
        if run is not None and not run.closed:
            self._runs.move_to_end(key)
            run.last_used = time.monotonic()  # a joining caller keeps the run from ending as idle
            return run
        pending = self._starting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[SharedRun] = asyncio.get_running_loop().create_future()
        self._starting[key] = future
        try:
            run = SharedRun(self.runtime, loaded, space, spec, first_n=spec.n, on_idle=self._ended)
            await run.start()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: callers that shared the wait re-raise it themselves
            raise
        finally:
            del self._starting[key]
        future.set_result(run)
        self._runs[key] = run
        while len(self._runs) > self.capacity:
            _, oldest = self._runs.popitem(last=False)
            oldest.close()
        return run

    def _ended(self, run: SharedRun) -> None:
        for key, live in list(self._runs.items()):
            if live is run:
                del self._runs[key]

    def close(self) -> None:
        """End every shared run (server shutdown)."""
        for run in list(self._runs.values()):
            run.close()
        self._runs.clear()
