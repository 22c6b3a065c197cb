"""Open Inference Protocol: tritonclient ModelInfer rows/s against preimage's Predict and onnxruntime, one run.

Starts ``preimage serve`` as its own process on a free 127.0.0.1 port with a temporary
registry and registers the example model (examples/difficulty: 10 -> 64 -> 64 -> 1). Then,
in alternating rounds so that drift on a shared machine hits every contender alike, for
each batch size (4096 rows and 1 row):

- onnxruntime in this process on 1 thread (the ceiling: no transport at all);
- preimage's Predict through ``preimage.client.Client`` (raw float32 both ways);
- ``tritonclient.grpc.InferenceServerClient.infer`` (raw_input_contents), unmodified, run by
  bench/oip_triton.py under .venv-oip (tritonclient needs protobuf<7) as a subprocess; only
  its call loop is timed, not its start-up;
- ModelInfer and Predict through the bare generated stubs (raw bytes both ways, one prepared
  request, the two alternating call by call), which splits the server's cost of each
  protocol from the clients' own.

Each contender makes up to ``--calls`` sequential calls per round or stops after
``--seconds``. Reports the median over rounds of rows/s and of the median call latency,
checks both servers' outputs against onnxruntime, prints a table and writes
``bench/results/oip.json``.

    .venv/bin/python bench/oip.py [--rounds 3] [--calls 200] [--seconds 5] [--server-arg=--torch-threads=1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from serving import _git_commit  # noqa: E402

from preimage.client import Client  # noqa: E402
from preimage.oip import grpc_predict_v2_pb2 as oip_pb2  # noqa: E402
from preimage.oip import grpc_predict_v2_pb2_grpc as oip_pb2_grpc  # noqa: E402
from preimage.v1 import inference_pb2, inference_pb2_grpc, tensor_pb2  # noqa: E402
from tests.process import ServerProcess  # noqa: E402

MODEL = ROOT / "examples" / "difficulty" / "difficulty.onnx"
WIDTH = 10
OIP_PYTHON = ROOT / ".venv-oip" / "bin" / "python"
WORKER = ROOT / "bench" / "oip_triton.py"
RESULTS = ROOT / "bench" / "results" / "oip.json"
BATCHES = (4096, 1)
CONTENDERS = ("onnxruntime", "predict", "tritonclient", "modelinfer_stub", "predict_stub")
ATOL = 1e-4  # float32 rounding between the server's torch and onnxruntime


def _rows(batch: int, seed: int = 0) -> np.ndarray:
    # The same draw as bench/oip_triton.py, so outputs can be compared.
    return np.random.default_rng(seed).random((batch, WIDTH), dtype=np.float32)


def _loop(call: Any, batch: int, calls: int, seconds: float, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        call()
    latencies = []
    started = time.perf_counter()
    while len(latencies) < calls and time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    return {"rows_per_s": len(latencies) * batch / elapsed, "median_ms": statistics.median(latencies) * 1000}


def _interleaved(calls: dict[str, Any], batch: int, count: int, seconds: float) -> dict[str, dict[str, float]]:
    """Like :func:`_loop` for several calls at once, alternating them call by call so load drift hits each alike."""
    for call in calls.values():
        for _ in range(5):
            call()
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    started = time.perf_counter()
    while len(latencies[next(iter(calls))]) < count and time.perf_counter() - started < seconds:
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            latencies[name].append(time.perf_counter() - t0)
    return {
        name: {"rows_per_s": batch / statistics.mean(times), "median_ms": statistics.median(times) * 1000}
        for name, times in latencies.items()
    }


def _triton(address: str, batch: int, calls: int, seconds: float) -> dict[str, Any]:
    result = subprocess.run(
        [str(OIP_PYTHON), str(WORKER), "--url", address, "--model", "difficulty", "--width", str(WIDTH),
         "--batch", str(batch), "--calls", str(calls), "--seconds", str(seconds)],
        capture_output=True, text=True, timeout=seconds + 120, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"bench/oip_triton.py failed:\n{result.stderr}")
    return json.loads(result.stdout)


def _stub_calls(channel: grpc.Channel, X: np.ndarray) -> dict[str, Any]:
    """One prepared raw request each for ModelInfer and Predict on the bare generated stubs."""
    n, d = X.shape
    raw = X.astype("<f4").tobytes()
    infer = oip_pb2.ModelInferRequest(
        model_name="difficulty",
        inputs=[oip_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[n, d])],
        raw_input_contents=[raw],
    )
    predict = inference_pb2.PredictRequest(
        model_ref="difficulty", inputs=tensor_pb2.Matrix(rows=n, cols=d, raw=raw), raw_outputs=True
    )
    oip = oip_pb2_grpc.GRPCInferenceServiceStub(channel)
    inference = inference_pb2_grpc.InferenceServiceStub(channel)
    return {
        "modelinfer_stub": lambda: oip.ModelInfer(infer, timeout=60),
        "predict_stub": lambda: inference.Predict(predict, timeout=60),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every contender, every batch size, ``args.rounds`` alternating rounds; medians."""
    if not OIP_PYTHON.is_file():
        raise SystemExit(f"{OIP_PYTHON} is missing: run scripts/install.sh")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(MODEL.read_bytes(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    runs: dict[str, dict[int, list[dict[str, float]]]] = {name: {b: [] for b in BATCHES} for name in CONTENDERS}
    errors: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        flags = ("--log-level", "warning", *args.server_arg)
        with (
            ServerProcess(Path(tmp) / "registry", *flags) as server,
            Client(server.address, timeout=120) as client,
            grpc.insecure_channel(server.address) as channel,
        ):
            server.wait_serving()
            client.register(MODEL, "difficulty", bounds=(0.0, 1.0))
            for _round in range(args.rounds):
                for batch in BATCHES:
                    X = _rows(batch)
                    expected = session.run(None, {input_name: X})[0]
                    runs["onnxruntime"][batch].append(
                        _loop(lambda X=X: session.run(None, {input_name: X}), batch, args.calls, args.seconds)
                    )
                    runs["predict"][batch].append(
                        _loop(lambda X=X: client.predict("difficulty", X), batch, args.calls, args.seconds)
                    )
                    errors[f"predict_{batch}"] = float(np.abs(client.predict("difficulty", X) - expected).max())
                    triton = _triton(server.address, batch, args.calls, args.seconds)
                    got = np.asarray(triton.pop("outputs"))
                    errors[f"tritonclient_{batch}"] = float(np.abs(got - expected.ravel()[: got.size]).max())
                    runs["tritonclient"][batch].append(triton)
                    for name, figures in _interleaved(_stub_calls(channel, X), batch, args.calls, args.seconds).items():
                        runs[name][batch].append(figures)
    figures = {
        name: {
            str(batch): {
                "rows_per_s": statistics.median(r["rows_per_s"] for r in rounds),
                "median_ms": statistics.median(r["median_ms"] for r in rounds),
            }
            for batch, rounds in by_batch.items()
        }
        for name, by_batch in runs.items()
    }
    bad = {k: v for k, v in errors.items() if v > ATOL}
    if bad:
        raise RuntimeError(f"outputs differ from onnxruntime by more than {ATOL}: {bad}")
    return {
        "figures": figures,
        "max_abs_error_vs_onnxruntime": errors,
        "rounds": args.rounds,
        "calls": args.calls,
        "seconds": args.seconds,
        "server_args": list(args.server_arg),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "commit": _git_commit(),
    }


def table(report: dict[str, Any]) -> str:
    """A markdown table: rows/s, median latency and the ratios, per batch size."""
    f = report["figures"]
    lines = [
        "| batch | onnxruntime in-process (1 thread) | preimage Predict (Client) | tritonclient ModelInfer "
        "| ModelInfer / Predict | ModelInfer / onnxruntime | bare stubs: ModelInfer / Predict |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(x: dict[str, float]) -> str:
        return f"{x['rows_per_s']:,.0f} rows/s ({x['median_ms']:.3g} ms)"

    for batch in map(str, BATCHES):
        ort_, pre, tri = f["onnxruntime"][batch], f["predict"][batch], f["tritonclient"][batch]
        mi, ps = f["modelinfer_stub"][batch], f["predict_stub"][batch]
        lines.append(
            f"| {int(batch):,} | {cell(ort_)} | {cell(pre)} | {cell(tri)} "
            f"| {tri['rows_per_s'] / pre['rows_per_s']:.2f}x | {tri['rows_per_s'] / ort_['rows_per_s']:.2f}x "
            f"| {cell(mi)} / {cell(ps)} = {mi['rows_per_s'] / ps['rows_per_s']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200, help="most calls per contender per round")
    parser.add_argument("--seconds", type=float, default=5.0, help="most seconds per contender per round")
    parser.add_argument("--server-arg", action="append", default=[], help="a flag for preimage serve (use =)")
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    report = measure(args)
    report["wall_seconds"] = time.perf_counter() - wall
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"max |output - onnxruntime|: {report['max_abs_error_vs_onnxruntime']}")
    print(f"wrote {RESULTS.relative_to(ROOT)} ({report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
