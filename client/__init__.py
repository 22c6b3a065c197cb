"""Typed Python client for preimage (no torch needed)."""

from __future__ import annotations

__all__: list[str] = []
