"""Content-addressed blob files: ``blobs/<sha256>.onnx``, written through ``tmp/``.

:class:`BlobStore` is the embedded default. :class:`~preimage.registry.objects.ObjectBlobStore`
keeps blobs in a shared object store (S3, GCS, Azure) with the same methods, and
uses a :class:`BlobStore` as its local cache.

A blob appears only by renaming a complete, fsynced temporary file (and the
directory is fsynced after), so a blob file is never partial. Temporary upload
files hold an exclusive ``flock`` while they are written, so start-up clean-up in
one process never removes another live process's upload.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from preimage.registry.errors import RegistryUnavailableError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: clean-up then assumes no other process uploads
    fcntl = None  # type: ignore[assignment]

__all__ = ["BlobStore", "Blobs", "fsync_directory"]

_BLOB = re.compile(r"^[0-9a-f]{64}\.onnx$")


def fsync_directory(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Blobs(Protocol):
    """What the registry needs of a blob store.

    A registration spools the bytes to :meth:`new_temp`, :meth:`stage` s them outside the
    index's write lock (the slow part, for a remote store), then :meth:`place` s them
    under it, in the transaction that inserts the row.
    """

    where: str
    """The store, as it is named in messages."""

    def new_temp(self) -> tuple[Path, BinaryIO]: ...

    def stage(self, temp: Path) -> str: ...

    def discard(self, staged: str) -> None: ...

    def place(self, temp: Path, staged: str, sha256: str) -> bool: ...

    def remove(self, sha256: str) -> None: ...

    def read(self, sha256: str) -> bytes: ...

    def stored(self) -> Iterator[str]: ...

    def clean_temp(self) -> list[str]: ...

    def check(self) -> None: ...

    def prune_cache(self, referenced: set[str]) -> int: ...


class BlobStore:
    """The ``blobs/`` and ``tmp/`` folders of a registry root."""

    def __init__(self, root: Path) -> None:
        self.where = str(root)
        self.blob_dir = root / "blobs"
        self.tmp_dir = root / "tmp"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the blob with this sha256 lives."""
        return self.blob_dir / f"{sha256}.onnx"

    def new_temp(self) -> tuple[Path, BinaryIO]:
        """A fresh temporary upload file, open for writing and locked against clean-up."""
        try:
            fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.tmp_dir)
        except FileNotFoundError:  # the registry's folder was removed under the running server
            raise RegistryUnavailableError(self.where, f"{self.tmp_dir} is missing") from None
        handle = os.fdopen(fd, "wb")
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return Path(name), handle

    def stage(self, temp: Path) -> str:
        """Nothing to do for a local folder: the temporary file is already where :meth:`place` takes it."""
        return str(temp)

    def discard(self, staged: str) -> None:
        """Nothing to do: the upload removes its own temporary file."""

    def place(self, temp: Path, staged: str, sha256: str) -> bool:
        """Move a complete, fsynced temporary file into place as the blob ``sha256``.

        The caller holds the index's write lock, so no deletion can remove the blob
        between this call and the row that references it.

        Returns:
            True if the blob is new; False if identical bytes were already stored (the temp file is dropped).
        """
        target = self.path(sha256)
        if target.exists():
            temp.unlink(missing_ok=True)
            return False
        os.replace(temp, target)
        fsync_directory(self.blob_dir)
        return True

    def remove(self, sha256: str) -> None:
        """Delete a blob (the caller has checked nothing references it) and make that durable."""
        self.path(sha256).unlink(missing_ok=True)
        fsync_directory(self.blob_dir)

    def read(self, sha256: str) -> bytes:
        """The blob's bytes. Raises ``FileNotFoundError`` when it is not stored."""
        return self.path(sha256).read_bytes()

    def check(self) -> None:
        """Raise :class:`RegistryUnavailableError` unless the blob folder is there."""
        if not self.blob_dir.is_dir():
            raise RegistryUnavailableError(self.where, f"{self.blob_dir} is missing")

    def prune_cache(self, referenced: set[str]) -> int:
        """Nothing to do: this folder is the store, not a cache of one (clean-up removes its orphans)."""
        return 0

    def stored(self) -> Iterator[str]:
        """The sha256 of every blob file present."""
        for entry in self.blob_dir.iterdir():
            if _BLOB.match(entry.name):
                yield entry.name[: -len(".onnx")]

    def clean_temp(self) -> list[str]:
        """Remove temporary files no live upload holds (left by a crash). Returns what was removed."""
        removed = [str(entry) for entry in self.tmp_dir.iterdir() if entry.is_file() and _remove_unlocked(entry)]
        if removed:
            fsync_directory(self.tmp_dir)
        return removed


def _remove_unlocked(path: Path) -> bool:
    """Unlink ``path`` unless a live upload holds its lock; unlinking under our own lock means no
    upload can take the file over in between. Without ``fcntl`` every file counts as abandoned."""
    try:
        with open(path, "rb") as handle:
            if fcntl is not None:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
            path.unlink(missing_ok=True)
            return True
    except FileNotFoundError:
        return False
