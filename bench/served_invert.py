"""Valid patterns per second of a served Invert against the classic one-input-at-a-time answer.

Starts a real server on a free loopback port with a temporary registry, registers the
example model (10 features in [0, 1] -> difficulty), and in the same run measures:

* preimage: ``Invert`` over gRPC (target 7, tolerance 1e-3, the model's bounds [0, 1]),
  in each mode, timed from the call to the summary, patterns decoded client-side;
* classic: gradient descent on one input at a time (Adam on (f(x) - y)^2 with the weights
  frozen, clamped to [0, 1]) on the same model converted with onnx2torch, in process.

Every pattern of both is checked independently with onnxruntime (|f(x) - 7| <= 1e-3 and
inside the bounds, duplicates counted once); the figure is valid patterns per second, and the
ratio of the two.

    python bench/served_invert.py [--count 20000] [--classic 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnx2torch
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from invert_baselines import one_at_a_time  # noqa: E402
from invert_difficulty import MODEL, TARGET, TOLERANCE, count_valid  # noqa: E402

from preimage.server.app import start_server  # noqa: E402
from preimage.server.settings import Settings  # noqa: E402
from preimage.v1 import inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc  # noqa: E402


def served(
    stub: inference_pb2_grpc.InferenceServiceStub, count: int, mode: int, seed: int
) -> tuple[np.ndarray, float, object]:
    request = inference_pb2.InvertRequest(
        model_ref="difficulty",
        targets=[inference_pb2.Target(value=TARGET)],
        count=count,
        tolerance=TOLERANCE,
        seed=seed,
        mode=mode,
    )
    start = time.perf_counter()
    chunks, summary = [], None
    for response in stub.Invert(request, timeout=600):
        if response.WhichOneof("event") == "patterns":
            m = response.patterns.inputs
            chunks.append(np.asarray(m.values, dtype=np.float32).reshape(m.rows, m.cols))
        else:
            summary = response.summary
    elapsed = time.perf_counter() - start
    return np.concatenate(chunks), elapsed, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="patterns per served Invert call")
    parser.add_argument("--classic", type=int, default=40, help="patterns for the one-at-a-time baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    data = MODEL.read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Settings(registry_dir=Path(tmp) / "registry", address="127.0.0.1:0"))
        try:
            channel = grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 64 << 20)])
            header = registry_pb2.RegisterModelHeader(name="difficulty")
            registry_pb2_grpc.RegistryServiceStub(channel).RegisterModel(
                iter([registry_pb2.RegisterModelRequest(header=header), registry_pb2.RegisterModelRequest(chunk=data)])
            )
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            served(stub, 500, inference_pb2.INVERT_MODE_SAMPLE, args.seed)  # warm-up: conversion, caches
            for name, mode in (
                ("sample", inference_pb2.INVERT_MODE_SAMPLE),
                ("optimize", inference_pb2.INVERT_MODE_OPTIMIZE),
            ):
                X, elapsed, summary = served(stub, args.count, mode, args.seed)
                valid = count_valid(session, X)
                results[f"served {name}"] = {
                    "patterns": len(X),
                    "valid": valid,
                    "seconds": elapsed,
                    "valid_per_second": valid / elapsed,
                    "forward_passes": summary.forward_passes,  # type: ignore[attr-defined]
                    "backward_passes": summary.backward_passes,  # type: ignore[attr-defined]
                }
            channel.close()
        finally:
            server.stop()

    module = onnx2torch.convert(onnx.load_from_string(data)).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    bounds = np.array([[0.0] * 10, [1.0] * 10])
    classic = one_at_a_time(module, bounds, np.array([TARGET]), count=args.classic, tolerance=TOLERANCE, seed=args.seed)
    valid = count_valid(session, classic.inputs)
    results["classic one-at-a-time GD"] = {
        "patterns": len(classic.inputs),
        "valid": valid,
        "seconds": classic.seconds,
        "valid_per_second": valid / classic.seconds,
        "forward_passes": classic.passes,
        "backward_passes": classic.passes,
    }

    base = results["classic one-at-a-time GD"]["valid_per_second"]
    print(
        f"example model, target {TARGET}, tolerance {TOLERANCE}, bounds [0, 1], torch threads {torch.get_num_threads()}"
    )
    print(f"{'method':28} {'patterns':>9} {'valid':>7} {'seconds':>8} {'valid/s':>10} {'vs classic':>11}")
    for name, row in results.items():
        ratio = row["valid_per_second"] / base if base else float("inf")
        print(
            f"{name:28} {row['patterns']:9.0f} {row['valid']:7.0f} {row['seconds']:8.3f} "
            f"{row['valid_per_second']:10.1f} {ratio:10.0f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
