"""The admission queue: a limit on running calls, a bounded fair FIFO queue, refusals with a retry hint."""

from __future__ import annotations

import asyncio

import pytest

from preimage.errors import ResourceExhaustedError
from preimage.server.admission import Admission
from preimage.server.metrics import Metrics


def make(limit: int = 1, queue_size: int = 8, typical_seconds: float = 0.01) -> tuple[Admission, Metrics]:
    metrics = Metrics()
    return Admission("Invert", limit, queue_size, metrics, typical_seconds=typical_seconds), metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def hold(admission: Admission, lane: str, log: list[str], gate: asyncio.Event, tag: str) -> None:
    async with admission.slot(lane):
        log.append(tag)
        await gate.wait()


def test_calls_beyond_the_limit_wait_and_run_in_fair_order() -> None:
    async def main() -> list[str]:
        admission, metrics = make(limit=1)
        log: list[str] = []
        gates = {tag: asyncio.Event() for tag in ("first", "a1", "a2", "a3", "b1", "b2")}
        first = asyncio.create_task(hold(admission, "a", log, gates["first"], "first"))
        await asyncio.sleep(0)
        tasks = []
        for tag, lane in (("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("b2", "b")):
            tasks.append(asyncio.create_task(hold(admission, lane, log, gates[tag], tag)))
            await asyncio.sleep(0)
        assert admission.running == 1 and admission.queued == 5
        assert sample(metrics, "preimage_queue_depth", rpc="Invert") == 5
        assert sample(metrics, "preimage_running_calls", rpc="Invert") == 1
        for tag in ("first", "a1", "b1", "a2", "b2", "a3"):
            gates[tag].set()
            await asyncio.sleep(0.01)
        await asyncio.gather(first, *tasks)
        assert admission.running == 0 and admission.queued == 0
        assert sample(metrics, "preimage_queue_wait_seconds_count", rpc="Invert") == 6
        return log

    # Lanes take turns (a, b, a, b, a): lane a's three calls do not hold lane b back.
    assert asyncio.run(main()) == ["first", "a1", "b1", "a2", "b2", "a3"]


def test_full_queue_refuses_with_a_retry_hint() -> None:
    async def main() -> None:
        admission, metrics = make(limit=1, queue_size=1)
        gate = asyncio.Event()
        log: list[str] = []
        running = asyncio.create_task(hold(admission, "a", log, gate, "running"))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(hold(admission, "a", log, gate, "waiting"))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhaustedError) as caught:
            async with admission.slot("b"):
                pass
        assert "1 are queued" in str(caught.value)
        assert caught.value.retry_after_seconds is not None and caught.value.retry_after_seconds > 0
        assert sample(metrics, "preimage_admission_refused_total", rpc="Invert", reason="queue_full") == 1
        gate.set()
        await asyncio.gather(running, waiting)
        assert log == ["running", "waiting"]

    asyncio.run(main())


def test_a_deadline_that_cannot_be_met_is_refused_at_once() -> None:
    async def main() -> None:
        admission, metrics = make(limit=1, typical_seconds=5.0)
        gate = asyncio.Event()
        running = asyncio.create_task(hold(admission, "a", [], gate, "running"))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhaustedError) as caught:
            async with admission.slot("b", remaining=1.0):
                pass
        assert "deadline" in str(caught.value)
        assert sample(metrics, "preimage_admission_refused_total", rpc="Invert", reason="deadline") == 1
        # A caller with time enough waits instead.
        waiter = asyncio.create_task(hold(admission, "b", [], gate, "waiter"))
        await asyncio.sleep(0)
        assert admission.queued == 1
        gate.set()
        await asyncio.gather(running, waiter)

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_the_queue_and_never_holds_a_slot() -> None:
    async def main() -> None:
        admission, _ = make(limit=1)
        gate = asyncio.Event()
        log: list[str] = []
        running = asyncio.create_task(hold(admission, "a", log, gate, "running"))
        await asyncio.sleep(0)
        gone = asyncio.create_task(hold(admission, "b", log, gate, "gone"))
        after = asyncio.create_task(hold(admission, "c", log, gate, "after"))
        await asyncio.sleep(0)
        assert admission.queued == 2
        gone.cancel()
        await asyncio.sleep(0)
        assert admission.queued == 1
        gate.set()
        await asyncio.gather(running, after)
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert log == ["running", "after"] and admission.running == 0

    asyncio.run(main())


def test_a_waiter_cancelled_as_it_is_granted_hands_the_slot_on() -> None:
    async def main() -> None:
        admission, _ = make(limit=1)
        log: list[str] = []
        first_gate, gate = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(hold(admission, "a", log, first_gate, "running"))
        await asyncio.sleep(0)
        unlucky = asyncio.create_task(hold(admission, "b", log, gate, "unlucky"))
        after = asyncio.create_task(hold(admission, "c", log, gate, "after"))
        await asyncio.sleep(0)
        first_gate.set()
        await asyncio.sleep(0)  # "running" ends and grants its slot to "unlucky", which has not resumed yet
        assert running.done() and admission.running == 1 and admission.queued == 1
        unlucky.cancel()
        gate.set()
        await after
        with pytest.raises(asyncio.CancelledError):
            await unlucky
        assert log == ["running", "after"] and admission.running == 0 and admission.queued == 0

    asyncio.run(main())
