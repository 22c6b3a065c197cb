"""Versioned index migrations: a format-1 index upgrades in place; a newer one is refused; the generation counter."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from preimage.registry import Registry, RegistryUnavailableError, TrainingReport, ValidationMetrics
from preimage.registry.migrations import LATEST, MIGRATIONS
from tests.registry.builders import gemm
from tests.registry.checks import assert_matches_onnxruntime


def _schema(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    finally:
        conn.close()
    return [(str(t), str(n), " ".join(str(s).split())) for t, n, s in rows]


def _user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _to_format_1(path: Path) -> None:
    """Turn an index back into what the release before migrations wrote: format 1, no generation table."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TABLE generation")
        conn.execute("ALTER TABLE models DROP COLUMN training_json")
        conn.execute("PRAGMA user_version = 1")
    finally:
        conn.close()


def test_steps_are_numbered_in_order() -> None:
    assert [step.version for step in MIGRATIONS] == list(range(1, LATEST + 1))


def test_format_1_index_upgrades_in_place(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fresh = Registry.open(tmp_path / "fresh", parity_rows=8)
    fresh.close()
    root = tmp_path / "old"
    data = gemm(d=3, m=2, seed=4).SerializeToString()
    old = Registry.open(root, parity_rows=8)
    old.register_bytes("a", data)
    old.register_bytes("a", data)
    old.set_alias("a", "prod", 1)
    old.close()
    _to_format_1(root / "index.sqlite3")
    assert _user_version(root / "index.sqlite3") == 1

    with caplog.at_level("INFO", logger="preimage.registry.index"):
        upgraded = Registry.open(root, parity_rows=8)
    try:
        assert f"upgraded in place from format 1 to {LATEST}" in caplog.text
        # Everything stored before is still there and served.
        assert [(r.version, r.aliases) for r in upgraded.list("a", all_versions=True)] == [(1, ("prod",)), (2, ())]
        assert_matches_onnxruntime(upgraded, "a@prod", data, np.random.default_rng(0).random((5, 3), np.float32))
        # Version numbering carries on; the new generation counter counts from the upgrade.
        before = upgraded.generation()
        assert upgraded.register_bytes("a", data).version == 3
        assert upgraded.generation() > before
    finally:
        upgraded.close()
    # The upgraded index has exactly the schema a fresh one gets.
    assert _user_version(root / "index.sqlite3") == LATEST
    assert _schema(root / "index.sqlite3") == _schema(tmp_path / "fresh" / "index.sqlite3")
    # Opening again has nothing to do.
    Registry.open(root, parity_rows=8).close()
    assert _user_version(root / "index.sqlite3") == LATEST


def test_format_2_index_gains_training_reports(tmp_path: Path) -> None:
    root = tmp_path / "old"
    data = gemm(d=3, m=2, seed=4).SerializeToString()
    old = Registry.open(root, parity_rows=8)
    old.register_bytes("a", data)
    old.close()
    conn = sqlite3.connect(root / "index.sqlite3", isolation_level=None)
    conn.execute("ALTER TABLE models DROP COLUMN training_json")
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    report = TrainingReport(
        stop_reason="converged",
        epochs_run=42,
        rows=1000,
        hidden_sizes=(64, 64),
        batch_size=32,
        metrics=(ValidationMetrics("y", 0.04, 0.16, 0.99, 0.2, 0.39), ValidationMetrics("z", 1.0, 0.8, 0.5, 1.0, 2.0)),
        elapsed_seconds=3.5,
    )
    upgraded = Registry.open(root, parity_rows=8)
    try:
        (first,) = upgraded.list("a")
        assert first.training is None
        upgraded.register_bytes("a", data, training=report)
    finally:
        upgraded.close()
    reopened = Registry.open(root, parity_rows=8)
    try:
        versions = reopened.list("a", all_versions=True)
        assert [r.training for r in versions] == [None, report]
    finally:
        reopened.close()


def test_newer_index_is_refused_untouched(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    Registry.open(root, parity_rows=8).close()
    conn = sqlite3.connect(root / "index.sqlite3", isolation_level=None)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    with pytest.raises(
        RegistryUnavailableError, match=f"index format {LATEST + 1} is newer than this server's {LATEST}"
    ):
        Registry.open(root, parity_rows=8)
    assert _user_version(root / "index.sqlite3") == LATEST + 1


def test_generation_moves_for_every_sharer_on_writes_only(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    a = Registry.open(root, parity_rows=8)
    b = Registry.open(root, parity_rows=8)
    try:
        data = gemm(d=3, m=2, seed=5).SerializeToString()
        start = b.generation()
        a.register_bytes("m", data)
        after_register = b.generation()
        assert after_register > start
        a.list()
        a.get("m")
        a.load("m")
        assert b.generation() == after_register  # reads change nothing
        b.set_alias("m", "prod", 1)
        assert a.generation() > after_register
        moved = a.generation()
        a.delete("m:1")
        assert b.generation() > moved
    finally:
        a.close()
        b.close()
    with pytest.raises(RegistryUnavailableError, match="closed"):
        a.generation()
