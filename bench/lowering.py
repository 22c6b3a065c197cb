"""Seeded n = 20 Invert engine time on the example model: as onnx2torch converts it against lowered.

Both modules run the same seeded sample-mode requests (target 7, tolerance 1e-3, bounds
[0, 1], warm pilots), interleaved call by call in this one process on one torch thread, so
drift in the machine's speed hits both. Prints the median milliseconds of each and whether
every call returned the same patterns from both (lowering keeps the bits; docs/registry.md).

    .venv/bin/python bench/lowering.py [--calls 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx2torch import convert

from preimage.registry.convert import freeze, to_module
from preimage.registry.schema import FeatureSchema
from preimage.server.engine import BoundSpec, InputSpace, InvertSpec, TargetSpec, invert
from preimage.server.engine.sample import PilotCache

MODEL = Path(__file__).resolve().parent.parent / "examples" / "difficulty" / "difficulty.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = onnx.load(str(MODEL))
    modules = {"as converted": freeze(convert(model)), "lowered": to_module(model)}
    space = InputSpace.from_schema(FeatureSchema.default(10, 1), bounds=(BoundSpec(None, 0.0, 1.0),))
    pilots = {name: PilotCache() for name in modules}

    def run(name: str, seed: int) -> np.ndarray:
        spec = InvertSpec(targets=(TargetSpec(value=7.0),), n=20, seed=seed, tolerance=1e-3)
        events = list(invert(modules[name], space, spec, pilots=pilots[name]))
        return np.concatenate([e.inputs for e in events[:-1]])

    for name in modules:  # warm: pilots, calibration, first-call costs
        for seed in range(5):
            run(name, seed)
    seconds: dict[str, list[float]] = {name: [] for name in modules}
    same = True
    for seed in range(100, 100 + args.calls):
        patterns = []
        for name in modules:
            started = time.perf_counter()
            patterns.append(run(name, seed))
            seconds[name].append(time.perf_counter() - started)
        same = same and np.array_equal(patterns[0], patterns[1])
    for name, times in seconds.items():
        print(f"{name:>13}: {statistics.median(times) * 1e3:.3f} ms median over {len(times)} seeded n=20 calls")
    print(f"same patterns from both on every call: {same}")


if __name__ == "__main__":
    main()
