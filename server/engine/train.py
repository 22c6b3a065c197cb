"""Fit an MLP on a training table, streaming progress, and export it to ONNX.

:func:`train` is a generator: it yields :class:`TrainWarning` events about the data,
one :class:`TrainProgress` per epoch, then exactly one :class:`TrainedModel` holding
the ONNX bytes, the inferred schema, the training-data statistics and validation
metrics. The Train servicer drives it from a worker thread and registers the bytes.

The model is ``Standardize -> MLP -> Rescale``: inputs are standardized and outputs
rescaled inside the exported graph, so clients send and receive raw values. Training
runs on pre-standardized tensors with index-tensor mini-batches (no DataLoader), so a
step costs what a plain torch loop's step costs.

Example:
    >>> import numpy as np
    >>> from preimage.server.engine.data import build_table
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(0, 1, 200)
    >>> spec = TrainSpec(name="m", target_columns=("y",), hidden_sizes=(8,), epochs=3, seed=1)
    >>> events = list(train(build_table({"x": x, "y": 2 * x + 1}, spec), spec))
    >>> [type(e).__name__ for e in events]
    ['TrainProgress', 'TrainProgress', 'TrainProgress', 'TrainedModel']
"""

from __future__ import annotations

import itertools
import math
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from preimage.errors import CancelledError, DeadlineExceededError, InvalidArgumentError
from preimage.server.engine.data import Table, data_statistics, encode, infer_schema
from preimage.server.engine.export import export_onnx
from preimage.server.engine.types import OutputMetrics, TrainedModel, TrainProgress, TrainSpec, TrainWarning

__all__ = [
    "ACTIVATIONS",
    "Rescale",
    "Standardize",
    "TrainingDivergedError",
    "build_mlp",
    "split_indices",
    "train",
    "validate_train_spec",
]

ACTIVATIONS: Mapping[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "gelu": nn.GELU}
"""Hidden-layer activations by name."""

MAX_WIDTH = 65536
MAX_LAYERS = 64
_EVAL_ROWS = 65536  # rows per forward pass when evaluating, to bound activation memory
_EXAMPLE_ROWS = 64  # rows used to trace and check the export


class TrainingDivergedError(InvalidArgumentError):
    """The validation loss was not finite from the first epoch on: the learning rate is too high."""

    def __init__(self, epoch: int, loss: float, learning_rate: float) -> None:
        super().__init__(
            f"training diverged in epoch {epoch} (validation loss {loss}) before any epoch reached a finite "
            f"loss; lower learning_rate (was {learning_rate:g})",
            field="learning_rate",
        )
        self.epoch = epoch
        self.loss = loss


class _ColumnAffine(nn.Module):
    """Holds per-column ``mean`` and ``scale`` buffers (saved in state dicts and exported as constants)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)


class Standardize(_ColumnAffine):
    """``(x - mean) / scale`` per column; exported as ONNX ``Sub`` and ``Div``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardize ``n x d`` rows."""
        return (x - self.mean) / self.scale


class Rescale(_ColumnAffine):
    """``y * scale + mean`` per column; exported as ONNX ``Mul`` and ``Add``."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Map standardized ``n x m`` outputs back to raw units."""
        return y * self.scale + self.mean


def build_mlp(
    d: int, m: int, hidden_sizes: Sequence[int], activation: str, generator: torch.Generator
) -> nn.Sequential:
    """An MLP ``d -> hidden... -> m`` initialized from ``generator`` only.

    The layers are created without their default initialization (which would draw
    from, and advance, torch's global generator) and then drawn like PyTorch's default:
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases.
    """
    layers: list[nn.Module] = []
    sizes = [d, *hidden_sizes, m]
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        linear = torch.nn.utils.skip_init(nn.Linear, fan_in, fan_out)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=generator)
            linear.bias.uniform_(-bound, bound, generator=generator)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def split_indices(rows: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation row indices of a run (sorted, int64).

    ``round(rows * validation_fraction)`` rows, at least one and leaving one to train
    on, are held out at random; with a fraction of 0 both sets are every row.
    """
    if validation_fraction <= 0.0:
        every = np.arange(rows, dtype=np.int64)
        return every, every
    n_val = min(max(round(rows * validation_fraction), 1), rows - 1)
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def validate_train_spec(spec: TrainSpec) -> None:
    """Check the training options, raising :class:`InvalidArgumentError` naming the field."""

    def bad(field: str, message: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{field}: {message}", field=field)

    if len(spec.hidden_sizes) > MAX_LAYERS:
        raise bad("hidden_sizes", f"at most {MAX_LAYERS} hidden layers, got {len(spec.hidden_sizes)}")
    for size in spec.hidden_sizes:
        if not 1 <= size <= MAX_WIDTH:
            raise bad("hidden_sizes", f"layer sizes must be between 1 and {MAX_WIDTH}, got {size}")
    if spec.activation.lower() not in ACTIVATIONS:
        raise bad("activation", f"{spec.activation!r} is not one of {sorted(ACTIVATIONS)}")
    if spec.epochs < 1:
        raise bad("epochs", f"must be at least 1, got {spec.epochs}")
    if spec.batch_size < 1:
        raise bad("batch_size", f"must be at least 1, got {spec.batch_size}")
    if not (math.isfinite(spec.learning_rate) and spec.learning_rate > 0):
        raise bad("learning_rate", f"must be a positive number, got {spec.learning_rate}")
    if not (math.isfinite(spec.weight_decay) and spec.weight_decay >= 0):
        raise bad("weight_decay", f"must be a non-negative number, got {spec.weight_decay}")
    if not 0.0 <= spec.validation_fraction < 1.0:
        raise bad("validation_fraction", f"must be in [0, 1), got {spec.validation_fraction}")
    if spec.patience < 1:
        raise bad("patience", f"must be at least 1, got {spec.patience}")
    if spec.seed is not None and not 0 <= spec.seed < 2**64:
        raise bad("seed", f"must be in [0, 2**64), got {spec.seed}")
    if spec.max_seconds is not None and not spec.max_seconds > 0:
        raise bad("max_seconds", f"must be positive, got {spec.max_seconds}")


def train(
    table: Table, spec: TrainSpec, *, stop: threading.Event | None = None
) -> Iterator[TrainWarning | TrainProgress | TrainedModel]:
    """Fit an MLP to ``table`` and export it, yielding events as it goes.

    Args:
        table: A finished table (``TableBuilder(spec).finish()``).
        spec: Network, optimizer and stopping options; ``spec.max_seconds`` caps the
            wall-clock time (training stops early with the best weights so far and a warning).
        stop: Set from another thread to cancel; checked before every mini-batch.

    Yields:
        :class:`TrainWarning` events (constant features, override conflicts, the time
        budget), then one :class:`TrainProgress` per epoch, then exactly one
        :class:`TrainedModel` last. Losses in progress events are MSE of standardized
        targets; the model's metrics are in raw units on the validation rows.

    Raises:
        InvalidArgumentError: Invalid options (naming the field) or data contradicting overrides.
        TrainingDivergedError: The validation loss was NaN or infinite before it was ever finite.
        CancelledError: ``stop`` was set; nothing is produced.
        DeadlineExceededError: ``max_seconds`` ran out before the first mini-batch.
    """
    started = time.monotonic()
    deadline = None if spec.max_seconds is None else started + spec.max_seconds
    validate_train_spec(spec)
    if tuple(spec.target_columns) != table.targets:
        raise InvalidArgumentError(
            f"the table was built for targets {list(table.targets)}, the spec names {list(spec.target_columns)}",
            field="target_columns",
        )
    warnings = list(table.warnings)
    yield from table.warnings
    schema, schema_warnings = infer_schema(table, spec.feature_overrides)
    warnings.extend(schema_warnings)
    yield from schema_warnings
    X = encode(table, schema)
    Y = table.target_matrix()
    statistics = data_statistics(X)
    _check_stop(stop, 0)

    seed = secrets.randbits(63) if spec.seed is None else spec.seed
    train_rows, val_rows = split_indices(table.rows, spec.validation_fraction, seed)
    generator = torch.Generator().manual_seed((seed + 1) % 2**64)
    x_mean, x_scale = _mean_scale(X[train_rows])
    y_mean, y_scale = _mean_scale(Y[train_rows])
    standardize = Standardize(torch.from_numpy(x_mean), torch.from_numpy(x_scale))
    rescale = Rescale(torch.from_numpy(y_mean), torch.from_numpy(y_scale))
    X_train, Y_train = _standardized(X, Y, train_rows, standardize, rescale)
    X_val, Y_val = _standardized(X, Y, val_rows, standardize, rescale)
    core = build_mlp(X.shape[1], Y.shape[1], spec.hidden_sizes, spec.activation.lower(), generator)
    optimizer = torch.optim.AdamW(core.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)

    n_train, batch = len(train_rows), spec.batch_size
    best_loss, best_state, stale, epochs_run = math.inf, _snapshot(core), 0, 0
    training_started = time.monotonic()
    for epoch in range(1, spec.epochs + 1):
        core.train()
        order = torch.randperm(n_train, generator=generator)
        total, seen, out_of_time = 0.0, 0, False
        for start in range(0, n_train, batch):
            _check_stop(stop, epoch - 1)
            if deadline is not None and time.monotonic() >= deadline:
                out_of_time = True
                break
            index = order[start : start + batch]
            loss = F.mse_loss(core(X_train.index_select(0, index)), Y_train.index_select(0, index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
            seen += len(index)
        diverged = False
        if seen:
            epochs_run = epoch
            val_loss = _mse(core, X_val, Y_val)
            diverged = not math.isfinite(val_loss)
            if diverged and best_loss == math.inf:
                raise TrainingDivergedError(epoch, val_loss, spec.learning_rate)
            if val_loss < best_loss:
                best_loss, best_state, stale = val_loss, _snapshot(core), 0
            else:
                stale += 1
            now = time.monotonic()
            eta = (now - training_started) / epoch * (spec.epochs - epoch)
            if deadline is not None:
                eta = min(eta, max(deadline - now, 0.0))
            yield TrainProgress(
                epoch=epoch,
                epochs=spec.epochs,
                train_loss=total / seen,
                validation_loss=val_loss,
                best_validation_loss=best_loss,
                elapsed_seconds=now - started,
                eta_seconds=0.0 if out_of_time or diverged or stale >= spec.patience else eta,
            )
        if diverged:
            warning = TrainWarning(
                f"training diverged in epoch {epoch} (validation loss {val_loss}); the model keeps the best "
                f"weights so far; a lower learning_rate (was {spec.learning_rate:g}) may train further"
            )
            warnings.append(warning)
            yield warning
            break
        if out_of_time:
            if epochs_run == 0:
                raise DeadlineExceededError(
                    f"the time budget of {spec.max_seconds:g} s ran out before the first mini-batch"
                )
            warning = TrainWarning(
                f"the time budget of {spec.max_seconds:g} s ran out in epoch {epoch}; "
                "the model keeps the best weights so far"
            )
            warnings.append(warning)
            yield warning
            break
        if stale >= spec.patience:
            break

    core.load_state_dict(best_state)
    model = nn.Sequential(standardize, core, rescale).eval()
    metrics = _metrics(model, X[val_rows], Y[val_rows], table.targets)
    _check_stop(stop, epochs_run)
    onnx_bytes = export_onnx(model, schema, X[val_rows[:_EXAMPLE_ROWS]])
    _check_stop(stop, epochs_run)
    yield TrainedModel(
        onnx_bytes=onnx_bytes,
        schema=schema,
        statistics=statistics,
        metrics=metrics,
        epochs_run=epochs_run,
        elapsed_seconds=time.monotonic() - started,
        rows=table.rows,
        warnings=tuple(warnings),
    )


def _check_stop(stop: threading.Event | None, epochs: int) -> None:
    if stop is not None and stop.is_set():
        raise CancelledError(f"training cancelled after {epochs} epochs; nothing was produced")


def _mean_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (1 where a column is constant), float32."""
    mean = values.mean(axis=0, dtype=np.float64)
    scale = values.std(axis=0, dtype=np.float64)
    scale[scale == 0.0] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


def _standardized(
    X: np.ndarray, Y: np.ndarray, rows: np.ndarray, standardize: Standardize, rescale: Rescale
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardized float32 inputs and targets of ``rows``, by the same float32 ops as the exported graph."""
    x = standardize(torch.from_numpy(X[rows]))
    y = (torch.from_numpy(Y[rows].astype(np.float32)) - rescale.mean) / rescale.scale
    return x.contiguous(), y.contiguous()


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _mse(module: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    """Mean squared error over every row and output, evaluated in bounded blocks."""
    module.eval()
    total = 0.0
    with torch.inference_mode():
        for start in range(0, X.shape[0], _EVAL_ROWS):
            end = start + _EVAL_ROWS
            total += F.mse_loss(module(X[start:end]), Y[start:end], reduction="sum").item()
    return total / Y.numel()


def _metrics(model: nn.Module, X: np.ndarray, Y: np.ndarray, names: Sequence[str]) -> tuple[OutputMetrics, ...]:
    """MSE, MAE and R² per output in raw units.

    R² is ``1 - SSE/SST``; when the outputs' validation values are all equal (SST = 0)
    it is 1 for a perfect fit and 0 otherwise.
    """
    with torch.inference_mode():
        predicted = np.concatenate(
            [model(torch.from_numpy(X[s : s + _EVAL_ROWS])).numpy() for s in range(0, len(X), _EVAL_ROWS)]
        ).astype(np.float64)
    error = predicted - Y
    metrics = []
    for j, name in enumerate(names):
        sse = float(np.sum(error[:, j] ** 2))
        sst = float(np.sum((Y[:, j] - Y[:, j].mean()) ** 2))
        r2 = 1.0 - sse / sst if sst > 0 else (1.0 if sse == 0 else 0.0)
        metrics.append(OutputMetrics(output=name, mse=sse / len(Y), mae=float(np.mean(np.abs(error[:, j]))), r2=r2))
    return tuple(metrics)
