"""The registry: ONNX blobs and an SQLite index under one directory, and the module cache.

Layout of a registry root::

    index.sqlite3          the index (WAL mode; -wal and -shm files beside it)
    blobs/<sha256>.onnx    each distinct model file once, named by its content
    tmp/                   uploads in progress

A registration validates the bytes completely first (nothing is stored for a
refused model), then, holding the index's write lock, renames the fsynced
upload into ``blobs/`` and inserts the row in one transaction. A deletion
removes rows in one transaction, then blob files nothing references. Opening
a registry removes temporary files and blobs no row references, which is all a
crash at any point can leave behind.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import sqlite3
from dataclasses import replace
from pathlib import Path

import torch

from preimage.errors import InvalidArgumentError
from preimage.registry.blobs import BlobStore
from preimage.registry.cache import ModuleCache
from preimage.registry.errors import (
    ModelIntegrityError,
    ModelNotFoundError,
    RegistryUnavailableError,
)
from preimage.registry.hooks import pause
from preimage.registry.index import Index, NewModel, WatchedFile
from preimage.registry.records import LoadedModel, ModelRecord, ModelSource, TrainingReport
from preimage.registry.refs import ModelRef, check_alias, check_name
from preimage.registry.schema import DataStatistics, FeatureSchema
from preimage.registry.upload import Upload
from preimage.registry.validate import prepare_model, reload_module

__all__ = ["MAX_PROTOBUF_BYTES", "Registry"]

log = logging.getLogger(__name__)

MAX_PROTOBUF_BYTES = 2**31 - 1
"""protobuf cannot parse a message larger than this, so no size limit may exceed it."""
_WRITE_CHUNK = 1 << 20
_Records = list[ModelRecord]  # spelled out here because Registry.list shadows the builtin in the class body


class Registry:
    """ONNX models on local disk: versions, aliases, schemas, validated conversion to torch.

    Every method is thread-safe. Open one with :meth:`open`.

    Example:
        >>> registry = Registry.open(tmp_path / "registry")  # doctest: +SKIP
        >>> record = registry.register_bytes("difficulty", onnx_bytes)  # doctest: +SKIP
        >>> loaded = registry.load("difficulty")  # doctest: +SKIP
        >>> loaded.module(torch.rand(5, record.input_width)).shape  # doctest: +SKIP
        torch.Size([5, 1])
    """

    def __init__(
        self, root: Path, index: Index, blobs: BlobStore, cache: ModuleCache, max_model_bytes: int, parity_rows: int
    ) -> None:
        self.root = root
        self.max_model_bytes = max_model_bytes
        self.parity_rows = parity_rows
        self._index = index
        self._blobs = blobs
        self._cache = cache
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        root: str | Path,
        *,
        max_model_bytes: int = 256 * 2**20,
        cache_size: int = 8,
        parity_rows: int = 32,
    ) -> Registry:
        """Open (creating if needed) the registry at ``root`` and clean up after any crash.

        Args:
            root: The registry directory.
            max_model_bytes: Largest ONNX file accepted (at most 2 GiB - 1, protobuf's limit).
            cache_size: Most converted modules kept in memory (0: none).
            parity_rows: Rows of the parity check run at registration (at least 2).

        Raises:
            ValueError: A setting out of range.
            RegistryUnavailableError: The index cannot be opened (e.g. not an SQLite file).
        """
        if not 0 < max_model_bytes <= MAX_PROTOBUF_BYTES:
            raise ValueError(f"max_model_bytes must be in 1..{MAX_PROTOBUF_BYTES}, got {max_model_bytes}")
        if parity_rows < 2:
            raise ValueError(f"parity_rows must be at least 2 (batching is part of the check), got {parity_rows}")
        path = Path(root).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        blobs = BlobStore(path)
        index = Index(path / "index.sqlite3")
        registry = cls(path, index, blobs, ModuleCache(cache_size), max_model_bytes, parity_rows)
        try:
            registry._clean_up()
        except BaseException:
            index.close()
            raise
        return registry

    def _clean_up(self) -> None:
        removed_temp = self._blobs.clean_temp()
        with self._index.write() as conn:
            referenced = self._index.referenced(conn)
            orphans = [sha for sha in self._blobs.stored() if sha not in referenced]
            for sha in orphans:
                self._blobs.remove(sha)
        missing = [sha for sha in referenced if not self._blobs.path(sha).exists()]
        if removed_temp or orphans:
            log.info(
                "registry clean-up: removed %d temporary files and %d orphan blobs", len(removed_temp), len(orphans)
            )
        for sha in missing:
            log.error("registry %s: blob %s is referenced but missing", self.root, sha)

    def close(self) -> None:
        """Release the index; later calls raise :class:`RegistryUnavailableError`. Loaded modules stay valid."""
        self._closed = True
        self._index.close()

    def check_readable(self) -> None:
        """Raise :class:`RegistryUnavailableError` unless the index file can be opened and read now.

        Uses a fresh read-only connection, so a deleted or replaced index file is noticed.
        """
        self._require_open()
        path = self._index.path
        if not path.is_file():
            raise RegistryUnavailableError(str(self.root), f"{path} is missing")
        try:
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)
            try:
                conn.execute("SELECT COUNT(*) FROM models").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise RegistryUnavailableError(str(self.root), f"{type(exc).__name__}: {exc}") from exc
        if not self._blobs.blob_dir.is_dir():
            raise RegistryUnavailableError(str(self.root), f"{self._blobs.blob_dir} is missing")

    def generation(self) -> int:
        """A number that moves whenever anything changes the index, from this process or another.

        Raises:
            RegistryUnavailableError: The registry is closed or its index cannot be read.
        """
        self._require_open()
        return self._index.generation()

    def _require_open(self) -> None:
        if self._closed:
            raise RegistryUnavailableError(str(self.root), "it is closed")

    # -- registration -------------------------------------------------------------------------------

    def check_name(self, name: str) -> None:
        """Raise :class:`~preimage.registry.errors.InvalidModelNameError` unless ``name`` is a valid model name."""
        check_name(name)

    def begin_upload(self, declared_size: int | None = None, expected_sha256: str | None = None) -> Upload:
        """Start streaming a model's bytes; finish with :meth:`Upload.commit`.

        Args:
            declared_size: Total bytes the caller will send, when known (checked up front and at commit).
            expected_sha256: Hex sha256 the bytes must have, when known.

        Raises:
            ModelTooLargeError: ``declared_size`` is over the limit.
            InvalidArgumentError: A negative size or a malformed sha256.
        """
        self._require_open()
        expected = Upload.check_expectations(declared_size, expected_sha256, self.max_model_bytes)
        path, handle = self._blobs.new_temp()
        return Upload(self, path, handle, self.max_model_bytes, declared_size, expected)

    def register_bytes(
        self,
        name: str,
        data: bytes,
        schema: FeatureSchema | None = None,
        statistics: DataStatistics | None = None,
        source: ModelSource = ModelSource.UPLOAD,
        *,
        default_bounds: tuple[float, float] | None = None,
        training: TrainingReport | None = None,
    ) -> ModelRecord:
        """Register in-memory ONNX bytes; the same path as an upload (see :meth:`Upload.commit`).

        ``training`` is Train's report, stored with the version and shown by ``preimage show``.
        """
        with self.begin_upload(declared_size=len(data)) as upload:
            view = memoryview(data)
            for start in range(0, len(view), _WRITE_CHUNK):
                upload.write(view[start : start + _WRITE_CHUNK])
            return upload.commit(name, schema, statistics, source, default_bounds=default_bounds, training=training)

    def _commit_upload(
        self,
        temp: Path,
        sha256: str,
        size: int,
        name: str,
        schema: FeatureSchema | None,
        statistics: DataStatistics | None,
        source: ModelSource,
        default_bounds: tuple[float, float] | None,
        watched: WatchedFile | None,
        training: TrainingReport | None = None,
    ) -> ModelRecord:
        """Validate a complete, fsynced upload and store it (package-private: :class:`Upload` calls it)."""
        self._require_open()
        check_name(name)
        if not isinstance(source, ModelSource):
            raise InvalidArgumentError(f"source must be a ModelSource, got {source!r}", field="source")
        prepared = prepare_model(
            temp.read_bytes(),
            schema=schema,
            statistics=statistics,
            default_bounds=default_bounds,
            parity_rows=self.parity_rows,
        )
        row = NewModel(
            name,
            sha256,
            size,
            prepared.input_width,
            prepared.output_width,
            prepared.schema,
            prepared.statistics,
            source,
            training,
        )
        with self._index.write() as conn:
            new_blob = self._blobs.place(temp, sha256)
            try:
                pause("commit")
                version = self._index.insert(conn, row)
                if watched is not None:
                    self._index.record_watched(conn, replace(watched, version=version, error=None))
                record = self._index.records(conn, name, version=version)[0]
            except BaseException:
                if new_blob:  # still under the write lock: nothing else can have come to reference it
                    self._blobs.remove(sha256)
                raise
        self._cache.put(sha256, prepared.module)
        log.info("registered %s (sha256 %s, %d bytes, source %s)", record.ref, sha256, size, source.value)
        return record

    # -- queries ----------------------------------------------------------------------------------------

    def get(self, ref: str | ModelRef) -> ModelRecord:
        """The record ``NAME`` (latest), ``NAME:VERSION`` or ``NAME@ALIAS`` names.

        Raises:
            InvalidModelRefError: A malformed reference.
            ModelNotFoundError: Nothing by that name, version or alias.
        """
        parsed = ModelRef.of(ref)
        self._require_open()
        with self._index.read() as conn:
            return self._index.resolve(conn, parsed)

    def list(self, name: str | None = None, all_versions: bool = False) -> _Records:
        """Records sorted by name then version: the latest of each name, or every version.

        Args:
            name: Only this name (an empty list when it has no versions).
            all_versions: Every version instead of the latest of each name.
        """
        if name is not None:
            check_name(name)
        self._require_open()
        with self._index.read() as conn:
            return self._index.records(conn, name, latest_only=not all_versions)

    # -- changes ------------------------------------------------------------------------------------------

    def delete(self, ref: str | ModelRef, all_versions: bool = False) -> _Records:
        """Delete one version (``NAME:VERSION`` or ``NAME@ALIAS``) or, with ``all_versions``, every version of ``NAME``.

        Aliases of deleted versions go with them. A module already loaded stays usable.

        Returns:
            The deleted records, as they were.

        Raises:
            InvalidArgumentError: A bare name without ``all_versions``, or ``all_versions`` with a version or alias.
            ModelNotFoundError: Nothing to delete.
        """
        parsed = ModelRef.of(ref)
        if all_versions and not parsed.bare:
            raise InvalidArgumentError(
                f"all_versions deletes every version of a name; give the bare name {parsed.name!r}, "
                f"not {str(parsed)!r}",
                field="model_ref",
            )
        if not all_versions and parsed.bare:
            raise InvalidArgumentError(
                f"{parsed.name!r} names every version: give {parsed.name}:VERSION or {parsed.name}@ALIAS to delete "
                "one version, or set all_versions to delete them all",
                field="model_ref",
            )
        self._require_open()
        with self._index.write() as conn:
            if all_versions:
                deleted = self._index.records(conn, parsed.name)
                if not deleted:
                    raise ModelNotFoundError(parsed.name)
            else:
                deleted = [self._index.resolve(conn, parsed)]
            self._index.delete(conn, parsed.name, [r.version for r in deleted])
        pause("delete")
        self._remove_unreferenced({r.sha256 for r in deleted})
        log.info("deleted %s", ", ".join(r.ref for r in deleted))
        return deleted

    def _remove_unreferenced(self, candidates: set[str]) -> None:
        # Under the write lock, so a registration of the same bytes cannot slip in between the check and the unlink.
        with self._index.write() as conn:
            orphans = candidates - self._index.referenced(conn, candidates)
            for sha in orphans:
                self._blobs.remove(sha)
        for sha in orphans:
            self._cache.discard(sha)

    def set_alias(self, name: str, alias: str, version: int) -> ModelRecord:
        """Point ``NAME@ALIAS`` at a version, moving it if it pointed elsewhere.

        Raises:
            InvalidModelNameError, InvalidAliasError: Malformed name or alias (an alias is never a number).
            ModelNotFoundError: No such version.
        """
        check_name(name)
        check_alias(alias)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidArgumentError(f"version must be a whole number from 1, got {version!r}", field="version")
        self._require_open()
        with self._index.write() as conn:
            self._index.resolve(conn, ModelRef(name, version=version))
            self._index.set_alias(conn, name, alias, version)
            return self._index.records(conn, name, version=version)[0]

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``NAME@ALIAS``.

        Raises:
            ModelNotFoundError: No such name or alias.
        """
        check_name(name)
        check_alias(alias)
        self._require_open()
        with self._index.write() as conn:
            if not self._index.delete_alias(conn, name, alias):
                self._index.resolve(conn, ModelRef(name, alias=alias))  # raises, naming what is missing

    # -- loading ----------------------------------------------------------------------------------------------

    def load(self, ref_or_record: str | ModelRef | ModelRecord) -> LoadedModel:
        """The frozen torch module of a version, converted on first use and cached by sha256.

        Raises:
            ModelNotFoundError: No such model (or the record's version was deleted and is not cached).
            ModelIntegrityError: The stored blob is missing or damaged.
        """
        record = ref_or_record if isinstance(ref_or_record, ModelRecord) else self.get(ref_or_record)
        module = self._cache.get_or_create(record.sha256, lambda: self._cold_load(record))
        return LoadedModel(record, module, record.schema, record.statistics)

    def _cold_load(self, record: ModelRecord) -> torch.nn.Module:
        self._require_open()
        try:
            data = self._blobs.path(record.sha256).read_bytes()
        except FileNotFoundError:
            self.get(record.ref)  # raises ModelNotFoundError when the version was deleted meanwhile
            raise ModelIntegrityError(record.name, record.version, record.sha256, "its blob file is missing") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != record.sha256:
            raise ModelIntegrityError(record.name, record.version, record.sha256, f"its blob now hashes to {actual}")
        log.info("converting %s (cold load)", record.ref)
        return reload_module(data, record.schema, record.output_width)

    def cached(self) -> builtins.list[str]:
        """sha256 of the modules in the cache, least recently used first (for metrics and tests)."""
        return self._cache.keys()
