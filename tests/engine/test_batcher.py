"""Predict coalescing: concurrent calls share passes, and each gets exactly the bits it would get alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from preimage.errors import InvalidArgumentError
from preimage.server.engine.batcher import ALIGN, SMALL_ROWS, PredictBatcher, coalescing_is_exact
from tests.engine.helpers import module_of
from tests.models import EXAMPLE_MODEL, mlp_onnx, onnx_eval


class Passes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[int] = []
        self.rows: list[int] = []

    def __call__(self, calls: int, rows: int) -> None:
        with self.lock:
            self.calls.append(calls)
            self.rows.append(rows)


def concurrent_calls(batcher: PredictBatcher, requests: list[np.ndarray]) -> list[np.ndarray]:
    start = threading.Barrier(len(requests))

    def one(X: np.ndarray) -> np.ndarray:
        start.wait(timeout=30)
        return batcher(X)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_concurrent_calls_share_passes_and_get_the_bits_of_a_lone_call() -> None:
    model = EXAMPLE_MODEL.read_bytes()
    module = module_of(model)
    assert coalescing_is_exact(module, 10)
    rng = np.random.default_rng(0)
    requests = [rng.random((int(k), 10), dtype=np.float32) for k in rng.integers(1, 40, size=24)]
    passes = Passes()
    batcher = PredictBatcher(module, 10, delay_seconds=0.05, on_pass=passes)
    outputs = concurrent_calls(batcher, requests)
    alone = PredictBatcher(module, 10, coalesce=False)
    for X, out in zip(requests, outputs, strict=False):
        assert out.shape == (X.shape[0], 1) and out.dtype == np.float32
        np.testing.assert_array_equal(out, alone(X))  # the same bits, whoever shared the pass
        np.testing.assert_allclose(out, onnx_eval(model, X), rtol=1e-5, atol=1e-5)
    assert sum(passes.calls) == len(requests)
    assert len(passes.calls) < len(requests), "some calls shared a pass"
    assert all(rows % ALIGN == 0 for rows in passes.rows)


def test_calls_larger_than_the_batch_limit_run_on_their_own() -> None:
    module = module_of(mlp_onnx([4, 16, 2], seed=3))
    passes = Passes()
    batcher = PredictBatcher(module, 4, delay_seconds=0.05, max_rows=64, on_pass=passes)
    rng = np.random.default_rng(1)
    requests = [rng.normal(size=(100, 4)).astype(np.float32)] + [rng.normal(size=(20, 4)).astype(np.float32)] * 6
    outputs = concurrent_calls(batcher, requests)
    for X, out in zip(requests, outputs, strict=False):
        np.testing.assert_array_equal(out, PredictBatcher(module, 4, coalesce=False)(X))
    assert max(passes.rows) <= 104 and all(r <= 64 for r, c in zip(passes.rows, passes.calls, strict=False) if c > 1)


def test_a_bad_call_fails_alone() -> None:
    module = module_of(mlp_onnx([3, 8, 1], seed=2))
    batcher = PredictBatcher(module, 3, delay_seconds=0.05)
    good = np.ones((5, 3), dtype=np.float32)
    bad_width = np.ones((5, 4), dtype=np.float32)
    bad_value = good.copy()
    bad_value[2, 1] = np.nan
    start = threading.Barrier(3)

    def one(X: np.ndarray) -> np.ndarray | Exception:
        start.wait(timeout=30)
        try:
            return batcher(X)
        except InvalidArgumentError as exc:
            return exc

    with ThreadPoolExecutor(3) as pool:
        ok, wrong_width, nan = pool.map(one, [good, bad_width, bad_value])
    assert isinstance(ok, np.ndarray) and ok.shape == (5, 1)
    assert isinstance(wrong_width, InvalidArgumentError) and "4 columns" in str(wrong_width)
    assert isinstance(nan, InvalidArgumentError) and "row 2, column 1" in str(nan)


@pytest.mark.parametrize("rows", [0, 1, 7, 8, 9])
def test_padding_never_shows(rows: int) -> None:
    model = mlp_onnx([3, 8, 2], seed=4)
    X = np.random.default_rng(rows).normal(size=(rows, 3)).astype(np.float32)
    out = PredictBatcher(module_of(model), 3)(X)
    assert out.shape == (rows, 2)
    if rows:
        np.testing.assert_allclose(out, onnx_eval(model, X), rtol=1e-5, atol=1e-6)


class Gated(torch.nn.Module):
    """A linear map whose forward waits for ``gate`` once ``armed`` (to hold a pass open)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.armed:
            self.entered.set()
            assert self.gate.wait(timeout=30)
        return self.linear(X)


def test_inline_runs_a_small_call_alone_with_the_bits_of_a_worker_call() -> None:
    model = mlp_onnx([3, 8, 2], seed=6)
    passes = Passes()
    batcher = PredictBatcher(module_of(model), 3, on_pass=passes)
    X = np.random.default_rng(6).normal(size=(5, 3)).astype(np.float32)
    assert batcher.try_inline(X, max_seconds=1.0) is None, "no small pass measured yet"
    through_worker = batcher(X)
    assert batcher.small_pass_seconds is not None
    inline = batcher.try_inline(X, max_seconds=1.0)
    assert inline is not None
    np.testing.assert_array_equal(inline, through_worker)
    np.testing.assert_allclose(inline, onnx_eval(model, X), rtol=1e-5, atol=1e-6)
    assert passes.calls == [1, 1]
    assert batcher.try_inline(X, max_seconds=0.0) is None, "0 turns it off"
    big = np.random.default_rng(7).normal(size=(4 * SMALL_ROWS + 3, 3)).astype(np.float32)
    assert batcher.estimated_seconds(big.shape[0]) is None
    assert batcher.try_inline(big, max_seconds=1.0) is None, "no large pass measured yet"
    big_through_worker = batcher(big)
    estimate = batcher.estimated_seconds(big.shape[0])
    assert estimate is not None and estimate > 0
    assert batcher.try_inline(big, max_seconds=estimate / 4) is None, "a large pass over the budget stays in a worker"
    big_inline = batcher.try_inline(big, max_seconds=max(1.0, 2 * estimate))
    assert big_inline is not None
    np.testing.assert_array_equal(big_inline, big_through_worker)
    np.testing.assert_allclose(big_inline, onnx_eval(model, big), rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="4 columns"):
        batcher.try_inline(np.ones((2, 4), dtype=np.float32), max_seconds=1.0)
    delayed = PredictBatcher(module_of(model), 3, delay_seconds=0.01)
    delayed(X)
    assert delayed.try_inline(X, max_seconds=1.0) is None, "calls that wait for company never run inline"


def test_inline_defers_to_a_running_pass_and_hands_its_lead_on() -> None:
    module = Gated().eval().requires_grad_(False)
    batcher = PredictBatcher(module, 3)
    X = np.ones((2, 3), dtype=np.float32)
    expected = batcher(X)
    module.armed = True
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(batcher, X)  # holds a pass open
        assert module.entered.wait(timeout=30)
        assert batcher.try_inline(X, max_seconds=10.0) is None, "a pass is running: join it instead"
        module.gate.set()
        np.testing.assert_array_equal(running.result(timeout=30), expected)
        # an inline pass in progress: a worker call queues behind it and leads once it ends
        module.gate.clear()
        module.entered.clear()
        inline = pool.submit(batcher.try_inline, X, max_seconds=10.0)
        assert module.entered.wait(timeout=30)
        follower = pool.submit(batcher, X)
        deadline = time.monotonic() + 30
        while not batcher._pending and time.monotonic() < deadline:
            time.sleep(0.001)
        module.gate.set()
        np.testing.assert_array_equal(inline.result(timeout=30), expected)
        np.testing.assert_array_equal(follower.result(timeout=30), expected)
    assert batcher.try_inline(X, max_seconds=10.0) is not None, "the lead came back"
