"""The four closed-form inversion benchmark tasks: data, a trained MLP, ONNX, registration.

Each :class:`Task` knows its true function, the distribution its inputs come from,
its feature schema and a tolerance. :func:`build` generates data, trains a small MLP
(SiLU, Adam with cosine decay, outputs standardized inside the network), exports it
with ``torch.onnx.export(dynamo=True)``, registers it in a :class:`Registry` (schema
and training statistics included) and loads the frozen module back — the path a
served model takes. Trained models are cached by task and settings.

* **sine** — ``y = sin(3πx₁) + cos(3πx₂)``, ``x ∈ [−1, 1]²`` (Ren et al.).
* **arm** — robotic arm, ``x ~ N(0, diag(1/16, 1/4, 1/4, 1/4))`` truncated to
  ``x₁ ∈ ±0.6``, others ``±1.2``; two outputs (end-point height and reach).
* **friedman** — ``10 sin(πx₁x₂) + 20(x₃ − 0.5)² + 10x₄ + 5x₅``, ``x₁…x₅ ∈ [0, 1]``, plus three
  binary features and a three-level categorical the function ignores (11 columns).
* **binary10** — ten binary inputs, ``y = 1 +`` the number of neighbour changes.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from preimage.registry import Registry
from preimage.registry.schema import DataStatistics, FeatureSchema

__all__ = ["TASKS", "BuiltTask", "Task", "build"]

_QUANTILE_LEVELS = tuple(np.linspace(0.0, 1.0, 101).tolist())


@dataclass(frozen=True)
class Task:
    """One benchmark problem.

    Attributes:
        name: Task name.
        schema: JSON form of the feature schema (with bounds).
        truth: The true function, ``n x d`` model columns → ``n x m``.
        draw: Draws ``n`` inputs from the task's input distribution (training data and targets).
        tolerance: Tolerance of the value targets.
        gof_tolerance: Tolerance of the goodness-of-fit runs (wide enough for a rejection reference).
        rows: Training rows.
        hidden: Hidden layer sizes.
        epochs: Training epochs (full run).
    """

    name: str
    schema: dict[str, object]
    truth: Callable[[np.ndarray], np.ndarray]
    draw: Callable[[np.random.Generator, int], np.ndarray]
    tolerance: float
    gof_tolerance: float
    rows: int
    hidden: tuple[int, ...]
    epochs: int

    @property
    def feature_schema(self) -> FeatureSchema:
        """The parsed schema."""
        return FeatureSchema.from_dict(self.schema)


# -- the true functions and input distributions -------------------------------------------------


def _sine(X: np.ndarray) -> np.ndarray:
    return (np.sin(3 * np.pi * X[:, 0]) + np.cos(3 * np.pi * X[:, 1]))[:, None]


def _arm(X: np.ndarray) -> np.ndarray:
    x1, x2, x3, x4 = X.T
    a, b, c = x2, x3 - x2, x4 - x3 - x2
    return np.stack(
        [0.5 * np.cos(a) + 0.5 * np.cos(b) + np.cos(c), x1 + 0.5 * np.sin(a) + 0.5 * np.sin(b) + np.sin(c)], 1
    )


def _friedman(X: np.ndarray) -> np.ndarray:
    x = X[:, :5]
    y = 10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
    return y[:, None]


def _binary10(X: np.ndarray) -> np.ndarray:
    return (1.0 + np.abs(np.diff(X, axis=1)).sum(axis=1))[:, None]


def _uniform(low: float, high: float, d: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    def draw(rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(low, high, (n, d))

    return draw


_ARM_SD = np.array([0.25, 0.5, 0.5, 0.5])
_ARM_BOUND = np.array([0.6, 1.2, 1.2, 1.2])


def _draw_arm(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normal inputs, truncated to the task's bounds by redrawing."""
    out = np.empty((0, 4))
    while out.shape[0] < n:
        X = rng.standard_normal((2 * n, 4)) * _ARM_SD
        out = np.concatenate([out, X[(np.abs(X) <= _ARM_BOUND).all(axis=1)]])
    return out[:n]


def _draw_friedman(rng: np.random.Generator, n: int) -> np.ndarray:
    X = np.zeros((n, 11))
    X[:, :5] = rng.random((n, 5))
    X[:, 5:8] = rng.integers(0, 2, (n, 3))
    X[np.arange(n), 8 + rng.integers(0, 3, n)] = 1.0
    return X


def _draw_binary10(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, (n, 10)).astype(np.float64)


TASKS: dict[str, Task] = {
    "sine": Task(
        name="sine",
        schema={"inputs": [{"name": "x1", "min": -1.0, "max": 1.0}, {"name": "x2", "min": -1.0, "max": 1.0}]},
        truth=_sine,
        draw=_uniform(-1.0, 1.0, 2),
        tolerance=1e-3,
        gof_tolerance=1e-3,
        rows=20000,
        hidden=(128, 128, 128),
        epochs=300,
    ),
    "arm": Task(
        name="arm",
        schema={
            "inputs": [{"name": f"x{i + 1}", "min": -float(b), "max": float(b)} for i, b in enumerate(_ARM_BOUND)],
            "outputs": [{"name": "height"}, {"name": "reach"}],
        },
        truth=_arm,
        draw=_draw_arm,
        tolerance=1e-3,
        gof_tolerance=0.05,
        rows=20000,
        hidden=(128, 128, 128),
        epochs=300,
    ),
    "friedman": Task(
        name="friedman",
        schema={
            "inputs": [{"name": f"x{i + 1}", "min": 0.0, "max": 1.0} for i in range(5)]
            + [{"name": f"flag{i + 1}", "kind": "binary"} for i in range(3)]
            + [{"name": "tint", "kind": "categorical", "levels": ["red", "green", "blue"]}]
        },
        truth=_friedman,
        draw=_draw_friedman,
        tolerance=1e-3,
        gof_tolerance=0.05,
        rows=20000,
        hidden=(128, 128),
        epochs=300,
    ),
    "binary10": Task(
        name="binary10",
        schema={"inputs": [{"name": f"b{i + 1}", "kind": "binary"} for i in range(10)]},
        truth=_binary10,
        draw=_draw_binary10,
        tolerance=0.25,
        gof_tolerance=0.25,
        rows=1024,
        hidden=(64, 64),
        epochs=1500,
    ),
}


def all_binary(d: int) -> np.ndarray:
    """Every point of ``{0, 1}^d``."""
    return np.array(list(itertools.product((0.0, 1.0), repeat=d)))


# -- training ---------------------------------------------------------------------------------------


class _Standardized(nn.Module):
    """An MLP whose outputs are de-standardized inside the network, so the ONNX maps raw to raw."""

    def __init__(self, d: int, m: int, hidden: tuple[int, ...], mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = d
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, m))
        self.net = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.std + self.mean


def _train(task: Task, X: np.ndarray, Y: np.ndarray, epochs: int, seed: int) -> tuple[nn.Module, float]:
    """Train; return the network and its validation RMSE (raw units, worst output)."""
    torch.manual_seed(seed)
    split = int(0.9 * len(X)) if task.name != "binary10" else len(X)  # binary10 trains on the whole space
    Xt = torch.tensor(X, dtype=torch.float32)
    Yt = torch.tensor(Y, dtype=torch.float32)
    mean, std = Y[:split].mean(axis=0), Y[:split].std(axis=0) + 1e-8
    net = _Standardized(X.shape[1], Y.shape[1], task.hidden, mean, std)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    batch = 256
    for _ in range(epochs):
        perm = torch.randperm(split)
        for i in range(0, split, batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss = (((net(Xt[idx]) - Yt[idx]) / net.std) ** 2).mean()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    check = slice(split, None) if split < len(X) else slice(None)
    with torch.no_grad():
        rmse = ((net(Xt[check]) - Yt[check]) ** 2).mean(dim=0).sqrt().max().item()
    return net, rmse


def _export(net: nn.Module, d: int) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad():
        program = torch.onnx.export(
            net,
            (torch.zeros(2, d),),
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            dynamo=True,
            opset_version=18,
            external_data=False,
            verbose=False,
        )
    assert program is not None
    program.save(buffer)  # type: ignore[union-attr]
    model = onnx.load_from_string(buffer.getvalue())
    return model.SerializeToString()


def statistics_of(X: np.ndarray) -> DataStatistics:
    """Training statistics: mean, covariance and 101 quantiles per column."""
    q = np.quantile(X, _QUANTILE_LEVELS, axis=0).T
    return DataStatistics(
        rows=int(X.shape[0]),
        mean=tuple(X.mean(axis=0).tolist()),
        covariance=tuple(np.cov(X, rowvar=False).ravel().tolist()),
        quantile_levels=_QUANTILE_LEVELS,
        quantiles=tuple(q.ravel().tolist()),
    ).validated(X.shape[1])


@dataclass
class BuiltTask:
    """A trained, exported and registered task model.

    Attributes:
        task: The task.
        onnx_bytes: The exported model.
        module: The registry's frozen torch module for it.
        schema: Its registered schema.
        statistics: Its registered training statistics.
        rmse: Validation RMSE of the model against the true function (worst output).
        train_seconds: Seconds spent training and exporting (0 when cached).
    """

    task: Task
    onnx_bytes: bytes
    module: torch.nn.Module
    schema: FeatureSchema
    statistics: DataStatistics
    rmse: float
    train_seconds: float


def build(task: Task, registry: Registry, cache: Path, *, quick: bool, seed: int = 0) -> BuiltTask:
    """Generate data, train (or reuse the cached model), export, register and load one task."""
    rng = np.random.default_rng(seed)
    X = all_binary(10) if task.name == "binary10" else task.draw(rng, task.rows)
    Y = task.truth(X)
    epochs = max(task.epochs // 5, 20) if quick else task.epochs
    key = hashlib.sha256(json.dumps([task.name, task.hidden, task.rows, epochs, seed]).encode()).hexdigest()[:16]
    path = cache / f"{task.name}-{key}.onnx"
    meta = path.with_suffix(".json")
    started = time.perf_counter()
    if path.exists() and meta.exists():
        data, rmse, seconds = path.read_bytes(), float(json.loads(meta.read_text())["rmse"]), 0.0
    else:
        net, rmse = _train(task, X, Y, epochs, seed)
        data = _export(net, X.shape[1])
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        meta.write_text(json.dumps({"rmse": rmse}))
        seconds = time.perf_counter() - started
    statistics = statistics_of(X)
    record = registry.register_bytes(task.name, data, schema=task.feature_schema, statistics=statistics)
    loaded = registry.load(record)
    assert loaded.statistics is not None and math.isfinite(rmse)
    return BuiltTask(task, data, loaded.module, loaded.schema, loaded.statistics, rmse, seconds)
