"""Training throughput of the served Train RPC against a plain in-process torch loop.

Both train the same network (``--hidden``, silu, AdamW, lr 1e-3) on the same rows
with the same batch size for the same number of epochs (early stopping is disabled
by a patience above the epoch count). Throughput is training rows x epochs per
second. Printed, for the served Train against the plain loop measured in the same run:

* end to end: the client's wall time from opening the stream to the result (upload in
  chunks, table checks, schema, statistics, training with a validation pass per epoch,
  ONNX export and its parity check, registration);
* training loop: epochs 2..E as timed by the server's own progress events, against
  the plain loop's epochs 2..E.

The server runs in this process (``start_server`` on 127.0.0.1, port 0, a temporary
registry); the plain loop runs here too, alternating with it, best of ``--repeats``.
Like the servicer, which trains in a worker thread, the plain loop runs in a worker
thread: on a loaded machine torch's OpenMP team in the main thread can be several
times slower than in a fresh thread, which would flatter the served figure.

Usage:
    .venv/bin/python bench/train_throughput.py [--rows 100000] [--features 20] [--epochs 40]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from torch import nn

from preimage.server.app import start_server
from preimage.server.settings import Settings
from preimage.v1 import inference_pb2, inference_pb2_grpc


def make_data(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of uniform features and a smooth nonlinear target."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (rows, features))
    w = rng.normal(0, 1, features)
    y = np.tanh(X @ w - w.sum() / 2) * 4 + np.sin(3 * X[:, 0]) + 5
    return X, y


@dataclass
class Timing:
    """Seconds for the whole run and for epochs 2..E; for the served run, also before and after the epochs."""

    total: float
    loop: float
    before: float = 0.0
    after: float = 0.0


def plain_loop(X: np.ndarray, y: np.ndarray, train_rows: np.ndarray, args: argparse.Namespace) -> Timing:
    """The baseline: standardized tensors, an MLP, AdamW, index-tensor mini-batches, nothing else."""
    x_train = torch.from_numpy(X[train_rows].astype(np.float32))
    y_train = torch.from_numpy(y[train_rows, None].astype(np.float32))
    x_train = (x_train - x_train.mean(0)) / x_train.std(0)
    y_train = (y_train - y_train.mean(0)) / y_train.std(0)
    sizes = [X.shape[1], *args.hidden, 1]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    net = nn.Sequential(*layers)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    n = len(train_rows)
    start = time.perf_counter()
    after_first = start
    for epoch in range(args.epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, args.batch_size):
            index = order[i : i + args.batch_size]
            loss = nn.functional.mse_loss(net(x_train[index]), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if epoch == 0:
            after_first = time.perf_counter()
    end = time.perf_counter()
    return Timing(total=end - start, loop=end - after_first)


def served(X: np.ndarray, y: np.ndarray, args: argparse.Namespace, port: int, name: str) -> Timing:
    """One Train call through a real channel; returns client wall time and the server's epoch timings."""
    names = [f"x{j}" for j in range(X.shape[1])]

    def requests() -> Iterator[inference_pb2.TrainRequest]:
        yield inference_pb2.TrainRequest(
            config=inference_pb2.TrainConfig(
                name=name,
                target_columns=["y"],
                hidden_sizes=args.hidden,
                activation=inference_pb2.ACTIVATION_SILU,
                epochs=args.epochs,
                batch_size=args.batch_size,
                patience=args.epochs + 1,
                validation_fraction=args.validation_fraction,
                seed=0,
                total_rows=len(X),
            )
        )
        for start in range(0, len(X), args.chunk_rows):
            block = slice(start, start + args.chunk_rows)
            columns = [inference_pb2.Column(name=n, numbers=X[block, j]) for j, n in enumerate(names)]
            columns.append(inference_pb2.Column(name="y", numbers=y[block]))
            yield inference_pb2.TrainRequest(data=inference_pb2.TrainDataChunk(columns=columns))

    limit = 256 * 2**20
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        start = time.perf_counter()
        progress, arrivals = [], []
        result = None
        for response in stub.Train(requests()):
            kind = response.WhichOneof("event")
            if kind == "progress":
                progress.append(response.progress)
                arrivals.append(time.perf_counter() - start)
            elif kind == "result":
                result = response.result
        total = time.perf_counter() - start
    if result is None or len(progress) != args.epochs:
        raise SystemExit(f"served Train ended early: {len(progress)} epochs, result {result is not None}")
    loop = progress[-1].elapsed_seconds - progress[0].elapsed_seconds
    # Before: upload, checks, schema, statistics (the first epoch counted as an average one).
    return Timing(total=total, loop=loop, before=arrivals[0] - loop / (args.epochs - 1), after=total - arrivals[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=lambda s: [int(v) for v in s.split(",")], default=[64, 64])
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--chunk-rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)

    X, y = make_data(args.rows, args.features, seed=0)
    # The same number of training rows as the served split holds.
    n_val = min(max(round(args.rows * args.validation_fraction), 1), args.rows - 1)
    train_rows = np.random.default_rng(1).permutation(args.rows)[n_val:]
    work = len(train_rows) * args.epochs
    loop_work = len(train_rows) * (args.epochs - 1)

    print(
        f"rows {args.rows} ({len(train_rows)} train) x {args.features} features, hidden {args.hidden}, "
        f"batch {args.batch_size}, {args.epochs} epochs, torch threads {torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory() as registry_dir:
        server = start_server(Settings(registry_dir=registry_dir, address="127.0.0.1:0", max_message_bytes=256 * 2**20))
        try:
            plain_runs, served_runs = [], []
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
                for repeat in range(args.repeats):
                    plain_runs.append(worker.submit(plain_loop, X, y, train_rows, args).result())
                    served_runs.append(served(X, y, args, server.port, f"bench{repeat}"))
        finally:
            server.stop()
    plain = Timing(min(t.total for t in plain_runs), min(t.loop for t in plain_runs))
    serve = min(served_runs, key=lambda t: t.total)
    serve_loop = min(t.loop for t in served_runs)
    print(f"plain runs (total s): {[round(t.total, 2) for t in plain_runs]}")
    print(f"served runs (total s): {[round(t.total, 2) for t in served_runs]}")
    print(
        f"served, best run: {serve.before:.2f} s before the first epoch (upload, checks, schema, statistics), "
        f"{serve.after:.2f} s after the last (export, parity check, registration)"
    )
    print(f"{'':26}{'seconds':>10}{'rows x epochs / s':>20}{'ratio':>8}")
    rows = [
        ("plain torch loop", plain.total, work, plain.total),
        ("served Train, end to end", serve.total, work, plain.total),
        ("plain loop, epochs 2..E", plain.loop, loop_work, plain.loop),
        ("served loop, epochs 2..E", serve_loop, loop_work, plain.loop),
    ]
    for label, seconds, amount, baseline in rows:
        print(f"{label:26}{seconds:10.2f}{amount / seconds:20,.0f}{baseline / seconds:8.2f}")


if __name__ == "__main__":
    main()
