"""Streaming uploads: bytes go to a locked temporary file while they are hashed and counted."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

from preimage.errors import InvalidArgumentError
from preimage.registry.errors import ChecksumMismatchError, ModelTooLargeError, SizeMismatchError
from preimage.registry.records import ModelRecord, ModelSource, TrainingReport
from preimage.registry.schema import DataStatistics, FeatureSchema

if TYPE_CHECKING:
    from preimage.registry.index import WatchedFile
    from preimage.registry.store import Registry

__all__ = ["Upload"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Upload:
    """One model upload in progress; create it with :meth:`Registry.begin_upload`.

    Use it as a context manager: leaving the block without :meth:`commit` aborts it.
    Calls may come from different threads, one at a time; :meth:`abort` may be
    called from any thread at any time.

    Example:
        >>> with registry.begin_upload(declared_size=len(data)) as upload:  # doctest: +SKIP
        ...     for start in range(0, len(data), 1 << 20):
        ...         upload.write(data[start : start + (1 << 20)])
        ...     record = upload.commit("difficulty")
    """

    def __init__(
        self,
        registry: Registry,
        path: Path,
        handle: BinaryIO,
        limit: int,
        declared_size: int | None,
        expected_sha256: str | None,
    ) -> None:
        self._registry = registry
        self.path = path
        self._handle = handle
        self._limit = limit
        self._declared = declared_size
        self._expected = expected_sha256
        self._hash = hashlib.sha256()
        self._size = 0
        self._state = "open"  # open -> committing -> committed, or -> aborted
        self._lock = threading.Lock()

    @staticmethod
    def check_expectations(declared_size: int | None, expected_sha256: str | None, limit: int) -> str | None:
        """Validate what a caller announces before sending bytes; return the normalized sha256.

        Raises:
            ModelTooLargeError: ``declared_size`` is over ``limit``.
            InvalidArgumentError: A negative size or a malformed sha256.
        """
        if declared_size is not None:
            if isinstance(declared_size, bool) or not isinstance(declared_size, int) or declared_size < 0:
                raise InvalidArgumentError(
                    f"declared size must be a whole number of bytes, got {declared_size!r}", field="size_bytes"
                )
            if declared_size > limit:
                raise ModelTooLargeError(declared_size, limit, declared=True)
        if expected_sha256 is None:
            return None
        normalized = expected_sha256.strip().lower()
        if not _SHA256.match(normalized):
            raise InvalidArgumentError(f"sha256 must be 64 hexadecimal digits, got {expected_sha256!r}", field="sha256")
        return normalized

    @property
    def size(self) -> int:
        """Bytes received so far."""
        return self._size

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append a chunk.

        Raises:
            ModelTooLargeError: The upload passed the size limit (or its declared size); it is aborted.
            InvalidArgumentError: The upload is already committed or aborted.
        """
        with self._lock:
            self._require_open()
            size = self._size + len(chunk)
            ceiling = self._limit if self._declared is None else min(self._limit, self._declared)
            if size > ceiling:
                self._discard()
                if size > self._limit:
                    raise ModelTooLargeError(size, self._limit)
                raise SizeMismatchError(self._declared or 0, size)
            self._handle.write(chunk)
            self._hash.update(chunk)
            self._size = size

    def commit(
        self,
        name: str,
        schema: FeatureSchema | None = None,
        statistics: DataStatistics | None = None,
        source: ModelSource = ModelSource.UPLOAD,
        *,
        default_bounds: tuple[float, float] | None = None,
        training: TrainingReport | None = None,
    ) -> ModelRecord:
        """Validate the bytes and register them as the next version of ``name``.

        All or nothing: on any error the registry is unchanged and the upload is aborted.

        Args:
            name: Model name, ``[a-z0-9][a-z0-9._-]{0,63}``.
            schema: Feature schema; default: the model's ``preimage.schema`` metadata, else unbounded ``x0…``.
            statistics: Training-data statistics to store with the model.
            source: How the model got here.
            default_bounds: ``(lower, upper)`` given to every continuous or integer feature bound the
                schema leaves missing.
            training: Train's report, stored with the version.

        Returns:
            The new version's record.

        Raises:
            InvalidArgumentError: A bad name, schema, size or checksum, or a model refused
                (an :class:`~preimage.registry.errors.InvalidModelError` naming the problem).
        """
        return self._commit(name, schema, statistics, source, default_bounds, None, training)

    def _commit(
        self,
        name: str,
        schema: FeatureSchema | None,
        statistics: DataStatistics | None,
        source: ModelSource,
        default_bounds: tuple[float, float] | None,
        watched: WatchedFile | None,
        training: TrainingReport | None = None,
    ) -> ModelRecord:
        with self._lock:
            self._require_open()
            self._state = "committing"
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            if self._declared is not None and self._declared != self._size:
                raise SizeMismatchError(self._declared, self._size)
            sha256 = self._hash.hexdigest()
            if self._expected is not None and self._expected != sha256:
                raise ChecksumMismatchError(self._expected, sha256)
            record = self._registry._commit_upload(
                self.path, sha256, self._size, name, schema, statistics, source, default_bounds, watched, training
            )
        except BaseException:
            with self._lock:
                self._discard()
            raise
        with self._lock:
            self._state = "committed"
            self._handle.close()
        return record

    def abort(self) -> None:
        """Drop the upload and its temporary file. Does nothing once committed, or while a commit runs
        (the commit then finishes or cleans up by itself)."""
        with self._lock:
            if self._state == "open":
                self._discard()

    def _require_open(self) -> None:
        if self._state != "open":
            raise InvalidArgumentError(f"the upload is {self._state}; start a new one")

    def _discard(self) -> None:
        self._state = "aborted"
        self._handle.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()
