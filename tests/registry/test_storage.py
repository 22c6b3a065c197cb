"""Storage: content addressing, uploads, the module cache, cold loads, clean-up, health."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from preimage.errors import InvalidArgumentError, UnavailableError
from preimage.registry import (
    ChecksumMismatchError,
    ModelIntegrityError,
    ModelTooLargeError,
    Registry,
    RegistryUnavailableError,
    SizeMismatchError,
)
from tests.registry.builders import gemm
from tests.registry.checks import assert_empty, assert_matches_onnxruntime


def _data(seed: int = 0, d: int = 3, m: int = 2) -> bytes:
    return gemm(d=d, m=m, seed=seed).SerializeToString()


def _blobs(registry: Registry) -> list[str]:
    return sorted(p.name for p in (registry.root / "blobs").iterdir())


def test_layout_and_content_addressing(registry: Registry) -> None:
    data = _data()
    sha = hashlib.sha256(data).hexdigest()
    a = registry.register_bytes("a", data)
    b = registry.register_bytes("b", data)
    registry.register_bytes("a", data)  # the same bytes as a new version: still one blob
    assert a.sha256 == b.sha256 == sha
    assert _blobs(registry) == [f"{sha}.onnx"]
    assert (registry.root / "blobs" / f"{sha}.onnx").read_bytes() == data
    assert (registry.root / "index.sqlite3").is_file()
    # The blob goes only when the last row referencing it goes.
    registry.delete("a", all_versions=True)
    assert _blobs(registry) == [f"{sha}.onnx"]
    registry.delete("b:1")
    assert _blobs(registry) == []


def test_upload_in_chunks_with_declared_size_and_sha(registry: Registry) -> None:
    data = _data()
    sha = hashlib.sha256(data).hexdigest()
    with registry.begin_upload(declared_size=len(data), expected_sha256=sha.upper()) as upload:
        for start in range(0, len(data), 7):
            upload.write(data[start : start + 7])
        assert upload.size == len(data)
        record = upload.commit("chunked")
    assert record.sha256 == sha
    assert_matches_onnxruntime(registry, "chunked", data, np.random.default_rng(0).standard_normal((3, 3)))
    with pytest.raises(InvalidArgumentError, match="committed"):
        upload.write(b"more")
    assert list((registry.root / "tmp").iterdir()) == []


def test_upload_refusals_leave_nothing(tmp_path: Path) -> None:
    data = _data()
    registry = Registry.open(tmp_path / "r", max_model_bytes=len(data) + 10, parity_rows=4)
    try:
        with pytest.raises(ModelTooLargeError, match="declared size is 1000 bytes"):
            registry.begin_upload(declared_size=1000)
        with pytest.raises(InvalidArgumentError, match="64 hexadecimal digits"):
            registry.begin_upload(expected_sha256="abc")
        with pytest.raises(InvalidArgumentError, match="whole number"):
            registry.begin_upload(declared_size=-1)
        with registry.begin_upload(declared_size=len(data) - 1) as upload, pytest.raises(SizeMismatchError):
            upload.write(data)  # more than declared: refused as it arrives
        with registry.begin_upload(declared_size=len(data) + 1) as upload:
            upload.write(data)
            with pytest.raises(SizeMismatchError, match=f"declared {len(data) + 1} bytes but {len(data)}"):
                upload.commit("m")
        with registry.begin_upload(expected_sha256="0" * 64) as upload:
            upload.write(data)
            with pytest.raises(ChecksumMismatchError, match="not the declared 0000"):
                upload.commit("m")
        with registry.begin_upload() as upload:
            upload.write(data)
            upload.abort()
            upload.abort()  # idempotent
        with registry.begin_upload() as upload:
            upload.write(data)  # leaving the block without commit aborts
        assert_empty(registry)
    finally:
        registry.close()


def test_cache_is_bounded_and_keyed_by_content(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "r", cache_size=2, parity_rows=4)
    try:
        records = [registry.register_bytes(f"m{i}", _data(seed=i)) for i in range(3)]
        assert registry.cached() == [records[1].sha256, records[2].sha256]  # m0 evicted
        registry.load("m1")
        registry.load("m0")  # cold: converted again, evicting the least recently used (m2)
        assert registry.cached() == [records[1].sha256, records[0].sha256]
        same = registry.register_bytes("alias-of-m0", _data(seed=0))
        assert registry.load(same.ref).module is registry.load("m0").module
    finally:
        registry.close()


def test_cold_load_after_reopen_converts_and_matches(tmp_path: Path) -> None:
    data = _data(seed=3, d=4, m=2)
    first = Registry.open(tmp_path / "r", parity_rows=4)
    first.register_bytes("m", data)
    first.close()
    with pytest.raises(RegistryUnavailableError, match="closed"):
        first.get("m")
    reopened = Registry.open(tmp_path / "r")
    try:
        assert reopened.cached() == []
        loaded = reopened.load("m")
        assert reopened.cached() == [loaded.record.sha256]
        assert not loaded.module.training
        assert all(not p.requires_grad for p in loaded.module.parameters())
        X = torch.rand(5, 4, requires_grad=True)
        loaded.module(X).sum().backward()
        assert X.grad is not None and X.grad.shape == (5, 4)
        assert_matches_onnxruntime(reopened, "m", data, np.random.default_rng(2).standard_normal((6, 4)))
    finally:
        reopened.close()


def test_nothing_is_unpickled(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used")

    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(target, name, refuse)
    # Every unpickling of an object resolves its class through pickle.find_class, which is audited.
    watching, unpickled = [True], []
    sys.addaudithook(
        lambda event, args: unpickled.append(args) if watching[0] and event == "pickle.find_class" else None
    )
    try:
        registry.register_bytes("m", _data())
        registry._cache.discard(registry.get("m").sha256)
        registry.load("m")
    finally:
        watching[0] = False
    assert unpickled == []


def test_start_up_removes_temp_files_and_orphan_blobs(tmp_path: Path) -> None:
    data = _data()
    registry = Registry.open(tmp_path / "r", parity_rows=4)
    kept = registry.register_bytes("kept", data)
    root = registry.root
    registry.close()
    (root / "tmp" / "upload-crashed.part").write_bytes(b"half a model")
    orphan = "f" * 64
    (root / "blobs" / f"{orphan}.onnx").write_bytes(b"renamed but never indexed")
    (root / "blobs" / "notes.txt").write_text("not ours: left alone")
    reopened = Registry.open(root)
    try:
        assert list((root / "tmp").iterdir()) == []
        assert _blobs(reopened) == sorted([f"{kept.sha256}.onnx", "notes.txt"])
        assert reopened.get("kept") == kept
    finally:
        reopened.close()


def test_a_live_upload_survives_another_opening(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "r", parity_rows=4)
    try:
        upload = registry.begin_upload()
        upload.write(_data()[:10])
        Registry.open(tmp_path / "r").close()  # its start-up clean-up must skip the locked upload file
        assert upload.path.exists()
        upload.write(_data()[10:])
        assert upload.commit("m").version == 1
    finally:
        registry.close()


def test_damaged_or_missing_blob(registry: Registry) -> None:
    record = registry.register_bytes("m", _data())
    blob = registry.root / "blobs" / f"{record.sha256}.onnx"
    registry._cache.discard(record.sha256)
    blob.write_bytes(blob.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="now hashes to"):
        registry.load("m")
    blob.unlink()
    with pytest.raises(ModelIntegrityError, match="blob file is missing"):
        registry.load("m")


def test_check_readable(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "r", parity_rows=4)
    registry.check_readable()
    shutil.move(registry.root / "index.sqlite3", tmp_path / "moved.sqlite3")
    with pytest.raises(RegistryUnavailableError, match="missing") as caught:
        registry.check_readable()
    assert isinstance(caught.value, UnavailableError)
    for suffix in ("-wal", "-shm"):  # the log would still supply the pages of the moved file
        shutil.move(registry.root / f"index.sqlite3{suffix}", tmp_path / f"moved{suffix}")
    (registry.root / "index.sqlite3").write_bytes(b"garbage, not a database" * 100)
    with pytest.raises(RegistryUnavailableError, match="DatabaseError"):
        registry.check_readable()
    registry.close()
    with pytest.raises(RegistryUnavailableError, match="closed"):
        registry.check_readable()


def test_opening_a_corrupt_index_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "index.sqlite3").write_bytes(b"garbage, not a database" * 100)
    with pytest.raises(RegistryUnavailableError, match="not a database"):
        Registry.open(root)


def test_open_validates_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_model_bytes"):
        Registry.open(tmp_path, max_model_bytes=2**31)
    with pytest.raises(ValueError, match="parity_rows"):
        Registry.open(tmp_path, parity_rows=1)
    with pytest.raises(ValueError, match="capacity"):
        Registry.open(tmp_path, cache_size=-1)


def test_an_upload_into_a_removed_registry_folder_is_unavailable_and_names_it(tmp_path: Path) -> None:
    root = tmp_path / "r"
    registry = Registry.open(root)
    data = gemm().SerializeToString()
    registry.register_bytes("kept", data)
    shutil.rmtree(root / "tmp")
    with pytest.raises(RegistryUnavailableError, match=r"tmp is missing"):
        registry.register_bytes("lost", data)
    assert [r.name for r in registry.list()] == ["kept"]
    registry.close()
