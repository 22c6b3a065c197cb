"""Why sample mode draws independent lines and not a Markov chain: the chain's mixing, measured.

Constrained manifold MCMC (Zappa, Holmes-Cerfon, Goodman 2018) on the level set
``{f(x) = y}`` targets the coarea density ``p(x) / sqrt(det J Jᵀ)`` with a tangent random
walk: a Gaussian step in the tangent space at ``x`` (scale ``σ`` per coordinate), a
projection back onto the level set along the normal space at ``x`` (chord Newton), the box
check, the reverse projection check (Lelièvre, Rousset, Stoltz 2019) and the
Metropolis–Hastings ratio. Thousands of chains run as one batched tensor, seeded on the level
set, and the script reports, per step size, the acceptance rate and the integrated
autocorrelation time ``τ`` of each coordinate (steps per independent state), and so the model
rows one effectively independent pattern costs — to set beside the line sampler's rows per
pattern (every line draw is independent).

    python bench/invert_mixing.py                 # the example model (10 inputs, target 7)
    python bench/invert_mixing.py --task arm      # the robotic arm (4 inputs, 2 outputs)

Rows are counted as the engine counts them: a forward row 1, a gradient row ``1 + 2m`` (a
backward pass costs about two forward ones).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from tasks import TASKS, build  # noqa: E402

from preimage.registry import Registry  # noqa: E402
from preimage.registry.schema import FeatureSchema  # noqa: E402
from preimage.server.engine import InputSpace, InvertSummary, invert  # noqa: E402
from preimage.server.engine.run import model_outputs  # noqa: E402
from preimage.server.engine.types import InvertSpec, TargetSpec  # noqa: E402

EXAMPLE = ROOT / "examples" / "difficulty"


LogDensity = Callable[[np.ndarray], np.ndarray]


class Chains:
    """Batched tangent random walk on ``{f = y}`` inside box bounds, prior log-density ``log_p``."""

    def __init__(
        self, module: torch.nn.Module, y: np.ndarray, lower: np.ndarray, upper: np.ndarray, log_p: LogDensity
    ) -> None:
        self.module, self.y, self.lower, self.upper, self.log_p = module, y, lower, upper, log_p
        self.m = y.size
        self.rows = 0.0

    def outputs(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model_outputs(self.module(torch.from_numpy(X.astype(np.float32))), X.shape[0])
        self.rows += X.shape[0]
        return out.numpy().astype(np.float64)

    def jacobian(self, X: np.ndarray) -> np.ndarray:
        Xg = torch.from_numpy(X.astype(np.float32)).requires_grad_(True)
        F = model_outputs(self.module(Xg), X.shape[0])
        rows = [torch.autograd.grad(F[:, j].sum(), Xg, retain_graph=j < self.m - 1)[0] for j in range(self.m)]
        self.rows += X.shape[0] * (1 + 2 * self.m)
        return torch.stack(rows, dim=1).numpy().astype(np.float64)

    def project(self, Y: np.ndarray, J: np.ndarray, steps: int = 6) -> tuple[np.ndarray, np.ndarray]:
        """Solve ``f(Y + Jᵀ a) = y`` for ``a`` (chord Newton with the Jacobian ``J`` of the start point)."""
        a = np.zeros((Y.shape[0], self.m))
        G = J @ J.transpose(0, 2, 1)
        for _ in range(steps):
            r = self.outputs(Y + np.einsum("nji,nj->ni", J, a)) - self.y
            a -= np.linalg.solve(G, r[:, :, None])[:, :, 0]
        Z = Y + np.einsum("nji,nj->ni", J, a)
        return Z, np.abs(self.outputs(Z) - self.y).max(axis=1) < 1e-5

    @staticmethod
    def tangent(J: np.ndarray, v: np.ndarray) -> np.ndarray:
        G = J @ J.transpose(0, 2, 1)
        c = np.linalg.solve(G, np.einsum("nji,ni->nj", J, v)[:, :, None])[:, :, 0]
        return v - np.einsum("nji,nj->ni", J, c)

    def run(self, X: np.ndarray, sigma: float, steps: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """``steps`` steps from ``X``; the states (steps x chains x d) and the acceptance rate."""
        J = self.jacobian(X)
        log_det = 0.5 * np.linalg.slogdet(J @ J.transpose(0, 2, 1))[1]
        states, accepted = [], 0.0
        for _ in range(steps):
            v = self.tangent(J, rng.standard_normal(X.shape) * sigma)
            Y, ok = self.project(X + v, J)
            ok &= ((Y >= self.lower) & (Y <= self.upper)).all(axis=1)
            JY = self.jacobian(Y)
            back = self.tangent(JY, X - Y)
            Xr, ok_r = self.project(Y + back, JY)
            ok &= ok_r & (np.abs(Xr - X).max(axis=1) < 1e-4)
            log_det_y = 0.5 * np.linalg.slogdet(JY @ JY.transpose(0, 2, 1))[1]
            log_r = self.log_p(Y) - log_det_y - self.log_p(X) + log_det
            log_r += ((v**2).sum(axis=1) - (back**2).sum(axis=1)) / (2 * sigma**2)
            take = ok & (np.log(rng.random(X.shape[0])) < log_r)
            X = np.where(take[:, None], Y, X)
            J = np.where(take[:, None, None], JY, J)
            log_det = np.where(take, log_det_y, log_det)
            states.append(X.copy())
            accepted += float(take.mean())
        return np.asarray(states), accepted / steps


def autocorrelation_time(H: np.ndarray, max_lag: int = 150) -> float:
    """Integrated autocorrelation time of one coordinate over all chains (``steps x chains``).

    The autocorrelations are summed up to the first lag where they fall below 0.05.
    """
    H = H - H.mean(axis=0)
    var = float((H * H).mean())
    tau = 1.0
    for lag in range(1, min(max_lag, H.shape[0] - 1)):
        rho = float((H[:-lag] * H[lag:]).mean()) / var
        if rho < 0.05:
            break
        tau += 2.0 * rho
    return tau


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("example", "arm"), default="example")
    parser.add_argument("--chains", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sigmas", default="0.03,0.06,0.1,0.15,0.2,0.3")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        registry = Registry.open(root)
        if args.task == "example":
            declared = FeatureSchema.from_file(EXAMPLE / "schema.json")
            record = registry.register_bytes("difficulty", (EXAMPLE / "difficulty.onnx").read_bytes(), schema=declared)
            loaded = registry.load(record)
            module, schema, statistics = loaded.module, loaded.schema, None
            y = np.array([7.0])

            def log_p(X: np.ndarray) -> np.ndarray:
                return np.zeros(X.shape[0])  # the uniform prior
        else:
            built = build(TASKS["arm"], registry, Path(tempfile.gettempdir()) / "preimage-bench-models", quick=False)
            module, schema, statistics = built.module, built.schema, built.statistics
            y = TASKS["arm"].truth(TASKS["arm"].draw(np.random.default_rng(1), 1))[0]
            sd = np.sqrt(np.diag(np.asarray(statistics.covariance).reshape(4, 4)))

            def log_p(X: np.ndarray) -> np.ndarray:
                return -0.5 * ((X / sd) ** 2).sum(axis=1)  # the task's normal, inside the box

        space = InputSpace.from_schema(schema)
        # Seeds: sample mode's own draws (on target to the tolerance), then pulled onto f = y exactly.
        spec = InvertSpec(targets=tuple(TargetSpec(value=float(v)) for v in y), n=args.chains, tolerance=1e-3, seed=0)
        events = list(invert(module, space, spec, statistics=statistics))
        X = np.concatenate([e.inputs for e in events if not isinstance(e, InvertSummary)]).astype(np.float64)
        chains = Chains(module, y, space.lower.astype(np.float64), space.upper.astype(np.float64), log_p)
        X, ok = chains.project(X, chains.jacobian(X), steps=10)
        X = X[ok & ((X >= chains.lower) & (X <= chains.upper)).all(axis=1)]
        registry.close()
    print(f"{args.task}: target {np.round(y, 4).tolist()}, {X.shape[0]} chains, {args.steps} steps each\n")
    print("| σ | acceptance | τ per coordinate (steps) | rows per step | rows per independent pattern |")
    print("|---:|---:|---|---:|---:|")
    for sigma in (float(s) for s in args.sigmas.split(",")):
        chains.rows = 0.0
        states, acceptance = chains.run(X.copy(), sigma, args.steps, rng)
        per_step = chains.rows / (args.steps * X.shape[0])
        burn = states[args.steps // 10 :]
        taus = [autocorrelation_time(burn[:, :, j]) for j in range(X.shape[1])]
        print(
            f"| {sigma:g} | {acceptance:.2f} | {', '.join(f'{t:.0f}' for t in taus)} | {per_step:.1f} | "
            f"{per_step * max(taus):,.0f} |"
        )


if __name__ == "__main__":
    main()
