"""A replica on the shared registry (PostgreSQL + S3) against the embedded default, in one run.

Starts a throwaway PostgreSQL cluster (Debian's ``postgresql`` package, as the tests do) and
moto's S3 server, then two ``preimage serve`` processes on this machine: one embedded (SQLite
and a local folder), one shared (``--index postgresql://... --blobs s3://...``). Both get the
example model (10 features -> difficulty). Measured, alternating the two servers round by round
so that load on the machine falls on both alike:

* Predict steady state: per-call latency of 256-row Predicts (median over rounds);
* Invert steady state: valid patterns per second of 2,000-pattern Invert calls (target 7,
  tolerance 1e-3; every pattern checked with onnxruntime);
* cold load: the first Predict of a replica started with an empty cache, for each kind
  (the shared one fetches the blob from S3 and converts it; the embedded one reads it from its
  folder and converts it), and the raw S3 GET of the blob alone.

The figures are ratios shared / embedded; docs/benchmarks.md records a run.

    python bench/shared_registry.py [--rounds 7] [--predicts 40] [--cold 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preimage.v1 import inference_pb2  # noqa: E402
from tests.models import EXAMPLE_MODEL, onnx_eval  # noqa: E402
from tests.process import ServerProcess  # noqa: E402
from tests.server.conftest import Stubs, connect, register  # noqa: E402
from tests.server.test_end_to_end import as_array, to_matrix  # noqa: E402
from tests.services import MotoServer, PostgresServer, find_postgres_bin  # noqa: E402

TARGET, TOLERANCE = 7.0, 1e-3


def predict_latency(stubs: Stubs, X: np.ndarray, calls: int) -> float:
    request = inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(X))
    start = time.perf_counter()
    for _ in range(calls):
        stubs.inference.Predict(request, timeout=60)
    return (time.perf_counter() - start) / calls


def invert_rate(stubs: Stubs, model: bytes, count: int, seed: int) -> float:
    request = inference_pb2.InvertRequest(
        model_ref="difficulty",
        targets=[inference_pb2.Target(value=TARGET)],
        count=count,
        tolerance=TOLERANCE,
        seed=seed,
    )
    start = time.perf_counter()
    blocks = []
    for response in stubs.inference.Invert(request, timeout=600):
        if response.WhichOneof("event") == "patterns":
            m = response.patterns.inputs
            blocks.append(np.asarray(m.values, np.float32).reshape(m.rows, -1))
    elapsed = time.perf_counter() - start
    X = np.concatenate(blocks) if blocks else np.zeros((0, 10), np.float32)
    ok = np.abs(onnx_eval(model, X)[:, 0] - TARGET) <= TOLERANCE if len(X) else np.zeros(0, bool)
    ok &= np.all((X >= 0) & (X <= 1), axis=1)
    return float(len(np.unique(X[ok], axis=0)) / elapsed)


def first_predict(process: ServerProcess, X: np.ndarray) -> tuple[float, float]:
    process.wait_serving()
    stubs = connect(process.address)
    request = inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(X))
    start = time.perf_counter()
    stubs.inference.Predict(request, timeout=120)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    stubs.inference.Predict(request, timeout=120)
    warm = time.perf_counter() - start
    stubs.channel.close()
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--predicts", type=int, default=40, help="Predict calls per server per round")
    parser.add_argument("--inverts", type=int, default=2000, help="patterns per Invert call")
    parser.add_argument("--cold", type=int, default=3, help="cold starts per kind")
    args = parser.parse_args()
    bindir = find_postgres_bin()
    if bindir is None:
        sys.exit("PostgreSQL is not installed (scripts/install.sh installs it)")
    model = EXAMPLE_MODEL.read_bytes()
    X = np.random.default_rng(0).random((256, 10), dtype=np.float32)
    pg, s3 = PostgresServer(bindir), MotoServer()
    processes: list[ServerProcess] = []
    try:
        bucket = s3.new_bucket()
        index, blobs = pg.new_database(), f"s3://{bucket}/bench"
        shared_flags = ("--index", index, "--blobs", blobs)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            embedded = ServerProcess(root / "embedded", "--log-level", "warning")
            shared = ServerProcess(root / "shared", *shared_flags, "--log-level", "warning", env=s3.env)
            processes += [embedded, shared]
            servers = {}
            for kind, process in (("embedded", embedded), ("shared", shared)):
                process.wait_serving()
                stubs = connect(process.address)
                register(stubs, "difficulty", model)
                np.testing.assert_allclose(
                    as_array(
                        stubs.inference.Predict(
                            inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(X)), timeout=60
                        ).outputs
                    ),
                    onnx_eval(model, X),
                    atol=1e-4,
                )
                predict_latency(stubs, X, 10)  # warm up
                servers[kind] = stubs
            latency: dict[str, list[float]] = {"embedded": [], "shared": []}
            rate: dict[str, list[float]] = {"embedded": [], "shared": []}
            for r in range(args.rounds):
                order = ("embedded", "shared") if r % 2 == 0 else ("shared", "embedded")
                for kind in order:
                    latency[kind].append(predict_latency(servers[kind], X, args.predicts))
                    rate[kind].append(invert_rate(servers[kind], model, args.inverts, seed=r))
            for stubs in servers.values():
                stubs.channel.close()
            for process in processes:
                process.kill()
            processes.clear()

            cold: dict[str, list[tuple[float, float]]] = {"embedded": [], "shared": []}
            for i in range(args.cold):
                for kind in ("embedded", "shared"):
                    if kind == "embedded":  # the same folder, a new process: blob on disk, nothing converted
                        process = ServerProcess(root / "embedded", "--log-level", "warning")
                    else:  # a new replica with an empty cache: the blob comes from S3
                        process = ServerProcess(root / f"cold-{i}", *shared_flags, "--log-level", "warning", env=s3.env)
                    processes.append(process)
                    cold[kind].append(first_predict(process, X))
                    process.kill()
                    processes.clear()

        import os

        os.environ.update(s3.env)
        import obstore
        from obstore.store import from_url

        store = from_url(blobs, client_options={"allow_http": True})
        key = next(m["path"] for batch in obstore.list(store, "blobs/") for m in batch)
        gets = []
        for _ in range(10):
            start = time.perf_counter()
            obstore.get(store, key).bytes()
            gets.append(time.perf_counter() - start)
    finally:
        for process in processes:
            process.kill()
        s3.close()
        pg.close()

    med = {k: statistics.median(v) for k, v in latency.items()}
    inv = {k: statistics.median(v) for k, v in rate.items()}
    first = {k: statistics.median(c for c, _ in v) for k, v in cold.items()}
    after = {k: statistics.median(w for _, w in v) for k, v in cold.items()}
    report = {
        "predict_256_rows_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "predict_ratio_shared_over_embedded": round(med["shared"] / med["embedded"], 3),
        "invert_patterns_per_s": {k: round(v, 1) for k, v in inv.items()},
        "invert_ratio_shared_over_embedded": round(inv["shared"] / inv["embedded"], 3),
        "cold_first_predict_ms": {k: round(v * 1e3, 1) for k, v in first.items()},
        "second_predict_ms": {k: round(v * 1e3, 2) for k, v in after.items()},
        "cold_ratio_shared_over_embedded": round(first["shared"] / first["embedded"], 3),
        "s3_get_blob_ms_median": round(statistics.median(gets) * 1e3, 2),
        "blob_bytes": len(model),
        "rounds": args.rounds,
        "cold_starts_per_kind": args.cold,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as exc:
        sys.exit(f"RPC failed: {exc.code().name}: {exc.details()}")
