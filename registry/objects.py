"""Blobs in a shared object store (``--blobs s3://BUCKET/PREFIX``, also ``gs://``, ``az://``, ``file://``).

Layout under the store's prefix::

    blobs/<sha256>.onnx          each distinct model file once, named by its content
    tmp/<owner>/<uuid>.part      uploads staged by the process ``owner``, not yet placed

Built on obstore (the Rust ``object_store`` crate), which reads the standard
``AWS_*`` variables for S3 (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``), and their
counterparts for GCS and Azure.

A registration uploads its bytes to a temporary key first, outside the index's
write lock (:meth:`ObjectBlobStore.stage`); under the lock, in the transaction
that inserts the row, the temporary object is copied to its content address and
dropped (:meth:`ObjectBlobStore.place`). So an object under ``blobs/`` is always
complete, and a replica killed mid-upload leaves only a ``tmp/`` object, which
clean-up removes once its owner's lock in the index is free (the owner is dead).

Blobs read are kept in a local cache (the registry directory's ``blobs/``):
content-addressed, so a cached file is valid for as long as anyone references its
sha256, and it is checked against it whenever read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import obstore
from obstore.exceptions import BaseError
from obstore.exceptions import NotFoundError as ObjectNotFoundError
from obstore.store import from_url

from preimage.registry.blobs import BlobStore
from preimage.registry.errors import BlobStoreUnavailableError

__all__ = ["ObjectBlobStore"]

log = logging.getLogger(__name__)

_BLOBS = "blobs/"
_TMP = "tmp/"
# Fail within seconds, not obstore's default of minutes of retries: a request waits on it.
_RETRY = {
    "max_retries": 2,
    "retry_timeout": timedelta(seconds=10),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1), "base": 2},
}
_CLIENT = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(seconds=300)}


class ObjectBlobStore:
    """Content-addressed blobs in an object store, with a local cache.

    Args:
        url: ``s3://BUCKET/PREFIX`` (or ``gs://``, ``az://``, ``file://``).
        cache: The local blob folder used as cache and for spooling uploads.
        owner: This process's owner id (names its temporary objects).
        owner_alive: Whether another owner id's process still runs (the index knows).
    """

    def __init__(self, url: str, cache: BlobStore, owner: str, owner_alive: Callable[[str], bool]) -> None:
        self.where = url
        self.cache = cache
        self._owner = owner
        self._owner_alive = owner_alive
        # Passing client options replaces those obstore reads from the environment, so carry AWS_ALLOW_HTTP over.
        client = {**_CLIENT, "allow_http": os.environ.get("AWS_ALLOW_HTTP", "").strip().lower() in ("1", "true")}
        with self._guard():
            self._store: Any = from_url(url, client_options=client, retry_config=_RETRY)  # type: ignore[call-overload]

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (BaseError, OSError) as exc:  # obstore raises the builtin FileNotFoundError for a missing object
            raise BlobStoreUnavailableError(self.where, _describe(exc)) from exc

    # -- writing -------------------------------------------------------------------------------------

    def new_temp(self) -> tuple[Path, BinaryIO]:
        """A local spool file for an upload (in the cache's ``tmp/``), locked against clean-up."""
        return self.cache.new_temp()

    def stage(self, temp: Path) -> str:
        """Upload a complete local file to a fresh temporary key of this owner; the key."""
        key = f"{_TMP}{self._owner}/{uuid.uuid4().hex}.part"
        with self._guard():
            obstore.put(self._store, key, temp)
        return key

    def discard(self, staged: str) -> None:
        """Drop a staged object that will not be placed (best effort: clean-up catches what this misses)."""
        try:
            obstore.delete(self._store, staged)
        except BaseError as exc:
            log.warning("could not remove temporary object %s from %s: %s", staged, self.where, _describe(exc))

    def place(self, temp: Path, staged: str, sha256: str) -> bool:
        """Copy a staged object to its content address (under the index's write lock) and cache it locally.

        Returns:
            True if the blob is new; False if identical bytes were already stored.
        """
        key = _key(sha256)
        with self._guard():
            new = not self._exists(key)
            if new:
                obstore.copy(self._store, staged, key)
            obstore.delete(self._store, staged)
        self.cache.place(temp, str(temp), sha256)
        return new

    def remove(self, sha256: str) -> None:
        """Delete a blob (nothing references it) from the store and the local cache."""
        with self._guard():
            obstore.delete(self._store, _key(sha256))
        self.cache.remove(sha256)

    # -- reading -------------------------------------------------------------------------------------

    def read(self, sha256: str) -> bytes:
        """The blob's bytes, from the local cache or else fetched (and then cached).

        Raises:
            FileNotFoundError: The store has no such blob.
            BlobStoreUnavailableError: The store cannot be read.
        """
        try:
            cached = self.cache.read(sha256)
            if hashlib.sha256(cached).hexdigest() == sha256:
                return cached
            log.warning("cached blob %s in %s is damaged; fetching it again", sha256, self.cache.where)
        except FileNotFoundError:
            pass
        with self._guard():
            data: bytes | None
            try:
                data = bytes(obstore.get(self._store, _key(sha256)).bytes())
            except (FileNotFoundError, ObjectNotFoundError):
                data = None
        if data is None:
            raise FileNotFoundError(f"{self.where}/{_key(sha256)}")
        if hashlib.sha256(data).hexdigest() == sha256:
            self._cache_bytes(data, sha256)
        return data

    def _cache_bytes(self, data: bytes, sha256: str) -> None:
        temp, handle = self.cache.new_temp()
        try:
            with handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self.cache.place(temp, str(temp), sha256)
        except OSError as exc:  # a full or read-only cache disk costs speed, not correctness
            log.warning("could not cache blob %s in %s: %s", sha256, self.cache.where, exc)
            temp.unlink(missing_ok=True)

    def _exists(self, key: str) -> bool:
        try:
            obstore.head(self._store, key)
        except (FileNotFoundError, ObjectNotFoundError):
            return False
        return True

    def stored(self) -> Iterator[str]:
        """The sha256 of every blob in the store."""
        with self._guard():
            for batch in obstore.list(self._store, _BLOBS, chunk_size=1000):
                for meta in batch:
                    name = str(meta["path"]).rpartition("/")[2]
                    if len(name) == 64 + len(".onnx") and name.endswith(".onnx"):
                        yield name[:64]

    def check(self) -> None:
        """Check the local cache folder only.

        Health does not depend on the object store: a replica keeps serving every model it
        has cached through an outage of the store, and requests that need the store get
        UNAVAILABLE naming it (:class:`BlobStoreUnavailableError`).
        """
        self.cache.check()

    # -- clean-up ------------------------------------------------------------------------------------

    def clean_temp(self) -> list[str]:
        """Remove local spool files and staged objects of owners that are no longer alive; what was removed."""
        removed = self.cache.clean_temp()
        verdicts: dict[str, bool] = {}
        with self._guard():
            for batch in obstore.list(self._store, _TMP, chunk_size=1000):
                for meta in batch:
                    path = str(meta["path"])
                    owner = path[len(_TMP) :].partition("/")[0]
                    if owner not in verdicts:
                        verdicts[owner] = self._owner_alive(owner)
                    if not verdicts[owner]:
                        obstore.delete(self._store, path)
                        removed.append(f"{self.where}/{path}")
        return removed

    def prune_cache(self, referenced: set[str]) -> int:
        """Remove locally cached blobs no row references any more; how many."""
        stale = [sha for sha in self.cache.stored() if sha not in referenced]
        for sha in stale:
            self.cache.remove(sha)
        return len(stale)


def _key(sha256: str) -> str:
    return f"{_BLOBS}{sha256}.onnx"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}" if text else type(exc).__name__
