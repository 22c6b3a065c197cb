"""A watched model folder, polled like Triton's ``--model-control-mode=poll``.

Layout: ``DIR/NAME/*.onnx``, with an optional ``DIR/NAME/schema.json`` for every
file of that folder. Each new or changed file becomes the next version of
``NAME`` (source ``watch``); in one scan, files are taken oldest first, so the
newest file ends up the latest version. A version is validated completely and
then appears in one transaction, so requests for ``NAME`` see the old latest
until the new one is ready, never a gap.

What was handled is kept in the index (path, size and mtime, sha256 of the file
and of its ``schema.json``), in the same transaction as the registration, so a
restart registers nothing twice. A refused file is logged, remembered with its
reason, and not retried until its content (or its ``schema.json``) changes. A
half-copied file is simply refused and retried once the copy completes and its
content changes; copying into place with a rename avoids even that. Removing a
file deletes nothing: use ``delete`` for that.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from preimage.errors import PreimageError
from preimage.registry.errors import ModelTooLargeError
from preimage.registry.index import WatchedFile
from preimage.registry.records import ModelRecord, ModelSource
from preimage.registry.refs import check_name
from preimage.registry.schema import FeatureSchema
from preimage.registry.store import Registry
from preimage.registry.upload import Upload

__all__ = ["SCHEMA_FILE", "FolderWatcher", "ScanResult"]

log = logging.getLogger(__name__)

SCHEMA_FILE = "schema.json"
"""Name of the optional schema file beside a folder's ONNX files."""
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class ScanResult:
    """What one scan did.

    Attributes:
        registered: New versions, in registration order.
        refused: ``(path, reason)`` of files refused in this scan.
    """

    registered: tuple[ModelRecord, ...]
    refused: tuple[tuple[Path, str], ...]


class FolderWatcher:
    """Registers models dropped into ``folder``; poll with :meth:`scan_once` or :meth:`start` a thread.

    Args:
        registry: Where models are registered.
        folder: The watched directory (it may appear later; a missing folder scans as empty).
        interval_seconds: Pause between scans of the background thread.
    """

    def __init__(self, registry: Registry, folder: str | Path, interval_seconds: float = 2.0) -> None:
        if not interval_seconds > 0:
            raise ValueError(f"interval_seconds must be positive, got {interval_seconds}")
        self.registry = registry
        self.folder = Path(folder).expanduser().resolve()
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._scan_lock = threading.Lock()
        self._warned: set[str] = set()

    # -- background thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Scan now and then every ``interval_seconds`` in a daemon thread, until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"preimage-watch:{self.folder.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the thread after the file it is on, waiting up to ``timeout`` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_once()
            except Exception:  # keep watching: the next scan may succeed (e.g. the index is back)
                log.exception("scan of watched folder %s failed", self.folder)
            self._stop.wait(self.interval_seconds)

    # -- one scan ---------------------------------------------------------------------------------------

    def scan_once(self) -> ScanResult:
        """Register every new or changed file once; thread-safe (concurrent scans run one at a time)."""
        with self._scan_lock:
            registered: list[ModelRecord] = []
            refused: list[tuple[Path, str]] = []
            seen: set[str] = set()
            for folder in self._model_folders():
                for path in self._model_files(folder):
                    if self._stop.is_set() and self._thread is not None:
                        break
                    seen.add(str(path))
                    outcome = self._handle(folder.name, path, folder / SCHEMA_FILE)
                    if isinstance(outcome, ModelRecord):
                        registered.append(outcome)
                    elif outcome is not None:
                        refused.append((path, outcome))
            self._forget_missing(seen)
            return ScanResult(tuple(registered), tuple(refused))

    def _model_folders(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        folders = []
        for entry in sorted(self.folder.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            try:
                check_name(entry.name)
            except PreimageError as exc:
                self._warn_once(str(entry), "skipping watched folder %s: %s", entry, exc)
                continue
            folders.append(entry)
        return folders

    @staticmethod
    def _model_files(folder: Path) -> list[Path]:
        files = []
        for entry in folder.iterdir():
            if entry.suffix == ".onnx" and not entry.name.startswith(".") and entry.is_file():
                try:
                    files.append((entry.stat().st_mtime_ns, entry.name, entry))
                except FileNotFoundError:
                    continue
        return [path for _, _, path in sorted(files)]

    def _handle(self, name: str, path: Path, schema_path: Path) -> ModelRecord | str | None:
        """Register one file if new or changed: its record, the reason it was refused, or ``None`` (unchanged)."""
        try:
            stat = _stat_key(path, schema_path)
        except FileNotFoundError:
            return None
        index = self.registry._index
        with index.read() as conn:
            known = index.watched(conn, str(path))
        if known is not None and known.stat == stat:
            return None
        try:
            schema_bytes = schema_path.read_bytes() if schema_path.is_file() else b""
            size = path.stat().st_size
            if size > self.registry.max_model_bytes:
                raise ModelTooLargeError(size, self.registry.max_model_bytes)
            digest, upload = self._read(path)
        except FileNotFoundError:
            return None
        except (OSError, PreimageError) as exc:
            return self._refuse(name, path, stat, _fingerprint(b"", b""), str(exc))
        fingerprint = f"{digest}:{hashlib.sha256(schema_bytes).hexdigest()}"
        if known is not None and known.fingerprint == fingerprint:
            upload.abort()  # touched, not changed
            with index.write() as conn:
                index.record_watched(conn, WatchedFile(str(path), stat, fingerprint, name, known.version, known.error))
            return None
        entry = WatchedFile(str(path), stat, fingerprint, name, None, None)
        try:
            schema = FeatureSchema.from_json(schema_bytes) if schema_bytes else None
            record = upload._commit(name, schema, None, ModelSource.WATCH, None, entry)
        except PreimageError as exc:
            upload.abort()
            return self._refuse(name, path, stat, fingerprint, str(exc))
        log.info("watched folder: registered %s from %s", record.ref, path)
        return record

    def _read(self, path: Path) -> tuple[str, Upload]:
        """Stream a file into an upload; its sha256 and the upload (not yet committed)."""
        upload = self.registry.begin_upload()
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(_READ_CHUNK):
                    digest.update(chunk)
                    upload.write(chunk)
        except BaseException:
            upload.abort()
            raise
        return digest.hexdigest(), upload

    def _refuse(self, name: str, path: Path, stat: str, fingerprint: str, reason: str) -> str:
        log.warning("watched folder: refused %s (not retried until it changes): %s", path, reason)
        index = self.registry._index
        with index.write() as conn:
            index.record_watched(conn, WatchedFile(str(path), stat, fingerprint, name, None, reason))
        return reason

    def _forget_missing(self, seen: set[str]) -> None:
        index = self.registry._index
        with index.read() as conn:
            gone = [p for p in index.watched_under(conn, str(self.folder)) if p not in seen]
        if gone and not self._stop.is_set():
            with index.write() as conn:
                index.forget_watched(conn, gone)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)


def _stat_key(path: Path, schema_path: Path) -> str:
    stat = path.stat()
    try:
        schema = schema_path.stat()
        schema_key = f"{schema.st_size}:{schema.st_mtime_ns}"
    except FileNotFoundError:
        schema_key = "-"
    return f"{stat.st_size}:{stat.st_mtime_ns}:{schema_key}"


def _fingerprint(onnx_bytes: bytes, schema_bytes: bytes) -> str:
    return f"{hashlib.sha256(onnx_bytes).hexdigest()}:{hashlib.sha256(schema_bytes).hexdigest()}"
