"""The registry: ONNX blobs and an SQLite index under one directory, and the module cache.

Layout of a registry root (the embedded default)::

    index.sqlite3          the index (WAL mode; -wal and -shm files beside it)
    blobs/<sha256>.onnx    each distinct model file once, named by its content
    tmp/                   uploads in progress

Shared by replicas instead, the index lives in PostgreSQL
(:mod:`preimage.registry.postgres`) and the blobs in an object store
(:mod:`preimage.registry.objects`); the root then holds only the local blob
cache and spooled uploads (``blobs/``, ``tmp/``). Everything below holds for
both: the same transactions, under one write lock shared by every replica.

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
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from preimage.errors import InvalidArgumentError
from preimage.registry.blobs import Blobs, BlobStore
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
        self, root: Path, index: Index, blobs: Blobs, cache: ModuleCache, max_model_bytes: int, parity_rows: int
    ) -> None:
        self.root = root
        self.max_model_bytes = max_model_bytes
        self.parity_rows = parity_rows
        self._index = index
        self._blobs = blobs
        self._cache = cache
        self._closed = False
        self._seen_generation: int | None = None
        self._refresh_lock = threading.Lock()
        # Shared registries only: reference -> record, valid while refresh() keeps succeeding.
        self._lookup_window: float | None = None
        self._lookups: dict[ModelRef, ModelRecord] = {}
        self._lookups_valid_until = 0.0
        self._lookup_epoch = 0
        self._lookup_lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        root: str | Path,
        *,
        max_model_bytes: int = 256 * 2**20,
        cache_size: int = 8,
        parity_rows: int = 32,
        index_url: str | None = None,
        blobs_url: str | None = None,
    ) -> Registry:
        """Open (creating if needed) the registry at ``root`` and clean up after any crash.

        Args:
            root: The registry directory; with ``index_url`` and ``blobs_url``, only a local cache.
            max_model_bytes: Largest ONNX file accepted (at most 2 GiB - 1, protobuf's limit).
            cache_size: Most converted modules kept in memory (0: none).
            parity_rows: Rows of the parity check run at registration (at least 2).
            index_url: ``postgresql://USER[:PASS]@HOST:PORT/DB``: a shared index (needs ``blobs_url``).
            blobs_url: ``s3://BUCKET/PREFIX`` (or ``gs://``, ``az://``, ``file://``): shared blobs
                (needs ``index_url``).

        Raises:
            ValueError: A setting out of range, or only one of ``index_url`` and ``blobs_url``.
            RegistryUnavailableError: The index cannot be opened (e.g. not an SQLite file, or unreachable).
            BlobStoreUnavailableError: The object store cannot be reached.
        """
        if not 0 < max_model_bytes <= MAX_PROTOBUF_BYTES:
            raise ValueError(f"max_model_bytes must be in 1..{MAX_PROTOBUF_BYTES}, got {max_model_bytes}")
        if parity_rows < 2:
            raise ValueError(f"parity_rows must be at least 2 (batching is part of the check), got {parity_rows}")
        if (index_url is None) != (blobs_url is None):
            raise ValueError(
                "a shared registry needs both index_url (postgresql://...) and blobs_url (s3://...): "
                "replicas sharing one of them but not the other would not see each other's models"
            )
        path = Path(root).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        local = BlobStore(path)
        index: Index
        blobs: Blobs
        if index_url is not None and blobs_url is not None:
            from preimage.registry.objects import ObjectBlobStore
            from preimage.registry.postgres import PostgresIndex

            shared = PostgresIndex(index_url)
            try:
                blobs = ObjectBlobStore(blobs_url, local, shared.owner, shared.owner_alive)
            except BaseException:
                shared.close()
                raise
            index = shared
        else:
            index, blobs = Index(path / "index.sqlite3"), local
        registry = cls(path, index, blobs, ModuleCache(cache_size), max_model_bytes, parity_rows)
        try:
            registry._clean_up()
        except BaseException:
            index.close()
            raise
        return registry

    def _clean_up(self) -> None:
        removed_temp = self._blobs.clean_temp()
        # Under the write lock, which every placement holds too: no blob is between placement and its row.
        with self._index.write() as conn:
            referenced = self._index.referenced(conn)
            stored = set(self._blobs.stored())
            orphans = sorted(stored - referenced)
            for sha in orphans:
                self._blobs.remove(sha)
        missing = sorted(referenced - stored)
        pruned = self._blobs.prune_cache(referenced)
        if removed_temp or orphans or pruned:
            log.info(
                "registry clean-up: removed %d temporary files, %d orphan blobs and %d stale cached blobs",
                len(removed_temp),
                len(orphans),
                pruned,
            )
        for sha in missing:
            log.error("registry %s: blob %s is referenced but missing", self._blobs.where, sha)

    def close(self) -> None:
        """Release the index; later calls raise :class:`RegistryUnavailableError`. Loaded modules stay valid."""
        self._closed = True
        self._index.close()

    def check_readable(self) -> None:
        """Raise unless the index and the blob store can be read now.

        Uses a fresh connection to the index, so a deleted or replaced index file, or a database
        that went away, is noticed.

        Raises:
            RegistryUnavailableError: The index cannot be read.
            BlobStoreUnavailableError: The shared object store does not answer.
        """
        self._require_open()
        self._index.check()
        self._blobs.check()

    @property
    def description(self) -> str:
        """Where the index and the blobs are (passwords left out), for logs."""
        if self._blobs.where == str(self.root):
            return str(self.root)
        return f"index {self._index.where}, blobs {self._blobs.where} (local cache {self.root})"

    def refresh(self) -> bool:
        """Catch up with changes other processes made; servers on a shared index call it every ``poll`` seconds.

        Reads the generation counter (one small query). When it moved, drops every cached
        reference lookup and the converted modules of blobs no row references any more. Each
        successful call also keeps the lookup cache of a shared registry valid for
        ``lookup_window`` seconds more (counted from the start of the call); when calls stop
        succeeding (the index is unreachable) lookups go to the index again, so a replica never
        answers from lookups older than that.

        Returns:
            Whether the index had changed since the last call.
        """
        self._require_open()
        with self._refresh_lock:
            started = time.monotonic()
            generation = self._index.generation()
            changed = generation != self._seen_generation
            if changed:
                first = self._seen_generation is None
                self._seen_generation = generation
                self._forget_lookups()
                cached = set(self._cache.keys())
                if cached and not first:
                    with self._index.read() as conn:
                        gone = cached - self._index.referenced(conn, cached)
                    for sha in gone:
                        self._cache.discard(sha)
                changed = not first
            if self._lookup_window is not None:
                with self._lookup_lock:
                    self._lookups_valid_until = started + self._lookup_window
            return changed

    @property
    def local_writes(self) -> int:
        """A number that moves (after the commit) whenever this process changes what a reference
        resolves to: a registration, an alias set or deleted, a deletion. Reading it costs no query."""
        return self._lookup_epoch

    def generation(self) -> int:
        """A number that moves whenever anything changes the index, from this process or another.

        Raises:
            RegistryUnavailableError: The registry is closed or its index cannot be read.
        """
        self._require_open()
        return self._index.generation()

    def _forget_lookups(self) -> None:
        with self._lookup_lock:
            self._lookup_epoch += 1
            self._lookups.clear()

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
        staged = self._blobs.stage(temp)
        try:
            pause("stage")
            with self._index.write() as conn:
                new_blob = self._blobs.place(temp, staged, sha256)
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
        except BaseException:
            if staged != str(temp):
                self._blobs.discard(staged)
            raise
        self._forget_lookups()
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
        with self._lookup_lock:
            fresh = time.monotonic() < self._lookups_valid_until
            hit = self._lookups.get(parsed) if fresh else None
            epoch = self._lookup_epoch
        if hit is not None:
            return hit
        with self._index.read() as conn:
            record = self._index.resolve(conn, parsed)
        if fresh:
            with self._lookup_lock:
                if epoch == self._lookup_epoch:  # no change was noticed while we read: still current
                    self._lookups[parsed] = record
        return record

    @property
    def caches_lookups(self) -> bool:
        """Whether :meth:`get` answers from memory between refreshes (:meth:`cache_lookups` was called)."""
        return self._lookup_window is not None

    def cache_lookups(self, window_seconds: float) -> None:
        """Answer :meth:`get` from memory for up to ``window_seconds`` after each successful :meth:`refresh`.

        For a shared index, where a lookup is a database round trip: a server calls
        :meth:`refresh` every ``window_seconds / 2``, so a change made by another replica is seen
        within ``window_seconds``; changes made through this registry are seen at once.
        """
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds}")
        self._lookup_window = window_seconds

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
        self._forget_lookups()
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
            record = self._index.records(conn, name, version=version)[0]
        self._forget_lookups()
        return record

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
        self._forget_lookups()

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
            data = self._blobs.read(record.sha256)
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
