"""The Node.js client (tests/interop/client.mjs) against a real server.

client.mjs checks its own patterns (tolerance, bounds, Predict agrees) and the
cancellation; this test then checks its report independently with onnxruntime.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from preimage.client import Client
from tests.interop.conftest import HERE
from tests.models import EXAMPLE_MODEL, mlp_onnx, onnx_eval


def test_node_client_registers_predicts_inverts_and_cancels(node: str, server: Any, tmp_path: Path) -> None:
    big = mlp_onnx([10, 1100, 1000, 1], seed=3)
    big_path = tmp_path / "big.onnx"
    big_path.write_bytes(big)
    done = subprocess.run(
        [node, str(HERE / "client.mjs"), server.address, str(EXAMPLE_MODEL), str(big_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    predict = report["predict"]
    X = np.asarray(predict["inputs"], np.float32)
    np.testing.assert_allclose(predict["outputs"], onnx_eval(EXAMPLE_MODEL, X), atol=1e-4)

    invert = report["invert"]
    X = np.asarray(invert["inputs"], np.float32)
    assert X.shape == (64, 10) and invert["summary"] == {"status": "INVERT_STATUS_COMPLETE", "returned": 64}
    truth = onnx_eval(EXAMPLE_MODEL, X)
    assert np.all(np.abs(truth - 7.0) <= 1e-3 + 1e-4)
    np.testing.assert_allclose(invert["outputs"], truth, atol=1e-4)
    assert X.min() >= 0.0 and X.max() <= 1.0

    assert report["cancelled"]["code"] == "CANCELLED" and report["cancelled"]["received"] >= 1
    big_x = np.asarray(report["big"]["inputs"], np.float32)
    np.testing.assert_allclose(report["big"]["outputs"], onnx_eval(big, big_x), atol=1e-4)

    # What Node registered, Python sees, byte for byte.
    with Client(server.address, timeout=60) as client:
        assert client.model(report["ref"]).size_bytes == EXAMPLE_MODEL.stat().st_size
        assert client.model(report["big"]["ref"]).size_bytes == len(big)
        assert client.health() == "SERVING"
