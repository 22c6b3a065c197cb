"""The watched folder: pick-up, changes, schema.json, refusals, restarts, the polling thread."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from preimage.registry import ModelSource, Registry
from preimage.registry.watch import FolderWatcher
from tests.registry.builders import gemm
from tests.registry.checks import assert_matches_onnxruntime


def _data(seed: int, d: int = 3) -> bytes:
    return gemm(d=d, m=1, seed=seed).SerializeToString()


def _write(path: Path, data: bytes, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_new_files_register_oldest_first(registry: Registry, tmp_path: Path) -> None:
    watched = tmp_path / "models"
    _write(watched / "alpha" / "b.onnx", _data(1), mtime=1_000)
    _write(watched / "alpha" / "a.onnx", _data(2), mtime=2_000)  # newest: must end up latest
    _write(watched / "beta" / "model.onnx", _data(3))
    _write(watched / "beta" / "notes.txt", b"ignored")
    watcher = FolderWatcher(registry, watched)
    result = watcher.scan_once()
    assert [r.ref for r in result.registered] == ["alpha:1", "alpha:2", "beta:1"]
    assert result.refused == ()
    assert registry.get("alpha").source is ModelSource.WATCH
    assert_matches_onnxruntime(registry, "alpha", _data(2), np.ones((2, 3)))
    assert watcher.scan_once().registered == ()  # nothing new


def test_a_changed_file_becomes_the_next_version(registry: Registry, tmp_path: Path) -> None:
    watched = tmp_path / "models"
    path = watched / "m" / "model.onnx"
    _write(path, _data(1), mtime=1_000)
    watcher = FolderWatcher(registry, watched)
    watcher.scan_once()
    os.utime(path, (5_000, 5_000))  # touched, not changed
    assert watcher.scan_once().registered == ()
    _write(path, _data(2), mtime=9_000)
    assert [r.ref for r in watcher.scan_once().registered] == ["m:2"]
    assert registry.get("m").sha256 == registry.get("m:2").sha256 != registry.get("m:1").sha256
    assert_matches_onnxruntime(registry, "m", _data(2), np.ones((2, 3)))


def test_schema_json_is_used_and_a_change_to_it_registers_again(registry: Registry, tmp_path: Path) -> None:
    watched = tmp_path / "models"
    schema = {"inputs": [{"name": n, "min": 0, "max": 1} for n in ("a", "b", "c")]}
    _write(watched / "m" / "schema.json", json.dumps(schema).encode())
    _write(watched / "m" / "model.onnx", _data(1))
    watcher = FolderWatcher(registry, watched)
    (record,) = watcher.scan_once().registered
    assert record.schema.feature_names == ["a", "b", "c"] and record.schema.bounded
    schema["inputs"][0]["max"] = 2
    _write(watched / "m" / "schema.json", json.dumps(schema).encode(), mtime=time.time() + 10)
    (again,) = watcher.scan_once().registered
    assert again.version == 2 and again.schema.inputs[0].max == 2.0


def test_bad_files_are_skipped_until_they_change(registry: Registry, tmp_path: Path) -> None:
    watched = tmp_path / "models"
    bad = watched / "m" / "model.onnx"
    _write(bad, b"not a model", mtime=1_000)
    _write(watched / "Bad Name" / "model.onnx", _data(1))
    _write(watched / "m2" / "model.onnx", _data(2))
    _write(watched / "m2" / "schema.json", b"{broken")
    watcher = FolderWatcher(registry, watched)
    result = watcher.scan_once()
    assert result.registered == ()
    assert sorted((p.parent.name, "not an ONNX model" in r or "not valid JSON" in r) for p, r in result.refused) == [
        ("m", True),
        ("m2", True),
    ]
    assert watcher.scan_once().refused == ()  # not retried while unchanged
    _write(bad, _data(3), mtime=2_000)
    assert [r.ref for r in watcher.scan_once().registered] == ["m:1"]


def test_a_restart_registers_nothing_twice(tmp_path: Path) -> None:
    watched = tmp_path / "models"
    _write(watched / "m" / "model.onnx", _data(1))
    _write(watched / "bad" / "model.onnx", b"junk")
    first = Registry.open(tmp_path / "r", parity_rows=4)
    assert len(FolderWatcher(first, watched).scan_once().registered) == 1
    first.close()
    second = Registry.open(tmp_path / "r", parity_rows=4)
    try:
        result = FolderWatcher(second, watched).scan_once()
        assert result.registered == () and result.refused == ()
        assert [r.ref for r in second.list(all_versions=True)] == ["m:1"]
    finally:
        second.close()


def test_a_removed_file_put_back_registers_again(registry: Registry, tmp_path: Path) -> None:
    watched = tmp_path / "models"
    path = watched / "m" / "model.onnx"
    _write(path, _data(1))
    watcher = FolderWatcher(registry, watched)
    watcher.scan_once()
    path.unlink()
    assert watcher.scan_once().registered == ()
    assert registry.get("m").version == 1  # removing a file deletes nothing
    _write(path, _data(1))
    assert [r.ref for r in watcher.scan_once().registered] == ["m:2"]


def test_the_thread_picks_up_files_while_running(registry: Registry, tmp_path: Path) -> None:
    watched = tmp_path / "models"
    watcher = FolderWatcher(registry, watched, interval_seconds=0.05)
    watcher.start()
    try:
        _write(watched / "late" / "model.onnx", _data(4))
        deadline = time.monotonic() + 60
        while not registry.list("late") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r.ref for r in registry.list("late")] == ["late:1"]
    finally:
        watcher.stop()
    assert watcher._thread is None


def test_interval_must_be_positive(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval_seconds"):
        FolderWatcher(registry, tmp_path, interval_seconds=0)


def test_requests_see_the_old_version_until_the_new_one_is_ready(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from preimage.registry import store

    watched = tmp_path / "models"
    path = watched / "m" / "model.onnx"
    _write(path, _data(1), mtime=1_000)
    watcher = FolderWatcher(registry, watched)
    watcher.scan_once()
    validating, release = threading.Event(), threading.Event()
    real = store.prepare_model

    def slow_prepare(*args: object, **kwargs: object) -> object:
        validating.set()
        assert release.wait(60)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "prepare_model", slow_prepare)
    _write(path, _data(2), mtime=2_000)
    scan = threading.Thread(target=watcher.scan_once)
    scan.start()
    try:
        assert validating.wait(60)
        assert registry.get("m").version == 1  # still served while the new file is checked
        assert_matches_onnxruntime(registry, "m", _data(1), np.ones((2, 3)))
    finally:
        release.set()
        scan.join(60)
    assert registry.get("m").version == 2
