"""What the servicers share: the registry once it is open, worker threads, limits, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from preimage.errors import ResourceExhaustedError, UnavailableError
from preimage.server.metrics import Metrics
from preimage.server.settings import Settings

if TYPE_CHECKING:
    import numpy as np

    from preimage.registry import LoadedModel, ModelRecord, Registry

__all__ = ["Runtime", "Slots"]

T = TypeVar("T")


class Slots:
    """A limit on concurrent streams that refuses at once instead of queueing.

    Only touched from the event loop thread, so a plain counter is enough.
    """

    def __init__(self, what: str, limit: int, retry_after_seconds: float) -> None:
        self.what = what
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds
        self.active = 0

    @contextlib.contextmanager
    def acquire(self) -> Iterator[None]:
        """Hold one slot; raises :class:`ResourceExhaustedError` when all are taken."""
        if self.active >= self.limit:
            raise ResourceExhaustedError(
                f"{self.active} {self.what} streams are already running, the server's limit; "
                f"retry in about {self.retry_after_seconds:g} s",
                retry_after_seconds=self.retry_after_seconds,
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


class Runtime:
    """Settings, the registry (once open), the worker pool, limits and metrics."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=settings.engine_workers, thread_name_prefix="preimage-worker")
        self.invert_slots = Slots("Invert", settings.max_concurrent_inverts, retry_after_seconds=1.0)
        self.train_slots = Slots("Train", settings.max_concurrent_trains, retry_after_seconds=5.0)
        self._registry: Registry | None = None

    def set_registry(self, registry: Registry | None) -> None:
        """Publish the opened registry (or withdraw it)."""
        self._registry = registry

    def registry(self) -> Registry:
        """The open registry; :class:`UnavailableError` while the server is starting."""
        if self._registry is None:
            raise UnavailableError("the server is starting: the registry is not open yet; retry shortly")
        return self._registry

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` in a worker thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def load(self, ref: str) -> LoadedModel:
        """Resolve ``ref`` and load its converted module in a worker thread, counting cache hits."""
        registry = self.registry()

        def load() -> LoadedModel:
            record = registry.get(ref)
            hit = record.sha256 in registry.cached()
            loaded = registry.load(record)
            self.metrics.model_loads.labels("hit" if hit else "miss").inc()
            self.metrics.models_loaded.set(len(registry.cached()))
            return loaded

        return await self.run(load)

    async def predict(self, ref: str, X: np.ndarray) -> tuple[ModelRecord, np.ndarray]:
        """The one forward path every protocol uses (preimage's Predict, the Open Inference Protocol).

        Args:
            ref: Model reference (``NAME``, ``NAME:V``, ``NAME@ALIAS``).
            X: ``n x d`` input rows.

        Returns:
            The resolved record and the ``n x m`` float32 outputs.
        """
        from preimage.server.engine import predict

        loaded = await self.load(ref)
        record = loaded.record
        outputs = await self.run(predict, loaded.module, X, width=record.input_width)
        self.metrics.predict_rows.inc(X.shape[0])
        return record, outputs
