"""The shared registry in one process: a real PostgreSQL index and a real S3 endpoint (moto's server).

Two :class:`Registry` objects on one store stand for two replicas; the cross-process
behaviours are in tests/server/test_replicas.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch

from preimage.registry import (
    BlobStoreUnavailableError,
    ModelNotFoundError,
    Registry,
    RegistryUnavailableError,
)
from preimage.registry.migrations import LATEST, MIGRATIONS
from preimage.registry.postgres import redact
from tests.conftest import SharedStore
from tests.models import linear_onnx, onnx_eval
from tests.services import MotoServer, free_port

SHA = "0" * 64


def linear(i: int) -> bytes:
    return linear_onnx(np.array([[float(i), 1.0, -1.0]], np.float32), [0.5])


@pytest.fixture
def pair(shared_store: SharedStore, tmp_path: Path) -> Iterator[tuple[Registry, Registry]]:
    """Two registries (two "replicas") on one shared store, each with its own local cache."""
    opened = [
        Registry.open(tmp_path / n, parity_rows=8, index_url=shared_store.index, blobs_url=shared_store.blobs)
        for n in "ab"
    ]
    yield opened[0], opened[1]
    for registry in opened:
        registry.close()


def test_one_replica_registers_the_other_serves_and_forgets_after_delete(
    pair: tuple[Registry, Registry], shared_store: SharedStore, moto_server: MotoServer, tmp_path: Path
) -> None:
    a, b = pair
    record = a.register_bytes("m", linear(1))
    assert moto_server.keys(shared_store.bucket) == [f"models/blobs/{record.sha256}.onnx"]
    assert b.refresh() is False  # the first call only notes the generation
    X = np.random.default_rng(0).random((5, 3), dtype=np.float32)
    loaded = b.load("m")
    np.testing.assert_allclose(loaded.module(torch.from_numpy(X)).numpy(), onnx_eval(linear(1), X), atol=1e-5)
    assert (tmp_path / "b" / "blobs" / f"{record.sha256}.onnx").read_bytes() == linear(1)  # cached locally
    assert record.sha256 in b.cached()

    a.set_alias("m", "prod", 1)
    assert b.get("m@prod").version == 1
    a.delete("m:1")
    with pytest.raises(ModelNotFoundError):
        b.get("m:1")
    assert b.refresh() is True
    assert record.sha256 not in b.cached()  # the other replica's converted module is gone with the blob
    assert moto_server.keys(shared_store.bucket) == []


def test_versions_stay_consecutive_across_replicas_under_concurrency(pair: tuple[Registry, Registry]) -> None:
    a, b = pair
    start = threading.Barrier(8)

    def go(i: int) -> int:
        start.wait(timeout=30)
        return (a if i % 2 else b).register_bytes("race", linear(i)).version

    with ThreadPoolExecutor(8) as pool:
        versions = sorted(pool.map(go, range(8)))
    assert versions == list(range(1, 9))
    assert [r.version for r in b.list("race", all_versions=True)] == versions


def test_clean_up_removes_dead_owners_temporaries_and_orphans_only(
    pair: tuple[Registry, Registry], shared_store: SharedStore, moto_server: MotoServer, tmp_path: Path
) -> None:
    a, _ = pair
    live = a.register_bytes("kept", linear(2))
    s3 = moto_server.client()
    owner = a._index.owner  # type: ignore[attr-defined]
    for key in (f"models/tmp/{owner}/up.part", "models/tmp/0123456789abcdef/dead.part", f"models/blobs/{SHA}.onnx"):
        s3.put_object(Bucket=shared_store.bucket, Key=key, Body=b"partial")
    c = Registry.open(tmp_path / "c", parity_rows=8, index_url=shared_store.index, blobs_url=shared_store.blobs)
    try:
        assert moto_server.keys(shared_store.bucket) == [
            f"models/blobs/{live.sha256}.onnx",  # referenced: kept
            f"models/tmp/{owner}/up.part",  # its owner is alive: kept
        ]
        assert c.get("kept").sha256 == live.sha256
    finally:
        c.close()


def test_index_is_migrated_in_place_and_a_newer_one_refused(shared_store: SharedStore, tmp_path: Path) -> None:
    # An index made by a release that knew only format 1, with one model in it.
    with psycopg.connect(shared_store.index, autocommit=True) as conn:
        for statement in MIGRATIONS[0].statements:
            conn.execute(statement)
        conn.execute("CREATE TABLE preimage_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)")
        conn.execute("INSERT INTO preimage_schema VALUES (1, 1)")
    registry = Registry.open(tmp_path / "r", parity_rows=8, index_url=shared_store.index, blobs_url=shared_store.blobs)
    try:
        before = registry.generation()
        registry.register_bytes("m", linear(3))
        assert registry.generation() == before + 1
    finally:
        registry.close()
    with psycopg.connect(shared_store.index, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM preimage_schema").fetchone() == (LATEST,)
        conn.execute("UPDATE preimage_schema SET version = %s", (LATEST + 1,))
    with pytest.raises(RegistryUnavailableError, match=f"index format {LATEST + 1} is newer"):
        Registry.open(tmp_path / "s", index_url=shared_store.index, blobs_url=shared_store.blobs)


def test_unreachable_index_and_store_are_unavailable_naming_them(shared_store: SharedStore, tmp_path: Path) -> None:
    url = f"postgresql://someone:secret@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(RegistryUnavailableError) as caught:
        Registry.open(tmp_path / "a", index_url=url, blobs_url=shared_store.blobs)
    assert f"postgresql://someone:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in str(caught.value)
    assert "secret" not in str(caught.value)
    with pytest.raises(BlobStoreUnavailableError, match="the blob store s3://no-such-bucket/x is unavailable"):
        Registry.open(tmp_path / "b", index_url=shared_store.index, blobs_url="s3://no-such-bucket/x")
    with pytest.raises(ValueError, match="needs both"):
        Registry.open(tmp_path / "c", index_url=shared_store.index)


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://u:p%40ss@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact("postgresql://u@db/x") == "postgresql://u@db/x"


def test_lookup_cache_follows_the_generation_and_expires_without_polls(pair: tuple[Registry, Registry]) -> None:
    a, b = pair
    a.register_bytes("m", linear(4))
    a.register_bytes("m", linear(5))
    a.set_alias("m", "prod", 1)
    b.cache_lookups(0.5)
    b.refresh()
    assert b.get("m@prod").version == 1
    a.set_alias("m", "prod", 2)  # another replica's change: seen at b's next poll
    assert b.refresh() is True
    assert b.get("m@prod").version == 2
    b.set_alias("m", "prod", 1)  # b's own change: seen by b at once
    assert b.get("m@prod").version == 1
    a.delete("m:1")
    time.sleep(0.6)  # no poll within the window: lookups go to the index again
    with pytest.raises(ModelNotFoundError):
        b.get("m@prod")
