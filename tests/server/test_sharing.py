"""Concurrent Invert calls: unseeded ones share a run, seeded ones never depend on who else is running."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from preimage.server.app import RunningServer, start_server
from preimage.server.settings import Settings
from preimage.v1 import inference_pb2
from tests.models import EXAMPLE_MODEL, onnx_eval
from tests.server.conftest import Stubs, connect, register
from tests.server.test_end_to_end import collect

TARGET, TOLERANCE = 7.0, 1e-3


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Stubs]]:
    settings = Settings(
        registry_dir=tmp_path_factory.mktemp("sharing") / "r",
        address="127.0.0.1:0",
        max_concurrent_inverts=2,
        shutdown_grace_seconds=0,
    )
    running = start_server(settings)
    stubs = connect(running.address)
    register(stubs, "difficulty", EXAMPLE_MODEL.read_bytes())
    yield running, stubs
    stubs.channel.close()
    running.stop()


def request(n: int, seed: int | None = None, target: float = TARGET) -> inference_pb2.InvertRequest:
    message = inference_pb2.InvertRequest(
        model_ref="difficulty", targets=[inference_pb2.Target(value=target)], count=n, tolerance=TOLERANCE
    )
    if seed is not None:
        message.seed = seed
    return message


def check_valid(model: bytes, X: np.ndarray) -> None:
    """Every pattern inside [0, 1] and within the tolerance of the target, by onnxruntime."""
    assert X.size and ((X >= 0) & (X <= 1)).all()
    assert np.abs(onnx_eval(model, X)[:, 0] - TARGET).max() <= TOLERANCE + 1e-5


def concurrently(stubs: Stubs, requests: list[inference_pb2.InvertRequest]) -> list[tuple]:
    start = threading.Barrier(len(requests))

    def one(message: inference_pb2.InvertRequest) -> tuple:
        start.wait(timeout=30)
        return collect(stubs.inference.Invert(message, timeout=120))

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_same_seed_same_patterns_whatever_else_runs(
    shared_server: tuple[RunningServer, Stubs], example_model_bytes: bytes
) -> None:
    _, stubs = shared_server
    alone = collect(stubs.inference.Invert(request(50, seed=1234), timeout=120))
    # The same call again among 23 others: unseeded ones (shared) and seeded ones (queued behind the limit of 2).
    others = [request(20) for _ in range(15)] + [request(30, seed=s) for s in range(8)]
    results = concurrently(stubs, [request(50, seed=1234), *others])
    loaded = results[0]
    assert loaded[3].seed == alone[3].seed == 1234 and not loaded[3].shared
    np.testing.assert_array_equal(loaded[0], alone[0])
    np.testing.assert_array_equal(loaded[1], alone[1])
    for X, _, _, summary, _ in results:
        assert summary.status == inference_pb2.INVERT_STATUS_COMPLETE
        check_valid(example_model_bytes, X)


def test_unseeded_calls_take_disjoint_slices_of_a_shared_run(
    shared_server: tuple[RunningServer, Stubs], example_model_bytes: bytes
) -> None:
    running, stubs = shared_server
    results = concurrently(stubs, [request(20) for _ in range(32)])
    rows = []
    for X, Y, _E, summary, _ in results:
        assert summary.status == inference_pb2.INVERT_STATUS_COMPLETE
        assert summary.returned == len(X) == 20
        assert summary.shared and summary.seed == 0
        check_valid(example_model_bytes, X)
        np.testing.assert_allclose(Y[:, 0], onnx_eval(example_model_bytes, X)[:, 0], atol=1e-5)
        rows.append(X)
    every = np.concatenate(rows)
    assert len(np.unique(every, axis=0)) == len(every), "no pattern is given to two calls, nor twice to one"
    shared = running.server.metrics.registry.get_sample_value("preimage_invert_shared_calls_total")
    assert shared is not None and shared >= 32


def test_shared_patterns_follow_the_distribution_of_a_run_of_its_own(
    shared_server: tuple[RunningServer, Stubs], example_model_bytes: bytes
) -> None:
    _, stubs = shared_server
    solo = collect(stubs.inference.Invert(request(2000, seed=99), timeout=120))[0]
    shared = np.concatenate([r[0] for r in concurrently(stubs, [request(100) for _ in range(20)])])
    assert shared.shape == solo.shape == (2000, 10)
    check_valid(example_model_bytes, shared)
    # Two-sample Kolmogorov-Smirnov per feature, at a 1e-4 level (Bonferroni over 10 features).
    critical = np.sqrt(-np.log(1e-5 / 2) / 2) * np.sqrt(2 / 2000)
    grid = np.linspace(0, 1, 1001)
    for j in range(10):
        a = np.searchsorted(np.sort(solo[:, j]), grid, side="right") / 2000
        b = np.searchsorted(np.sort(shared[:, j]), grid, side="right") / 2000
        assert np.abs(a - b).max() < critical, f"feature {j} differs"


def test_an_unreachable_target_reaches_every_shared_caller(shared_server: tuple[RunningServer, Stubs]) -> None:
    _, stubs = shared_server
    results = concurrently(stubs, [request(20, target=50.0) for _ in range(4)])
    for X, _, _, summary, _ in results:
        assert summary.status == inference_pb2.INVERT_STATUS_UNREACHABLE
        assert len(X) == 0 and summary.returned == 0
        assert "No input within the constraints reaches the target" in summary.message
        assert summary.closest_output and summary.closest_output[0] < 50.0


def test_sharing_can_be_turned_off(tmp_path: Path, example_model_bytes: bytes) -> None:
    settings = Settings(registry_dir=tmp_path / "r", address="127.0.0.1:0", invert_sharing=False)
    with start_server(settings) as running:
        stubs = connect(running.address)
        register(stubs, "difficulty", example_model_bytes)
        summary = collect(stubs.inference.Invert(request(20), timeout=120))[3]
        assert not summary.shared and summary.seed != 0 and summary.forward_passes > 0
        # The same request again (its parse is remembered): a run of its own with a fresh seed.
        again = collect(stubs.inference.Invert(request(20), timeout=120))
        assert not again[3].shared and again[3].seed not in (0, summary.seed)
        stubs.channel.close()
