"""Assertions shared by the registry tests."""

from __future__ import annotations

import numpy as np
import torch

from preimage.registry import Registry
from tests.models import onnx_eval


def assert_empty(registry: Registry) -> None:
    """Nothing listed, no blob and no temporary file: what a refused registration must leave."""
    assert registry.list(all_versions=True) == []
    assert list((registry.root / "blobs").iterdir()) == []
    assert list((registry.root / "tmp").iterdir()) == []


def assert_matches_onnxruntime(registry: Registry, ref: str, onnx_bytes: bytes, X: np.ndarray) -> None:
    """The loaded module of ``ref`` agrees with onnxruntime on ``X`` (float32 tolerance)."""
    module = registry.load(ref).module
    with torch.no_grad():
        got = module(torch.from_numpy(np.asarray(X, np.float32))).numpy()
    np.testing.assert_allclose(got, onnx_eval(onnx_bytes, X), rtol=1e-4, atol=1e-4)
