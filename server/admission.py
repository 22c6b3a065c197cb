"""Admission: a bounded, fair queue in front of a limit on calls running at once.

A call that finds every running slot taken waits in a queue instead of being refused.
The queue is fair: each *lane* (a client connection and the model it calls) is a FIFO,
and freed slots go to the lanes in turn, so one busy client cannot starve the others.
A call is refused with RESOURCE_EXHAUSTED and a retry hint only when the queue is full
or its deadline would pass before a slot is expected to free (the expected wait comes
from a moving average of how long calls hold a slot).

Only touched from the event loop thread: plain counters and futures, no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator

from preimage.errors import ResourceExhaustedError
from preimage.server.metrics import Metrics

__all__ = ["Admission"]

_SMOOTHING = 0.2
"""Weight of the newest call in the moving average of slot-holding time."""
_MIN_RETRY_SECONDS = 0.05
_MAX_RETRY_SECONDS = 30.0


class Admission:
    """At most ``limit`` calls run; up to ``queue_size`` more wait their turn.

    Args:
        what: The RPC name, for messages and metric labels.
        limit: Calls that may hold a slot at once.
        queue_size: Calls that may wait for a slot; 0 refuses at once when all are taken.
        metrics: Where queue depth, running calls, waits and refusals are reported.
        typical_seconds: First guess of how long a call holds its slot, before any finished.
    """

    def __init__(self, what: str, limit: int, queue_size: int, metrics: Metrics, *, typical_seconds: float) -> None:
        self.what = what
        self.limit = limit
        self.queue_size = queue_size
        self.running = 0
        self.queued = 0
        self.hold_seconds = typical_seconds
        """Moving average of how long a call holds its slot (seconds); sets the expected wait."""
        self._lanes: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._depth = metrics.queue_depth.labels(what)
        self._running = metrics.running_calls.labels(what)
        self._wait = metrics.queue_wait.labels(what)
        self._refused = metrics.admission_refused
        self._depth.set(0)
        self._running.set(0)

    def expected_wait(self, position: int) -> float:
        """Seconds until the call at 1-based queue ``position`` is expected to get a slot."""
        return math.ceil(position / self.limit) * self.hold_seconds

    @contextlib.asynccontextmanager
    async def slot(self, lane: str, remaining: float | None = None) -> AsyncIterator[None]:
        """Hold one running slot for the body, waiting in ``lane``'s queue when all are taken.

        Args:
            lane: The fairness key (client and model); calls of one lane keep their order.
            remaining: Seconds left before the caller's deadline, ``None`` without one.

        Raises:
            ResourceExhaustedError: The queue is full, or the deadline would pass before a
                slot is expected to free; ``retry_after_seconds`` says when to try again.
        """
        await self._acquire(lane, remaining)
        started = time.monotonic()
        try:
            yield
        finally:
            held = time.monotonic() - started
            self.hold_seconds += _SMOOTHING * (held - self.hold_seconds)
            self._release()

    async def _acquire(self, lane: str, remaining: float | None) -> None:
        if self.running < self.limit and not self.queued:
            self._take()
            self._wait.observe(0.0)
            return
        if self.queued >= self.queue_size:
            self._refuse(
                "queue_full",
                f"{self.running} {self.what} calls are running and {self.queued} are queued, the server's limits",
                self.expected_wait(self.queued + 1),
            )
        wait = self.expected_wait(self.queued + 1)
        if remaining is not None and wait >= remaining:
            self._refuse(
                "deadline",
                f"{self.running} {self.what} calls are running and {self.queued} are queued: the expected wait of "
                f"{wait:.3g} s is longer than the {max(remaining, 0):.3g} s left before the call's deadline",
                wait,
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lanes.setdefault(lane, deque()).append(future)
        self._set_queued(self.queued + 1)
        queued_at = time.monotonic()
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._release()  # granted just as the caller went away: hand the slot on
            else:
                self._forget(lane, future)
            raise
        self._wait.observe(time.monotonic() - queued_at)

    def _take(self) -> None:
        self.running += 1
        self._running.set(self.running)

    def _release(self) -> None:
        self.running -= 1
        while self.queued and self.running < self.limit:
            lane, waiting = next(iter(self._lanes.items()))
            future = waiting.popleft()
            if waiting:
                self._lanes.move_to_end(lane)
            else:
                del self._lanes[lane]
            self._set_queued(self.queued - 1)
            self._take()
            future.set_result(None)
        self._running.set(self.running)

    def _forget(self, lane: str, future: asyncio.Future[None]) -> None:
        waiting = self._lanes.get(lane)
        if waiting is None or future not in waiting:
            return
        waiting.remove(future)
        if not waiting:
            del self._lanes[lane]
        self._set_queued(self.queued - 1)

    def _set_queued(self, queued: int) -> None:
        self.queued = queued
        self._depth.set(queued)

    def _refuse(self, reason: str, message: str, wait: float) -> None:
        self._refused.labels(self.what, reason).inc()
        retry = min(max(wait, _MIN_RETRY_SECONDS), _MAX_RETRY_SECONDS)
        raise ResourceExhaustedError(f"{message}; retry in about {retry:.2g} s", retry_after_seconds=retry)
