"""The inversion benchmark suite: four closed-form tasks, four methods, side by side in one run.

For each task (bench/tasks.py: sine, arm, friedman, binary10) the suite generates data,
trains a small MLP, exports it to ONNX, registers it and loads the frozen module, then
inverts it for a set of targets drawn from the task's input distribution with

* preimage ``optimize`` and preimage ``sample`` (``n = 2048`` per target, as many as
  neural-adjoint's candidates, within a 2-second budget per call; binary10: ``n = 3 ×`` the size
  of the target's exact preimage),
* neural-adjoint (2048 starts, 300 Adam steps, lr 0.5 halved on plateaus, boundary loss 0.1),
* one-at-a-time gradient descent (Adam on ``(f(x) − y)²``, one input at a time).

Candidates of the baselines, which know no discrete constraints, are projected
(clipped to the bounds, binaries rounded, one-hot groups set to their largest
column) before they are scored; their validity share is that of the raw candidates.
Everything is checked independently: model outputs by onnxruntime, re-simulation
error by the task's true function. Per task and method it reports

* r₁ and r₅₀ — mean over targets of the smallest re-simulation MSE
  ``mean_j (g_j(x) − y_j)²`` among the first 1 / 50 candidates (Ren et al.; candidates in
  stream order, neural-adjoint's ranked by its own loss);
* optimization error ``max_j |f_j(x) − y_j|`` (median over candidates);
* validity share — candidates satisfying every constraint as returned;
* valid patterns per second — candidates within bounds and types *and* within the
  tolerance by onnxruntime, per wall-clock second of the method;
* coverage — sine: share of the level set's connected components reached; binary10:
  share of the exact preimage found;
* sample-mode goodness of fit — binary10: chi-square of first draws against uniform over
  the exact preimage; continuous tasks: two-sample KS per column (Bonferroni-combined)
  against rejection-sampled prior draws.

    python bench/invert_suite.py --quick            # a few minutes on 2 cores
    python bench/invert_suite.py                    # the full run (docs/benchmarks.md says how long)

Results go to stdout as a markdown table, to ``--out`` as JSON, and to ``--plot`` as a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from scipy import ndimage, stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from invert_baselines import neural_adjoint, one_at_a_time  # noqa: E402
from tasks import TASKS, BuiltTask, Task, all_binary, build  # noqa: E402

from preimage.registry import Registry  # noqa: E402
from preimage.server.engine import InputSpace, InvertMode, PatternBatch, PriorKind, invert  # noqa: E402
from preimage.server.engine.types import InvertSpec, TargetSpec  # noqa: E402

METHODS = ("preimage optimize", "preimage sample", "neural-adjoint", "one-at-a-time GD")
CALL_SECONDS = 2.0
"""Time budget of one preimage call: sample mode on thin vector targets may return fewer than n."""


@dataclass
class Scores:
    """Per-target results of one method on one task."""

    r1: list[float] = field(default_factory=list)
    r50: list[float] = field(default_factory=list)
    opt_errors: list[np.ndarray] = field(default_factory=list)
    raw_valid: int = 0
    candidates: int = 0
    valid: int = 0
    seconds: float = 0.0
    coverage: list[float] = field(default_factory=list)
    targets: int = 0

    def summary(self) -> dict[str, float | int | None]:
        errors = np.concatenate(self.opt_errors) if self.opt_errors else np.array([np.nan])
        return {
            "targets": self.targets,
            "r1": float(np.mean(self.r1)) if self.r1 else None,
            "r50": float(np.mean(self.r50)) if self.r50 else None,
            "opt_error_median": float(np.median(errors)),
            "validity_share": self.raw_valid / max(self.candidates, 1),
            "valid": self.valid,
            "seconds": self.seconds,
            "valid_per_second": self.valid / self.seconds if self.seconds > 0 else None,
            "coverage": float(np.mean(self.coverage)) if self.coverage else None,
        }


class Checker:
    """Independent checks for one task: constraints from the schema, outputs from onnxruntime."""

    def __init__(self, built: BuiltTask) -> None:
        self.built = built
        self.task = built.task
        self.session = ort.InferenceSession(built.onnx_bytes, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        lower, upper, self.binary, self.groups = [], [], [], []
        col = 0
        for feature in self.task.schema["inputs"]:  # type: ignore[union-attr]
            kind = feature.get("kind", "continuous")
            if kind == "categorical":
                width = len(feature["levels"])
                self.groups.append(list(range(col, col + width)))
                lower += [0.0] * width
                upper += [1.0] * width
                col += width
                continue
            if kind == "binary":
                self.binary.append(col)
                lower.append(0.0)
                upper.append(1.0)
            else:
                lower.append(feature["min"])
                upper.append(feature["max"])
            col += 1
        self.lower, self.upper = np.array(lower), np.array(upper)
        self.discrete = np.zeros(col, dtype=bool)
        self.discrete[self.binary] = True
        for group in self.groups:
            self.discrete[group] = True

    def model(self, X: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(None, {self.input: X.astype(np.float32)})[0]
        return out.astype(np.float64)

    def constraints(self, X: np.ndarray) -> np.ndarray:
        ok = np.isfinite(X).all(axis=1) & ((X >= self.lower) & (X <= self.upper)).all(axis=1)
        ok &= np.isin(X[:, self.discrete], (0.0, 1.0)).all(axis=1)
        for group in self.groups:
            ok &= X[:, group].sum(axis=1) == 1.0
        return np.asarray(ok)

    def project(self, X: np.ndarray) -> np.ndarray:
        """The obvious repair of a baseline's candidates: clip, round binaries, one-hot by argmax."""
        P = np.clip(np.nan_to_num(X.astype(np.float64)), self.lower, self.upper)
        P[:, self.binary] = np.round(P[:, self.binary])
        for group in self.groups:
            hot = np.argmax(P[:, group], axis=1)
            P[:, group] = 0.0
            P[np.arange(len(P)), np.asarray(group)[hot]] = 1.0
        return P.astype(np.float32)

    def score(self, scores: Scores, X: np.ndarray, y: np.ndarray, seconds: float) -> np.ndarray:
        """Score one target's candidates (in order); return the valid projected ones."""
        scores.targets += 1
        scores.seconds += seconds
        scores.candidates += len(X)
        if len(X) == 0:
            return X
        scores.raw_valid += int(self.constraints(X).sum())
        P = self.project(X)
        F = self.model(P)
        err = np.abs(F - y).max(axis=1)
        valid = self.constraints(P) & (err <= self.task.tolerance)
        scores.valid += int(valid.sum())
        resim = ((self.task.truth(P.astype(np.float64)) - y) ** 2).mean(axis=1)
        scores.r1.append(float(resim[0]))
        scores.r50.append(float(resim[:50].min()))
        scores.opt_errors.append(err)
        return P[valid]


# -- running the methods ------------------------------------------------------------------------------


def run_preimage(
    built: BuiltTask,
    space: InputSpace,
    y: np.ndarray,
    mode: InvertMode,
    n: int,
    seed: int,
    tolerance: float | None = None,
    prior: PriorKind | None = None,
    max_seconds: float = 120.0,
) -> tuple[np.ndarray, float]:
    """All patterns of one Invert call, and its wall-clock seconds."""
    spec = InvertSpec(
        targets=tuple(TargetSpec(value=float(v)) for v in y),
        n=n,
        tolerance=tolerance if tolerance is not None else built.task.tolerance,
        seed=seed,
        mode=mode,
        prior=prior,
        max_seconds=max_seconds,
    )
    started = time.perf_counter()
    batches = [
        e.inputs for e in invert(built.module, space, spec, statistics=built.statistics) if isinstance(e, PatternBatch)
    ]
    seconds = time.perf_counter() - started
    return (np.concatenate(batches) if batches else np.zeros((0, space.width), np.float32)), seconds


def sine_coverage(y: float, patterns: np.ndarray, grid: int = 801) -> float:
    """Share of the connected components of {sin(3πx₁) + cos(3πx₂) = y} in [−1, 1]² with a pattern nearby."""
    axis = np.linspace(-1.0, 1.0, grid)
    h = axis[1] - axis[0]
    g = np.sin(3 * np.pi * axis)[:, None] + np.cos(3 * np.pi * axis)[None, :]
    band = np.abs(g - y) <= 3 * np.pi * h  # at least one cell wide along the curve
    labels, count = ndimage.label(band, structure=np.ones((3, 3)))
    if count == 0 or len(patterns) == 0:
        return 0.0
    _, (ii, jj) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    i = np.clip(np.rint((patterns[:, 0] + 1) / h).astype(int), 0, grid - 1)
    j = np.clip(np.rint((patterns[:, 1] + 1) / h).astype(int), 0, grid - 1)
    near = np.hypot(ii[i, j] - i, jj[i, j] - j) <= 4
    reached = set(labels[ii[i, j], jj[i, j]][near].tolist())
    return len(reached) / count


def binary_preimage(y: float) -> np.ndarray:
    """The exact preimage of ``y`` under the binary10 task's true function."""
    rows = all_binary(10)
    return rows[TASKS["binary10"].truth(rows)[:, 0] == y]


def coverage_of(task: Task, y: np.ndarray, valid: np.ndarray) -> float | None:
    if task.name == "sine":
        return sine_coverage(float(y[0]), valid)
    if task.name == "binary10":
        exact = {r.tobytes() for r in binary_preimage(float(y[0])).astype(np.float32)}
        return len(exact & {r.tobytes() for r in valid.astype(np.float32)}) / len(exact)
    return None


# -- goodness of fit -----------------------------------------------------------------------------------


def gof_continuous(
    built: BuiltTask, space: InputSpace, checker: Checker, y: np.ndarray, seed: int, prior: PriorKind
) -> float:
    """Bonferroni-combined per-column two-sample p-value: sample mode against rejection from the prior."""
    task = built.task
    rng = np.random.default_rng(10_000 + seed)
    refs: list[np.ndarray] = []
    drawn = 0
    while sum(len(r) for r in refs) < 1000 and drawn < 40_000_000:
        X = task.draw(rng, 2_000_000)
        drawn += len(X)
        F = checker.model(X)
        refs.append(X[(np.abs(F - y) <= task.gof_tolerance).all(axis=1)])
    ref = np.concatenate(refs)
    X, _ = run_preimage(built, space, y, InvertMode.SAMPLE, 1000, seed, tolerance=task.gof_tolerance, prior=prior)
    ps = []
    for j in range(X.shape[1]):
        if checker.discrete[j]:
            table = np.array([[np.sum(X[:, j] == v), np.sum(ref[:, j] == v)] for v in (0.0, 1.0)])
            table = table[table.sum(axis=1) > 0]
            ps.append(stats.chi2_contingency(table)[1] if len(table) > 1 else 1.0)
        else:
            ps.append(stats.ks_2samp(X[:, j], ref[:, j]).pvalue)
    return float(min(1.0, len(ps) * min(ps)))


def gof_binary10(built: BuiltTask, space: InputSpace, y: float) -> float:
    """Chi-square of first draws (one per seed) against uniform over the model's exact preimage."""
    rows = all_binary(10).astype(np.float32)
    exact = rows[np.abs(Checker(built).model(rows)[:, 0] - y) <= built.task.tolerance]
    index = {r.tobytes(): i for i, r in enumerate(exact)}
    counts = np.zeros(len(exact))
    for seed in range(50 * len(exact)):
        X, _ = run_preimage(built, space, np.array([y]), InvertMode.SAMPLE, 1, 1000 + seed, prior=PriorKind.UNIFORM)
        counts[index[X[0].tobytes()]] += 1
    return float(stats.chisquare(counts).pvalue)


# -- the suite ------------------------------------------------------------------------------------------


def run_task(built: BuiltTask, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, object]:
    task = built.task
    space = InputSpace.from_schema(built.schema)
    checker = Checker(built)
    rng = np.random.default_rng(1)
    if task.name == "binary10":
        targets = np.arange(1.0, 11.0)[:, None]
    else:
        targets = task.truth(task.draw(rng, args.targets))
    bounds = space.bounds.astype(np.float64)
    results: dict[str, Scores] = {m: Scores() for m in METHODS}
    for i, y in enumerate(targets):
        n = 3 * len(binary_preimage(float(y[0]))) if task.name == "binary10" else 2048
        for mode, method in ((InvertMode.OPTIMIZE, METHODS[0]), (InvertMode.SAMPLE, METHODS[1])):
            X, seconds = run_preimage(built, space, y, mode, n, i, max_seconds=CALL_SECONDS)
            valid = checker.score(results[method], X, y, seconds)
            cov = coverage_of(task, y, valid)
            if cov is not None:
                results[method].coverage.append(cov)
        if i < args.na_targets:
            na = neural_adjoint(built.module, bounds, y, seed=i)
            valid = checker.score(results[METHODS[2]], na.inputs, y, na.seconds)
            cov = coverage_of(task, y, valid)
            if cov is not None:
                results[METHODS[2]].coverage.append(cov)
        if i < args.gd_targets:
            gd = one_at_a_time(built.module, bounds, y, count=args.gd_count, tolerance=task.tolerance, seed=i)
            valid = checker.score(results[METHODS[3]], gd.inputs, y, gd.seconds)
            cov = coverage_of(task, y, valid)
            if cov is not None:
                results[METHODS[3]].coverage.append(cov)
    gof: list[float] = []
    if task.name == "binary10":
        gof = [gof_binary10(built, space, y) for y in (2.0, 3.0)]
    else:
        prior = PriorKind.DATA if task.name == "arm" else PriorKind.UNIFORM
        gof = [gof_continuous(built, space, checker, targets[i], i, prior) for i in range(args.gof_targets)]
    out = {
        "task": task.name,
        "model_rmse": built.rmse,
        "train_seconds": built.train_seconds,
        "methods": {m: s.summary() for m, s in results.items()},
        "gof_p": gof,
    }
    log(f"{task.name}: model RMSE {built.rmse:.3g}; sample-mode goodness-of-fit p = {[round(p, 3) for p in gof]}")
    return out


def table(results: list[dict[str, object]]) -> str:
    lines = [
        "| task | method | targets | r1 | r50 | opt. error (median) | validity | valid patterns/s | coverage |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(v: object, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    for result in results:
        for method, s in result["methods"].items():  # type: ignore[attr-defined]
            if not s["targets"]:
                continue
            lines.append(
                f"| {result['task']} | {method} | {s['targets']} | {fmt(s['r1'], '.2e')} | {fmt(s['r50'], '.2e')} | "
                f"{fmt(s['opt_error_median'], '.1e')} | {s['validity_share']:.1%} | "
                f"{fmt(s['valid_per_second'], ',.0f')} | {fmt(s['coverage'], '.1%')} |"
            )
    return "\n".join(lines)


def plot(results: list[dict[str, object]], path: Path) -> None:
    """Bars per task and method: valid patterns per second and r50 (both log scale; zeros marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [str(r["task"]) for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    width = 0.2
    panels = (("valid_per_second", "valid patterns per second"), ("r50", "r50: best re-simulation MSE of 50"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for k, method in enumerate(METHODS):
            values = [r["methods"][method][key] for r in results]  # type: ignore[index]
            xs = np.arange(len(tasks)) + (k - 1.5) * width
            heights = [v if v else np.nan for v in values]
            ax.bar(xs, heights, width, label=method, color=f"C{k}")
            for x, v in zip(xs, values, strict=True):
                if v == 0:  # nothing to draw on a log scale: say so
                    ax.annotate(
                        "0",
                        (x, 0),
                        xycoords=("data", "axes fraction"),
                        xytext=(0, 3),
                        textcoords="offset points",
                        ha="center",
                        fontsize=8,
                        color=f"C{k}",
                    )
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(tasks)), tasks)
        ax.set_title(f"{title} (log)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(METHODS), fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer targets and shorter training")
    parser.add_argument("--tasks", default="sine,arm,friedman,binary10")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "preimage-bench-models")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write the plot (PNG) here")
    parser.add_argument("--from-json", type=Path, default=None, help="only redraw table and plot from --out JSON")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(table(saved["results"]))
        if args.plot:
            plot(saved["results"], args.plot)
        return
    args.targets = 20 if args.quick else 200
    args.na_targets = 4 if args.quick else 40
    args.gd_targets = 2 if args.quick else 10
    args.gd_count = 5 if args.quick else 20
    args.gof_targets = 2 if args.quick else 5
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)

    results = []
    with tempfile.TemporaryDirectory() as root:
        registry = Registry.open(root)
        for name in args.tasks.split(","):
            built = build(TASKS[name], registry, args.cache, quick=args.quick)
            log(f"{name}: model ready (RMSE {built.rmse:.3g}, trained in {built.train_seconds:.0f} s)")
            results.append(run_task(built, args, log))
        registry.close()
    print()
    print(table(results))
    total = time.perf_counter() - started
    print(f"\nsuite finished in {total:.0f} s ({'quick' if args.quick else 'full'}, {args.threads} torch thread(s))")
    if args.out:
        args.out.write_text(json.dumps({"results": results, "seconds": total, "quick": args.quick}, indent=2))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
