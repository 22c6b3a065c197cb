"""What default-settings Train buys: true-function hit rate of inverted patterns, and wall time.

For each synthetic function (``smooth``, ``interactions``, ``categorical``) and table
size, two ways of training are compared in the same run, on the same noisy table:

* ``default`` — ``TrainSpec`` with no options: epochs as a maximum (1000), early
  stopping on the validation loss, warm-up + halve-on-plateau learning rate, batch
  size scaled to the table, and the small network search;
* ``fixed`` — the plain loop at fixed epochs: 64x64, batch 256, lr 1e-3, ``--fixed-epochs``
  epochs (60), early stopping disabled (the defaults before issue 14);
* ``ensemble`` — the defaults plus a deep ensemble of ``--ensemble`` members (5) of the
  network the search chose, inverted on the members' mean alone (``ensemble``) and with
  ``max_uncertainty = U`` (``ensemble+U``), where ``U`` is the median spread over the
  validation rows that Train reports (``OutputMetrics.spread_median``): patterns are kept
  where the members agree at least as well as on a typical held-out row.

Each trained model is registered in a temporary registry, loaded back, and inverted
by the engine for targets 3, 5 and 7 (``--n`` patterns each, sample mode, tolerance
1e-3). The hit rate is the share of patterns whose TRUE (noise-free) value is within
0.5 of the target, over the patterns asked for (one not returned is a miss).
Wall time is Train + the three Inverts (for ``ensemble+U``: the same Train, then its own
Inverts). Validation R² and the residual p95 that Train reports (for ensembles: of the
mean) are printed beside them.

Usage:
    .venv/bin/python bench/train_quality.py [--sizes 2000,20000] [--n 200] [--arms default,fixed,ensemble]
        [--ensemble 5] [--functions smooth,interactions,categorical] [--json out.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from preimage.registry import Registry
from preimage.server.engine.data import build_table
from preimage.server.engine.invert import invert
from preimage.server.engine.space import InputSpace
from preimage.server.engine.train import train
from preimage.server.engine.types import InvertSpec, PatternBatch, TargetSpec, TrainedModel, TrainSpec

THEMES = ("ice", "lava", "forest")
NOISE = 0.1
TARGETS = (3.0, 5.0, 7.0)


def _squash(z: np.ndarray) -> np.ndarray:
    return 1 + 9 / (1 + np.exp(-z))


def smooth(X: np.ndarray, theme: np.ndarray | None) -> np.ndarray:
    """10 features: additive smooth terms and one product, squashed to (1, 10)."""
    z = (
        2.5 * (X[:, 0] + X[:, 1] - 1)
        + 1.5 * (X[:, 2] - X[:, 3])
        + 2.0 * (X[:, 4] * X[:, 5] - 0.25)
        + np.sin(3 * X[:, 6])
        - 0.8
        + 0.5 * (X[:, 7] - X[:, 8])
        + 0.2 * X[:, 9]
    )
    return _squash(z)


def interactions(X: np.ndarray, theme: np.ndarray | None) -> np.ndarray:
    """8 features: products and a sine of a product (Friedman-like)."""
    z = (
        3.0 * np.sin(np.pi * X[:, 0] * X[:, 1])
        + 4.0 * (X[:, 2] - 0.5) ** 2 * (1 + X[:, 3])
        + 2.0 * X[:, 4] * X[:, 5]
        - 1.5 * X[:, 6] * (1 - X[:, 7])
        - 2.0
    )
    return _squash(z)


def categorical(X: np.ndarray, theme: np.ndarray | None) -> np.ndarray:
    """6 features and a 3-level theme that shifts the level and flips one slope."""
    assert theme is not None
    shift = np.select([theme == "ice", theme == "lava"], [-0.8, 0.9], 0.0)
    slope = np.where(theme == "forest", -2.0, 2.0)
    z = 2.0 * (X[:, 0] + X[:, 1] - 1) + slope * (X[:, 2] - 0.5) + 1.5 * X[:, 3] * X[:, 4] + np.sin(3 * X[:, 5]) + shift
    return _squash(z - 0.5)


@dataclass(frozen=True)
class Function:
    name: str
    features: int
    categorical: bool
    g: Callable[[np.ndarray, np.ndarray | None], np.ndarray]


FUNCTIONS = (
    Function("smooth", 10, False, smooth),
    Function("interactions", 8, False, interactions),
    Function("categorical", 6, True, categorical),
)


def make_table(f: Function, rows: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (rows, f.features))
    theme = rng.choice(THEMES, rows) if f.categorical else None
    columns: dict[str, Any] = {f"x{i}": X[:, i] for i in range(f.features)}
    if theme is not None:
        columns["theme"] = list(theme)
    columns["y"] = f.g(X, theme) + rng.normal(0, NOISE, rows)
    return columns


def true_values(f: Function, patterns: np.ndarray, levels: tuple[str, ...]) -> np.ndarray:
    X = patterns[:, : f.features].astype(np.float64)
    theme = np.asarray(levels)[patterns[:, f.features :].argmax(axis=1)] if f.categorical else None
    return f.g(X, theme)


def run_one(f: Function, columns: dict[str, Any], spec: TrainSpec, n: int) -> list[dict[str, Any]]:
    """Train once, then invert for every target; an ensemble is inverted twice (without and with ``U``).

    Returns one result per way of inverting, ``label`` ``""`` or ``"+U"``.
    """
    started = time.perf_counter()
    trained = next(e for e in train(build_table(columns, spec), spec) if isinstance(e, TrainedModel))
    train_seconds = time.perf_counter() - started
    (metrics,) = trained.metrics
    limits: tuple[float | None, ...] = (None, metrics.spread_median) if trained.ensemble else (None,)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry.open(tmp)
        try:
            record = registry.register_bytes(
                "m", trained.onnx_bytes, schema=trained.schema, statistics=trained.statistics
            )
            loaded = registry.load(record)
            space = InputSpace.from_schema(loaded.schema)
            levels = next((feat.levels for feat in loaded.schema.inputs if feat.levels), ())
            for limit in limits:
                inverted = time.perf_counter()
                hits = []
                for target in TARGETS:
                    invert_spec = InvertSpec(
                        targets=(TargetSpec(value=target),), n=n, seed=int(target), max_uncertainty=limit
                    )
                    events = list(
                        invert(
                            loaded.module,
                            space,
                            invert_spec,
                            statistics=loaded.statistics,
                            spreads=loaded.schema.spread_columns,
                        )
                    )
                    batches = [e.inputs for e in events if isinstance(e, PatternBatch)]
                    patterns = np.concatenate(batches) if batches else np.zeros((0, record.input_width), np.float32)
                    hit = np.abs(true_values(f, patterns, levels) - target) <= 0.5
                    # A pattern asked for but not returned counts as a miss.
                    hits.append(np.concatenate([hit, np.zeros(n - len(hit), bool)]))
                results.append(
                    {
                        "label": "" if limit is None else "+U",
                        "max_uncertainty": limit,
                        "hit_rate": float(np.mean(np.concatenate(hits))),
                        "seconds": train_seconds + time.perf_counter() - inverted,
                        "train_seconds": train_seconds,
                        "r2": metrics.r2,
                        "residual_p95": metrics.residual_p95,
                        "spread_median": metrics.spread_median,
                        "spread_p95": metrics.spread_p95,
                        "epochs": trained.epochs_run,
                        "stop_reason": trained.stop_reason.value,
                        "network": "x".join(map(str, trained.hidden_sizes)),
                        "members": trained.ensemble,
                    }
                )
        finally:
            registry.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--functions", default=",".join(f.name for f in FUNCTIONS))
    parser.add_argument("--fixed-epochs", type=int, default=60)
    parser.add_argument("--n", type=int, default=200, help="patterns per target")
    parser.add_argument("--arms", default="default,fixed,ensemble", help="ways of training to compare")
    parser.add_argument("--ensemble", type=int, default=5, help="members of the ensemble arm")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    rows_out = []
    print(
        f"{'function':13} {'rows':>6} {'training':11} {'hit rate':>8} {'seconds':>8} {'train s':>8} "
        f"{'R2':>7} {'p95':>6}  epochs  stop / network  (U)"
    )
    for f in (f for f in FUNCTIONS if f.name in args.functions.split(",")):
        for rows in (int(s) for s in args.sizes.split(",")):
            columns = make_table(f, rows, seed=rows)
            cat = ("theme",) if f.categorical else ()
            specs = {
                "default": TrainSpec(name="m", target_columns=("y",), categorical_columns=cat, seed=1),
                "fixed": TrainSpec(
                    name="m",
                    target_columns=("y",),
                    categorical_columns=cat,
                    seed=1,
                    hidden_sizes=(64, 64),
                    epochs=args.fixed_epochs,
                    batch_size=256,
                    learning_rate=1e-3,
                    patience=10**6,
                ),
                "ensemble": TrainSpec(
                    name="m", target_columns=("y",), categorical_columns=cat, seed=1, ensemble=args.ensemble
                ),
            }
            for arm in args.arms.split(","):
                # A worker thread, as the servicer trains: torch in a loaded main thread is slower.
                with concurrent.futures.ThreadPoolExecutor(1) as worker:
                    results = worker.submit(run_one, f, columns, specs[arm], args.n).result()
                for r in results:
                    label = arm + r.pop("label")
                    rows_out.append({"function": f.name, "rows": rows, "training": label, **r})
                    limit = "" if r["max_uncertainty"] is None else f"  (U = {r['max_uncertainty']:.4g})"
                    print(
                        f"{f.name:13} {rows:>6} {label:11} {r['hit_rate']:>8.3f} {r['seconds']:>8.1f} "
                        f"{r['train_seconds']:>8.1f} "
                        f"{r['r2']:>7.4f} {r['residual_p95']:>6.3f}  {r['epochs']:>6}  {r['stop_reason']} / "
                        f"{r['network']}{limit}",
                        flush=True,
                    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows_out, out, indent=1)


if __name__ == "__main__":
    main()
