"""Train through a real server: progress streamed, the model registered and invertible."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from preimage.server.app import RunningServer
from preimage.v1 import inference_pb2, registry_pb2
from tests.models import onnx_eval
from tests.server.conftest import Stubs


def true_difficulty(X: np.ndarray, theme: np.ndarray) -> np.ndarray:
    bonus = np.select([theme == "lava", theme == "ice"], [1.5, 0.5], 0.0)
    return 1.0 + 3.0 * X[:, 0] + 2.0 * X[:, 1] ** 2 + X[:, 2] * X[:, 3] + 0.5 * X[:, 4] + bonus


def table(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.random((rows, 4))
    walls = rng.integers(0, 6, rows).astype(float)
    X = np.column_stack([X, walls / 5.0])
    theme = rng.choice(["ice", "lava", "forest"], rows)
    return X, walls, theme, true_difficulty(X, theme)


def train_requests(
    X: np.ndarray, walls: np.ndarray, theme: np.ndarray, y: np.ndarray, *, name: str, epochs: int, chunk: int = 500
) -> Iterator[inference_pb2.TrainRequest]:
    config = inference_pb2.TrainConfig(
        name=name,
        target_columns=["difficulty"],
        categorical_columns=["theme"],
        hidden_sizes=[32, 32],
        epochs=epochs,
        batch_size=128,
        learning_rate=3e-3,
        seed=3,
        total_rows=len(y),
    )
    yield inference_pb2.TrainRequest(config=config)
    for start in range(0, len(y), chunk):
        part = slice(start, start + chunk)
        columns = [inference_pb2.Column(name=f"f{j}", numbers=X[part, j].tolist()) for j in range(4)]
        columns += [
            inference_pb2.Column(name="walls", numbers=walls[part].tolist()),
            inference_pb2.Column(name="theme", strings=theme[part].tolist()),
            inference_pb2.Column(name="difficulty", numbers=y[part].tolist()),
        ]
        yield inference_pb2.TrainRequest(data=inference_pb2.TrainDataChunk(columns=columns))


def blob(server: RunningServer, sha256: str) -> bytes:
    return (server.server.settings.registry_dir / "blobs" / f"{sha256}.onnx").read_bytes()


def test_train_then_invert(server: RunningServer, stubs: Stubs) -> None:
    X, walls, theme, y = table(3000)
    events = list(stubs.inference.Train(train_requests(X, walls, theme, y, name="levels", epochs=40), timeout=600))
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    assert progress and progress[0].epoch == 1 and progress[-1].epoch <= 40
    assert all(p.elapsed_seconds >= 0 and p.eta_seconds >= 0 for p in progress)
    result = events[-1].result
    model = result.model
    assert (model.name, model.version, model.source) == ("levels", 1, registry_pb2.MODEL_SOURCE_TRAIN)
    kinds = {f.name: f.kind for f in model.schema.inputs}
    assert kinds["walls"] == 2 and kinds["theme"] == 4  # integer, categorical (one-hot, 3 columns)
    assert model.input_width == 8 and model.HasField("statistics") and model.statistics.rows == 3000
    assert result.metrics[0].output == "difficulty" and result.metrics[0].r2 > 0.95
    metrics = result.metrics[0]
    assert 0 < metrics.residual_std < metrics.residual_p95 and metrics.residual_std**2 <= 1.01 * metrics.mse
    assert result.stop_reason in (inference_pb2.STOP_REASON_CONVERGED, inference_pb2.STOP_REASON_MAX_EPOCHS)
    assert list(result.hidden_sizes) == [32, 32] and result.batch_size == 128
    (candidate,) = result.candidates
    # The registry keeps the report, so GetModel (and `preimage show`) can tell it later.
    stored = model.training
    assert stored.epochs_run == result.epochs_run and list(stored.hidden_sizes) == [32, 32]
    assert stored.stop_reason in ("converged", "max_epochs") and stored.metrics[0].mse == metrics.mse
    assert stored.metrics[0].residual_p95 == metrics.residual_p95 and stored.rows == 3000
    assert candidate.selected and candidate.epochs_run == result.epochs_run == progress[-1].epoch

    # The registered ONNX takes raw values: check predictions on fresh rows with onnxruntime.
    onnx_bytes = blob(server, model.sha256)
    Xt, walls_t, theme_t, yt = table(500, seed=9)
    levels = next(f.levels for f in model.schema.inputs if f.name == "theme")
    one_hot = (theme_t[:, None] == np.asarray(levels)[None, :]).astype(np.float32)
    raw = np.column_stack([Xt[:, :4], walls_t, one_hot]).astype(np.float32)
    assert np.mean(np.abs(onnx_eval(onnx_bytes, raw)[:, 0] - yt)) < 0.15

    # Invert the trained model at once; the TRUE function says the patterns hit the target.
    responses = list(
        stubs.inference.Invert(
            inference_pb2.InvertRequest(
                model_ref="levels", targets=[inference_pb2.Target(value=4.0)], count=200, seed=1, tolerance=1e-3
            ),
            timeout=120,
        )
    )
    inputs = np.concatenate(
        [
            np.asarray(r.patterns.inputs.values).reshape(r.patterns.inputs.rows, -1)
            for r in responses
            if r.WhichOneof("event") == "patterns"
        ]
    )
    assert len(inputs) == 200
    assert np.all(np.abs(onnx_eval(onnx_bytes, inputs)[:, 0] - 4.0) <= 1e-3)
    theme_of = np.asarray(levels)[inputs[:, 5:].argmax(axis=1)]
    assert np.all(inputs[:, 5:].sum(axis=1) == 1) and np.all(inputs[:, 4] == np.round(inputs[:, 4]))
    real = true_difficulty(np.column_stack([inputs[:, :4], inputs[:, 4] / 5.0]), theme_of)
    assert np.mean(np.abs(real - 4.0) <= 0.5) >= 0.95


def test_bad_data_names_row_and_column(stubs: Stubs) -> None:
    X, walls, theme, y = table(100)
    y[41] = np.nan
    with pytest.raises(grpc.RpcError) as caught:
        list(stubs.inference.Train(train_requests(X, walls, theme, y, name="bad", epochs=5), timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "42" in caught.value.details() and "difficulty" in caught.value.details()
    assert list(stubs.registry.ListModels(registry_pb2.ListModelsRequest()).models) == []


def test_bad_model_name_is_refused_before_training(stubs: Stubs) -> None:
    X, walls, theme, y = table(100)
    with pytest.raises(grpc.RpcError) as caught:
        list(stubs.inference.Train(train_requests(X, walls, theme, y, name="Bad Name", epochs=5), timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Bad Name" in caught.value.details()


def test_cancel_training_registers_nothing(server: RunningServer, stubs: Stubs) -> None:
    X, walls, theme, y = table(20000)
    stream = stubs.inference.Train(train_requests(X, walls, theme, y, name="slow", epochs=500), timeout=600)
    first = next(stream)
    assert first.WhichOneof("event") in ("progress", "warning")
    stream.cancel()
    deadline = time.monotonic() + 30
    while server.server.metrics.training_running._value.get() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.server.metrics.training_running._value.get() == 0
    assert list(stubs.registry.ListModels(registry_pb2.ListModelsRequest()).models) == []
    # Training stopped: the process is (nearly) idle afterwards.
    cpu = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - cpu < 0.5
    assert threading.active_count() < 100


def test_absurd_total_rows_hint_is_harmless(stubs: Stubs) -> None:
    X, walls, theme, y = table(200)
    requests = list(train_requests(X, walls, theme, y, name="hinted", epochs=2))
    requests[0].config.total_rows = 10**15  # a client's wrong hint must not allocate petabytes
    events = list(stubs.inference.Train(iter(requests), timeout=120))
    assert events[-1].result.model.name == "hinted" and events[-1].result.rows == 200


@pytest.mark.slow
def test_million_rows_by_twenty_columns_fit_the_message_limits(server: RunningServer, stubs: Stubs) -> None:
    rows, features, chunk = 1_000_000, 20, 6_000  # 6,000 rows x 21 doubles ~ 1 MB per message
    rng = np.random.default_rng(0)
    weights = rng.standard_normal(features)

    def requests() -> Iterator[inference_pb2.TrainRequest]:
        config = inference_pb2.TrainConfig(
            name="big-table",
            target_columns=["y"],
            hidden_sizes=[16],
            epochs=1,
            batch_size=8192,
            seed=1,
            total_rows=rows,
        )
        yield inference_pb2.TrainRequest(config=config)
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            X = rng.random((n, features))
            columns = [inference_pb2.Column(name=f"f{j}", numbers=X[:, j].tolist()) for j in range(features)]
            columns.append(inference_pb2.Column(name="y", numbers=(X @ weights).tolist()))
            message = inference_pb2.TrainRequest(data=inference_pb2.TrainDataChunk(columns=columns))
            assert message.ByteSize() < 4 * 2**20  # under gRPC's default limit, let alone the server's
            yield message

    events = list(stubs.inference.Train(requests(), timeout=600))
    result = events[-1].result
    assert result.rows == rows and result.model.input_width == features
    assert result.model.statistics.rows == rows


def test_concurrent_train_limit(tmp_path: Path) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from preimage.server.app import start_server
    from preimage.server.settings import Settings
    from tests.server.conftest import connect

    settings = Settings(registry_dir=tmp_path / "r", address="127.0.0.1:0", max_concurrent_trains=1, train_queue_size=0)
    with start_server(settings) as running:
        stubs = connect(running.address)
        X, walls, theme, y = table(20000)
        first = stubs.inference.Train(train_requests(X, walls, theme, y, name="slow", epochs=500), timeout=600)
        next(first)  # training has started and holds the only slot
        small = table(100)
        with pytest.raises(grpc.RpcError) as caught:
            list(stubs.inference.Train(train_requests(*small, name="second", epochs=2), timeout=60))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(caught.value)
        assert status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        first.cancel()
        stubs.channel.close()


def test_time_budget_from_the_config_ends_training_with_a_model(stubs: Stubs) -> None:
    X, walls, theme, y = table(500)
    requests = list(train_requests(X, walls, theme, y, name="budgeted", epochs=100_000))
    requests[0].config.patience = 100_000
    requests[0].config.time_budget = 1.0
    events = list(stubs.inference.Train(iter(requests), timeout=120))
    result = events[-1].result
    assert result.stop_reason == inference_pb2.STOP_REASON_TIME_BUDGET and result.model.version == 1
    assert any("time budget" in e.warning.message for e in events if e.WhichOneof("event") == "warning")


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan")])
def test_bad_time_budget_is_invalid_argument(stubs: Stubs, budget: float) -> None:
    X, walls, theme, y = table(50)
    requests = list(train_requests(X, walls, theme, y, name="nobudget", epochs=2))
    requests[0].config.time_budget = budget
    with pytest.raises(grpc.RpcError) as info:
        list(stubs.inference.Train(iter(requests), timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "time_budget" in (info.value.details() or "")
