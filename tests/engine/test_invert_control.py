"""invert's control: streaming, cancellation, determinism, budgets and every end status."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from preimage.errors import CancelledError
from preimage.server.engine import BoundSpec, InvertMode, InvertStatus, InvertSummary, PatternBatch, invert
from preimage.server.engine.run import CHUNK, Run
from preimage.server.engine.sample import PilotCache
from preimage.server.engine.targets import TargetSet
from preimage.server.engine.types import TargetSpec
from tests.engine.helpers import (
    BINARY10,
    BINARY10_SCHEMA,
    BOX,
    EXAMPLE_SCHEMA,
    LINEAR,
    LINEAR_W,
    MIXED,
    MIXED_SCHEMA,
    all_binary_rows,
    check_targets,
    module_of,
    run_invert,
    space_of,
    spec,
)
from tests.models import EXAMPLE_MODEL, linear_onnx, onnx_eval

MODES = [InvertMode.OPTIMIZE, InvertMode.SAMPLE]
W = LINEAR_W


class Counting(torch.nn.Module):
    """Wraps a module, counting calls; can run a hook on a given call (from the engine's thread)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.rows = 0
        self.on_call: dict[int, object] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        hook = self.on_call.get(self.calls)
        if callable(hook):
            hook()
        return self.inner(x)


def _stream(model: bytes, mode: InvertMode, n: int, seed: int | None, **options: object) -> list[object]:
    space = space_of(EXAMPLE_SCHEMA)
    return list(invert(module_of(model), space, spec(7.0, n=n, mode=mode, seed=seed, **options)))


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_stream_other_seed_other_stream(mode: InvertMode) -> None:
    model = EXAMPLE_MODEL.read_bytes()
    a, b, c = (_stream(model, mode, 700, seed, batch_size=100) for seed in (5, 5, 6))
    assert len(a) == len(b)
    for x, y in zip(a[:-1], b[:-1], strict=True):
        assert isinstance(x, PatternBatch) and isinstance(y, PatternBatch)
        np.testing.assert_array_equal(x.inputs, y.inputs)
        np.testing.assert_array_equal(x.outputs, y.outputs)
    assert isinstance(a[-1], InvertSummary) and isinstance(b[-1], InvertSummary)
    assert (a[-1].forward_passes, a[-1].rows_evaluated) == (b[-1].forward_passes, b[-1].rows_evaluated)
    assert not np.array_equal(a[0].inputs, c[0].inputs)  # type: ignore[union-attr]


def test_a_drawn_seed_is_reported_and_reproduces_the_stream() -> None:
    model = EXAMPLE_MODEL.read_bytes()
    first = _stream(model, InvertMode.SAMPLE, 50, None)
    summary = first[-1]
    assert isinstance(summary, InvertSummary) and isinstance(summary.seed, int) and summary.seed >= 0
    again = _stream(model, InvertMode.SAMPLE, 50, summary.seed)
    np.testing.assert_array_equal(
        np.concatenate([e.inputs for e in first[:-1]]),  # type: ignore[union-attr]
        np.concatenate([e.inputs for e in again[:-1]]),  # type: ignore[union-attr]
    )


@pytest.mark.parametrize("n", [20, 3000])
def test_a_seeded_run_does_not_depend_on_the_warm_state(n: int) -> None:
    # Sample mode measures a pilot (and may probe reachability) once per space and target and keeps
    # them in a PilotCache; a seeded run's patterns must be the same cold, warm, or with no cache.
    module = module_of(EXAMPLE_MODEL.read_bytes())
    space = space_of(EXAMPLE_SCHEMA)

    def patterns(seed: int, pilots: PilotCache | None) -> np.ndarray:
        events = list(invert(module, space, spec(7.0, n=n, seed=seed, tolerance=1e-4), pilots=pilots))
        assert isinstance(events[-1], InvertSummary) and events[-1].returned == n
        return np.concatenate([e.inputs for e in events[:-1]])  # type: ignore[union-attr]

    alone = patterns(5, None)
    pilots = PilotCache()
    cold = patterns(5, pilots)
    assert len(pilots) == 1
    warm = patterns(5, pilots)
    patterns(6, pilots)  # another caller used the warm state in between
    again = patterns(5, pilots)
    for other in (cold, warm, again):
        np.testing.assert_array_equal(alone, other)
    assert not np.array_equal(alone, patterns(6, None))


@pytest.mark.parametrize("mode", MODES)
def test_the_first_batch_comes_long_before_the_last(mode: InvertMode) -> None:
    module = Counting(module_of(EXAMPLE_MODEL.read_bytes()))
    space = space_of(EXAMPLE_SCHEMA)
    # As on a server: the model's warm state (sample mode's pilot) was built by an earlier call.
    pilots = PilotCache()
    list(invert(module, space, spec(7.0, n=1, mode=mode), pilots=pilots))
    start = module.rows
    rows_at_batch = []
    for event in invert(module, space, spec(7.0, n=20_000, mode=mode, batch_size=100), pilots=pilots):
        if isinstance(event, PatternBatch):
            rows_at_batch.append(module.rows - start)
    assert len(rows_at_batch) >= 50
    assert rows_at_batch[0] * 10 <= rows_at_batch[-1]  # the first batch costs a tenth of the work or less


@pytest.mark.parametrize("mode", MODES)
def test_cancellation_from_another_thread_stops_within_one_step(mode: InvertMode) -> None:
    module = Counting(module_of(EXAMPLE_MODEL.read_bytes()))
    stop = threading.Event()
    events = invert(module, space_of(EXAMPLE_SCHEMA), spec(7.0, n=10**6, mode=mode), stop=stop)
    assert isinstance(next(events), PatternBatch)
    # Set the event from another thread while the engine is inside its next model pass.
    target = module.calls + 1
    setter = threading.Thread(target=stop.set)
    module.on_call[target] = lambda: (setter.start(), setter.join())
    with pytest.raises(CancelledError):
        for _ in events:
            pass
    # The pass that was running when the event was set is the last one (a Jacobian pass is one call).
    assert module.calls == target
    with pytest.raises(StopIteration):
        next(events)
    assert module.calls == target


def test_a_stop_set_before_the_start_cancels_at_once() -> None:
    module = Counting(module_of(LINEAR))
    stop = threading.Event()
    stop.set()
    events = invert(module, space_of(BOX), spec(1.0, n=10), stop=stop)
    calls = module.calls  # invert checks the model's width eagerly
    with pytest.raises(CancelledError):
        next(events)
    assert module.calls == calls


@pytest.mark.parametrize("mode", MODES)
def test_pass_budget_bounds_the_work(mode: InvertMode) -> None:
    events = _stream(EXAMPLE_MODEL.read_bytes(), mode, 10**6, 0, max_passes=25)
    summary = events[-1]
    assert isinstance(summary, InvertSummary)
    assert summary.status is InvertStatus.BUDGET_SPENT
    assert summary.forward_passes + summary.backward_passes <= 25
    assert 0 < summary.returned < 10**6
    assert "pass budget of 25" in summary.message
    X = np.concatenate([e.inputs for e in events[:-1]])  # type: ignore[union-attr]
    check_targets(EXAMPLE_MODEL.read_bytes(), X, [7.0], 1e-3)


def test_time_budget_bounds_the_work() -> None:
    events = _stream(EXAMPLE_MODEL.read_bytes(), InvertMode.SAMPLE, 10**7, 0, max_seconds=0.3)
    summary = events[-1]
    assert isinstance(summary, InvertSummary)
    assert summary.status is InvertStatus.BUDGET_SPENT and "time budget" in summary.message


@pytest.mark.parametrize("mode", MODES)
def test_unreachable_target_ends_in_bounded_work_with_the_closest_output(mode: InvertMode) -> None:
    top = 0.5 + np.abs(W).sum()  # the linear model's maximum over [-1, 1]^4
    result = run_invert(LINEAR, space_of(BOX), spec(top + 1.0, n=10, mode=mode))
    s = result.summary
    assert s.status is InvertStatus.UNREACHABLE and s.returned == 0
    assert s.forward_passes + s.backward_passes < 1000  # long before the default budget
    assert abs(s.closest_output[0] - top) < 1e-3 and abs(s.closest_error - (1.0 - 1e-3)) < 1e-3
    assert "closest output" in s.message


def test_unreachable_on_a_mixed_space() -> None:
    for mode in MODES:
        s = run_invert(MIXED, space_of(MIXED_SCHEMA), spec(50.0, n=10, mode=mode)).summary
        assert s.status is InvertStatus.UNREACHABLE
        assert s.forward_passes + s.backward_passes < 2000


def test_infeasible_constraints() -> None:
    schema = {"inputs": [{"name": "a", "min": 0.0, "max": 1.0}, {"name": "k", "kind": "integer", "min": 0, "max": 9}]}
    model = linear_onnx(np.array([[1.0, 1.0]]), [0.0])
    space = space_of(schema, bounds=(BoundSpec("k", 2.2, 2.8),))
    result = run_invert(model, space, spec(2.5, n=5))
    s = result.summary
    assert s.status is InvertStatus.INFEASIBLE and s.returned == 0 and s.forward_passes == 0
    assert "'k'" in s.message and "no integer" in s.message


def _binary10_target() -> tuple[float, float, np.ndarray]:
    """A target for BINARY10 whose interval has no output near its ends (float-safe exact counts)."""
    rows = all_binary_rows(10)
    f = onnx_eval(BINARY10, rows)[:, 0].astype(np.float64)
    y = float(np.median(f))
    tol = next(t for t in np.arange(0.03, 0.08, 0.001) if np.abs(np.abs(f - y) - t).min() > 2e-4)
    return y, float(tol), rows[np.abs(f - y) <= tol]


@pytest.mark.parametrize("mode", MODES)
def test_small_discrete_space_enumerates_exactly(mode: InvertMode) -> None:
    y, tol, preimage = _binary10_target()
    assert 20 < len(preimage) < 500
    result = run_invert(BINARY10, space_of(BINARY10_SCHEMA), spec(y, n=3 * len(preimage), mode=mode, tolerance=tol))
    s = result.summary
    assert s.status is InvertStatus.EXHAUSTED and s.preimage_size == len(preimage) == s.returned
    assert {r.tobytes() for r in result.X} == {r.tobytes() for r in preimage}  # coverage 100%
    assert s.rows_evaluated == 1024
    check_targets(BINARY10, result.X, [y], tol)
    if mode is InvertMode.OPTIMIZE:
        errors = np.concatenate([b.errors for b in result.batches])[:, 0]
        assert (np.diff(errors) >= 0).all()  # best first


def test_enumeration_complete_when_the_preimage_is_larger() -> None:
    y, tol, preimage = _binary10_target()
    result = run_invert(BINARY10, space_of(BINARY10_SCHEMA), spec(y, n=10, tolerance=tol))
    assert result.summary.status is InvertStatus.COMPLETE and result.summary.preimage_size == len(preimage)
    assert {r.tobytes() for r in result.X} <= {r.tobytes() for r in preimage}


def test_enumeration_unreachable_gives_the_exact_closest_output() -> None:
    f = onnx_eval(BINARY10, all_binary_rows(10))[:, 0]
    result = run_invert(BINARY10, space_of(BINARY10_SCHEMA), spec(float(f.max()) + 1.0, n=5))
    s = result.summary
    assert s.status is InvertStatus.UNREACHABLE and s.preimage_size == 0
    assert abs(s.closest_output[0] - float(f.max())) < 1e-5
    assert "1024 points" in s.message


def test_exhausted_with_min_distance_says_so() -> None:
    y, tol, preimage = _binary10_target()
    result = run_invert(BINARY10, space_of(BINARY10_SCHEMA), spec(y, n=len(preimage), tolerance=tol, min_distance=1.5))
    s = result.summary
    assert s.status is InvertStatus.EXHAUSTED and s.returned < len(preimage)
    assert "minimum distance" in s.message
    X = result.X
    gaps = np.abs(X[:, None, :] - X[None, :, :]).sum(axis=2) + np.eye(len(X)) * 10
    assert gaps.min() >= 3  # Hamming distance 3 <=> Euclidean distance >= 1.5 on {0,1}


def test_a_long_pass_runs_in_chunks_counts_once_and_stops_between_chunks() -> None:
    module = Counting(module_of(EXAMPLE_MODEL.read_bytes()))
    targets = TargetSet.from_spec((TargetSpec(value=7.0),), 1e-3, 1)
    stop = threading.Event()
    run = Run(module, targets, stop, max_seconds=60.0, max_passes=100)
    X = torch.rand(2 * CHUNK + 5, 10)
    F = run.forward(X)
    assert module.calls == 3 and run.forward_passes == 1 and run.rows_evaluated == X.shape[0]
    np.testing.assert_allclose(F.numpy(), onnx_eval(EXAMPLE_MODEL.read_bytes(), X.numpy()), atol=1e-5)
    module.on_call[module.calls + 1] = stop.set  # set while the next pass's first chunk runs
    with pytest.raises(CancelledError):
        run.forward(X)
    assert module.calls == 4
