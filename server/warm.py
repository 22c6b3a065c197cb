"""Per-model warm state: what a call needs before its first output, computed once per model version.

For each converted module in use: the module on the configured device, and its
:class:`~preimage.server.engine.batcher.PredictBatcher`, with the one-off check that
coalescing leaves its outputs bit-identical. Input spaces per constraint set are cached
by :meth:`Runtime.input_space`. Built in worker threads on first use; thread-safe.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from preimage.server.metrics import Metrics
from preimage.server.settings import Settings

if TYPE_CHECKING:
    import torch

    from preimage.registry import LoadedModel
    from preimage.server.engine.batcher import PredictBatcher

__all__ = ["WarmModel", "WarmModels"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmModel:
    """A model version ready to serve.

    Attributes:
        loaded: The registry's loaded model, its module on the serving device.
        batcher: Coalesces concurrent Predict calls on it.
        source: The registry's module this was built from (a reload builds anew).
    """

    loaded: LoadedModel
    batcher: PredictBatcher
    source: torch.nn.Module


class WarmModels:
    """The warm state of the most recently used models (as many as the registry caches)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.Lock()
        self._models: OrderedDict[str, WarmModel] = OrderedDict()

    def get(self, loaded: LoadedModel) -> WarmModel:
        """The warm state of ``loaded``, built on first use (call from a worker thread)."""
        key = f"{loaded.record.sha256}:{loaded.record.name}:{loaded.record.version}"
        with self._lock:
            warm = self._models.get(key)
            if warm is not None and warm.source is loaded.module:
                self._models.move_to_end(key)
                return warm
        warm = self._build(loaded)
        with self._lock:
            self._models[key] = warm
            self._models.move_to_end(key)
            while len(self._models) > self.settings.cache_size:
                self._models.popitem(last=False)
        return warm

    def _build(self, loaded: LoadedModel) -> WarmModel:
        import torch

        from preimage.server.engine.batcher import PredictBatcher, coalescing_is_exact

        settings, record = self.settings, loaded.record
        device = torch.device(settings.device)
        module = loaded.module
        if device.type != "cpu":
            module = copy.deepcopy(module).to(device)
        width = record.input_width
        exact = settings.predict_coalescing and width is not None and coalescing_is_exact(module, width)
        if settings.predict_coalescing and not exact:
            _log.info("%s: Predict calls run one at a time (coalescing would change output bits)", record.ref)
        passes, rows = self.metrics.predict_passes, self.metrics.predict_pass_calls

        def on_pass(calls: int, padded_rows: int) -> None:
            passes.inc()
            rows.observe(calls)

        batcher = PredictBatcher(
            module,
            width,
            coalesce=exact,
            delay_seconds=settings.predict_batch_delay_ms / 1000,
            max_rows=settings.predict_max_batch_rows,
            on_pass=on_pass,
        )
        served = loaded if module is loaded.module else replace(loaded, module=module)
        return WarmModel(loaded=served, batcher=batcher, source=loaded.module)
