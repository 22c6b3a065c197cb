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
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from preimage.errors import CancelledError, DeadlineExceededError, InvalidArgumentError
from preimage.registry.schema import FeatureSchema, OutputFeature
from preimage.server.engine.data import Table, data_statistics, encode, infer_schema
from preimage.server.engine.export import export_onnx
from preimage.server.engine.types import (
    ModelCandidate,
    OutputMetrics,
    StopReason,
    TrainedModel,
    TrainProgress,
    TrainSpec,
    TrainWarning,
)

__all__ = [
    "ACTIVATIONS",
    "MAX_ENSEMBLE",
    "SEARCH_CANDIDATES",
    "Ensemble",
    "Rescale",
    "Standardize",
    "TrainingDivergedError",
    "auto_batch_size",
    "build_mlp",
    "split_indices",
    "train",
    "validate_train_spec",
]

ACTIVATIONS: Mapping[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "gelu": nn.GELU}
"""Hidden-layer activations by name."""

MAX_WIDTH = 65536
MAX_LAYERS = 64
MAX_ENSEMBLE = 32
"""Most members of a deep ensemble."""
_EVAL_ROWS = 65536  # rows per forward pass when evaluating, to bound activation memory
_EXAMPLE_ROWS = 64  # rows used to trace and check the export
_STEPS_PER_EPOCH = 64  # what the automatic batch size aims at
_MIN_AUTO_BATCH, _MAX_AUTO_BATCH = 32, 4096
_WARMUP_STEPS = 100  # linear warm-up of the learning rate, at most a tenth of the allowed steps
_LR_FACTOR = 0.5  # learning-rate cut on a plateau of patience // 4 epochs
_MIN_LR_FACTOR = 1e-3  # the learning rate never drops below this share of the initial one
_IMPROVEMENT = 1e-3  # relative drop of the validation loss that counts as an improvement

SEARCH_CANDIDATES: tuple[tuple[int, ...], ...] = ((32, 32), (64, 64), (128, 128, 128))
"""Hidden layer sizes tried when ``hidden_sizes`` is not given, smallest first."""


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


class Ensemble(nn.Module):
    """``k >= 2`` networks on one standardization: ``n x d`` raw inputs → ``n x 2m``.

    Columns ``0..m-1`` are the members' mean in raw units, columns ``m..2m-1`` their
    spread: the standard deviation across the members (``k - 1`` divisor). Written with
    ``Add``, ``Sub``, ``Mul``, ``Div``, ``Sqrt`` and ``Concat`` only, which every runtime
    and onnx2torch convert.
    """

    def __init__(self, standardize: Standardize, cores: Sequence[nn.Module], rescale: Rescale) -> None:
        super().__init__()
        if len(cores) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(cores)}")
        self.standardize = standardize
        self.members = nn.ModuleList(cores)
        self.rescale = rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Means then spreads of ``n x d`` rows."""
        z = self.standardize(x)
        outputs = [self.rescale(core(z)) for core in self.members]
        total = outputs[0]
        for y in outputs[1:]:
            total = total + y
        mean = total / len(outputs)
        squares = (outputs[0] - mean) * (outputs[0] - mean)
        for y in outputs[1:]:
            squares = squares + (y - mean) * (y - mean)
        return torch.cat([mean, torch.sqrt(squares / (len(outputs) - 1))], dim=1)


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


def auto_batch_size(train_rows: int) -> int:
    """The mini-batch size used when none is given: about 64 steps per epoch.

    ``train_rows / 64`` rounded to a power of two and clamped to 32..4096: a small
    table gets small batches (many steps per epoch, which small tables need to fit),
    a large one big batches (fewer, cheaper-per-row steps).
    """
    target = max(train_rows / _STEPS_PER_EPOCH, 1.0)
    return int(min(max(2 ** round(math.log2(target)), _MIN_AUTO_BATCH), _MAX_AUTO_BATCH))


def validate_train_spec(spec: TrainSpec) -> None:
    """Check the training options, raising :class:`InvalidArgumentError` naming the field."""

    def bad(field: str, message: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{field}: {message}", field=field)

    if spec.hidden_sizes is not None:
        if len(spec.hidden_sizes) > MAX_LAYERS:
            raise bad("hidden_sizes", f"at most {MAX_LAYERS} hidden layers, got {len(spec.hidden_sizes)}")
        for size in spec.hidden_sizes:
            if not 1 <= size <= MAX_WIDTH:
                raise bad("hidden_sizes", f"layer sizes must be between 1 and {MAX_WIDTH}, got {size}")
    if spec.activation.lower() not in ACTIVATIONS:
        raise bad("activation", f"{spec.activation!r} is not one of {sorted(ACTIVATIONS)}")
    if spec.epochs < 1:
        raise bad("epochs", f"must be at least 1, got {spec.epochs}")
    if spec.batch_size is not None and spec.batch_size < 1:
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
    if not 0 <= spec.ensemble <= MAX_ENSEMBLE:
        raise bad("ensemble", f"must be between 0 and {MAX_ENSEMBLE} members, got {spec.ensemble}")


def train(
    table: Table, spec: TrainSpec, *, stop: threading.Event | None = None
) -> Iterator[TrainWarning | TrainProgress | TrainedModel]:
    """Fit an MLP to ``table`` until the validation loss stops improving, and export it.

    Each network is fitted with AdamW, a linear warm-up and a learning rate halved
    whenever the validation loss has not improved for ``patience // 4`` epochs; it
    stops after ``patience`` epochs without improvement (``StopReason.CONVERGED``), at
    ``spec.epochs`` (``MAX_EPOCHS``), when the budget runs out (``TIME_BUDGET``) or on
    a non-finite loss (``DIVERGED``), and keeps the weights of its best epoch. With
    ``spec.hidden_sizes=None`` every network of :data:`SEARCH_CANDIDATES` is fitted on
    the same split (each with an equal share of what is left of the budget) and the
    one with the lowest validation loss is exported.

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
    data = _Data(
        *_standardized(X, Y, train_rows, standardize, rescale), *_standardized(X, Y, val_rows, standardize, rescale)
    )
    batch = spec.batch_size or auto_batch_size(len(train_rows))
    networks = SEARCH_CANDIDATES if spec.hidden_sizes is None else (tuple(spec.hidden_sizes),)

    members = spec.ensemble if spec.ensemble >= 2 else 1
    # Fits in all: every network of the search, then the ensemble's further members.
    total_fits = len(networks) + members - 1
    fits: list[_Fit] = []
    for index, hidden in enumerate(networks):
        # Each fit gets an equal share of the budget that is left.
        share = _share(deadline, total_fits - index)
        core = build_mlp(X.shape[1], Y.shape[1], hidden, spec.activation.lower(), generator)
        fit = yield from _fit(core, data, spec, batch, generator, stop, started, share, index, total_fits)
        if fit is None:  # out of time before this candidate's first mini-batch
            if not fits:
                raise DeadlineExceededError(
                    f"the time budget of {spec.max_seconds:g} s ran out before the first mini-batch"
                )
            break
        fits.append(fit)
    best = min(fits, key=lambda f: f.best_loss)
    # The selected network is the ensemble's first member; the others differ in initialization
    # and shuffling only, each from a generator derived from the seed and its member number.
    team = [best]
    for member in range(1, members):
        index = len(networks) + member - 1
        member_generator = torch.Generator().manual_seed(_member_seed(seed, member))
        core = build_mlp(X.shape[1], Y.shape[1], best.hidden_sizes, spec.activation.lower(), member_generator)
        share = _share(deadline, total_fits - index)
        fit = yield from _fit(core, data, spec, batch, member_generator, stop, started, share, index, total_fits)
        if fit is None:
            break
        team.append(fit)
    for fit in (*fits, *team[1:]):
        if fit.stop_reason is StopReason.DIVERGED:
            warning = TrainWarning(
                f"training {_net(fit.hidden_sizes)} diverged in epoch {fit.epochs_run}; it keeps its best "
                f"weights so far; a lower learning_rate (was {spec.learning_rate:g}) may train further"
            )
            warnings.append(warning)
            yield warning
    ran_out = any(f.stop_reason is StopReason.TIME_BUDGET for f in (*fits, *team[1:]))
    if ran_out or len(fits) < len(networks) or len(team) < members:
        tried = f"{len(fits)} of {len(networks)} networks tried"
        if members > 1:
            tried += f", {len(team)} of {members} ensemble members"
        warning = TrainWarning(
            f"the time budget of {spec.max_seconds:g} s ran out after "
            f"{sum(f.epochs_run for f in (*fits, *team[1:]))} epochs ({tried}); the model keeps the best "
            "weights so far"
        )
        warnings.append(warning)
        yield warning

    if len(team) >= 2:
        model: nn.Module = Ensemble(standardize, [f.core for f in team], rescale).eval()
        schema = _with_spreads(schema)
    else:
        # A single network (or an ensemble the budget cut to one member: it has no spread to give).
        model = nn.Sequential(standardize, best.core, rescale).eval()
        if members > 1:
            warning = TrainWarning(
                "only one ensemble member was trained before the time budget ran out; the model is a single "
                "network without spread outputs"
            )
            warnings.append(warning)
            yield warning
    metrics = _metrics(model, X[val_rows], Y[val_rows], table.targets)
    _check_stop(stop, best.epochs_run)
    onnx_bytes = export_onnx(model, schema, X[val_rows[:_EXAMPLE_ROWS]])
    _check_stop(stop, best.epochs_run)
    yield TrainedModel(
        onnx_bytes=onnx_bytes,
        schema=schema,
        statistics=statistics,
        metrics=metrics,
        epochs_run=best.epochs_run,
        elapsed_seconds=time.monotonic() - started,
        rows=table.rows,
        warnings=tuple(warnings),
        stop_reason=best.stop_reason,
        hidden_sizes=best.hidden_sizes,
        batch_size=batch,
        candidates=tuple(
            ModelCandidate(f.hidden_sizes, f.best_loss, f.epochs_run, f.stop_reason, selected=f is best) for f in fits
        ),
        ensemble=len(team) if len(team) >= 2 else 0,
    )


def _share(deadline: float | None, fits_left: int) -> float | None:
    """The deadline of the next fit: an equal share of what is left of the budget."""
    return None if deadline is None else time.monotonic() + (deadline - time.monotonic()) / fits_left


def _member_seed(seed: int, member: int) -> int:
    """The generator seed of ensemble member ``member >= 1``, derived from the run's seed only."""
    return int(np.random.SeedSequence([seed, member]).generate_state(1, np.uint64)[0])


def _with_spreads(schema: FeatureSchema) -> FeatureSchema:
    """The schema with one spread output ``NAME_spread`` (``spread_of = NAME``) per output, after them."""
    taken = {o.name for o in schema.outputs}
    spreads = []
    for output in schema.outputs:
        name = output.name[:121] + "_spread"
        while name in taken:
            name += "_"
        taken.add(name)
        spreads.append(OutputFeature(name, spread_of=output.name))
    return replace(schema, outputs=(*schema.outputs, *spreads))


@dataclass
class _Data:
    """Standardized training and validation tensors."""

    X_train: torch.Tensor
    Y_train: torch.Tensor
    X_val: torch.Tensor
    Y_val: torch.Tensor


@dataclass
class _Fit:
    """One fitted network: its best weights loaded, and how its fitting ended."""

    core: nn.Sequential
    hidden_sizes: tuple[int, ...]
    best_loss: float
    epochs_run: int
    stop_reason: StopReason


def _fit(
    core: nn.Sequential,
    data: _Data,
    spec: TrainSpec,
    batch: int,
    generator: torch.Generator,
    stop: threading.Event | None,
    started: float,
    deadline: float | None,
    candidate: int,
    candidates: int,
) -> Generator[TrainProgress, None, _Fit | None]:
    """Fit ``core`` (yielding one progress event per epoch); ``None`` if no mini-batch ran before ``deadline``."""
    hidden = tuple(m.out_features for m in core if isinstance(m, nn.Linear))[:-1]
    optimizer = torch.optim.AdamW(core.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    n_train = data.X_train.shape[0]
    steps_per_epoch = math.ceil(n_train / batch)
    # Warm-up sized to the run that can happen: never more than a tenth of the steps allowed.
    warmup = min(_WARMUP_STEPS, spec.epochs * steps_per_epoch // 10)
    plateau_epochs = max(spec.patience // 4, 1)
    min_lr = spec.learning_rate * _MIN_LR_FACTOR
    lr = spec.learning_rate
    best_loss, best_state, plateau_best = math.inf, _snapshot(core), math.inf
    plateau, epochs_run, step = 0, 0, 0
    stop_reason = StopReason.MAX_EPOCHS
    fit_started = time.monotonic()
    for epoch in range(1, spec.epochs + 1):
        core.train()
        order = torch.randperm(n_train, generator=generator)
        total, seen, out_of_time = 0.0, 0, False
        for start in range(0, n_train, batch):
            _check_stop(stop, epoch - 1)
            if deadline is not None and time.monotonic() >= deadline:
                out_of_time = True
                break
            step += 1
            rate = lr * min(1.0, step / warmup) if warmup else lr
            for group in optimizer.param_groups:
                group["lr"] = rate
            index = order[start : start + batch]
            loss = F.mse_loss(core(data.X_train.index_select(0, index)), data.Y_train.index_select(0, index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
            seen += len(index)
        if not seen:
            if epochs_run == 0:
                return None
            stop_reason = StopReason.TIME_BUDGET
            break
        epochs_run = epoch
        val_loss = _mse(core, data.X_val, data.Y_val)
        if not math.isfinite(val_loss):
            if best_loss == math.inf:
                raise TrainingDivergedError(epoch, val_loss, spec.learning_rate)
            stop_reason = StopReason.DIVERGED
        else:
            if val_loss < best_loss:
                best_loss, best_state = val_loss, _snapshot(core)
            # Only a real improvement (not a rounding-level one) resets the plateau count.
            if val_loss < plateau_best * (1 - _IMPROVEMENT):
                plateau_best, plateau = val_loss, 0
            else:
                plateau += 1
                if plateau % plateau_epochs == 0:
                    lr = max(lr * _LR_FACTOR, min_lr)
            if out_of_time:
                stop_reason = StopReason.TIME_BUDGET
            elif plateau >= spec.patience:
                stop_reason = StopReason.CONVERGED
        done = stop_reason is not StopReason.MAX_EPOCHS or epoch == spec.epochs
        now = time.monotonic()
        eta = (now - fit_started) / epoch * (spec.epochs - epoch)
        if deadline is not None:
            eta = min(eta, max(deadline - now, 0.0))
        yield TrainProgress(
            epoch=epoch,
            epochs=spec.epochs,
            train_loss=total / seen,
            validation_loss=val_loss,
            best_validation_loss=best_loss,
            elapsed_seconds=now - started,
            eta_seconds=0.0 if done else eta,
            candidate=candidate,
            candidates=candidates,
            learning_rate=rate,
        )
        if done:
            break
    core.load_state_dict(best_state)
    return _Fit(core, hidden, best_loss, epochs_run, stop_reason)


def _net(hidden: Sequence[int]) -> str:
    return "the network " + ("x".join(map(str, hidden)) if hidden else "(linear)")


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
    """MSE, MAE, R² and the residuals' standard deviation and 95th percentile of size, per output, in raw units.

    R² is ``1 - SSE/SST``; when the outputs' validation values are all equal (SST = 0)
    it is 1 for a perfect fit and 0 otherwise. For an :class:`Ensemble` these are the
    mean's, with the median and 95th percentile of each output's spread.
    """
    with torch.inference_mode():
        predicted = np.concatenate(
            [model(torch.from_numpy(X[s : s + _EVAL_ROWS])).numpy() for s in range(0, len(X), _EVAL_ROWS)]
        ).astype(np.float64)
    m = len(names)
    error = predicted[:, :m] - Y
    spread = predicted[:, m:] if predicted.shape[1] == 2 * m else None
    metrics = []
    for j, name in enumerate(names):
        sse = float(np.sum(error[:, j] ** 2))
        sst = float(np.sum((Y[:, j] - Y[:, j].mean()) ** 2))
        r2 = 1.0 - sse / sst if sst > 0 else (1.0 if sse == 0 else 0.0)
        metrics.append(
            OutputMetrics(
                output=name,
                mse=sse / len(Y),
                mae=float(np.mean(np.abs(error[:, j]))),
                r2=r2,
                residual_std=float(np.std(error[:, j])),
                residual_p95=float(np.quantile(np.abs(error[:, j]), 0.95)),
                spread_median=0.0 if spread is None else float(np.median(spread[:, j])),
                spread_p95=0.0 if spread is None else float(np.quantile(spread[:, j], 0.95)),
            )
        )
    return tuple(metrics)
