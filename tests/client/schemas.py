"""The issue's example schema (one feature of every kind), shared by the client tests."""

from __future__ import annotations

from typing import Any

MIXED_SCHEMA: dict[str, Any] = {
    "inputs": [
        {"name": "speed", "kind": "continuous", "min": 0.0, "max": 1.0},
        {"name": "walls", "kind": "integer", "min": 0, "max": 12},
        {"name": "has_boss", "kind": "binary"},
        {"name": "theme", "kind": "categorical", "levels": ["ice", "lava", "forest"]},
    ],
    "outputs": [{"name": "difficulty"}],
}
