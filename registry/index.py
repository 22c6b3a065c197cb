"""The SQLite index: ``index.sqlite3`` in WAL mode, one transaction per change.

Writers take ``BEGIN IMMEDIATE``, SQLite's database-wide write lock, which also
serializes writers in other processes; that is what makes concurrent
registrations of one name get consecutive versions and keeps blob placement
and blob removal from interleaving. Readers run in a deferred transaction and
see one consistent snapshot. Connections are pooled and shared by threads,
one at a time. The schema comes from the numbered steps of
:mod:`preimage.registry.migrations`, applied when the index is opened.

The queries below are written once, in the SQL SQLite and PostgreSQL share, with
``?`` placeholders; :class:`~preimage.registry.postgres.PostgresIndex` runs the
same methods against a shared PostgreSQL index.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from preimage.registry.errors import ModelNotFoundError, RegistryUnavailableError
from preimage.registry.migrations import migrate
from preimage.registry.records import ModelRecord, ModelSource, TrainingReport
from preimage.registry.refs import ModelRef
from preimage.registry.schema import DataStatistics, FeatureSchema

__all__ = ["Connection", "Index", "NewModel", "WatchedFile"]

log = logging.getLogger(__name__)

_RECORD_SELECT = """
    SELECT m.name, m.version, m.sha256, m.size_bytes, m.created_at, m.input_width, m.output_width,
            m.schema_json, m.statistics_json, m.source, m.training_json,
            (SELECT {aggregate}(a.alias, ',') FROM aliases a WHERE a.name = m.name AND a.version = m.version),
           m.version = (SELECT MAX(l.version) FROM models l WHERE l.name = m.name)
    FROM models m"""
_POOL_SIZE = 8


class Connection(Protocol):
    """What the index's queries need of a connection: ``sqlite3.Connection``, or PostgreSQL's adapter."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


@dataclass(frozen=True)
class NewModel:
    """A row to insert; the version is assigned by :meth:`Index.insert`."""

    name: str
    sha256: str
    size_bytes: int
    input_width: int
    output_width: int
    schema: FeatureSchema
    statistics: DataStatistics | None
    source: ModelSource
    training: TrainingReport | None = None


@dataclass(frozen=True)
class WatchedFile:
    """What is known about one file of a watched folder.

    Attributes:
        path: Absolute path of the ONNX file.
        stat: Size and modification time of the file and its ``schema.json`` (a cheap change test).
        fingerprint: sha256 of the file and of its ``schema.json`` (the real change test).
        name: The model name it registers under.
        version: The version it became, or ``None`` when it was refused.
        error: Why it was refused, or ``None``.
    """

    path: str
    stat: str
    fingerprint: str
    name: str
    version: int | None
    error: str | None


class Index:
    """The SQLite index of one registry root (the embedded default).

    Args:
        path: The ``index.sqlite3`` file.
        timeout: Seconds a writer waits for another writer's lock before failing.
    """

    record_select = _RECORD_SELECT.format(aggregate="group_concat")
    """The record query, in this backend's spelling of string aggregation."""

    def __init__(self, path: Path, *, timeout: float = 60.0) -> None:
        self.path = path
        self.where = str(path.parent)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        with self._guard():
            conn = self._connect()
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    found, now = migrate(conn, str(path.parent))
                    conn.execute("COMMIT")
                    if found not in (0, now):
                        log.info("index %s upgraded in place from format %d to %d", path, found, now)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except BaseException:
                conn.close()
                raise
            self._idle.append(conn)

    # -- connections and transactions ----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        # FULL: a committed registration survives power loss, not only a process crash.
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise RegistryUnavailableError(self.where, f"{type(exc).__name__}: {exc}") from exc

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RegistryUnavailableError(self.where, "it is closed")
            conn = self._idle.pop() if self._idle else None
        with self._guard():
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            finally:
                with self._lock:
                    keep = not self._closed and not conn.in_transaction and len(self._idle) < _POOL_SIZE
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()

    @contextmanager
    def _transaction(self, begin: str, *, bump: bool = False) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn:
            conn.execute(begin)
            try:
                yield conn
                if bump:
                    conn.execute("UPDATE generation SET value = value + 1 WHERE id = 1")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def read(self) -> AbstractContextManager[Connection]:
        """A read transaction: one consistent snapshot of the index."""
        return self._transaction("BEGIN")

    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction holding the database-wide write lock until it commits or rolls back.

        Committing it also bumps the generation counter (:meth:`generation`)."""
        return self._transaction("BEGIN IMMEDIATE", bump=True)

    def generation(self) -> int:
        """How many write transactions have committed since the index was made (or upgraded to format 2).

        Any process sharing the index sees the number move when another one changes it.
        """
        with self._connection() as conn:  # one statement: its own implicit read transaction
            return int(conn.execute("SELECT value FROM generation WHERE id = 1").fetchone()[0])

    def close(self) -> None:
        """Close every idle connection; connections in use close when returned."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def check(self) -> None:
        """Raise :class:`RegistryUnavailableError` unless the index file can be opened and read now.

        Uses a fresh read-only connection, so a deleted or replaced index file is noticed.
        """
        if not self.path.is_file():
            raise RegistryUnavailableError(self.where, f"{self.path} is missing")
        try:
            conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=5.0)
            try:
                conn.execute("SELECT COUNT(*) FROM models").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise RegistryUnavailableError(self.where, f"{type(exc).__name__}: {exc}") from exc

    # -- models -------------------------------------------------------------------------------

    @staticmethod
    def insert(conn: Connection, row: NewModel) -> int:
        """Insert a new version of ``row.name`` (inside a write transaction); return its number."""
        last = conn.execute("SELECT last_version FROM counters WHERE name = ?", (row.name,)).fetchone()
        version = (last[0] if last else 0) + 1
        conn.execute(
            "INSERT INTO counters (name, last_version) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version",
            (row.name, version),
        )
        conn.execute(
            "INSERT INTO models (name, version, sha256, size_bytes, created_at, input_width, output_width, "
            "schema_json, statistics_json, source, training_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.name,
                version,
                row.sha256,
                row.size_bytes,
                datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                row.input_width,
                row.output_width,
                row.schema.to_json(),
                None if row.statistics is None else _json(row.statistics.to_dict()),
                row.source.value,
                None if row.training is None else _json(row.training.to_dict()),
            ),
        )
        return version

    @classmethod
    def records(
        cls, conn: Connection, name: str | None = None, *, version: int | None = None, latest_only: bool = False
    ) -> list[ModelRecord]:
        """Records sorted by name then version, optionally of one name, one version, or latest ones only."""
        clauses: list[str] = []
        params: list[object] = []
        if name is not None:
            clauses.append("m.name = ?")
            params.append(name)
        if version is not None:
            clauses.append("m.version = ?")
            params.append(version)
        if latest_only:
            clauses.append("m.version = (SELECT MAX(l.version) FROM models l WHERE l.name = m.name)")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = conn.execute(f"{cls.record_select}{where} ORDER BY m.name, m.version", params).fetchall()
        return [_record(row) for row in rows]

    @classmethod
    def resolve(cls, conn: Connection, ref: ModelRef) -> ModelRecord:
        """The record ``ref`` names. Raises :class:`ModelNotFoundError`."""
        if ref.alias is not None:
            row = conn.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (ref.name, ref.alias)
            ).fetchone()
            found = cls.records(conn, ref.name, version=row[0]) if row else []
        else:
            found = cls.records(conn, ref.name, version=ref.version, latest_only=ref.version is None)
        if found:
            return found[0]
        if not conn.execute("SELECT 1 FROM models WHERE name = ? LIMIT 1", (ref.name,)).fetchone():
            raise ModelNotFoundError(ref.name)
        raise ModelNotFoundError(ref.name, version=ref.version, alias=ref.alias)

    @staticmethod
    def delete(conn: Connection, name: str, versions: Sequence[int]) -> None:
        """Delete versions of a name and the aliases pointing at them."""
        for version in versions:
            conn.execute("DELETE FROM aliases WHERE name = ? AND version = ?", (name, version))
            conn.execute("DELETE FROM models WHERE name = ? AND version = ?", (name, version))

    @staticmethod
    def set_alias(conn: Connection, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at a version (which must exist), replacing where it pointed before."""
        conn.execute(
            "INSERT INTO aliases (name, alias, version) VALUES (?, ?, ?) "
            "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
            (name, alias, version),
        )

    @staticmethod
    def delete_alias(conn: Connection, name: str, alias: str) -> bool:
        """Remove an alias; whether it existed."""
        return conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias)).rowcount > 0

    @staticmethod
    def referenced(conn: Connection, shas: Iterable[str] | None = None) -> set[str]:
        """The sha256 values some row references (of ``shas`` when given, else all)."""
        if shas is None:
            return {row[0] for row in conn.execute("SELECT DISTINCT sha256 FROM models")}
        return {sha for sha in shas if conn.execute("SELECT 1 FROM models WHERE sha256 = ? LIMIT 1", (sha,)).fetchone()}

    # -- watched files ---------------------------------------------------------------------------

    @staticmethod
    def watched(conn: Connection, path: str) -> WatchedFile | None:
        """What is known about a watched file, if anything."""
        row = conn.execute(
            "SELECT path, stat, fingerprint, name, version, error FROM watched WHERE path = ?", (path,)
        ).fetchone()
        return WatchedFile(*row) if row else None

    @staticmethod
    def watched_under(conn: Connection, folder: str) -> list[str]:
        """Paths of known watched files inside ``folder``."""
        prefix = folder.rstrip("/") + "/"
        rows = conn.execute("SELECT path FROM watched WHERE substr(path, 1, ?) = ?", (len(prefix), prefix))
        return [row[0] for row in rows]

    @staticmethod
    def record_watched(conn: Connection, entry: WatchedFile) -> None:
        """Remember a watched file's state (insert or replace)."""
        conn.execute(
            "INSERT INTO watched (path, stat, fingerprint, name, version, error, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET stat = excluded.stat, "
            "fingerprint = excluded.fingerprint, name = excluded.name, version = excluded.version, "
            "error = excluded.error, updated_at = excluded.updated_at",
            (
                entry.path,
                entry.stat,
                entry.fingerprint,
                entry.name,
                entry.version,
                entry.error,
                datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            ),
        )

    @staticmethod
    def forget_watched(conn: Connection, paths: Iterable[str]) -> None:
        """Drop watched files that disappeared (so a file put back is registered again)."""
        conn.executemany("DELETE FROM watched WHERE path = ?", [(p,) for p in paths])


def _json(data: object) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _record(row: tuple[object, ...]) -> ModelRecord:
    (name, version, sha256, size, created, d, m, schema_json, statistics_json, source, training, aliases, latest) = row
    return ModelRecord(
        name=str(name),
        version=int(version),  # type: ignore[call-overload]
        aliases=tuple(sorted(str(aliases).split(","))) if aliases else (),
        sha256=str(sha256),
        size_bytes=int(size),  # type: ignore[call-overload]
        created_at=datetime.fromisoformat(str(created)),
        input_width=int(d),  # type: ignore[call-overload]
        output_width=int(m),  # type: ignore[call-overload]
        schema=FeatureSchema.from_json(str(schema_json)),
        statistics=None if statistics_json is None else DataStatistics.from_dict(json.loads(str(statistics_json))),
        source=ModelSource(str(source)),
        latest=bool(latest),
        training=None if training is None else TrainingReport.from_dict(json.loads(str(training))),
    )
