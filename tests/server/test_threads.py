"""Every thread that runs torch in the server runs it on ``torch_threads`` threads.

OpenMP keeps its thread count per thread. A worker (or the event loop, which runs lone cheap
Predicts) left at the default gets a team for its first large operations, whose extra threads
then spin on a core after every pass: on a small machine that starves the event loop and the
other calls.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from preimage.server.app import start_server
from preimage.server.settings import Settings
from preimage.v1 import inference_pb2, tensor_pb2
from tests.server.conftest import connect, register

WORKERS = 4


def _os_threads() -> dict[int, str]:
    """This process's OS threads: id -> name."""
    threads = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            threads[int(tid)] = (Path("/proc/self/task") / tid / "comm").read_text().strip()
        except OSError:  # ended meanwhile
            continue
    return threads


def test_no_thread_gets_a_torch_team_of_its_own(tmp_path: Path, example_model_bytes: bytes) -> None:
    settings = Settings(
        registry_dir=tmp_path / "registry",
        address="127.0.0.1:0",
        shutdown_grace_seconds=0,
        torch_threads=1,
        engine_workers=WORKERS,
    )
    running = start_server(settings)
    stubs = connect(running.address)
    try:
        register(stubs, "difficulty", example_model_bytes)
        before = _os_threads()

        def seeded(i: int) -> None:
            request = inference_pb2.InvertRequest(
                model_ref="difficulty", count=20, seed=i + 1, tolerance=1e-3, targets=[inference_pb2.Target(value=7.0)]
            )
            responses = list(stubs.inference.Invert(request, timeout=60))
            assert responses[-1].summary.returned == 20

        with ThreadPoolExecutor(2 * WORKERS) as pool:  # every engine worker gets work
            list(pool.map(seeded, range(8 * WORKERS)))
        X = np.random.default_rng(0).random((4096, 10), dtype=np.float32)
        for _ in range(3):  # large passes: on a worker, then on the event loop once measured
            stubs.inference.Predict(
                inference_pb2.PredictRequest(
                    model_ref="difficulty", inputs=tensor_pb2.Matrix(rows=4096, cols=10, raw=X.tobytes())
                ),
                timeout=60,
            )

        python_threads = {t.native_id for t in threading.enumerate()}
        own_name = _os_threads()[threading.get_native_id()]
        # An OpenMP team member is an OS thread that Python does not know, named after the thread
        # that made it (gRPC's own threads carry their own names).
        teams = {
            tid
            for tid, name in _os_threads().items()
            if tid not in before and tid not in python_threads and name == own_name
        }
        assert not teams, f"{len(teams)} OpenMP team thread(s) appeared while serving"

        async def on_loop() -> int:
            return torch.get_num_threads()

        assert asyncio.run_coroutine_threadsafe(on_loop(), running._loop).result(timeout=30) == 1
    finally:
        stubs.channel.close()
        running.stop()
