"""The shared index on PostgreSQL, for replicas that share one registry (``--index postgresql://...``).

It runs the very queries of :class:`~preimage.registry.index.Index` (written in
the SQL both backends share) through psycopg 3 with a connection pool, and keeps
SQLite's locking model so every invariant of the embedded registry carries over:

* A write transaction first takes one transaction-level advisory lock
  (``pg_advisory_xact_lock``), PostgreSQL's counterpart of SQLite's database-wide
  ``BEGIN IMMEDIATE``. Writers on every replica are serialized by it, so
  concurrent registrations of one name get consecutive versions, and blob
  placement, blob removal and orphan clean-up never interleave. Registry writes
  are rare and short (the slow part of a registration, validation and the blob
  upload, happens before the lock), so one lock costs nothing that matters.
* A read runs in a ``REPEATABLE READ READ ONLY`` transaction: one snapshot.
* Each process holds a session-level advisory lock on its own owner id for as
  long as it runs; the object store names temporary uploads by owner, and
  clean-up removes only temporaries whose owner's lock is free: a replica that
  died (its session ended) rather than one still uploading.

The schema is created and upgraded by the numbered steps of
:mod:`preimage.registry.migrations`, recorded in the table ``preimage_schema``.
"""

from __future__ import annotations

import logging
import threading
import uuid
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool

from preimage.registry.errors import RegistryUnavailableError
from preimage.registry.index import _RECORD_SELECT, Connection, Index
from preimage.registry.migrations import migrate_postgres

__all__ = ["PostgresIndex", "redact"]

log = logging.getLogger(__name__)

# Advisory lock keys: (class, object) pairs of int4. The class tells preimage's locks from others'.
_WRITE_LOCK = (0x70726531, 1)  # "pre1": the one write lock
_OWNER_CLASS = 0x70726532  # "pre2": one lock per live process, keyed by a hash of its owner id
_POOL_SIZE = 16  # the server's default engine workers: one connection each at most
_CONNECT_TIMEOUT_SECONDS = 5
_POOL_WAIT_SECONDS = 5.0  # a request waits this long for a connection, then gets UNAVAILABLE


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


class _Adapter:
    """A psycopg connection seen through the :class:`Connection` protocol (``?`` placeholders)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = None, /) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), parameters or None)

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        with self._conn.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), list(parameters))
            return cursor


class PostgresIndex(Index):
    """The index in a PostgreSQL database shared by every replica.

    Args:
        url: ``postgresql://USER[:PASS]@HOST:PORT/DB`` (any libpq connection URI).
        timeout: Seconds a writer waits for the write lock.

    Raises:
        RegistryUnavailableError: The database cannot be reached or its index is newer than this release.
    """

    record_select = _RECORD_SELECT.format(aggregate="string_agg")

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        self.url = url
        self.where = redact(url)
        self.owner = uuid.uuid4().hex
        self._timeout = timeout
        self._closed = False
        self._owner_lock = threading.Lock()
        self._owner_conn: psycopg.Connection[Any] | None = None
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=_POOL_SIZE,
            kwargs={"autocommit": True, "connect_timeout": _CONNECT_TIMEOUT_SECONDS},
            timeout=_POOL_WAIT_SECONDS,
            open=False,
            name="preimage-index",
        )
        with self._guard():
            self._pool.open(wait=True, timeout=_CONNECT_TIMEOUT_SECONDS * 2)
        try:
            with self.write() as conn:
                found, now = migrate_postgres(conn, self.where)
            if found not in (0, now):
                log.info("index %s upgraded in place from format %d to %d", self.where, found, now)
            self.hold_owner_lock()
        except BaseException:
            self._pool.close()
            raise

    # -- connections and transactions ----------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise RegistryUnavailableError(self.where, _describe(exc)) from exc

    @contextmanager
    def _pg_transaction(self, begin: str, *, write: bool) -> Iterator[Connection]:
        if self._closed:
            raise RegistryUnavailableError(self.where, "it is closed")
        with self._guard():
            for attempt in (1, 2):
                with self._pool.connection() as raw:
                    try:
                        raw.execute(begin)
                    except psycopg.OperationalError:
                        # A pooled connection the database dropped (it restarted); the pool discards it on
                        # return. Nothing ran yet, so check the idle ones and start over once.
                        if attempt == 2:
                            raise
                        self._pool.check()
                        continue
                    try:
                        if write:
                            raw.execute(f"SET LOCAL lock_timeout = '{int(self._timeout * 1000)}ms'")
                            raw.execute("SELECT pg_advisory_xact_lock(%s, %s)", _WRITE_LOCK)
                        yield _Adapter(raw)
                        if write:
                            raw.execute("UPDATE generation SET value = value + 1 WHERE id = 1")
                        raw.execute("COMMIT")
                    except BaseException:
                        with suppress(psycopg.Error):
                            raw.execute("ROLLBACK")
                        raise
                    return

    def read(self) -> AbstractContextManager[Connection]:
        """A read transaction: one consistent snapshot of the index."""
        return self._pg_transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", write=False)

    def generation(self) -> int:
        """How many write transactions have committed since the index was made."""
        with self.read() as conn:
            return int(conn.execute("SELECT value FROM generation WHERE id = 1").fetchone()[0])

    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction holding the index-wide write lock until it commits or rolls back.

        Committing it also bumps the generation counter (:meth:`generation`)."""
        return self._pg_transaction("BEGIN", write=True)

    def close(self) -> None:
        """Close the pool and release this process's owner lock."""
        self._closed = True
        with self._owner_lock:
            if self._owner_conn is not None:
                with suppress(psycopg.Error):
                    self._owner_conn.close()
                self._owner_conn = None
        self._pool.close()

    def check(self) -> None:
        """Raise :class:`RegistryUnavailableError` unless the index can be read now (through the pool,
        whose connections the database dropped are replaced).

        Also takes this process's owner lock again after the database came back (a restart of
        PostgreSQL ends every session, and the lock with it).
        """
        if self._closed:
            raise RegistryUnavailableError(self.where, "it is closed")
        with self.read() as conn:
            conn.execute("SELECT value FROM generation WHERE id = 1").fetchone()
        self.hold_owner_lock()

    # -- owners of temporary uploads --------------------------------------------------------------

    def hold_owner_lock(self) -> None:
        """Hold the session lock that says this process (``self.owner``) is alive, on a connection of its own."""
        with self._owner_lock, self._guard():
            if self._owner_conn is not None:
                try:
                    self._owner_conn.execute("SELECT 1")
                    return
                except psycopg.Error:  # the session ended (the database restarted): take the lock again
                    with suppress(psycopg.Error):
                        self._owner_conn.close()
                    self._owner_conn = None
            conn = psycopg.connect(self.url, connect_timeout=_CONNECT_TIMEOUT_SECONDS, autocommit=True)
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (_OWNER_CLASS, _owner_key(self.owner)))
            self._owner_conn = conn

    def owner_alive(self, owner: str) -> bool:
        """Whether the process with this owner id still runs (holds its lock).

        A lock found free is taken and released at once, on a pooled session, which is never the
        owner's own.
        """
        if owner == self.owner:
            return True
        key = (_OWNER_CLASS, _owner_key(owner))
        with self._guard(), self._pool.connection() as conn:
            taken = bool(conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()[0])  # type: ignore[index]
            if taken:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)
            return not taken


def _owner_key(owner: str) -> int:
    return zlib.crc32(owner.encode()) - 2**31  # an int4


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
