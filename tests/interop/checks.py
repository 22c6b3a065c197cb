"""Run a compiled interop client (Go, Java) against the TLS server and check its report.

Both programs take ``HOST:PORT CA.pem TOKEN MODEL.onnx BIG_MODEL.onnx`` and print
one JSON line per step. They check their own patterns; this module checks them
again, independently, with onnxruntime, and looks at the server's side too.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from preimage.client import Client
from tests.interop.conftest import TOKEN
from tests.models import EXAMPLE_MODEL, mlp_onnx, onnx_eval

__all__ = ["check_client"]

STEPS = ("no_token", "register", "register_big", "predict", "invert", "cancel", "bad_request")


def check_client(command: list[str], name: str, server: Any, pki: Path, tmp_path: Path) -> None:
    """Run ``command`` against ``server`` and check every step it reports.

    Args:
        command: the program and the arguments before its own (``["java", "-cp", ..., "Client"]``).
        name: the prefix of the model names it registers (``go``, ``java``).
        server: the running TLS server (``secure_server``), one Invert at a time.
        pki: the folder holding ``ca.pem``.
        tmp_path: where the big model is written.
    """
    big = mlp_onnx([10, 1100, 1000, 1], seed=3)
    assert len(big) > 4 * 2**20
    big_path = tmp_path / "big.onnx"
    big_path.write_bytes(big)
    done = subprocess.run(
        [*command, server.address, str(pki / "ca.pem"), TOKEN, str(EXAMPLE_MODEL), str(big_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{done.stderr}\n{done.stdout[-2000:]}"
    report = {line["step"]: line for line in map(json.loads, done.stdout.splitlines())}
    assert tuple(report) == STEPS, done.stdout[-2000:]

    assert report["no_token"]["code"] in {"UNAUTHENTICATED", "Unauthenticated"}

    ref = report["register"]["ref"]
    assert ref == f"{name}-example:1" and report["register"]["size_bytes"] == EXAMPLE_MODEL.stat().st_size
    big_step = report["register_big"]
    assert big_step["ref"] == f"{name}-big:1" and big_step["size_bytes"] == len(big)
    X = np.asarray(big_step["inputs"], np.float32)
    np.testing.assert_allclose(big_step["outputs"], onnx_eval(big, X), atol=1e-4)

    X = np.asarray(report["predict"]["inputs"], np.float32)
    assert X.shape == (32, 10) and len(np.unique(X, axis=0)) > 1
    np.testing.assert_allclose(report["predict"]["outputs"], onnx_eval(EXAMPLE_MODEL, X), atol=1e-4)

    invert = report["invert"]
    X = np.asarray(invert["inputs"], np.float32)
    assert X.shape == (2000, 10) and invert["returned"] == 2000 and invert["status"] == "INVERT_STATUS_COMPLETE"
    assert invert["messages"] > 2 and len(np.unique(X, axis=0)) > 1000
    assert X.min() >= 0.0 and X.max() <= 1.0
    truth = onnx_eval(EXAMPLE_MODEL, X)
    assert np.all(np.abs(truth - 7.0) <= 1e-3 + 1e-4)
    np.testing.assert_allclose(invert["outputs"], truth, atol=1e-4)
    np.testing.assert_allclose(invert["errors"], np.abs(np.asarray(invert["outputs"]) - 7.0), atol=1e-5)

    cancel = report["cancel"]
    assert cancel["code"] in {"CANCELLED", "Canceled"}, cancel
    # One Invert at a time: refused while the cancelled stream held the slot, served after.
    assert cancel["while_open"] in {"RESOURCE_EXHAUSTED", "ResourceExhausted"} and cancel["retry_after_s"] > 0, cancel
    assert cancel["after_status"] == "INVERT_STATUS_COMPLETE" and cancel["after_returned"] == 4, cancel
    assert server.server.runtime.invert_admission.running == 0

    bad = report["bad_request"]
    assert bad["code"] in {"INVALID_ARGUMENT", "InvalidArgument"} and bad["field"] == "inputs", bad
    assert "raw bytes" in bad["description"], bad

    # What the client registered, Python sees, byte for byte.
    with Client(server.address, timeout=60, root_certificates=str(pki / "ca.pem"), token=TOKEN) as client:
        assert client.model(ref).sha256 == report["register"]["sha256"]
        assert client.model(big_step["ref"]).size_bytes == len(big)
