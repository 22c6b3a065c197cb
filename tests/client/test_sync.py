"""The blocking client end to end against a real server.

Every pattern is checked by evaluating the ONNX bytes with onnxruntime
(``tests.models.onnx_eval``), never by the server's torch module.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from preimage.client import (
    CancelledError,
    Client,
    DeadlineExceededError,
    FeatureKind,
    InvalidArgumentError,
    InvertStatus,
    ModelNotFoundError,
    ModelSource,
    TrainProgress,
    TrainResult,
)
from tests.models import EXAMPLE_MODEL, ISSUE_SCHEMA, linear_onnx, mlp_onnx, onnx_eval

TOL = 1e-3
# onnxruntime and torch round differently in the last float32 bits.
SLACK = 1e-4

MIXED_W = np.array([[2.0, 0.5, 1.5, 0.0, 2.0, -1.0]], dtype=np.float32)
MIXED_B = [1.0]


def _check_patterns(model: bytes | Path, X: np.ndarray, Y: np.ndarray, target: float, lo: float, hi: float) -> None:
    truth = onnx_eval(model, X)
    assert np.all(np.abs(truth - target) <= TOL + SLACK), np.abs(truth - target).max()
    np.testing.assert_allclose(Y, truth, atol=SLACK)
    assert X.min() >= lo and X.max() <= hi


def test_register_predict_invert(client: Client, example_ref: str) -> None:
    info = client.model(example_ref)
    assert (info.input_width, info.output_width) == (10, 1)
    assert info.schema.feature_names[0] == "enemy_density"
    assert info.sha256 and info.size_bytes == EXAMPLE_MODEL.stat().st_size

    rng = np.random.default_rng(0)
    X = rng.random((64, 10), dtype=np.float32)
    np.testing.assert_allclose(client.predict(example_ref, X), onnx_eval(EXAMPLE_MODEL, X), atol=SLACK)
    assert client.predict(example_ref, X[0]).shape == (1, 1)  # a 1-D array is one row

    stream = client.invert(example_ref, target=7.0, n=50, seed=1)
    patterns = list(stream)
    assert len(patterns) == 50
    assert stream.summary is not None
    assert stream.summary.status is InvertStatus.COMPLETE
    assert stream.summary.returned == 50 and str(stream.summary.model) == example_ref
    X = np.stack([p.input for p in patterns])
    Y = np.stack([p.output for p in patterns])
    _check_patterns(EXAMPLE_MODEL, X, Y, 7.0, 0.0, 1.0)
    np.testing.assert_allclose(np.stack([p.error for p in patterns]), np.abs(Y - 7.0), atol=1e-6)
    assert all(p.features is None for p in patterns)


def test_to_numpy_batches_and_seed(client: Client, example_ref: str) -> None:
    arrays = client.invert(example_ref, target=4.0, n=40, seed=5, batch_size=8).to_numpy()
    assert arrays.inputs.shape == (40, 10) and arrays.outputs.shape == (40, 1) and arrays.errors.shape == (40, 1)
    _check_patterns(EXAMPLE_MODEL, arrays.inputs, arrays.outputs, 4.0, 0.0, 1.0)

    # The same seed replays the same stream, whichever way it is read.
    stream = client.invert(example_ref, target=4.0, n=40, seed=5, batch_size=8)
    batches = list(stream.batches())
    assert len(batches) >= 2 and all(len(b.inputs) <= 8 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.inputs for b in batches]), arrays.inputs)
    assert stream.summary is not None and stream.summary.returned == 40


def test_target_range_bounds_and_fixed(client: Client, example_ref: str) -> None:
    X, _, _ = client.invert(
        example_ref,
        target_range=(6.5, 7.5),
        n=20,
        seed=2,
        bounds={"": (0.1, 0.9), "enemy_speed": (0.2, 0.4)},
        fixed={"visibility": 0.5},
    ).to_numpy()
    assert len(X) == 20
    truth = onnx_eval(EXAMPLE_MODEL, X)
    assert np.all((truth >= 6.5 - SLACK) & (truth <= 7.5 + SLACK))
    assert X.min() >= 0.1 - 1e-6 and X.max() <= 0.9 + 1e-6
    assert np.all((X[:, 1] >= 0.2 - 1e-6) & (X[:, 1] <= 0.4 + 1e-6))
    np.testing.assert_allclose(X[:, 9], 0.5, atol=1e-6)


def test_named_rows_and_patterns(client: Client, unique_name: str) -> None:
    model = linear_onnx(MIXED_W, MIXED_B)
    info = client.register(model, unique_name, ISSUE_SCHEMA)
    assert [f.kind for f in info.schema.inputs] == [
        FeatureKind.CONTINUOUS,
        FeatureKind.INTEGER,
        FeatureKind.BINARY,
        FeatureKind.CATEGORICAL,
    ]
    rows = [
        {"speed": 0.25, "walls": 3, "has_boss": True, "theme": "lava"},
        {"speed": 1.0, "walls": 0, "has_boss": 0, "theme": "forest"},
    ]
    # The one-hot encoding written out by hand, independently of the client.
    encoded = np.array([[0.25, 3, 1, 0, 1, 0], [1.0, 0, 0, 0, 0, 1]], dtype=np.float32)
    np.testing.assert_allclose(client.predict(info.ref, rows), onnx_eval(model, encoded), atol=SLACK)
    np.testing.assert_allclose(client.predict(info.ref, rows[0]), onnx_eval(model, encoded[:1]), atol=SLACK)

    stream = client.invert(info.ref, target=5.0, n=15, seed=4, named=True, fixed={"theme": "lava"})
    patterns = list(stream)
    assert len(patterns) == 15
    assert stream.schema is not None and stream.schema.feature_names == ["speed", "walls", "has_boss", "theme"]
    for p in patterns:
        assert p.features is not None
        assert p.features["theme"] == "lava"
        assert isinstance(p.features["walls"], int) and 0 <= p.features["walls"] <= 12
        assert p.features["has_boss"] in (0, 1)
    X = np.stack([p.input for p in patterns])
    _check_patterns(model, X, np.stack([p.output for p in patterns]), 5.0, 0.0, 12.0)
    # Named patterns go back in through Predict by name and give the same outputs.
    again = client.predict(info.ref, [p.features for p in patterns if p.features is not None])
    np.testing.assert_allclose(again, onnx_eval(model, X), atol=SLACK)


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"speed": 0.1, "walls": 1, "has_boss": 0, "theme": "water"}, "unknown level 'water'"),
        ({"speed": 0.1, "walls": 1, "has_boss": 0, "theme": "ice", "extra": 1}, "unknown feature(s) ['extra']"),
        ({"speed": 0.1, "walls": 1, "theme": "ice"}, "missing feature(s) ['has_boss']"),
        ({"speed": "fast", "walls": 1, "has_boss": 0, "theme": "ice"}, "expected a number"),
    ],
)
def test_named_row_errors_are_found_client_side(client: Client, unique_name: str, row: dict, needle: str) -> None:
    info = client.register(linear_onnx(MIXED_W, MIXED_B), unique_name, ISSUE_SCHEMA)
    with pytest.raises(InvalidArgumentError) as caught:
        client.predict(info.ref, [row])
    assert needle in caught.value.message
    assert caught.value.code is None and caught.value.field == "rows[0]"


def test_versions_aliases_delete(client: Client, unique_name: str, example_path: Path) -> None:
    first = client.register(example_path, unique_name)
    second = client.register(example_path.read_bytes(), unique_name)
    assert (first.version, second.version) == (1, 2)
    assert first.source is ModelSource.UPLOAD and first.created_at is not None
    assert [m.version for m in client.models(unique_name, all_versions=True)] == [1, 2]
    assert [m.ref for m in client.models(unique_name)] == [second.ref]
    assert client.model(unique_name).latest and client.model(unique_name).version == 2

    assert client.alias(unique_name, "prod", 1).aliases == ("prod",)
    assert client.model(f"{unique_name}@prod").version == 1
    client.unalias(unique_name, "prod")
    with pytest.raises(ModelNotFoundError):
        client.model(f"{unique_name}@prod")

    assert [m.ref for m in client.delete(f"{unique_name}:1")] == [first.ref]
    assert [m.ref for m in client.delete(unique_name, all_versions=True)] == [second.ref]
    assert client.models(unique_name) == []


def test_register_schema_file_and_default_bounds(client: Client, unique_name: str, tmp_path: Path) -> None:
    model = linear_onnx(np.ones((1, 3), np.float32), [0.0])
    bounded = client.register(model, unique_name, bounds=(-2.0, 3.0))
    assert [(f.min, f.max) for f in bounded.schema.inputs] == [(-2.0, 3.0)] * 3
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"inputs": [{"name": n, "min": 0, "max": 1} for n in "abc"]}))
    named = client.register(model, unique_name, str(path))
    assert named.schema.feature_names == ["a", "b", "c"] and named.version == 2


def test_model_over_4_mib_registers(client: Client, unique_name: str) -> None:
    model = mlp_onnx([10, 1100, 1000, 1], seed=3)
    assert len(model) > 4 * 2**20
    info = client.register(model, unique_name, bounds=(0.0, 1.0))
    assert info.size_bytes == len(model)
    X = np.random.default_rng(1).random((8, 10), dtype=np.float32)
    np.testing.assert_allclose(client.predict(info.ref, X), onnx_eval(model, X), atol=1e-4)


def test_cancel_midway_stops_the_stream(client: Client, example_ref: str) -> None:
    stream = client.invert(example_ref, target=7.0, n=2_000_000, seed=0, batch_size=16, max_seconds=120)
    first = next(stream)
    assert abs(float(onnx_eval(EXAMPLE_MODEL, first.input[None])[0, 0]) - 7.0) <= TOL + SLACK
    stream.cancel()
    assert stream.cancelled and list(stream) == [] and stream.summary is None
    assert client.health() == "SERVING"


def test_context_manager_cancels(client: Client, example_ref: str) -> None:
    with client.invert(example_ref, target=7.0, n=2_000_000, seed=0, batch_size=16) as stream:
        next(stream)
    assert stream.cancelled


def test_deadline_ends_a_long_stream(client: Client, example_ref: str) -> None:
    stream = client.invert(example_ref, target=7.0, n=5_000_000, seed=0, timeout=2.0)
    with pytest.raises(DeadlineExceededError) as caught:
        for _ in stream:
            pass
    assert caught.value.request_id == stream.request_id
    # A deadline spent before the call is made fails at once, whatever the server's speed.
    with pytest.raises(DeadlineExceededError) as spent:
        client.predict(example_ref, np.zeros((1, 10), np.float32), timeout=1e-9)
    assert spent.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.health() == "SERVING"


def _difficulty_table(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.random(rows), rng.random(rows)
    theme = rng.choice(["ice", "lava"], rows)
    y = 1.0 + 4.0 * a + 2.0 * b + np.where(theme == "lava", 1.5, 0.0)
    return {"a": a, "b": b, "theme": theme, "difficulty": y}


def test_train_streams_progress_then_a_registered_model(client: Client, unique_name: str) -> None:
    table = _difficulty_table(600, seed=0)
    run = client.train(table, name=unique_name, target="difficulty", categorical=["theme"], epochs=40, seed=1)
    events = list(run)
    assert isinstance(events[-1], TrainResult) and run.result is events[-1]
    progress = [e for e in events if isinstance(e, TrainProgress)]
    assert progress and progress[0].epoch == 1 and progress[-1].epoch <= 40
    result = run.result
    assert result.model.source is ModelSource.TRAIN and result.model.name == unique_name
    assert result.metrics[0].r2 > 0.9
    theme = result.model.schema.inputs[result.model.schema.feature_names.index("theme")]
    assert theme.kind is FeatureKind.CATEGORICAL and set(theme.levels) == {"ice", "lava"}
    rows = [{"a": 0.5, "b": 0.5, "theme": "lava"}, {"a": 0.1, "b": 0.9, "theme": "ice"}]
    truth = np.array([[1 + 2 + 1 + 1.5], [1 + 0.4 + 1.8]])
    np.testing.assert_allclose(client.predict(result.model.ref, rows), truth, atol=0.5)


def test_train_errors_and_cancel(client: Client, unique_name: str) -> None:
    table = _difficulty_table(600, seed=1)
    with pytest.raises(InvalidArgumentError) as caught:
        client.train(table, name=unique_name, target="no_such_column", categorical=["theme"]).wait()
    assert "no_such_column" in caught.value.message

    run = client.train(table, name=unique_name, target="difficulty", categorical=["theme"], epochs=100_000)
    assert isinstance(next(e for e in run if isinstance(e, TrainProgress)), TrainProgress)
    run.cancel()
    with pytest.raises(CancelledError):
        run.wait()
    assert client.models(unique_name) == []


def test_csv_training_data(client: Client, unique_name: str, tmp_path: Path) -> None:
    table = _difficulty_table(300, seed=2)
    path = tmp_path / "levels.csv"
    columns = [table[name] for name in ("a", "b", "theme", "difficulty")]
    lines = ["a,b,theme,difficulty"] + [",".join(str(v) for v in row) for row in zip(*columns, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    result = client.train(path, name=unique_name, target="difficulty", categorical=["theme"], epochs=5, seed=0).wait()
    assert result.rows == 300 and result.model.input_width == 4


def test_health(client: Client) -> None:
    client.wait_ready(timeout=10)
    assert client.health() == "SERVING"
