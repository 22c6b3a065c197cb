"""The ``preimage invert`` CLI's rate per output format against the Python client's own rate.

Starts a server on a free loopback port with a temporary registry, registers the example
model (10 features in [0, 1] -> difficulty), and in the same run, against that server:

* client: ``Client.invert(...).to_numpy()`` in a fresh Python process, timed inside it from
  the call to the last pattern (what a program gets);
* CLI: ``preimage invert difficulty --target 7 -n N --seed S --format F -o FILE`` for
  table, jsonl, csv and npy (and jsonl to a pipe on stdout), timed from outside as a
  user sees it; ``net`` takes off the process's own start (``preimage --help``, best of 3).

Each is run ``--repeat`` times and the best kept (the machine is shared). The CLI's output
is parsed back and counted, so a writer that drops patterns cannot look fast. Patterns
per second and the ratio to the client's rate are printed.

    python bench/cli_writers.py [--count 100000] [--repeat 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "difficulty" / "difficulty.onnx"

from preimage.client import Client  # noqa: E402
from preimage.server.app import start_server  # noqa: E402
from preimage.server.settings import Settings  # noqa: E402

CLIENT_RATE = """
import sys, time
from preimage.client import Client
address, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Client(address, timeout=600) as client:
    client.health()
    start = time.perf_counter()
    X = client.invert("difficulty", target=7.0, n=n, seed=seed).to_numpy().inputs
    print(len(X), time.perf_counter() - start)
"""


def _preimage() -> list[str]:
    script = Path(sys.executable).with_name("preimage")
    return [str(script)] if script.exists() else [sys.executable, "-m", "preimage.client.cli"]


def _count(fmt: str, path: Path) -> int:
    """Patterns in a CLI output file (parsed, not just lines counted)."""
    if fmt == "npy":
        return len(np.load(path)["input"])
    text = path.read_text()
    if fmt == "jsonl":
        return sum(1 for line in text.splitlines() if json.loads(line)["input"])
    if fmt == "csv":
        return len(np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2))
    lines = text.splitlines()  # table: header, rows, then the summary
    return sum(1 for line in lines[1:] if line and line[0].isdigit())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="patterns per call")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = start_server(Settings(registry_dir=folder / "registry", address="127.0.0.1:0"))
        env = {**os.environ, "PREIMAGE_SERVER": server.address}
        env.pop("PREIMAGE_TOKEN", None)
        try:
            with Client(server.address, timeout=600) as client:
                client.register(MODEL, "difficulty")
                client.invert("difficulty", target=7.0, n=500, seed=args.seed).to_numpy()  # warm-up

            def client_rate() -> tuple[int, float]:
                done = subprocess.run(
                    [sys.executable, "-c", CLIENT_RATE, server.address, str(args.count), str(args.seed)],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=900,
                )
                count, seconds = done.stdout.split()
                return int(count), float(seconds)

            def startup() -> float:
                start = time.perf_counter()
                subprocess.run([*_preimage(), "--help"], capture_output=True, check=True, timeout=120)
                return time.perf_counter() - start

            def cli_rate(fmt: str, to_pipe: bool = False) -> tuple[int, float]:
                path = folder / f"out.{fmt}"
                cmd = [*_preimage(), "invert", "difficulty", "--target", "7", "-n", str(args.count)]
                cmd += ["--seed", str(args.seed), "--format", fmt]
                start = time.perf_counter()
                if to_pipe:
                    done = subprocess.run(cmd, capture_output=True, env=env, check=True, timeout=900)
                    seconds = time.perf_counter() - start
                    path.write_bytes(done.stdout)
                else:
                    subprocess.run([*cmd, "-o", str(path)], capture_output=True, env=env, check=True, timeout=900)
                    seconds = time.perf_counter() - start
                return _count(fmt, path), seconds

            base_count, base = min((client_rate() for _ in range(args.repeat)), key=lambda r: r[1])
            start_cost = min(startup() for _ in range(3))
            rows = {}
            for name, fmt, pipe in (
                ("table -o FILE", "table", False),
                ("jsonl -o FILE", "jsonl", False),
                ("jsonl | pipe", "jsonl", True),
                ("csv -o FILE", "csv", False),
                ("npy -o FILE", "npy", False),
            ):
                rows[name] = min((cli_rate(fmt, pipe) for _ in range(args.repeat)), key=lambda r: r[1])
        finally:
            server.stop()

    rate = base_count / base
    print(f"example model, target 7, n={args.count}, seed {args.seed}, best of {args.repeat}")
    print(f"process start of the CLI (preimage --help): {start_cost:.3f} s")
    print(f"{'measure':18} {'patterns':>9} {'seconds':>8} {'patterns/s':>11} {'ratio':>6} {'net ratio':>10}")
    print(f"{'client to_numpy':18} {base_count:9d} {base:8.3f} {rate:11.0f} {1.0:6.2f} {1.0:10.2f}")
    for name, (count, seconds) in rows.items():
        net = max(seconds - start_cost, 1e-9)
        print(
            f"{name:18} {count:9d} {seconds:8.3f} {count / seconds:11.0f} "
            f"{count / seconds / rate:6.2f} {count / net / rate:10.2f}"
        )


if __name__ == "__main__":
    main()
