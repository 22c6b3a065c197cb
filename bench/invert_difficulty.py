"""Valid patterns per second on the example model: preimage against neural-adjoint and plain GD.

The 10-feature example model (examples/difficulty, difficulty in [1, 10]) is registered in a
temporary registry and loaded as the server loads it; every method then looks for inputs of
difficulty 7 within 1e-3 inside [0, 1]^10, in process, in the same run:

* preimage ``optimize`` and ``sample`` (one Invert call each for ``--count`` patterns);
* neural-adjoint (2048 starts, 300 Adam steps, lr 0.5 halved on plateaus, boundary loss 0.1),
  repeated ``--na-runs`` times with different seeds;
* one-at-a-time gradient descent for ``--gd-count`` patterns.

A pattern is valid when onnxruntime puts it within the tolerance and it lies inside the
bounds; duplicates count once. The figure is valid patterns per wall-clock second, and its
ratio to neural-adjoint's and to gradient descent's.

    python bench/invert_difficulty.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from invert_baselines import neural_adjoint, one_at_a_time  # noqa: E402

from preimage.registry import Registry  # noqa: E402
from preimage.registry.schema import FeatureSchema  # noqa: E402
from preimage.server.engine import InputSpace, InvertMode, InvertSummary, PatternBatch, invert  # noqa: E402
from preimage.server.engine.types import InvertSpec, TargetSpec  # noqa: E402

MODEL = ROOT / "examples" / "difficulty" / "difficulty.onnx"
SCHEMA = ROOT / "examples" / "difficulty" / "schema.json"
TARGET = 7.0
TOLERANCE = 1e-3


def count_valid(session: ort.InferenceSession, X: np.ndarray, tolerance: float = TOLERANCE) -> int:
    """Distinct rows within ``tolerance`` of the target (by onnxruntime) and inside [0, 1]."""
    if len(X) == 0:
        return 0
    X = np.unique(X.astype(np.float32), axis=0)
    out = session.run(None, {session.get_inputs()[0].name: X})[0][:, 0]
    inside = np.all((X >= 0.0) & (X <= 1.0), axis=1)
    return int(np.sum((np.abs(out.astype(np.float64) - TARGET) <= tolerance) & inside))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer patterns and runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    parser.add_argument("--count", type=int, default=None, help="patterns per preimage call (default 200000)")
    parser.add_argument("--na-runs", type=int, default=None, help="neural-adjoint runs (default 3)")
    parser.add_argument("--gd-count", type=int, default=None, help="gradient-descent patterns (default 40)")
    args = parser.parse_args(argv)
    count = args.count or (20_000 if args.quick else 200_000)
    na_runs = args.na_runs or (1 if args.quick else 3)
    gd_count = args.gd_count or (10 if args.quick else 40)
    torch.set_num_threads(args.threads)
    session = ort.InferenceSession(MODEL.read_bytes(), providers=["CPUExecutionProvider"])
    rows: list[tuple[str, int, float, str]] = []
    with tempfile.TemporaryDirectory() as root:
        registry = Registry.open(root)
        record = registry.register_bytes("difficulty", MODEL.read_bytes(), schema=FeatureSchema.from_file(SCHEMA))
        loaded = registry.load(record)
        space = InputSpace.from_schema(loaded.schema)
        module = loaded.module
        for mode in (InvertMode.OPTIMIZE, InvertMode.SAMPLE):
            spec = InvertSpec(targets=(TargetSpec(value=TARGET),), n=count, tolerance=TOLERANCE, seed=0, mode=mode)
            started = time.perf_counter()
            events = list(invert(module, space, spec))
            seconds = time.perf_counter() - started
            X = np.concatenate([e.inputs for e in events if isinstance(e, PatternBatch)])
            summary = events[-1]
            assert isinstance(summary, InvertSummary)
            note = f"{summary.forward_passes} fwd + {summary.backward_passes} bwd passes"
            rows.append((f"preimage {mode.value}", count_valid(session, X), seconds, note))
        bounds = space.bounds.astype(np.float64)
        valid, seconds = 0, 0.0
        for seed in range(na_runs):
            result = neural_adjoint(module, bounds, np.array([TARGET]), seed=seed)
            valid += count_valid(session, result.inputs)
            seconds += result.seconds
        rows.append(("neural-adjoint", valid, seconds, f"{na_runs} x 2048 starts x 300 steps"))
        result = one_at_a_time(module, bounds, np.array([TARGET]), count=gd_count, tolerance=TOLERANCE)
        rows.append(("one-at-a-time GD", count_valid(session, result.inputs), result.seconds, f"{gd_count} inputs"))
        registry.close()
    rate = {name: valid / seconds for name, valid, seconds, _ in rows}
    print(f"example model, target {TARGET}, tolerance {TOLERANCE}, bounds [0, 1], {args.threads} torch thread(s)\n")
    print("| method | valid patterns | seconds | valid patterns/s | vs neural-adjoint | vs GD | work |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, valid, seconds, note in rows:
        print(
            f"| {name} | {valid:,} | {seconds:.2f} | {rate[name]:,.0f} | "
            f"{rate[name] / rate['neural-adjoint']:,.1f}x | {rate[name] / rate['one-at-a-time GD']:,.0f}x | {note} |"
        )


if __name__ == "__main__":
    main()
