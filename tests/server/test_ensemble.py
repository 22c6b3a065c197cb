"""A deep ensemble through a real server: Train exports mean and spread, Invert keeps the spread bounded.

Every output is checked with onnxruntime on the registered bytes, never with the server's module.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from preimage.server.app import RunningServer, start_server
from preimage.server.settings import Settings
from preimage.v1 import inference_pb2
from tests.models import onnx_eval
from tests.server.conftest import Stubs, connect

MEMBERS = 4
TARGET = 2.5
TOLERANCE = 0.01


def true_function(X: np.ndarray) -> np.ndarray:
    return 1.0 + 2.0 * X[:, 0] + np.sin(3.0 * X[:, 1])


def train_requests(rows: int, **config: Any) -> Iterator[inference_pb2.TrainRequest]:
    rng = np.random.default_rng(0)
    X = rng.random((rows, 2))
    y = true_function(X) + rng.normal(0.0, 0.05, rows)
    options: dict[str, Any] = dict(
        name="ens", target_columns=["y"], hidden_sizes=[16, 16], epochs=60, batch_size=64, seed=5, ensemble=MEMBERS
    )
    options.update(config)
    yield inference_pb2.TrainRequest(config=inference_pb2.TrainConfig(**options))
    columns = [inference_pb2.Column(name=f"x{j}", numbers=X[:, j].tolist()) for j in range(2)]
    columns.append(inference_pb2.Column(name="y", numbers=y.tolist()))
    yield inference_pb2.TrainRequest(data=inference_pb2.TrainDataChunk(columns=columns))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Stubs, list[Any], bytes]]:
    """A server holding one trained ensemble, the Train events, and the registered ONNX bytes."""
    settings = Settings(
        registry_dir=tmp_path_factory.mktemp("ensemble") / "registry", address="127.0.0.1:0", shutdown_grace_seconds=0
    )
    server = start_server(settings)
    stubs = connect(server.address)
    events = list(stubs.inference.Train(train_requests(600), timeout=300))
    sha = events[-1].result.model.sha256
    data = (settings.registry_dir / "blobs" / f"{sha}.onnx").read_bytes()
    yield server, stubs, events, data
    stubs.channel.close()
    server.stop()


def invert(stubs: Stubs, **fields: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    """Inputs and outputs of every streamed pattern, and the summary."""
    request = dict(model_ref="ens", targets=[inference_pb2.Target(value=TARGET)], count=100, tolerance=TOLERANCE)
    request.update(fields)
    responses = list(stubs.inference.Invert(inference_pb2.InvertRequest(**request), timeout=120))
    batches = [r.patterns for r in responses if r.WhichOneof("event") == "patterns"]
    inputs = [np.asarray(b.inputs.values, np.float32).reshape(b.inputs.rows, b.inputs.cols) for b in batches]
    outputs = [np.asarray(b.outputs.values, np.float32).reshape(b.outputs.rows, b.outputs.cols) for b in batches]
    return (
        np.concatenate(inputs) if inputs else np.zeros((0, 2), np.float32),
        np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32),
        responses[-1].summary,
    )


def test_train_exports_mean_then_spread_declared_in_the_schema(trained: tuple[Any, Stubs, list[Any], bytes]) -> None:
    _, stubs, events, data = trained
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    # One network given, then MEMBERS - 1 further members, each reported as its own fit.
    assert {p.candidates for p in progress} == {MEMBERS} and {p.candidate for p in progress} == set(range(MEMBERS))
    result = events[-1].result
    assert result.ensemble == MEMBERS and list(result.hidden_sizes) == [16, 16]
    outputs = [(o.name, o.spread_of) for o in result.model.schema.outputs]
    assert outputs == [("y", ""), ("y_spread", "y")] and result.model.output_width == 2
    (metrics,) = result.metrics
    assert metrics.output == "y" and metrics.r2 > 0.95
    assert 0 < metrics.spread_median < metrics.spread_p95
    stored = result.model.training
    assert stored.ensemble == MEMBERS and stored.metrics[0].spread_p95 == metrics.spread_p95

    # The registered bytes, by onnxruntime: column 0 is the mean (it fits the true function),
    # column 1 a spread (positive: the members differ).
    rng = np.random.default_rng(7)
    X = rng.random((400, 2)).astype(np.float32)
    Y = onnx_eval(data, X)
    assert Y.shape == (400, 2)
    assert np.sqrt(np.mean((Y[:, 0] - true_function(X)) ** 2)) < 0.1
    assert np.all(Y[:, 1] > 0) and np.median(Y[:, 1]) < 0.2
    # Outside the training box the members disagree more than inside it.
    far = onnx_eval(data, (X * 3.0 + 2.0).astype(np.float32))
    assert np.median(far[:, 1]) > 2 * np.median(Y[:, 1])

    # Predict answers both columns, means then spreads, as onnxruntime does.
    response = stubs.inference.Predict(
        inference_pb2.PredictRequest(
            model_ref="ens", inputs={"rows": 400, "cols": 2, "values": X.ravel().tolist()}, raw_outputs=True
        ),
        timeout=30,
    )
    assert (response.outputs.rows, response.outputs.cols) == (400, 2)
    predicted = np.frombuffer(response.outputs.raw, "<f4").reshape(400, 2)
    np.testing.assert_allclose(predicted, Y, rtol=1e-4, atol=1e-5)


def test_invert_with_max_uncertainty_keeps_every_spread_below_it(trained: tuple[Any, Stubs, list[Any], bytes]) -> None:
    _, stubs, events, data = trained
    limit = events[-1].result.metrics[0].spread_median
    X, F, summary = invert(stubs, seed=1, max_uncertainty=limit)
    assert summary.status == inference_pb2.INVERT_STATUS_COMPLETE, summary.message
    assert X.shape == (100, 2) and F.shape == (100, 2)  # the means, then the spreads
    Y = onnx_eval(data, X)
    assert np.all(np.abs(Y[:, 0] - TARGET) <= TOLERANCE)
    assert np.all(Y[:, 1] <= limit)
    np.testing.assert_allclose(F, Y, rtol=1e-4, atol=1e-5)

    # Without the bound the same request streams the means only, and some spreads exceed it:
    # the bound changed which patterns came back.
    X_free, F_free, summary = invert(stubs, seed=1)
    assert summary.status == inference_pb2.INVERT_STATUS_COMPLETE and F_free.shape == (100, 1)
    Y_free = onnx_eval(data, X_free)
    assert np.all(np.abs(Y_free[:, 0] - TARGET) <= TOLERANCE)
    assert np.mean(Y_free[:, 1] > limit) > 0.1


def test_shared_runs_are_keyed_on_max_uncertainty(trained: tuple[Any, Stubs, list[Any], bytes]) -> None:
    _, stubs, events, data = trained
    limit = events[-1].result.metrics[0].spread_median
    # Unseeded calls share runs per key; a call without the bound must not get the bounded run's
    # patterns, nor the other way round.
    X, F, summary = invert(stubs, count=50, max_uncertainty=limit)
    assert summary.shared and summary.status == inference_pb2.INVERT_STATUS_COMPLETE
    assert F.shape == (50, 2) and np.all(onnx_eval(data, X)[:, 1] <= limit)
    _, F_free, summary = invert(stubs, count=50)
    assert summary.shared and F_free.shape == (50, 1)


def test_unreachable_max_uncertainty_is_a_result_saying_so(trained: tuple[Any, Stubs, list[Any], bytes]) -> None:
    _, stubs, _, _ = trained
    X, _, summary = invert(
        stubs, seed=2, max_uncertainty=1e-7, budget=inference_pb2.InvertBudget(max_seconds=20), count=10
    )
    assert len(X) == 0
    assert summary.status in (inference_pb2.INVERT_STATUS_UNREACHABLE, inference_pb2.INVERT_STATUS_BUDGET_SPENT)
    assert "max_uncertainty" in summary.message and len(summary.closest_output) == 2


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"max_uncertainty": math.nan}, ["max_uncertainty", "positive finite"]),
        ({"max_uncertainty": 0.0}, ["max_uncertainty", "positive finite"]),
        ({"max_uncertainty": -0.5, "seed": 1}, ["max_uncertainty", "positive finite"]),
        # One target per output that is not a spread: a target for the spread column is refused.
        (
            {"targets": [inference_pb2.Target(value=TARGET), inference_pb2.Target(value=0.0)]},
            ["1 output to target", "1 spread output", "2 targets"],
        ),
    ],
)
def test_bad_invert_requests_on_an_ensemble(
    trained: tuple[Any, Stubs, list[Any], bytes], fields: dict[str, Any], words: list[str]
) -> None:
    _, stubs, _, _ = trained
    with pytest.raises(grpc.RpcError) as caught:
        invert(stubs, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in caught.value.details(), caught.value.details()


def test_ensemble_option_out_of_range_is_refused(trained: tuple[Any, Stubs, list[Any], bytes]) -> None:
    _, stubs, _, _ = trained
    with pytest.raises(grpc.RpcError) as caught:
        list(stubs.inference.Train(train_requests(100, name="too-many", ensemble=33), timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ensemble" in caught.value.details() and "32" in caught.value.details()
