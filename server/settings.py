"""Server settings: one place, one docstring per field.

Sources, highest precedence first: command-line flags (``preimage serve --...``),
environment variables (``PREIMAGE_<FIELD>``, e.g. ``PREIMAGE_ADDRESS``), an
optional TOML file (``--config FILE`` or ``PREIMAGE_CONFIG``), then the defaults
below. docs/configuration.md lists every field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings", "default_registry_dir", "device_problem"]

# What obstore's from_url reads (preimage.registry.objects); kept here so settings import nothing heavy.
_BLOB_SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss", "file")


def default_registry_dir() -> Path:
    """``$XDG_DATA_HOME/preimage/registry``, else ``~/.local/share/preimage/registry``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "preimage" / "registry"


def default_concurrent_inverts() -> int:
    """The cores this process may use, at least 2 and at most 8.

    An Invert run keeps a core busy (its Python and its torch kernels alike), so runs beyond
    the cores only take turns on the interpreter lock: on 2 cores, 800 seeded n = 20 calls at
    concurrency 64 ran at 111-122 calls/s with 2 running slots against 68-90 with 8.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 2
    return min(max(cores, 2), 8)


def device_problem(device: str) -> str | None:
    """Why torch cannot run models on ``device`` here, or ``None`` when it can (imports torch)."""
    import torch

    try:
        torch.zeros(1, device=torch.device(device)).sum().item()
    except (RuntimeError, AssertionError, ValueError) as exc:
        return f"device {device!r} is not usable here: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


class Settings(BaseSettings):
    """Everything ``preimage serve`` can be told."""

    model_config = SettingsConfigDict(
        env_prefix="PREIMAGE_", extra="forbid", validate_default=True, use_attribute_docstrings=True
    )

    config: Path | None = None
    """Optional TOML file with any of these settings (lowest precedence above defaults)."""

    address: str = "127.0.0.1:50051"
    """HOST:PORT to listen on; port 0 picks a free port. Loopback by default."""

    registry_dir: Path = Field(default_factory=default_registry_dir)
    """Registry directory (ONNX blobs and the SQLite index); with ``index`` and ``blobs``, only a local cache."""

    index: str | None = None
    """Shared index ``postgresql://USER[:PASS]@HOST:PORT/DB`` for replicas sharing one registry; needs ``blobs``."""

    blobs: str | None = None
    """Shared blob store ``s3://BUCKET/PREFIX`` (also ``gs://``, ``az://``, ``file://``); needs ``index``.
    Endpoint, region and keys come from the standard ``AWS_*`` variables."""

    index_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    """With a shared index: how often the index is polled for other replicas' changes; they are seen within
    twice this (lookups are answered from memory in between)."""

    max_model_bytes: int = Field(default=256 * 2**20, gt=0)
    """Largest ONNX model accepted for registration, in bytes."""

    cache_size: int = Field(default=8, ge=1)
    """Converted torch modules kept in memory (LRU)."""

    max_message_bytes: int = Field(default=64 * 2**20, ge=4 * 2**20)
    """Largest gRPC message received or sent, in bytes."""

    max_invert_count: int = Field(default=10_000_000, ge=1)
    """Largest ``count`` (n) one Invert call may ask for."""

    max_concurrent_inverts: int = Field(default_factory=default_concurrent_inverts, ge=1)
    """Invert runs at once, by default the cores this process may use (2 to 8); more wait in the Invert
    queue (calls served from a shared run do not count)."""

    invert_queue_size: int = Field(default=1024, ge=0)
    """Invert calls that may wait for a running slot (fair FIFO per client and model); beyond it, or when
    the caller's deadline would pass first, RESOURCE_EXHAUSTED with a retry hint."""

    invert_sharing: bool = True
    """Let concurrent unseeded sample-mode Invert calls on one model and request take disjoint slices of one
    shared run (docs/inversion.md); seeded calls always run on their own."""

    invert_shared_max_count: int = Field(default=4096, ge=1)
    """Largest ``count`` an Invert call may have to be served from a shared run."""

    max_concurrent_trains: int = Field(default=2, ge=1)
    """Train streams running at once; more wait in the Train queue."""

    train_queue_size: int = Field(default=16, ge=0)
    """Train calls that may wait for a running slot; beyond it RESOURCE_EXHAUSTED with a retry hint."""

    invert_max_seconds: float = Field(default=120.0, gt=0)
    """Cap on the wall-clock budget of one Invert call."""

    invert_max_passes: int = Field(default=1_000_000, ge=1)
    """Cap on the batched model passes of one Invert call."""

    train_max_seconds: float = Field(default=3600.0, gt=0)
    """Cap on the wall-clock time of one Train call."""

    train_min_rows: int = Field(default=20, ge=2)
    """Fewest table rows Train accepts."""

    switch_interval_ms: float = Field(default=0.5, gt=0, le=100)
    """How long one thread of ``preimage serve`` may hold Python's interpreter lock while another waits for
    it (``sys.setswitchinterval``; Python's default is 5 ms). The event loop is busy under load, and an engine
    worker that wants the lock back after a torch kernel would otherwise wait up to 5 ms each time: on 2 cores,
    unseeded n = 20 Invert calls at concurrency 64 ran 10-27 % faster at 0.5-1 ms, in alternating A/B pairs.
    Set by the ``serve`` process only (an embedding program keeps its own)."""

    torch_threads: int = Field(default=1, ge=1)
    """Threads torch uses for one operation. One by default: a server runs many calls at once on its
    engine workers, and an intra-op team per operation only makes them wait on each other (on a small
    machine a busy core stalls every parallel operation, several times over). Raise it for a few
    large calls on an otherwise idle machine."""

    device: str = Field(default="cpu", pattern=r"^(cpu|cuda|mps|xpu)(:[0-9]+)?$")
    """Torch device models run on for Predict and Invert (``cpu``, ``cuda``, ``cuda:1``, ...); bookkeeping
    stays on the CPU. A device torch cannot use stops the server at start-up."""

    predict_coalescing: bool = True
    """Coalesce concurrent Predict calls on one model into shared forward passes, for models whose outputs
    a one-off check finds bit-identical alone and coalesced."""

    predict_batch_delay_ms: float = Field(default=0.0, ge=0, le=1000)
    """Milliseconds a Predict pass waits for more calls to join it (0: only calls that arrived while the
    previous pass ran)."""

    predict_max_batch_rows: int = Field(default=65536, ge=1)
    """Most rows in one coalesced Predict pass; a larger call runs on its own."""

    predict_inline_max_ms: float = Field(default=2.0, ge=0, le=100)
    """A Predict call runs on the server's event loop, skipping the hop to a worker thread (two thread
    wake-ups: a few hundred microseconds on a small busy machine, more than a small pass), when it is the
    only Predict in flight, no pass of its model is running or queued (it joins that instead), and passes
    of its size on that model have taken at most this many milliseconds on average (a 1-row call on a
    small network: about 0.1 ms; 4096 rows of the example model: about 1.5 ms). Other calls wait for the
    event loop that long at most. Only with the embedded registry index and ``predict_batch_delay_ms`` 0;
    0 turns it off."""

    engine_workers: int = Field(default=16, ge=1)
    """Worker threads running engine and registry work."""

    watch_dir: Path | None = None
    """Folder polled for ``NAME/*.onnx`` to register (Triton's poll mode)."""

    watch_interval_seconds: float = Field(default=2.0, gt=0)
    """Seconds between scans of ``watch_dir``."""

    metrics_address: str | None = None
    """HOST:PORT of the Prometheus endpoint; off when unset."""

    log_format: Literal["plain", "json"] = "plain"
    """Log line format."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level."""

    tls_cert: Path | None = None
    """PEM server certificate chain; enables TLS together with ``tls_key``."""

    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""

    tls_client_ca: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""

    admin_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Bearer tokens allowed every RPC. With any token configured, calls need one."""

    read_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Bearer tokens allowed read-only RPCs (Predict, Invert, list, get)."""

    reflection: bool = False
    """Serve gRPC server reflection (grpcurl, Postman)."""

    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    """On SIGTERM/SIGINT, how long in-flight calls may run before they are cancelled."""

    @field_validator("admin_tokens", "read_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        # Environment variables carry lists as comma-separated text (or a JSON list).
        if isinstance(value, str) and value.lstrip().startswith("["):
            import json

            return json.loads(value)
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("index")
    @classmethod
    def _check_index(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"index must be a postgresql://USER[:PASS]@HOST:PORT/DB URL, got {value.split(':')[0]!r}")
        return value

    @field_validator("blobs")
    @classmethod
    def _check_blobs(cls, value: str | None) -> str | None:
        scheme, sep, rest = (value or "").partition("://")
        if value is not None and (not sep or not rest or scheme not in _BLOB_SCHEMES):
            raise ValueError(f"blobs must be a URL like s3://BUCKET/PREFIX (schemes: {', '.join(_BLOB_SCHEMES)})")
        return value

    @model_validator(mode="after")
    def _check_shared(self) -> Settings:
        if (self.index is None) != (self.blobs is None):
            raise ValueError(
                "index and blobs go together: replicas share the registry through both a PostgreSQL index "
                "(--index postgresql://...) and an object store (--blobs s3://...)"
            )
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = _config_path(init_settings)
        if config_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_path))
        return tuple(sources)

    @property
    def auth_enabled(self) -> bool:
        """Whether calls must carry a bearer token."""
        return bool(self.admin_tokens or self.read_tokens)

    @property
    def tls_enabled(self) -> bool:
        """Whether the server listens with TLS."""
        return self.tls_cert is not None


def _config_path(init_settings: PydanticBaseSettingsSource) -> Path | None:
    explicit = init_settings().get("config")
    if explicit is None:
        explicit = os.environ.get("PREIMAGE_CONFIG")
    if explicit is None:
        return None
    path = Path(explicit)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    return path
