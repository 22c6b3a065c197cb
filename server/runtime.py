"""What the servicers share: the registry once it is open, worker threads, limits, metrics."""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from preimage.errors import UnavailableError
from preimage.server.admission import Admission
from preimage.server.metrics import Metrics
from preimage.server.settings import Settings
from preimage.server.sharing import SharedRuns
from preimage.server.warm import WarmModels

if TYPE_CHECKING:
    import numpy as np

    from preimage.registry import LoadedModel, ModelRecord, Registry
    from preimage.server.engine import InputSpace
    from preimage.server.engine.sample import PilotCache
    from preimage.server.engine.types import BoundSpec, FixedSpec
    from preimage.server.warm import WarmModel

__all__ = ["Runtime"]

T = TypeVar("T")

_SPACES = 256
"""Input spaces (model version x constraints) kept warm."""
_RECORDS = 4096
"""Resolved model references kept between registry writes."""
GENERATION_WINDOW = 0.02
"""Seconds a read of the embedded index's generation answers warm lookups on the event loop
while this process writes nothing (its own writes are seen at once; another process's within this)."""


def _worker_started(torch_threads: int) -> None:
    """In each new worker thread: torch's thread count, where torch is loaded already.

    OpenMP keeps its thread count per thread: a worker left at the default (every core) gives
    each large operation a team whose second thread then spins on a core after every pass,
    starving the event loop and the other workers. The first worker, started before torch
    is imported, sets it as its first task (``PreimageServer.start``).
    """
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(torch_threads)


class Runtime:
    """Settings, the registry (once open), the worker pool, limits and metrics."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(
            max_workers=settings.engine_workers,
            thread_name_prefix="preimage-worker",
            initializer=_worker_started,
            initargs=(settings.torch_threads,),
        )
        self.invert_admission = Admission(
            "Invert", settings.max_concurrent_inverts, settings.invert_queue_size, metrics, typical_seconds=0.1
        )
        self.train_admission = Admission(
            "Train", settings.max_concurrent_trains, settings.train_queue_size, metrics, typical_seconds=30.0
        )
        self._registry: Registry | None = None
        self.shared_runs = SharedRuns(self)
        self.warm = WarmModels(settings, metrics)
        self._records: dict[str, tuple[int, ModelRecord]] = {}
        self._hot: dict[str, tuple[int, WarmModel]] = {}
        self._generation_read: tuple[float, int, int] | None = None  # (monotonic time, generation, local writes)
        self._predicts = 0
        self._spaces: OrderedDict[tuple[Any, ...], InputSpace] = OrderedDict()
        self._pilots: PilotCache | None = None

    @property
    def pilots(self) -> PilotCache:
        """Sample mode's pilots, per input space (each space of :meth:`input_space` is one model version's)."""
        if self._pilots is None:
            from preimage.server.engine.sample import PilotCache

            self._pilots = PilotCache()
        return self._pilots

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
        """Resolve ``ref`` and load its module (on the serving device).

        From the hot cache on the event loop when a worker resolved ``ref`` since the registry
        last changed (see :meth:`_hot_model`), else in a worker thread.
        """
        hot = self._hot_model(ref)
        if hot is not None:
            self.metrics.child(self.metrics.model_loads, "hit").inc()
            return hot.loaded
        return (await self.run(self._warm, ref)).loaded

    def _warm(self, ref: str) -> WarmModel:
        """In a worker: the record ``ref`` names (cached until the registry's next write), its warm state."""
        registry = self.registry()
        generation = None
        if registry.caches_lookups:  # a shared index: the registry answers from memory between polls
            record = registry.get(ref)
        else:  # the embedded index: reading the generation is far cheaper than resolving (schema JSON)
            generation = registry.generation()
            cached = self._records.get(ref)
            if cached is not None and cached[0] == generation:
                record = cached[1]
            else:
                record = registry.get(ref)
                if len(self._records) > _RECORDS:
                    self._records.clear()
                self._records[ref] = (generation, record)
        hit = record.sha256 in registry.cached()
        loaded = registry.load(record)
        self.metrics.child(self.metrics.model_loads, "hit" if hit else "miss").inc()
        self.metrics.models_loaded.set(len(registry.cached()))
        warm = self.warm.get(loaded)
        if generation is not None:
            if len(self._hot) > _RECORDS:
                self._hot.clear()
            self._hot[ref] = (generation, warm)
        return warm

    def _hot_model(self, ref: str) -> WarmModel | None:
        """On the event loop: ``ref``'s warm model if a worker resolved it since the registry last changed.

        Only with the embedded index, whose generation is one local read (WAL readers never wait on
        writers); a shared index's lookups may go over the network. One read answers for
        :data:`GENERATION_WINDOW` seconds while this process writes nothing: under load the query
        cost about 0.13 ms a call on the loop, and a change made by this process is seen at once
        all the same (``Registry.local_writes``).
        """
        registry = self._registry
        entry = self._hot.get(ref)
        if entry is None or registry is None or registry.caches_lookups:
            return None
        now = time.monotonic()
        writes = registry.local_writes
        read = self._generation_read
        if read is not None and read[2] == writes and now - read[0] < GENERATION_WINDOW:
            generation = read[1]
        else:
            try:
                generation = registry.generation()
            except Exception:  # the worker path reports what is wrong
                self._generation_read = None
                return None
            self._generation_read = (now, generation, writes)
        if generation != entry[0]:
            return None
        return entry[1]

    async def input_space(
        self, loaded: LoadedModel, bounds: tuple[BoundSpec, ...], fixed: tuple[FixedSpec, ...]
    ) -> InputSpace:
        """The input space of a model version under these bounds and fixed features, built once and cached.

        Part of each model's warm state: an Invert call with constraints seen before starts
        without rebuilding (and re-validating) them, and sample mode's pilots
        (:attr:`pilots`) are kept per space. Errors are not cached.
        """
        from preimage.server.engine import InputSpace

        key = (loaded.record.sha256, loaded.record.name, loaded.record.version, bounds, fixed)
        space = self._spaces.get(key)
        if space is None:
            space = await self.run(InputSpace.from_schema, loaded.schema, bounds=bounds, fixed=fixed)
            self._spaces[key] = space
            while len(self._spaces) > _SPACES:
                self._spaces.popitem(last=False)
        else:
            self._spaces.move_to_end(key)
        return space

    def close(self) -> None:
        """End background work: the shared Invert runs."""
        self.shared_runs.close()

    async def predict(self, ref: str, X: np.ndarray) -> tuple[ModelRecord, np.ndarray]:
        """The one forward path every protocol uses (preimage's Predict, the Open Inference Protocol).

        Args:
            ref: Model reference (``NAME``, ``NAME:V``, ``NAME@ALIAS``).
            X: ``n x d`` input rows.

        Returns:
            The resolved record and the ``n x m`` float32 outputs.

        A lone call on a model whose warm state is current, and whose pass is known to be cheap,
        runs on the event loop at once (see ``Settings.predict_inline_max_ms``); the rest run in
        a worker, coalesced per model.
        """
        max_seconds = self.settings.predict_inline_max_ms / 1000
        self._predicts += 1
        try:
            inline = None
            hot = self._hot_model(ref) if max_seconds > 0 else None
            if hot is not None:
                await asyncio.sleep(0)  # calls that arrived with this one get to announce themselves
                if self._predicts == 1:  # alone: with company, a worker pass serves all of them at once
                    inline = hot.batcher.try_inline(X, max_seconds=max_seconds)
            if hot is not None and inline is not None:
                self.metrics.child(self.metrics.model_loads, "hit").inc()
                self.metrics.predict_inline.inc()
                record, outputs = hot.loaded.record, inline
            else:

                def predict() -> tuple[ModelRecord, np.ndarray]:
                    warm = self._warm(ref)
                    return warm.loaded.record, warm.batcher(X)

                record, outputs = await self.run(predict)
        finally:
            self._predicts -= 1
        self.metrics.predict_rows.inc(outputs.shape[0])
        return record, outputs
