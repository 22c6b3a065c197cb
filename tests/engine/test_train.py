"""Training: accuracy on a known function, inversion of the result, export, determinism, cancellation.

Trained models are checked through their ONNX bytes with onnxruntime (``onnx_eval``),
never through the torch module that produced them.
"""

from __future__ import annotations

import concurrent.futures
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from preimage.errors import CancelledError, DeadlineExceededError, InvalidArgumentError
from preimage.registry import Registry
from preimage.registry.schema import FeatureKind, FeatureSchema
from preimage.server.engine import export as export_module
from preimage.server.engine.data import Table, build_table
from preimage.server.engine.export import SCHEMA_METADATA_KEY, ExportError, export_onnx
from preimage.server.engine.invert import invert
from preimage.server.engine.space import InputSpace
from preimage.server.engine.train import (
    SEARCH_CANDIDATES,
    Ensemble,
    Rescale,
    Standardize,
    TrainingDivergedError,
    auto_batch_size,
    split_indices,
    train,
)
from preimage.server.engine.types import (
    InvertSpec,
    InvertStatus,
    InvertSummary,
    PatternBatch,
    StopReason,
    TargetSpec,
    TrainedModel,
    TrainProgress,
    TrainSpec,
    TrainWarning,
)
from tests.models import onnx_eval

FEATURES = tuple(f"x{i}" for i in range(10))


def true_difficulty(X: np.ndarray) -> np.ndarray:
    """The known function behind the synthetic table: 10 features in [0, 1] -> difficulty in (1, 10)."""
    z = (
        2.5 * (X[:, 0] + X[:, 1] - 1)
        + 1.5 * (X[:, 2] - X[:, 3])
        + 2.0 * (X[:, 4] * X[:, 5] - 0.25)
        + np.sin(3 * X[:, 6])
        - 0.8
        + 0.5 * (X[:, 7] - X[:, 8])
        + 0.2 * X[:, 9]
    )
    return 1 + 9 / (1 + np.exp(-z))


def difficulty_columns(rows: int, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    X = np.random.default_rng(seed).uniform(0, 1, (rows, len(FEATURES)))
    return X, {**{name: X[:, i] for i, name in enumerate(FEATURES)}, "difficulty": true_difficulty(X)}


def run(table: Table, spec: TrainSpec, stop: threading.Event | None = None) -> tuple[list[Any], TrainedModel]:
    """All events of one run, drained in a worker thread as the Train servicer does.

    On a machine whose cores are busy with other processes, torch's OpenMP team in
    pytest's main thread slows small steps down several times; a worker thread does not.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        events = worker.submit(lambda: list(train(table, spec, stop=stop))).result()
    assert isinstance(events[-1], TrainedModel)
    assert not any(isinstance(e, TrainedModel) for e in events[:-1])
    return events, events[-1]


@pytest.fixture(scope="module")
def difficulty() -> Iterator[tuple[np.ndarray, TrainSpec, list[Any], TrainedModel]]:
    """5,000 rows x 10 features, the default network (64, 64, silu), 40 epochs at a learning rate of 5e-3."""
    X, columns = difficulty_columns(5000)
    spec = TrainSpec(
        name="difficulty",
        target_columns=("difficulty",),
        hidden_sizes=(64, 64),
        epochs=40,
        batch_size=256,
        learning_rate=5e-3,
        seed=3,
    )
    events, trained = run(build_table(columns, spec), spec)
    yield X, spec, events, trained


# -- accuracy, metrics, inversion ------------------------------------------------------------


def test_validation_error_is_below_the_stated_bound(difficulty: Any) -> None:
    _, spec, events, trained = difficulty
    (metrics,) = trained.metrics
    # Bound: validation MAE below 0.1 and R² above 0.99 on a 1..10 scale.
    assert metrics.output == "difficulty"
    assert metrics.mae < 0.1 and metrics.r2 > 0.99
    progress = [e for e in events if isinstance(e, TrainProgress)]
    assert [p.epoch for p in progress] == list(range(1, trained.epochs_run + 1))
    assert progress[-1].best_validation_loss == min(p.validation_loss for p in progress)
    assert all(p.epochs == spec.epochs and p.eta_seconds >= 0 for p in progress)
    assert trained.rows == 5000


def test_onnx_predicts_raw_units_and_reproduces_the_metrics(difficulty: Any) -> None:
    X, spec, _, trained = difficulty
    _, val_rows = split_indices(5000, spec.validation_fraction, spec.seed)
    assert len(val_rows) == 1000
    y = true_difficulty(X[val_rows])
    predicted = onnx_eval(trained.onnx_bytes, X[val_rows])[:, 0].astype(np.float64)
    (metrics,) = trained.metrics
    error = predicted - y
    np.testing.assert_allclose(metrics.mse, np.mean(error**2), rtol=1e-4)
    np.testing.assert_allclose(metrics.mae, np.mean(np.abs(error)), rtol=1e-4)
    np.testing.assert_allclose(metrics.r2, 1 - np.sum(error**2) / np.sum((y - y.mean()) ** 2), rtol=1e-6)


@pytest.mark.parametrize("target", [3.0, 5.0, 7.0])
def test_inverted_patterns_reach_the_target_under_the_true_function(
    difficulty: Any, target: float, tmp_path: Path
) -> None:
    """Register the trained model as the Train RPC does, invert it with the engine, judge with the truth."""
    _, _, _, trained = difficulty
    registry = Registry.open(tmp_path)
    try:
        record = registry.register_bytes(
            "difficulty", trained.onnx_bytes, schema=trained.schema, statistics=trained.statistics
        )
        loaded = registry.load(record)
        space = InputSpace.from_schema(loaded.schema)  # bounds come from the inferred schema
        spec = InvertSpec(targets=(TargetSpec(value=target),), n=200, seed=int(target))
        events = list(invert(loaded.module, space, spec, statistics=loaded.statistics))
    finally:
        registry.close()
    summary = events[-1]
    assert isinstance(summary, InvertSummary) and summary.status is InvertStatus.COMPLETE
    patterns = np.concatenate([e.inputs for e in events if isinstance(e, PatternBatch)]).astype(np.float64)
    assert patterns.shape == (200, len(FEATURES))
    true_error = np.abs(true_difficulty(patterns) - target)
    assert np.mean(true_error <= 0.5) >= 0.95


def test_export_is_self_contained_with_the_schema(difficulty: Any) -> None:
    _, _, _, trained = difficulty
    model = onnx.load_from_string(trained.onnx_bytes)
    onnx.checker.check_model(model, full_check=True)
    (x,), (y,) = model.graph.input, model.graph.output
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["batch", 10]
    assert y.type.tensor_type.shape.dim[1].dim_value == 1
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert FeatureSchema.from_json(metadata[SCHEMA_METADATA_KEY]) == trained.schema
    assert [f.name for f in trained.schema.inputs] == list(FEATURES)
    assert all(f.kind is FeatureKind.CONTINUOUS and 0 <= f.min < f.max <= 1 for f in trained.schema.inputs)
    assert trained.statistics.rows == 5000 and trained.statistics.width == 10
    # Normalization lives in the graph: the first op standardizes the raw input.
    assert [n.op_type for n in model.graph.node][:2] == ["Sub", "Div"]


def test_export_loads_through_onnx2torch(difficulty: Any) -> None:
    """The registry serves models through onnx2torch; the trained graph must convert."""
    from onnx2torch import convert

    X, _, _, trained = difficulty
    module = convert(onnx.load_from_string(trained.onnx_bytes)).eval()
    with torch.inference_mode():
        converted = module(torch.from_numpy(X[:64].astype(np.float32))).numpy()
    np.testing.assert_allclose(converted, onnx_eval(trained.onnx_bytes, X[:64]), rtol=1e-5, atol=1e-5)


# -- mixed kinds ---------------------------------------------------------------------------


def test_mixed_kinds_train_with_one_hot_categoricals_and_warn_on_constant_features() -> None:
    rng = np.random.default_rng(11)
    rows = 2000
    speed = rng.uniform(0, 3, rows)
    walls = rng.integers(0, 9, rows).astype(float)
    boss = rng.integers(0, 2, rows).astype(float)
    theme = rng.choice(["ice", "lava", "forest"], rows)
    offset = {"ice": 0.0, "lava": 4.0, "forest": -2.0}
    truth = 2 * speed + 0.5 * walls + 3 * boss + np.array([offset[t] for t in theme])
    columns = {
        "speed": speed,
        "walls": walls,
        "boss": boss,
        "theme": list(theme),
        "flat": np.full(rows, 7.5),
        "score": truth + rng.normal(0, 0.05, rows),
    }
    spec = TrainSpec(
        name="mixed", target_columns=("score",), categorical_columns=("theme",), hidden_sizes=(32,), epochs=60, seed=2
    )
    events, trained = run(build_table(columns, spec), spec)
    warnings = [e for e in events if isinstance(e, TrainWarning)]
    assert [w.column for w in warnings] == ["flat"]
    assert isinstance(events[0], TrainWarning) and trained.warnings == tuple(warnings)
    kinds = [(f.name, f.kind) for f in trained.schema.inputs]
    assert kinds == [
        ("speed", FeatureKind.CONTINUOUS),
        ("walls", FeatureKind.INTEGER),
        ("boss", FeatureKind.BINARY),
        ("theme", FeatureKind.CATEGORICAL),
        ("flat", FeatureKind.CONTINUOUS),
    ]
    levels = trained.schema.feature("theme").levels
    one_hot = (theme[:, None] == np.array(levels)[None, :]).astype(float)
    X = np.column_stack([speed, walls, boss, one_hot, columns["flat"]])
    predicted = onnx_eval(trained.onnx_bytes, X)[:, 0]
    assert np.mean(np.abs(predicted - truth)) < 0.15


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_every_activation_exports_and_matches(activation: str) -> None:
    X, columns = difficulty_columns(300, seed=4)
    spec = TrainSpec(name="act", target_columns=("difficulty",), hidden_sizes=(16,), activation=activation, epochs=2)
    _, trained = run(build_table(columns, spec), spec)
    predicted = onnx_eval(trained.onnx_bytes, X)[:, 0]
    assert np.isfinite(predicted).all() and predicted.std() > 0


# -- early stopping, determinism -----------------------------------------------------------


def test_early_stopping_restores_the_best_weights() -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (300, 3))
    columns = {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": x[:, 0] + rng.normal(0, 1.0, 300)}
    spec = TrainSpec(
        name="noisy", target_columns=("y",), hidden_sizes=(64, 64), learning_rate=1e-2, epochs=300, patience=5, seed=9
    )
    events, trained = run(build_table(columns, spec), spec)
    progress = [e for e in events if isinstance(e, TrainProgress)]
    assert trained.epochs_run == len(progress) < 300  # stopped early on a noisy target
    best = min(p.validation_loss for p in progress)
    assert [p.validation_loss for p in progress[-5:]] > [best] * 5  # patience epochs without improvement
    # The exported model is the best epoch's: its standardized validation MSE is the best loss.
    train_rows, val_rows = split_indices(300, spec.validation_fraction, spec.seed)
    y = columns["y"]
    scale = y[train_rows].std()
    predicted = onnx_eval(trained.onnx_bytes, x[val_rows])[:, 0]
    np.testing.assert_allclose(np.mean(((predicted - y[val_rows]) / scale) ** 2), best, rtol=1e-3)


def _weights(model: bytes) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(model).graph.initializer}


def test_same_seed_same_model_without_touching_global_rng() -> None:
    X, columns = difficulty_columns(400, seed=6)
    table_spec = TrainSpec(name="det", target_columns=("difficulty",), hidden_sizes=(16,), epochs=4, seed=5)
    table = build_table(columns, table_spec)
    global_state = torch.random.get_rng_state()
    _, first = run(table, table_spec)
    _, second = run(table, table_spec)
    _, other = run(table, TrainSpec(**{**table_spec.__dict__, "seed": 6}))
    assert torch.equal(torch.random.get_rng_state(), global_state)
    a, b, c = _weights(first.onnx_bytes), _weights(second.onnx_bytes), _weights(other.onnx_bytes)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(onnx_eval(first.onnx_bytes, X), onnx_eval(second.onnx_bytes, X))
    assert first.metrics == second.metrics
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_divergence_from_the_start_is_an_error_naming_the_learning_rate() -> None:
    _, columns = difficulty_columns(300)
    spec = TrainSpec(name="diverge", target_columns=("difficulty",), learning_rate=1e8, epochs=5, seed=0)
    with pytest.raises(TrainingDivergedError) as info:
        run(build_table(columns, spec), spec)
    assert info.value.field == "learning_rate" and info.value.epoch == 1


def test_divergence_later_keeps_the_best_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """A validation loss that turns NaN in epoch 3 ends training with epoch 2's weights and a warning."""
    module = sys.modules["preimage.server.engine.train"]  # the package attribute `train` is the function
    real_mse, calls = module._mse, []

    def mse_nan_from_epoch_3(*args: Any) -> float:
        calls.append(1)
        return real_mse(*args) if len(calls) < 3 else float("nan")

    monkeypatch.setattr(module, "_mse", mse_nan_from_epoch_3)
    X, columns = difficulty_columns(300)
    spec = TrainSpec(name="diverge", target_columns=("difficulty",), hidden_sizes=(8,), epochs=10, seed=0)
    events, trained = run(build_table(columns, spec), spec)
    progress = [e for e in events if isinstance(e, TrainProgress)]
    assert [p.epoch for p in progress] == [1, 2, 3] and trained.epochs_run == 3
    assert "diverged in epoch 3" in events[-2].message
    assert np.isfinite(onnx_eval(trained.onnx_bytes, X)).all()


# -- cancellation and budget -----------------------------------------------------------------


def test_cancel_from_another_thread_stops_promptly_and_produces_nothing() -> None:
    _, columns = difficulty_columns(5000, seed=7)
    spec = TrainSpec(
        name="cancel", target_columns=("difficulty",), epochs=100_000, patience=100_000, batch_size=16, seed=1
    )
    table = build_table(columns, spec)
    stop = threading.Event()
    events: queue.Queue[Any] = queue.Queue()
    outcome: dict[str, BaseException] = {}

    def consume() -> None:
        try:
            for event in train(table, spec, stop=stop):
                events.put(event)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    assert isinstance(events.get(timeout=120), TrainProgress)
    stop.set()
    worker.join(timeout=10)  # a few mini-batches at most; the bound only keeps a failure from hanging
    assert not worker.is_alive()
    assert isinstance(outcome.get("error"), CancelledError)
    assert not any(isinstance(e, TrainedModel) for e in list(events.queue))


def test_time_budget_ends_training_with_the_best_model_so_far() -> None:
    X, columns = difficulty_columns(2000, seed=8)
    spec = TrainSpec(
        name="budget", target_columns=("difficulty",), epochs=100_000, patience=100_000, seed=1, max_seconds=2.0
    )
    events, trained = run(build_table(columns, spec), spec)
    assert 1 <= trained.epochs_run < 100_000
    assert "time budget" in events[-2].message
    assert np.isfinite(onnx_eval(trained.onnx_bytes, X)).all()


def test_budget_spent_before_the_first_step_is_deadline_exceeded() -> None:
    _, columns = difficulty_columns(100, seed=8)
    spec = TrainSpec(name="budget", target_columns=("difficulty",), max_seconds=1e-9)
    with pytest.raises(DeadlineExceededError):
        list(train(build_table(columns, spec), spec))


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("hidden_sizes", (64, 0)),
        ("activation", "softmax"),
        ("epochs", 0),
        ("batch_size", 0),
        ("learning_rate", -1e-3),
        ("learning_rate", float("nan")),
        ("weight_decay", -0.1),
        ("validation_fraction", 1.0),
        ("patience", 0),
        ("seed", -1),
        ("max_seconds", 0.0),
        ("ensemble", 33),
        ("ensemble", -1),
    ],
)
def test_invalid_options_name_the_field(option: str, value: Any) -> None:
    _, columns = difficulty_columns(50)
    spec = TrainSpec(name="bad", target_columns=("difficulty",))
    table = build_table(columns, spec)
    with pytest.raises(InvalidArgumentError) as info:
        next(train(table, TrainSpec(**{**spec.__dict__, option: value})))
    assert info.value.field == option


# -- export paths ----------------------------------------------------------------------------


def _small_net() -> torch.nn.Module:
    torch_gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.SiLU(), torch.nn.Linear(5, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-1, 1, generator=torch_gen)
    return net


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter announces its deprecation
def test_legacy_exporter_is_the_fallback_when_dynamo_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module: torch.nn.Module, X: torch.Tensor) -> onnx.ModelProto:
        raise RuntimeError("dynamo unavailable")

    monkeypatch.setattr(export_module, "_export_dynamo", broken)
    net = _small_net()
    X = np.random.default_rng(0).uniform(-1, 1, (8, 3)).astype(np.float32)
    data = export_onnx(net, FeatureSchema.default(3, 2), X)
    with torch.inference_mode():
        expected = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(onnx_eval(data, X), expected, rtol=1e-5, atol=1e-6)
    batch = np.tile(X, (5, 1))  # the batch dimension stays dynamic
    assert onnx_eval(data, batch).shape == (40, 2)


def test_export_that_disagrees_with_the_module_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_module._export_dynamo
    other = _small_net().eval()
    with torch.no_grad():
        other[0].bias.add_(0.5)
    monkeypatch.setattr(export_module, "_export_dynamo", lambda module, X: real(other, X))
    with pytest.raises(ExportError, match="disagrees"):
        export_onnx(_small_net(), FeatureSchema.default(3, 2), np.zeros((4, 3), np.float32))


# -- defaults: fit to the noise floor, search, stop reasons --------------------------------


def test_defaults_fit_to_the_noise_floor_and_report_the_search() -> None:
    """Without any option a noisy 1,500-row table is fitted to its noise floor, and says how."""
    rng = np.random.default_rng(11)
    _, columns = difficulty_columns(1500, seed=11)
    sigma = 0.2
    columns["difficulty"] = columns["difficulty"] + rng.normal(0, sigma, 1500)
    spec = TrainSpec(name="defaults", target_columns=("difficulty",), seed=2)
    events, trained = run(build_table(columns, spec), spec)
    (metrics,) = trained.metrics
    assert trained.stop_reason is StopReason.CONVERGED and trained.epochs_run < spec.epochs
    assert metrics.mse < 1.3 * sigma**2  # the noise floor is sigma²
    assert metrics.residual_std == pytest.approx(np.sqrt(metrics.mse), rel=0.05)
    assert metrics.residual_std < metrics.residual_p95 < 3 * metrics.residual_std
    assert [c.hidden_sizes for c in trained.candidates] == list(SEARCH_CANDIDATES)
    (chosen,) = [c for c in trained.candidates if c.selected]
    assert chosen.validation_loss == min(c.validation_loss for c in trained.candidates)
    assert chosen.hidden_sizes == trained.hidden_sizes and chosen.epochs_run == trained.epochs_run
    assert trained.batch_size == auto_batch_size(1200)
    progress = [e for e in events if isinstance(e, TrainProgress)]
    assert {p.candidate for p in progress} == set(range(len(SEARCH_CANDIDATES)))
    assert progress[0].learning_rate < spec.learning_rate  # warming up
    assert min(p.learning_rate for p in progress) < spec.learning_rate / 2  # cut on a plateau
    # By the true function the exported model is closer than the noise.
    X_test = np.random.default_rng(12).uniform(0, 1, (5000, len(FEATURES)))
    rmse = np.sqrt(np.mean((onnx_eval(trained.onnx_bytes, X_test)[:, 0] - true_difficulty(X_test)) ** 2))
    assert rmse < sigma


def test_max_epochs_and_time_budget_are_stop_reasons() -> None:
    _, columns = difficulty_columns(400, seed=4)
    spec = TrainSpec(name="short", target_columns=("difficulty",), hidden_sizes=(16,), epochs=3, seed=1)
    _, trained = run(build_table(columns, spec), spec)
    assert trained.stop_reason is StopReason.MAX_EPOCHS and trained.epochs_run == 3
    spec = TrainSpec(name="budget", target_columns=("difficulty",), epochs=100_000, seed=1, max_seconds=1.0)
    events, trained = run(build_table(columns, spec), spec)
    assert trained.stop_reason is StopReason.TIME_BUDGET
    assert "time budget" in events[-2].message


@pytest.mark.parametrize(("rows", "batch"), [(10, 32), (800, 32), (8000, 128), (80_000, 1024), (800_000, 4096)])
def test_automatic_batch_size_scales_with_the_table(rows: int, batch: int) -> None:
    assert auto_batch_size(rows) == batch


# -- deep ensembles ----------------------------------------------------------------------------


class _Constant(torch.nn.Module):
    """A member that answers ``value`` (per output) for every row."""

    def __init__(self, value: list[float]) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(value))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :1] * 0.0 + self.value


def test_ensemble_exports_the_members_mean_then_their_spread() -> None:
    # Known members: the export must give their mean and standard deviation (k - 1 divisor).
    values = [[1.0, 10.0], [2.0, 10.5], [4.0, 9.0]]
    ensemble = Ensemble(
        Standardize(torch.zeros(3), torch.ones(3)),
        [_Constant(v) for v in values],
        Rescale(torch.full((2,), 0.5), torch.full((2,), 2.0)),
    )
    X = np.random.default_rng(0).uniform(-1, 1, (8, 3)).astype(np.float32)
    data = export_onnx(ensemble, FeatureSchema.default(3, 4), X)
    raw = np.asarray(values) * 2.0 + 0.5  # each member rescaled to raw units
    expected = np.concatenate([raw.mean(axis=0), raw.std(axis=0, ddof=1)])
    np.testing.assert_allclose(onnx_eval(data, X), np.tile(expected, (8, 1)), rtol=1e-5)


def test_ensemble_train_is_deterministic_and_declares_its_spreads() -> None:
    X, columns = difficulty_columns(300, seed=6)
    spec = TrainSpec(name="ens", target_columns=("difficulty",), hidden_sizes=(8,), epochs=4, seed=5, ensemble=3)
    table = build_table(columns, spec)
    global_state = torch.random.get_rng_state()
    events, first = run(table, spec)
    _, second = run(table, spec)
    _, other = run(table, TrainSpec(**{**spec.__dict__, "seed": 6}))
    _, single = run(table, TrainSpec(**{**spec.__dict__, "ensemble": 0}))
    assert torch.equal(torch.random.get_rng_state(), global_state)
    assert first.onnx_bytes == second.onnx_bytes and first.onnx_bytes != other.onnx_bytes
    assert first.ensemble == 3 and single.ensemble == 0
    assert [(p.candidate, p.candidates) for p in events if isinstance(p, TrainProgress)] == [
        (c, 3) for c in range(3) for _ in range(4)
    ]
    # The schema travels in the ONNX metadata, the spread declared after the mean.
    metadata = {p.key: p.value for p in onnx.load_from_string(first.onnx_bytes).metadata_props}
    schema = FeatureSchema.from_json(metadata[SCHEMA_METADATA_KEY])
    outputs = [(o.name, o.spread_of) for o in schema.outputs]
    assert outputs == [("difficulty", None), ("difficulty_spread", "difficulty")]
    assert schema.spread_columns == (1,)
    Y = onnx_eval(first.onnx_bytes, X)
    assert Y.shape == (300, 2) and np.all(Y[:, 1] > 0)  # members differ in initialization and shuffling
    assert onnx_eval(single.onnx_bytes, X).shape == (300, 1)
    # The metrics are the mean's; the spread's validation quantiles come with them.
    _, val_rows = split_indices(300, spec.validation_fraction, 5)
    error = Y[val_rows, 0] - columns["difficulty"][val_rows]
    (metrics,) = first.metrics
    np.testing.assert_allclose(metrics.mse, np.mean(error**2), rtol=1e-4)
    np.testing.assert_allclose(metrics.spread_median, np.median(Y[val_rows, 1]), rtol=1e-4)
    np.testing.assert_allclose(metrics.spread_p95, np.quantile(Y[val_rows, 1], 0.95), rtol=1e-4)


def test_ensemble_after_the_search_uses_the_chosen_network() -> None:
    _, columns = difficulty_columns(200, seed=2)
    spec = TrainSpec(name="ens", target_columns=("difficulty",), epochs=3, seed=1, ensemble=2)
    events, trained = run(build_table(columns, spec), spec)
    fits = len(SEARCH_CANDIDATES) + 1
    assert {p.candidates for p in events if isinstance(p, TrainProgress)} == {fits}
    assert trained.ensemble == 2 and len(trained.candidates) == len(SEARCH_CANDIDATES)
    assert trained.hidden_sizes == next(c.hidden_sizes for c in trained.candidates if c.selected)


def test_time_budget_shares_itself_between_the_ensemble_members() -> None:
    X, columns = difficulty_columns(300, seed=8)
    spec = TrainSpec(
        name="budget",
        target_columns=("difficulty",),
        hidden_sizes=(8,),
        epochs=100_000,
        patience=100_000,
        seed=1,
        max_seconds=1.5,
        ensemble=3,
    )
    events, trained = run(build_table(columns, spec), spec)
    # Each member got an equal share of the budget, so every one of them ran and ran out.
    assert trained.ensemble == 3 and trained.stop_reason is StopReason.TIME_BUDGET
    assert "3 of 3 ensemble members" in events[-2].message
    assert {p.candidate for p in events if isinstance(p, TrainProgress)} == {0, 1, 2}
    assert np.isfinite(onnx_eval(trained.onnx_bytes, X)).all()
