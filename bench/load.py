"""A fixed load against a running server, for A/B pairs of server settings or commits.

Drives ``ADDRESS`` (a ``preimage serve`` with the example model registered as ``difficulty``)
with the Python ``AsyncClient``: ``CALLS`` calls of one kind, ``CONCURRENCY`` at a time, after
20 warm-up calls, and prints calls/s. Run it against servers started alternately with the
two settings (or from the two commits) and compare the pairs; the machine's speed drifts too
much for runs far apart in time to be compared (docs/benchmarks.md).

    preimage serve --address 127.0.0.1:50999 --switch-interval-ms 5 &
    preimage --server 127.0.0.1:50999 register examples/difficulty/difficulty.onnx --name difficulty
    .venv/bin/python bench/load.py 127.0.0.1:50999 invert 3000 64

Kinds: ``invert`` (unseeded n = 20, target 7), ``seeded`` (the same with seed = call number),
``predict1`` (one row), ``predict4096`` (4096 rows), ``health`` (a grpc.health Check).
Only 127.0.0.1 addresses are meant; every call has a 120 s deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from preimage.client import AsyncClient

KINDS = ("invert", "seeded", "predict1", "predict4096", "health")


async def load(address: str, kind: str, calls: int, concurrency: int) -> float:
    """Calls per second of ``calls`` calls of ``kind``, ``concurrency`` at a time."""
    X = np.random.default_rng(2).random((4096, 10), dtype=np.float32)
    async with AsyncClient(address) as client:

        async def one(i: int) -> None:
            if kind in ("invert", "seeded"):
                seed = i if kind == "seeded" else None
                stream = client.invert("difficulty", target=7, n=20, tolerance=1e-3, seed=seed, timeout=120)
                async for _ in stream.batches():
                    pass
            elif kind == "predict1":
                await client.predict("difficulty", X[:1], timeout=120)
            elif kind == "predict4096":
                await client.predict("difficulty", X, timeout=120)
            else:
                await client.health(timeout=120)

        for i in range(20):
            await one(i)
        pending = iter(range(calls))

        async def worker() -> None:
            for i in pending:
                await one(i)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return calls / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("calls", type=int)
    parser.add_argument("concurrency", type=int)
    args = parser.parse_args()
    rate = asyncio.run(load(args.address, args.kind, args.calls, args.concurrency))
    print(f"{args.kind} calls={args.calls} concurrency={args.concurrency}: {rate:.1f} calls/s")


if __name__ == "__main__":
    main()
