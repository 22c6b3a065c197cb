"""The in-memory LRU cache of converted modules, keyed by sha256.

Keyed by content, so two names or versions with the same bytes share one
module. Eviction only drops the cache's reference: a caller still holding a
:class:`~preimage.registry.records.LoadedModel` keeps its module alive.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch

__all__ = ["ModuleCache"]


class ModuleCache:
    """At most ``capacity`` modules, least recently used evicted first; thread-safe.

    Concurrent requests for the same cold key run the factory once; the others wait for it.

    Args:
        capacity: Most modules held; 0 disables caching (every load converts).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be 0 or more, got {capacity}")
        self.capacity = capacity
        self._modules: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str) -> torch.nn.Module | None:
        """The cached module (now most recently used), or ``None``."""
        with self._lock:
            module = self._modules.get(key)
            if module is not None:
                self._modules.move_to_end(key)
            return module

    def put(self, key: str, module: torch.nn.Module) -> None:
        """Cache a module, evicting the least recently used beyond capacity."""
        with self._lock:
            self._insert(key, module)

    def get_or_create(self, key: str, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """The cached module, or the factory's (cached) when absent; the factory runs once per key at a time."""
        module = self.get(key)
        if module is not None:
            return module
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            module = self.get(key)
            if module is None:
                module = factory()
                self.put(key, module)
        with self._lock:
            if not gate.locked():
                self._loading.pop(key, None)
        return module

    def discard(self, key: str) -> None:
        """Forget a module (its blob was deleted)."""
        with self._lock:
            self._modules.pop(key, None)

    def keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._modules)

    def __len__(self) -> int:
        with self._lock:
            return len(self._modules)

    def _insert(self, key: str, module: torch.nn.Module) -> None:
        if self.capacity == 0:
            return
        self._modules[key] = module
        self._modules.move_to_end(key)
        while len(self._modules) > self.capacity:
            self._modules.popitem(last=False)
