"""The tritonclient half of bench/oip.py; runs under .venv-oip (tritonclient needs protobuf<7).

Times ``InferenceServerClient.infer`` (raw_input_contents, as tritonclient always sends)
on one channel: ``--warmup`` calls, then ``--calls`` calls or ``--seconds``, whichever ends
first. Prints JSON: calls, rows, seconds, rows/s, median call latency, and a checksum of
the last outputs so the caller can compare them with onnxruntime.

    .venv-oip/bin/python bench/oip_triton.py --url 127.0.0.1:PORT --model difficulty --batch 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import tritonclient.grpc as triton


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    X = np.random.default_rng(args.seed).random((args.batch, args.width), dtype=np.float32)
    client = triton.InferenceServerClient(args.url)
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    for _ in range(args.warmup):
        client.infer(args.model, [tensor], client_timeout=60)
    latencies = []
    outputs = None
    started = time.perf_counter()
    while len(latencies) < args.calls and time.perf_counter() - started < args.seconds:
        t0 = time.perf_counter()
        # Each call builds its input from the array, as a user's loop would.
        tensor = triton.InferInput("input", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        outputs = client.infer(args.model, [tensor], client_timeout=60).as_numpy("output")
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    client.close()
    assert outputs is not None
    print(
        json.dumps(
            {
                "calls": len(latencies),
                "rows": len(latencies) * args.batch,
                "seconds": elapsed,
                "rows_per_s": len(latencies) * args.batch / elapsed,
                "median_ms": statistics.median(latencies) * 1000,
                "outputs": outputs.astype(float).ravel()[:64].tolist(),
            }
        )
    )


if __name__ == "__main__":
    main()
