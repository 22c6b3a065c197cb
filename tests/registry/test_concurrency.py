"""Concurrent registrations (threads and processes) and registrations racing deletions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from preimage.registry import ModelNotFoundError, Registry
from tests.registry.builders import gemm

REPO = Path(__file__).resolve().parents[2]


def _data(seed: int) -> bytes:
    return gemm(d=3, m=1, seed=seed).SerializeToString()


def test_threads_get_distinct_consecutive_versions(registry: Registry) -> None:
    start = threading.Barrier(4)

    def register(worker: int) -> list[int]:
        start.wait(timeout=30)
        return [registry.register_bytes("shared", _data(worker * 10 + i)).version for i in range(2)]

    with ThreadPoolExecutor(4) as pool:
        versions = [v for vs in pool.map(register, range(4)) for v in vs]
    assert sorted(versions) == list(range(1, 9))
    assert [r.version for r in registry.list("shared", all_versions=True)] == list(range(1, 9))


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from preimage.registry import Registry
    from tests.registry.builders import gemm

    root, go, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    registry = Registry.open(root, parity_rows=4)
    data = [gemm(d=3, m=1, seed=seed + i).SerializeToString() for i in range(3)]
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(json.dumps([registry.register_bytes("shared", d).version for d in data]))
    registry.close()
    """
)


def test_processes_get_distinct_consecutive_versions(tmp_path: Path) -> None:
    root, go = tmp_path / "registry", tmp_path / "go"
    Registry.open(root).close()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(root), str(go), str(seed)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (100, 200)
    ]
    go.touch()
    versions: list[int] = []
    for child in children:
        out, err = child.communicate(timeout=180)
        assert child.returncode == 0, err
        versions += json.loads(out.strip().splitlines()[-1])
    assert sorted(versions) == list(range(1, 7))
    registry = Registry.open(root)
    try:
        assert [r.version for r in registry.list("shared", all_versions=True)] == list(range(1, 7))
    finally:
        registry.close()


def test_registrations_racing_deletions_of_the_same_bytes(registry: Registry) -> None:
    # One blob, registered and deleted over and over from two threads: every version listed at the end
    # must still have its blob, and no blob may be left without a version.
    data = _data(0)
    rounds = 12

    def register() -> None:
        for _ in range(rounds):
            registry.register_bytes("race", data)

    def delete() -> None:
        for version in range(1, rounds + 1):
            try:
                registry.delete(f"race:{version}")
            except ModelNotFoundError:
                pass

    threads = [threading.Thread(target=register), threading.Thread(target=delete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    listed = registry.list("race", all_versions=True)
    blobs = list((registry.root / "blobs").iterdir())
    if listed:
        assert [b.name for b in blobs] == [f"{listed[0].sha256}.onnx"]
        registry._cache.discard(listed[0].sha256)
        registry.load(listed[-1])
    else:
        assert blobs == []
