"""The Open Inference Protocol, proven with an unmodified ``tritonclient[grpc]`` from PyPI.

tritonclient needs protobuf<7 (preimage pins 7), so it lives in ``.venv-oip``
(scripts/install.sh) and runs ``tests/server/oip_client.py`` as a subprocess
against a real server started here; outputs are judged by onnxruntime on this
side. The error table in test_errors.py covers every rejection in detail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from preimage.oip import grpc_predict_v2_pb2 as oip_pb2
from preimage.oip import grpc_predict_v2_pb2_grpc as oip_pb2_grpc
from preimage.server.app import RunningServer, start_server
from preimage.server.settings import Settings
from preimage.v1 import registry_pb2
from tests.models import mlp_onnx, onnx_eval
from tests.server.conftest import Stubs, connect, register

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("oip_client.py")
OIP_PYTHON = Path(os.environ.get("PREIMAGE_OIP_PYTHON", ROOT / ".venv-oip" / "bin" / "python"))
WIDTH = 4
V1 = mlp_onnx([WIDTH, 8, 2], seed=1)
V2 = mlp_onnx([WIDTH, 8, 2], seed=2)
MAX_MESSAGE = 4 * 2**20


def oip_python() -> Path:
    """The .venv-oip interpreter; a skip outside CI when it is missing, a failure under CI."""
    if not OIP_PYTHON.is_file():
        message = f"{OIP_PYTHON} is missing: run scripts/install.sh (it builds .venv-oip with tritonclient[grpc])"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return OIP_PYTHON


def tritonclient(url: str, calls: list[dict[str, Any]], **plan: Any) -> dict[str, Any]:
    """Run the calls with tritonclient in .venv-oip; the results by call id."""
    result = subprocess.run(
        [str(oip_python()), str(CLIENT)],
        input=json.dumps({"url": url, "calls": calls, **plan}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ok(results: dict[str, Any], call_id: str) -> Any:
    entry = results[call_id]
    assert entry["ok"], entry
    return entry["result"]


def failed(results: dict[str, Any], call_id: str, code: str, *words: str) -> None:
    entry = results[call_id]
    assert not entry["ok"], entry
    assert entry["code"] == code, entry
    for word in words:
        assert word in entry["message"], entry


ROWS = np.random.default_rng(7).random((37, WIDTH), dtype=np.float32)


def infer(call_id: str, version: str = "", **options: Any) -> dict[str, Any]:
    return {"id": call_id, "op": "infer", "model": "lin", "version": version, "rows": ROWS.tolist(), **options}


CALLS: list[dict[str, Any]] = [
    {"id": "live", "op": "live"},
    {"id": "ready", "op": "ready"},
    {"id": "model-ready", "op": "model_ready", "model": "lin"},
    {"id": "model-ready-1", "op": "model_ready", "model": "lin", "version": "1"},
    {"id": "model-ready-alias", "op": "model_ready", "model": "lin", "version": "prod"},
    {"id": "model-ready-missing-version", "op": "model_ready", "model": "lin", "version": "9"},
    {"id": "model-ready-missing-model", "op": "model_ready", "model": "nosuch"},
    {"id": "server-metadata", "op": "server_metadata"},
    {"id": "model-metadata", "op": "model_metadata", "model": "lin"},
    {"id": "model-metadata-1", "op": "model_metadata", "model": "lin", "version": "1"},
    {"id": "model-metadata-missing", "op": "model_metadata", "model": "nosuch"},
    infer("latest"),
    infer("v1", "1"),
    infer("v2", "2"),
    infer("alias", "prod"),
    infer("requested-output", outputs=["output"], request_id="req-42"),
    {"id": "typed", "op": "infer_typed", "model": "lin", "version": "1", "rows": ROWS.tolist()},
    {"id": "random", "op": "infer", "model": "lin", "random": [500, WIDTH, 3]},
    infer("missing-model", model="nosuch"),
    infer("missing-version", "7"),
    infer("missing-alias", "beta"),
    infer("wrong-datatype", datatype="FP64"),
    {"id": "wrong-shape", "op": "infer", "model": "lin", "rows": ROWS[:, :3].tolist()},
    infer("wrong-input-name", input_name="x"),
    infer("unknown-output", outputs=["y"]),
    # Triton's model-repository extension is not served.
    {"id": "repository-index", "op": "repository_index"},
    {"id": "unload", "op": "unload", "model": "lin"},
    # 300_000 x 4 float32 is 4.8 MB, over the server's 4 MiB message limit.
    {"id": "oversize", "op": "infer", "model": "lin", "random": [300_000, WIDTH, 0]},
]


@pytest.fixture(scope="module")
def oip_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Stubs]]:
    settings = Settings(
        registry_dir=tmp_path_factory.mktemp("registry"),
        address="127.0.0.1:0",
        max_message_bytes=MAX_MESSAGE,
        shutdown_grace_seconds=0,
    )
    running = start_server(settings)
    stubs = connect(running.address)
    register(stubs, "lin", V1)
    register(stubs, "lin", V2)
    stubs.registry.SetAlias(registry_pb2.SetAliasRequest(name="lin", alias="prod", version=1), timeout=30)
    yield running, stubs
    stubs.channel.close()
    running.stop()


@pytest.fixture(scope="module")
def results(oip_server: tuple[RunningServer, Stubs]) -> dict[str, Any]:
    """Every call of CALLS, made once by tritonclient."""
    return tritonclient(oip_server[0].address, CALLS)


def test_live_and_ready(results: dict[str, Any]) -> None:
    assert ok(results, "live") is True
    assert ok(results, "ready") is True
    assert ok(results, "model-ready") is True
    assert ok(results, "model-ready-1") is True
    assert ok(results, "model-ready-alias") is True
    assert ok(results, "model-ready-missing-version") is False
    assert ok(results, "model-ready-missing-model") is False


def test_server_metadata(results: dict[str, Any]) -> None:
    from preimage import __version__

    assert ok(results, "server-metadata") == {"name": "preimage", "version": __version__}


def test_model_metadata(results: dict[str, Any]) -> None:
    expected = {
        "name": "lin",
        "versions": ["1", "2"],
        "platform": "onnx",
        # tritonclient's as_json prints int64 as strings (protobuf's JSON mapping).
        "inputs": [{"name": "input", "datatype": "FP32", "shape": ["-1", str(WIDTH)]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": ["-1", "2"]}],
    }
    assert ok(results, "model-metadata") == expected
    assert ok(results, "model-metadata-1") == expected
    failed(results, "model-metadata-missing", "NOT_FOUND", "nosuch")


@pytest.mark.parametrize(
    ("call_id", "version", "model"), [("latest", "2", V2), ("v1", "1", V1), ("v2", "2", V2), ("alias", "1", V1)]
)
def test_infer_selects_the_version(results: dict[str, Any], call_id: str, version: str, model: bytes) -> None:
    got = ok(results, call_id)
    assert got["model_name"] == "lin"
    assert got["model_version"] == version
    assert got["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [len(ROWS), 2]}]
    assert got["raw"], "raw_input_contents in, raw_output_contents out"
    np.testing.assert_allclose(np.asarray(got["values"]), onnx_eval(model, ROWS), rtol=1e-5, atol=1e-5)


def test_infer_with_requested_output_echoes_the_id(results: dict[str, Any]) -> None:
    got = ok(results, "requested-output")
    assert got["id"] == "req-42"
    np.testing.assert_allclose(np.asarray(got["values"]), onnx_eval(V2, ROWS), rtol=1e-5, atol=1e-5)


def test_typed_contents_answer_typed(results: dict[str, Any]) -> None:
    got = ok(results, "typed")
    assert not got["raw"], "contents.fp32_contents in, contents.fp32_contents out"
    assert got["model_version"] == "1"
    np.testing.assert_allclose(np.asarray(got["values"]), onnx_eval(V1, ROWS), rtol=1e-5, atol=1e-5)


def test_random_rows_match_onnxruntime(results: dict[str, Any]) -> None:
    X = np.random.default_rng(3).random((500, WIDTH), dtype=np.float32)  # what the client drew
    got = np.asarray(ok(results, "random")["values"])
    np.testing.assert_allclose(got, onnx_eval(V2, X), rtol=1e-5, atol=1e-5)


def test_errors_in_the_protocols_terms(results: dict[str, Any]) -> None:
    failed(results, "missing-model", "NOT_FOUND", "nosuch")
    failed(results, "missing-version", "NOT_FOUND", "7")
    failed(results, "missing-alias", "NOT_FOUND", "beta")
    failed(results, "wrong-datatype", "INVALID_ARGUMENT", "'input'", "FP64")
    failed(results, "wrong-shape", "INVALID_ARGUMENT", "'input'", "[37, 3]")
    failed(results, "wrong-input-name", "INVALID_ARGUMENT", "'x'")
    failed(results, "unknown-output", "INVALID_ARGUMENT", "'y'")
    failed(results, "oversize", "RESOURCE_EXHAUSTED")


def test_unserved_extensions_are_unimplemented(results: dict[str, Any]) -> None:
    failed(results, "repository-index", "UNIMPLEMENTED")
    failed(results, "unload", "UNIMPLEMENTED")


def test_per_model_metrics(oip_server: tuple[RunningServer, Stubs], results: dict[str, Any]) -> None:
    registry = oip_server[0].server.metrics.registry

    def sample(name: str, version: str) -> float | None:
        return registry.get_sample_value(name, {"model": "lin", "version": version, "protocol": "oip"})

    # v2: latest, v2, requested-output, random; v1: v1, alias, typed.
    assert sample("preimage_model_inferences_total", "2") == 4
    assert sample("preimage_model_inferences_total", "1") == 3
    assert sample("preimage_model_rows_total", "2") == 3 * len(ROWS) + 500
    assert sample("preimage_model_rows_total", "1") == 3 * len(ROWS)
    done = registry.get_sample_value("preimage_requests_total", {"rpc": "ModelInfer", "code": "OK"})
    assert done == 7


def test_server_ready_follows_health(oip_server: tuple[RunningServer, Stubs]) -> None:
    running, stubs = oip_server
    oip = oip_pb2_grpc.GRPCInferenceServiceStub(stubs.channel)
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    serving = health_pb2.HealthCheckResponse.SERVING
    server = running.server
    loop = running._loop
    try:
        asyncio.run_coroutine_threadsafe(server._set_health(not_serving), loop).result(timeout=10)
        assert stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == not_serving
        assert oip.ServerReady(oip_pb2.ServerReadyRequest(), timeout=10).ready is False
        assert oip.ModelReady(oip_pb2.ModelReadyRequest(name="lin"), timeout=10).ready is False
        assert oip.ServerLive(oip_pb2.ServerLiveRequest(), timeout=10).live is True
    finally:
        asyncio.run_coroutine_threadsafe(server._set_health(serving), loop).result(timeout=10)
    assert oip.ServerReady(oip_pb2.ServerReadyRequest(), timeout=10).ready is True
    assert oip.ModelReady(oip_pb2.ModelReadyRequest(name="lin"), timeout=10).ready is True


def test_tls_and_tokens(tmp_path: Path) -> None:
    from tests.server.test_security import make_pki

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    settings = Settings(
        registry_dir=tmp_path / "registry",
        address="127.0.0.1:0",
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        admin_tokens=["admin-secret"],
        read_tokens=["read-secret"],
        shutdown_grace_seconds=0,
    )
    with start_server(settings) as running:
        credentials = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes()),
            grpc.access_token_call_credentials("admin-secret"),
        )
        admin = connect(f"localhost:{running.port}", credentials=credentials)
        register(admin, "lin", V1)
        admin.channel.close()
        url = f"localhost:{running.port}"
        calls = [
            {"id": "live", "op": "live"},
            {"id": "ready", "op": "ready"},
            {"id": "metadata", "op": "model_metadata", "model": "lin"},
            infer("infer"),
        ]
        ca = str(pki / "ca.pem")
        with_read = tritonclient(url, calls, root_certificates=ca, token="read-secret")
        assert ok(with_read, "live") is True
        assert ok(with_read, "metadata")["versions"] == ["1"]
        got = ok(with_read, "infer")
        np.testing.assert_allclose(np.asarray(got["values"]), onnx_eval(V1, ROWS), rtol=1e-5, atol=1e-5)
        without = tritonclient(url, calls, root_certificates=ca)
        # Liveness and readiness are probes, open like grpc.health; the rest needs a token.
        assert ok(without, "live") is True
        assert ok(without, "ready") is True
        failed(without, "metadata", "UNAUTHENTICATED")
        failed(without, "infer", "UNAUTHENTICATED")
        wrong = tritonclient(url, calls, root_certificates=ca, token="nope")
        failed(wrong, "infer", "UNAUTHENTICATED")
