"""Versioned migrations of the index schema: numbered steps, each applied once, in order.

The same steps run on both index backends: their SQL is the common subset of
SQLite and PostgreSQL. An SQLite index records the last step applied in its
``user_version``; a PostgreSQL index in the one-row table ``preimage_schema``.
Opening an index runs every later step and the version bump in one write
transaction (PostgreSQL's DDL is transactional too), so an index made by an
earlier release upgrades in place and a crash mid-upgrade leaves it at the old
version, whole. An index whose version is newer than the last step known here
is refused rather than misread.

A step is only ever appended: a released step's statements never change, since
some index in the field already ran them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

from preimage.registry.errors import RegistryUnavailableError

__all__ = ["LATEST", "MIGRATIONS", "Migration", "migrate", "migrate_postgres"]


@dataclass(frozen=True)
class Migration:
    """One schema step.

    Attributes:
        version: The index version once this step is applied (1, 2, ...).
        summary: What the step adds, for the log.
        statements: The SQL it runs, in order.
    """

    version: int
    summary: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "models, per-name version counters, aliases, watched files",
        (
            """CREATE TABLE IF NOT EXISTS models (
                name TEXT NOT NULL,
                version INTEGER NOT NULL,
                sha256 TEXT NOT NULL,
                size_bytes INTEGER NOT NULL,
                created_at TEXT NOT NULL,
                input_width INTEGER NOT NULL,
                output_width INTEGER NOT NULL,
                schema_json TEXT NOT NULL,
                statistics_json TEXT,
                source TEXT NOT NULL,
                PRIMARY KEY (name, version))""",
            "CREATE INDEX IF NOT EXISTS models_by_sha256 ON models (sha256)",
            # The last version ever given per name, so a deleted version number is never reused.
            "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL)",
            """CREATE TABLE IF NOT EXISTS aliases (
                name TEXT NOT NULL,
                alias TEXT NOT NULL,
                version INTEGER NOT NULL,
                PRIMARY KEY (name, alias),
                FOREIGN KEY (name, version) REFERENCES models (name, version) ON DELETE CASCADE)""",
            # Files of watched folders already handled, so a restart does not register them again.
            """CREATE TABLE IF NOT EXISTS watched (
                path TEXT PRIMARY KEY,
                stat TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                name TEXT NOT NULL,
                version INTEGER,
                error TEXT,
                updated_at TEXT NOT NULL)""",
        ),
    ),
    Migration(
        2,
        "a generation counter bumped by every committed write",
        (
            # One row. Another process sharing the index polls it to learn that something changed.
            """CREATE TABLE generation (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                value INTEGER NOT NULL)""",
            "INSERT INTO generation (id, value) VALUES (1, 0)",
        ),
    ),
    Migration(
        3,
        "the training report of models registered by Train",
        ("ALTER TABLE models ADD COLUMN training_json TEXT",),
    ),
)
LATEST = MIGRATIONS[-1].version
"""The index version this release writes."""


class _Executes(Protocol):
    def execute(self, sql: str, params: Any = ..., /) -> Any: ...


def migrate(conn: sqlite3.Connection, where: str) -> tuple[int, int]:
    """Apply every step after the SQLite index's version, inside the caller's write transaction.

    Args:
        conn: A connection holding the write lock (``BEGIN IMMEDIATE``).
        where: The registry, for error messages.

    Returns:
        The version found and the version now (equal when nothing was to do).

    Raises:
        RegistryUnavailableError: The index is newer than this release.
    """
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    _apply(conn, found, where)
    if found != LATEST:
        conn.execute(f"PRAGMA user_version = {LATEST}")
    return found, LATEST


def migrate_postgres(conn: _Executes, where: str) -> tuple[int, int]:
    """Apply every step after the PostgreSQL index's version, inside the caller's transaction.

    The caller holds the index's write lock (a transaction-level advisory lock), so
    replicas starting together upgrade one at a time and the later ones find nothing to do.

    Args:
        conn: A connection in a transaction holding the write lock (placeholders ``?``).
        where: The index, for error messages.

    Returns:
        The version found and the version now.

    Raises:
        RegistryUnavailableError: The index is newer than this release.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS preimage_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
    )
    row = conn.execute("SELECT version FROM preimage_schema WHERE id = 1").fetchone()
    found = int(row[0]) if row else 0
    _apply(conn, found, where)
    if row is None:
        conn.execute("INSERT INTO preimage_schema (id, version) VALUES (1, ?)", (LATEST,))
    elif found != LATEST:
        conn.execute("UPDATE preimage_schema SET version = ? WHERE id = 1", (LATEST,))
    return found, LATEST


def _apply(conn: _Executes, found: int, where: str) -> None:
    if found > LATEST:
        raise RegistryUnavailableError(where, f"index format {found} is newer than this server's {LATEST}")
    for step in MIGRATIONS:
        if step.version > found:
            for statement in step.statements:
                conn.execute(statement)
