"""Serving the real workload: many small Invert and Predict calls at once, against the same server's bulk rate.

Starts ``preimage serve`` (the installed console script) as a separate process on a free
127.0.0.1 port with a temporary registry, registers the example model (examples/difficulty:
10 -> 64 -> 64 -> 1, bounds [0, 1]) and drives it with the Python ``AsyncClient`` from this
process, or from ``--client-processes`` processes when the client must not be the bottleneck.
Every ratio comes from this one run against this one server:

1. bulk: one Invert of n = 100,000 (target 7, tolerance 1e-3): valid patterns/s, the reference;
2. 800 Invert calls of n = 20 at concurrency 64, unseeded (fresh random patterns: the game-server
   workload, which the server may serve from a shared run) and seeded (each a reproducible run of
   its own, queued behind the running limit): refused (RESOURCE_EXHAUSTED, not retried unless
   ``--client-retry``), valid patterns/s and their ratio to bulk (goal >= 0.25);
3. burst: 256 concurrent Invert streams of n = 200, unseeded and seeded: completed, all valid, the
   server's RSS growth (VmRSS before, peak during; goal <= 500 MB);
4. time to first pattern of a warm n = 20 call, unseeded and seeded, against a ``grpc.health``
   Check on the same channel (medians, interleaved; goal <= 5x);
5. Predict of 4096 rows: rows/s against onnxruntime in this process on 1 thread (goal >= 0.3x);
6. Predict of 1 row: median latency against the health round trip (goal <= 2x); and 1-row calls
   at concurrency 64 against one at a time (coalescing);
7. curves: valid patterns/s against concurrency (1..256, n = 20, unseeded, a fixed number of
   calls per point, bounded in time) and against n (1..100,000, sequential unseeded calls).

A pattern counts only when onnxruntime, in this process, puts it within the tolerance (+1e-5
for float rounding between engines) of 7 and it lies inside [0, 1]; duplicate rows count once
(``invert_difficulty.count_valid``). Calls are bounded in count and time, and only 127.0.0.1
is used. Prints a table, writes ``bench/results/serving.json`` and plots the curves to
``docs/serving_benchmark.png``.

    .venv/bin/python bench/serving.py [--quick] [--client-processes 2] [--client-retry]
        [--server-arg=--torch-threads=1 ...] [--label before]

On a GPU machine (a server with ``--device``): ``bench/serving_gpu.sh`` (passes
``--server-arg=--device=cuda``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from invert_difficulty import MODEL, TARGET, TOLERANCE, count_valid  # noqa: E402

from preimage.client import AsyncClient, ResourceExhaustedError, RetryPolicy  # noqa: E402
from preimage.client.errors import PreimageError  # noqa: E402
from tests.process import ServerProcess  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "serving.json"
PLOT = ROOT / "docs" / "serving_benchmark.png"
BEFORE = ROOT / "docs" / "serving_benchmark_before.json"  # the full run on main before issue 10's server work
SERVE = ROOT / ".venv" / "bin" / "preimage"
SLACK = 1e-5  # float32 rounding between the server's torch and onnxruntime
CALL_TIMEOUT = 120.0  # seconds, any one call
CONCURRENCIES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SIZES = (1, 10, 100, 1_000, 10_000, 100_000)


@dataclass(frozen=True)
class Plan:
    """How much of each measure to run (``--quick`` shrinks it)."""

    bulk_n: int = 100_000
    many_calls: int = 800
    many_concurrency: int = 64
    burst_calls: int = 256
    burst_n: int = 200
    latency_calls: int = 50
    predict_rows: int = 4096
    predict_calls: int = 30
    predict_concurrent_calls: int = 2000
    curve_calls: int = 256
    curve_seconds: float = 15.0
    sizes: tuple[int, ...] = SIZES
    section_seconds: float = 180.0


QUICK = Plan(
    bulk_n=20_000,
    many_calls=128,
    burst_calls=64,
    latency_calls=15,
    predict_calls=5,
    predict_concurrent_calls=300,
    curve_calls=32,
    curve_seconds=5.0,
    sizes=(1, 10, 100, 1_000, 10_000),
    section_seconds=60.0,
)


@dataclass(frozen=True)
class Load:
    """A batch of Invert calls of ``n`` patterns, ``concurrency`` in flight, seeds from ``seed`` when ``seeded``.

    Unseeded calls (fresh random patterns, the game-server workload) may be served from a run the server
    shares between concurrent calls; seeded ones (reproducible) each run on their own.
    """

    calls: int
    concurrency: int
    n: int
    seed: int
    max_seconds: float  # no call starts after this many seconds
    seeded: bool = False


@dataclass
class Outcome:
    """What a load got back: per-call outcomes, every pattern, and when it started and ended."""

    outcomes: Counter[str] = field(default_factory=Counter)
    inputs: list[np.ndarray] = field(default_factory=list)
    returned: list[int] = field(default_factory=list)  # patterns per completed call
    started: float = 0.0
    ended: float = 0.0
    late: float = 0.0  # how far past the common start a worker began

    def merge(self, other: Outcome) -> None:
        self.outcomes.update(other.outcomes)
        self.inputs.extend(other.inputs)
        self.returned.extend(other.returned)
        self.started = min(self.started, other.started) if self.started else other.started
        self.ended = max(self.ended, other.ended)
        self.late = max(self.late, other.late)


def _outcome(exc: PreimageError) -> str:
    return exc.code.name if exc.code is not None else type(exc).__name__


def _client(address: str, retry: bool) -> AsyncClient:
    return AsyncClient(address, retry=RetryPolicy() if retry else RetryPolicy(max_attempts=1))


async def _one_invert(client: AsyncClient, ref: str, n: int, seed: int | None, out: Outcome) -> None:
    try:
        arrays = await client.invert(
            ref, target=TARGET, n=n, tolerance=TOLERANCE, seed=seed, timeout=CALL_TIMEOUT
        ).to_numpy()
    except ResourceExhaustedError:
        out.outcomes["refused"] += 1
        return
    except PreimageError as exc:
        out.outcomes[_outcome(exc)] += 1
        return
    out.outcomes["completed"] += 1
    out.inputs.append(arrays.inputs)
    out.returned.append(len(arrays.inputs))


async def _run_load(address: str, retry: bool, ref: str, load: Load, start_at: float) -> Outcome:
    """Run ``load`` from one client, starting at the monotonic time ``start_at``."""
    async with _client(address, retry) as client:
        await client.wait_ready(30)
        await asyncio.sleep(max(start_at - time.monotonic(), 0.0))
        out = Outcome(started=time.monotonic())
        out.late = max(out.started - start_at, 0.0)
        stop = out.started + load.max_seconds
        seeds = iter(range(load.seed, load.seed + load.calls))

        async def worker() -> None:
            for seed in seeds:
                if time.monotonic() >= stop:
                    return
                await _one_invert(client, ref, load.n, seed if load.seeded else None, out)

        await asyncio.gather(*(worker() for _ in range(min(load.concurrency, load.calls))))
        out.ended = time.monotonic()
        return out


def _load_process(address: str, retry: bool, ref: str, load: Load, start_at: float) -> Outcome:
    """Entry point of a client process."""
    return asyncio.run(_run_load(address, retry, ref, load, start_at))


def _ping(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


class Driver:
    """Runs Invert loads against the server, in this process or split over client processes."""

    def __init__(self, address: str, ref: str, retry: bool, processes: int) -> None:
        self.address, self.ref, self.retry, self.processes = address, ref, retry, processes
        self.pool: Any = None
        if processes > 1:
            # spawn, not fork: gRPC's threads do not survive a fork.
            self.pool = multiprocessing.get_context("spawn").Pool(processes)
            pids = set(self.pool.map(_ping, [1.0] * processes, chunksize=1))
            if len(pids) != processes:
                raise RuntimeError(f"{processes} client processes asked for, {len(pids)} started")

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def run(self, load: Load) -> Outcome:
        start_at = time.monotonic() + 0.3
        if self.pool is None:
            return _load_process(self.address, self.retry, self.ref, load, start_at)
        parts = min(self.processes, load.concurrency, load.calls)
        jobs, seed = [], load.seed
        for i in range(parts):
            calls = load.calls // parts + (i < load.calls % parts)
            concurrency = load.concurrency // parts + (i < load.concurrency % parts)
            part = Load(calls, concurrency, load.n, seed, load.max_seconds, load.seeded)
            jobs.append(self.pool.apply_async(_load_process, (self.address, self.retry, self.ref, part, start_at)))
            seed += calls
        total = Outcome()
        for job in jobs:
            total.merge(job.get(timeout=load.max_seconds + CALL_TIMEOUT + 60))
        return total


class RssSampler:
    """The server process's VmRSS, sampled every 10 ms on a thread, with its VmHWM as a check."""

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/status")
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def read(self) -> dict[str, int]:
        fields = {}
        for line in self.path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_kb = max(self.peak_kb, self.read()["VmRSS"])

    def __enter__(self) -> RssSampler:
        self.before = self.read()
        self.peak_kb = self.before["VmRSS"]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        after = self.read()
        # A peak between two samples still shows in the high-water mark when it set a new one.
        if after["VmHWM"] > self.before["VmHWM"]:
            self.peak_kb = max(self.peak_kb, after["VmHWM"])
        self.growth_mb = (self.peak_kb - self.before["VmRSS"]) / 1024


def _one_thread_session() -> ort.InferenceSession:
    """onnxruntime on one thread, not spinning: the reference, and the checker of every pattern.

    onnxruntime's default pool keeps a thread per core spinning after each run; on a small machine
    that steals the cores the server and the client measure on.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(MODEL.read_bytes(), options, providers=["CPUExecutionProvider"])


def _valid(session: ort.InferenceSession, inputs: Sequence[np.ndarray]) -> tuple[int, int, int]:
    """Patterns received, distinct rows, and valid distinct rows (by onnxruntime)."""
    if not inputs:
        return 0, 0, 0
    X = np.concatenate(inputs)
    distinct = len(np.unique(X, axis=0))
    return len(X), distinct, count_valid(session, X, tolerance=TOLERANCE + SLACK)


def _load_row(session: ort.InferenceSession, load: Load, out: Outcome) -> dict[str, Any]:
    received, distinct, valid = _valid(session, out.inputs)
    seconds = out.ended - out.started
    return {
        "calls": load.calls,
        "concurrency": load.concurrency,
        "n": load.n,
        "outcomes": dict(out.outcomes),
        "attempted": sum(out.outcomes.values()),
        "completed": out.outcomes["completed"],
        "refused": out.outcomes["refused"],
        "full_calls": sum(r == load.n for r in out.returned),
        "patterns": received,
        "distinct": distinct,
        "valid": valid,
        "seconds": seconds,
        "valid_per_second": valid / seconds if seconds > 0 else 0.0,
        "client_start_skew_seconds": out.late,
    }


async def _stream_timed(client: AsyncClient, ref: str, n: int, seed: int | None) -> tuple[float, np.ndarray]:
    """Seconds to the first pattern batch of an Invert, and all its patterns."""
    started = time.perf_counter()
    first, parts = None, []
    async for batch in client.invert(
        ref, target=TARGET, n=n, tolerance=TOLERANCE, seed=seed, timeout=CALL_TIMEOUT
    ).batches():
        if first is None:
            first = time.perf_counter() - started
        parts.append(batch.inputs)
    if first is None:
        raise RuntimeError(f"Invert n={n} returned no pattern")
    return first, np.concatenate(parts)


async def _timed(coro: Any) -> float:
    started = time.perf_counter()
    await coro
    return time.perf_counter() - started


async def _sequential(client: AsyncClient, ref: str, session: ort.InferenceSession, plan: Plan) -> dict[str, Any]:
    """The single-client measures: bulk, latencies against health, Predict, patterns/s against n."""
    results: dict[str, Any] = {}
    await _stream_timed(client, ref, 20, 0)  # warm: conversion, caches, the first call's set-up
    await _stream_timed(client, ref, 20, None)  # and the shared run of unseeded n=20 calls
    await client.predict(ref, np.full((1, 10), 0.5, dtype=np.float32))

    started = time.perf_counter()
    _, X = await _stream_timed(client, ref, plan.bulk_n, 1)
    seconds = time.perf_counter() - started
    received, distinct, valid = _valid(session, [X])
    results["bulk"] = {
        "n": plan.bulk_n,
        "patterns": received,
        "distinct": distinct,
        "valid": valid,
        "seconds": seconds,
        "valid_per_second": valid / seconds,
    }

    health, first, first_seeded, predict1, parts, parts_seeded = [], [], [], [], [], []
    row = np.random.default_rng(1).random((1, 10), dtype=np.float32)
    for i in range(plan.latency_calls):  # interleaved, so drift in the machine's load hits them all
        health.append(await _timed(client.health()))
        seconds, X = await _stream_timed(client, ref, 20, None)
        first.append(seconds)
        parts.append(X)
        seconds, X = await _stream_timed(client, ref, 20, 100 + i)
        first_seeded.append(seconds)
        parts_seeded.append(X)
        predict1.append(await _timed(client.predict(ref, row)))
    h = statistics.median(health)
    results["health"] = {"calls": len(health), "median_seconds": h}
    for key, times, got in (("first_pattern", first, parts), ("first_pattern_seeded", first_seeded, parts_seeded)):
        received, distinct, valid = _valid(session, got)
        results[key] = {
            "n": 20,
            "calls": len(times),
            "median_seconds": statistics.median(times),
            "ratio_to_health": statistics.median(times) / h,
            "patterns": received,
            "valid": valid,
        }
    expected = session.run(None, {session.get_inputs()[0].name: row})[0]
    served = await client.predict(ref, row)
    results["predict_1"] = {
        "calls": len(predict1),
        "median_seconds": statistics.median(predict1),
        "ratio_to_health": statistics.median(predict1) / h,
        "max_abs_diff_vs_onnxruntime": float(np.max(np.abs(served - expected))),
    }

    X = np.random.default_rng(2).random((plan.predict_rows, 10), dtype=np.float32)
    local = _one_thread_session()
    name = local.get_inputs()[0].name
    local.run(None, {name: X})
    served_s, local_s = [], []
    for _ in range(plan.predict_calls):
        started = time.perf_counter()
        served = await client.predict(ref, X)
        served_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        expected = local.run(None, {name: X})[0]
        local_s.append(time.perf_counter() - started)
    served_rate = plan.predict_rows / statistics.median(served_s)
    local_rate = plan.predict_rows / statistics.median(local_s)
    results["predict_batch"] = {
        "rows": plan.predict_rows,
        "calls": plan.predict_calls,
        "served_rows_per_second": served_rate,
        "onnxruntime_1_thread_rows_per_second": local_rate,
        "ratio": served_rate / local_rate,
        "max_abs_diff_vs_onnxruntime": float(np.max(np.abs(served - expected))),
    }

    # Many 1-row Predicts at once: coalesced into shared passes, against the sequential rate above.
    started = time.perf_counter()
    pending = iter(range(plan.predict_concurrent_calls))

    async def predictor() -> None:
        for _ in pending:
            await client.predict(ref, row)

    await asyncio.gather(*(predictor() for _ in range(plan.many_concurrency)))
    seconds = time.perf_counter() - started
    results["predict_concurrent"] = {
        "rows": 1,
        "calls": plan.predict_concurrent_calls,
        "concurrency": plan.many_concurrency,
        "calls_per_second": plan.predict_concurrent_calls / seconds,
        "ratio_to_sequential": plan.predict_concurrent_calls / seconds * statistics.median(predict1),
    }

    by_n = []
    for n in plan.sizes:
        calls = 5 if n <= 100 else 3 if n <= 10_000 else 1
        parts, seconds = [], 0.0
        for _ in range(calls):
            started = time.perf_counter()
            _, X = await _stream_timed(client, ref, n, None)
            seconds += time.perf_counter() - started
            parts.append(X)
        received, distinct, valid = _valid(session, parts)
        by_n.append(
            {
                "n": n,
                "calls": calls,
                "patterns": received,
                "valid": valid,
                "seconds": seconds,
                "valid_per_second": valid / seconds,
            }
        )
    results["by_n"] = by_n
    return results


async def _register(address: str) -> str:
    async with AsyncClient(address) as client:
        await client.wait_ready(60)
        info = await client.register(MODEL, "difficulty", bounds=(0.0, 1.0))
    lows = {f.min for f in info.schema.inputs}
    highs = {f.max for f in info.schema.inputs}
    if len(info.schema.inputs) != 10 or lows != {0.0} or highs != {1.0}:
        raise RuntimeError(f"registered {info.ref} with unexpected inputs: {info.schema.inputs}")
    return info.ref


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measure against one fresh server and return the figures."""
    plan = QUICK if args.quick else Plan()
    session = _one_thread_session()
    server_flags = ["--address", "127.0.0.1:0", "--log-level", "warning", *args.server_arg]
    wall = time.perf_counter()
    report: dict[str, Any] = {
        "meta": {
            "label": args.label,
            "commit": _git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(),
            "load_average_before": os.getloadavg(),
            "python": platform.python_version(),
            "quick": args.quick,
            "server_command": [str(SERVE), "serve", *server_flags],
            "client_processes": args.client_processes,
            "client_retry": args.client_retry,
            "plan": asdict(plan),
        }
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(Path(tmp) / "registry", *server_flags, command=[str(SERVE), "serve"], timeout=120) as server,
    ):
        server.wait_serving(60)
        pid = server.process.pid
        rss = RssSampler(pid)
        report["meta"]["server_rss_mb_start"] = rss.read()["VmRSS"] / 1024
        ref = asyncio.run(_register(server.address))

        async def single() -> dict[str, Any]:
            async with _client(server.address, args.client_retry) as client:
                return await _sequential(client, ref, session, plan)

        report.update(asyncio.run(single()))
        driver = Driver(server.address, ref, args.client_retry, args.client_processes)
        try:
            for key, seeded in (("many", False), ("many_seeded", True)):
                many = Load(plan.many_calls, plan.many_concurrency, 20, 10_000, plan.section_seconds, seeded)
                report[key] = _load_row(session, many, driver.run(many))

            for key, seeded in (("burst", False), ("burst_seeded", True)):
                burst = Load(plan.burst_calls, plan.burst_calls, plan.burst_n, 20_000, plan.section_seconds, seeded)
                with RssSampler(pid) as sampler:
                    out = driver.run(burst)
                row = _load_row(session, burst, out)
                row["rss_mb_before"] = sampler.before["VmRSS"] / 1024
                row["rss_mb_peak"] = sampler.peak_kb / 1024
                row["rss_growth_mb"] = sampler.growth_mb
                report[key] = row

            curve = []
            for c in CONCURRENCIES:
                load = Load(max(plan.curve_calls, c), c, 20, 100_000 * c, plan.curve_seconds)
                curve.append(_load_row(session, load, driver.run(load)))
            report["by_concurrency"] = curve
        finally:
            driver.close()
        report["meta"]["server_rss_mb_end"] = rss.read()["VmRSS"] / 1024
        if server.process.poll() is not None:
            raise RuntimeError("the server died:\n" + "".join(server.stderr_lines[-40:]))
        report["meta"]["server_stderr_tail"] = server.stderr_lines[-20:]
    report["meta"]["seconds"] = time.perf_counter() - wall
    return report


def table(report: dict[str, Any]) -> str:
    """The figures as a Markdown table, with the issue's goals."""
    bulk = report["bulk"]["valid_per_second"]
    p1, pb, pc = report["predict_1"], report["predict_batch"], report["predict_concurrent"]
    h_ms = report["health"]["median_seconds"] * 1e3
    b = report["bulk"]
    rows = [
        ("measure", "result", "goal", "met"),
        ("---", "---", "---", "---"),
        (
            f"bulk: one Invert, n={b['n']:,}",
            f"{bulk:,.0f} valid patterns/s ({b['valid']:,} valid of {b['patterns']:,} in {b['seconds']:.2f} s)",
            "reference",
            "",
        ),
    ]
    for key, how in (("many", "unseeded"), ("many_seeded", "seeded")):
        many = report[key]
        ratio = many["valid_per_second"] / bulk
        rows.append(
            (
                f"{many['calls']} Invert calls of n=20 at concurrency {many['concurrency']}, {how}",
                f"{many['refused']} refused, {many['completed']} completed; {many['valid_per_second']:,.0f} valid "
                f"patterns/s = {ratio:.3f} of bulk",
                "0 refused; >= 0.25 of bulk",
                _yes(many["refused"] == 0 and ratio >= 0.25),
            )
        )
    for key, how in (("burst", "unseeded"), ("burst_seeded", "seeded")):
        burst = report[key]
        all_valid = burst["valid"] == burst["distinct"] == burst["patterns"]
        rows.append(
            (
                f"burst: {burst['calls']} concurrent Invert streams of n={burst['n']}, {how}",
                f"{burst['completed']} completed ({burst['full_calls']} with all {burst['n']}), {burst['refused']} "
                f"refused; {burst['valid']:,} valid of {burst['patterns']:,}; RSS +{burst['rss_growth_mb']:.0f} MB "
                f"(from {burst['rss_mb_before']:.0f} MB)",
                "all complete, all valid, RSS growth <= 500 MB",
                _yes(burst["full_calls"] == burst["calls"] and all_valid and burst["rss_growth_mb"] <= 500),
            )
        )
    for key, how in (("first_pattern", "unseeded"), ("first_pattern_seeded", "seeded")):
        first = report[key]
        rows.append(
            (
                f"time to first pattern (n=20, warm, {how})",
                f"{first['median_seconds'] * 1e3:.2f} ms = {first['ratio_to_health']:.1f}x a health round trip "
                f"({h_ms:.2f} ms)",
                "<= 5x",
                _yes(first["ratio_to_health"] <= 5),
            )
        )
    rows += [
        (
            f"Predict, batch {pb['rows']} rows",
            f"{pb['served_rows_per_second']:,.0f} rows/s = {pb['ratio']:.3f}x onnxruntime in-process, 1 thread "
            f"({pb['onnxruntime_1_thread_rows_per_second']:,.0f} rows/s)",
            ">= 0.3x",
            _yes(pb["ratio"] >= 0.3),
        ),
        (
            "Predict, 1 row",
            f"{p1['median_seconds'] * 1e3:.2f} ms = {p1['ratio_to_health']:.1f}x a health round trip",
            "<= 2x",
            _yes(p1["ratio_to_health"] <= 2),
        ),
        (
            f"Predict, {pc['calls']} calls of 1 row at concurrency {pc['concurrency']}",
            f"{pc['calls_per_second']:,.0f} calls/s = {pc['ratio_to_sequential']:.1f}x one call at a time",
            "(coalescing)",
            "",
        ),
    ]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "| concurrency | calls | refused | valid patterns/s | of bulk |", "|---:|---:|---:|---:|---:|"]
    for r in report["by_concurrency"]:
        lines.append(
            f"| {r['concurrency']} | {r['attempted']} | {r['refused']} | {r['valid_per_second']:,.0f} | "
            f"{r['valid_per_second'] / bulk:.3f} |"
        )
    lines += ["", "| n | calls | valid patterns/s | of bulk |", "|---:|---:|---:|---:|"]
    for r in report["by_n"]:
        lines.append(
            f"| {r['n']:,} | {r['calls']} | {r['valid_per_second']:,.0f} | {r['valid_per_second'] / bulk:.3f} |"
        )
    return "\n".join(lines)


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def plot(report: dict[str, Any], path: Path, baseline: dict[str, Any] | None = None) -> None:
    """Two log-log panels: valid patterns/s against concurrency and against n, with the goal line.

    ``baseline``, an earlier run's JSON, is drawn beside this run (e.g. before against after).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bulk = report["bulk"]["valid_per_second"]
    meta = report["meta"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    curves = (
        (left, report["by_concurrency"], "concurrency", "concurrent Invert calls of n=20"),
        (right, report["by_n"], "n", "patterns asked per call (sequential calls)"),
    )
    for axis, rows, key, xlabel in curves:
        xs = [r[key] for r in rows]
        ys = [max(r["valid_per_second"], 1e-1) for r in rows]  # a log axis has no zero
        axis.plot(xs, ys, "o-", label=f"{meta['label'] or 'this run'}")
        if baseline is not None:
            old = baseline["by_concurrency" if key == "concurrency" else "by_n"]
            axis.plot(
                [r[key] for r in old],
                [max(r["valid_per_second"], 1e-1) for r in old],
                "s--",
                color="tab:grey",
                label=f"{baseline['meta']['label'] or 'baseline'} ({baseline['meta']['commit']})",
            )
        axis.axhline(bulk, color="grey", linestyle=":", label=f"bulk n={report['bulk']['n']:,}: {bulk:,.0f}/s")
        axis.axhline(0.25 * bulk, color="tab:red", linestyle="--", label="goal: 0.25 x bulk")
        axis.set_xscale("log", base=2 if key == "concurrency" else 10)
        if key == "concurrency":
            axis.set_xticks(xs, [str(x) for x in xs])
        axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel("valid patterns/s")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    left.set_title("patterns/s against concurrency")
    right.set_title("patterns/s against n")
    fig.suptitle(
        f"preimage serve, example model, {meta['cpus']} cores, commit {meta['commit']}"
        + (f" ({meta['label']})" if meta["label"] else ""),
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run of a minute or so")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra `preimage serve` flag, repeatable; write it with '=': --server-arg=--torch-threads=1",
    )
    parser.add_argument(
        "--client-processes", type=int, default=1, help="client processes for the concurrent loads (default 1)"
    )
    parser.add_argument(
        "--client-retry",
        action="store_true",
        help="let the client retry what its RetryPolicy retries (default: one attempt, refusals counted)",
    )
    parser.add_argument("--label", default="", help="names the run in the JSON and the plot, e.g. before / after")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"figures as JSON (default {RESULTS})")
    parser.add_argument("--plot", default=str(PLOT), help=f"the two curves (default {PLOT}; '' for none)")
    parser.add_argument(
        "--baseline", type=Path, help=f"an earlier run's JSON to plot beside this one (e.g. {BEFORE.relative_to(ROOT)})"
    )
    args = parser.parse_args(argv)
    if args.client_processes < 1:
        parser.error("--client-processes must be at least 1")
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    report = measure(args)
    meta = report["meta"]
    print(
        f"preimage serve {' '.join(meta['server_command'][2:])}; example model, target {TARGET}, tolerance "
        f"{TOLERANCE}; {meta['client_processes']} client process(es), client retry "
        f"{'on' if meta['client_retry'] else 'off'}; {meta['cpus']} cores, commit {meta['commit']}"
    )
    print(table(report))
    print(f"\nrun took {meta['seconds']:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.json}")
    if args.plot:
        plot(report, Path(args.plot), baseline)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
