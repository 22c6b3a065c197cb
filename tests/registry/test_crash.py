"""Crash safety: a registry process SIGKILLed mid-upload, mid-registration and mid-delete.

After each kill the registry is reopened (start-up clean-up runs) and must be
consistent: nothing partial listed, no temporary file, no blob without a row,
and every earlier model intact, loadable and equal to onnxruntime's evaluation.
The pause points come from ``PREIMAGE_TEST_PAUSE_<POINT>`` (``preimage.registry.hooks``).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from preimage.registry import Registry
from preimage.registry.hooks import MARKER
from tests.registry.builders import big_mlp, gemm
from tests.registry.checks import assert_matches_onnxruntime

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

REPO = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from preimage.registry import Registry

    mode, root, path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    registry = Registry.open(root, parity_rows=4)
    if mode == "upload":
        data = path.read_bytes()
        with registry.begin_upload(declared_size=len(data)) as upload:
            half = len(data) // 2
            for start in range(0, half, 1 << 16):
                upload.write(data[start : min(start + (1 << 16), half)])
            print("HALF UPLOADED", flush=True, file=sys.stderr)
            time.sleep(120)
    elif mode == "register":
        registry.register_bytes("doomed", path.read_bytes())
    elif mode == "delete":
        registry.delete("victim:1")
    print("FINISHED", flush=True, file=sys.stderr)
    """
)


def _run_until(mode: str, root: Path, path: Path, marker: str, env: dict[str, str] | None = None) -> None:
    """Start the child, wait (at most 120 s) for ``marker`` on its stderr, then SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode, str(root), str(path)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    assert child.stderr is not None
    stream = child.stderr
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    seen: list[str] = []
    try:
        while True:
            line = lines.get(timeout=120)
            seen.append(line)
            if marker in line:
                break
            assert "FINISHED" not in line, f"the child finished before {marker!r}: {''.join(seen)}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


def _assert_consistent(root: Path, expected: dict[str, bytes]) -> None:
    registry = Registry.open(root)
    try:
        records = registry.list(all_versions=True)
        assert sorted(r.ref for r in records) == sorted(expected)
        assert list((root / "tmp").iterdir()) == []
        assert sorted(p.name for p in (root / "blobs").iterdir()) == sorted({f"{r.sha256}.onnx" for r in records})
        X = np.random.default_rng(0).uniform(-1, 1, (4, records[0].input_width))
        for ref, data in expected.items():
            assert_matches_onnxruntime(registry, ref, data, X)
    finally:
        registry.close()


@pytest.fixture
def populated(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A registry holding two small models, and their bytes by reference."""
    root = tmp_path / "registry"
    models = {
        "keep:1": gemm(d=8, m=2, seed=1).SerializeToString(),
        "victim:1": gemm(d=8, m=1, seed=2).SerializeToString(),
    }
    registry = Registry.open(root, parity_rows=4)
    for ref, data in models.items():
        registry.register_bytes(ref.split(":")[0], data)
    registry.close()
    return root, models


def test_killed_mid_upload(populated: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, models = populated
    big = tmp_path / "big.onnx"
    big.write_bytes(big_mlp(hidden=600_000, d=8))
    assert big.stat().st_size > 20 * 2**20
    _run_until("upload", root, big, "HALF UPLOADED")
    leftovers = list((root / "tmp").iterdir())
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 10 * 2**20  # really killed mid-upload
    _assert_consistent(root, models)


def test_killed_between_blob_and_index_row(populated: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, models = populated
    model = tmp_path / "doomed.onnx"
    model.write_bytes(gemm(d=8, m=1, seed=9).SerializeToString())
    _run_until("register", root, model, f"{MARKER} commit", {"PREIMAGE_TEST_PAUSE_COMMIT": "120"})
    assert len(list((root / "blobs").iterdir())) == 3  # the new blob is in place, its row is not
    _assert_consistent(root, models)


def test_killed_mid_delete(populated: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, models = populated
    _run_until("delete", root, tmp_path, f"{MARKER} delete", {"PREIMAGE_TEST_PAUSE_DELETE": "120"})
    assert len(list((root / "blobs").iterdir())) == 2  # the row is gone, its blob not yet
    del models["victim:1"]
    _assert_consistent(root, models)
