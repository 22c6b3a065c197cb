"""Stateless replicas over one shared registry: three real ``preimage serve`` processes, one PostgreSQL
index, one S3 bucket (moto's server). Each behaviour of issue 11 is a test here; every wait is bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from preimage.v1 import inference_pb2, registry_pb2
from tests.conftest import SharedStore
from tests.models import linear_onnx, onnx_eval
from tests.process import ServerProcess
from tests.registry.builders import big_mlp
from tests.server.conftest import Stubs, connect, register, upload_requests
from tests.server.test_end_to_end import as_array, to_matrix
from tests.server.test_train import table, train_requests
from tests.services import MotoServer, PostgresServer

pytestmark = pytest.mark.slow

T = TypeVar("T")
FRESHNESS_SECONDS = 2.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def replica(cache: Path, store: SharedStore, **env: str) -> ServerProcess:
    """One ``preimage serve`` on the shared store, its own local cache folder."""
    return ServerProcess(
        cache, "--index", store.index, "--blobs", store.blobs, env={**store.env, "PREIMAGE_LOG_LEVEL": "info", **env}
    )


def start_all(factories: list[Callable[[], ServerProcess]]) -> list[ServerProcess]:
    """Start processes in parallel (each imports torch: seconds), then wait until all are SERVING."""
    with ThreadPoolExecutor(len(factories)) as pool:
        processes = list(pool.map(lambda make: make(), factories))
    for process in processes:
        process.wait_serving()
    return processes


def within(seconds: float, probe: Callable[[], T | None]) -> T:
    """``probe()``'s first non-``None`` value within ``seconds`` (polled every 50 ms), else fail."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not seen within {seconds} s")
        time.sleep(0.05)


def predict(stubs: Stubs, ref: str, X: np.ndarray) -> np.ndarray:
    reply = stubs.inference.Predict(inference_pb2.PredictRequest(model_ref=ref, inputs=to_matrix(X)), timeout=60)
    return as_array(reply.outputs)


def code_of(call: Callable[[], object]) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return None


def health(stubs: Stubs) -> int:
    try:
        return int(stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
    except grpc.RpcError:
        return -1


@pytest.fixture(scope="module")
def module_store(postgres_server: PostgresServer, moto_server: MotoServer) -> SharedStore:
    bucket = moto_server.new_bucket()
    return SharedStore(postgres_server.new_database(), f"s3://{bucket}/registry", bucket, moto_server.env)


@pytest.fixture(scope="module")
def trio(module_store: SharedStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Stubs]]:
    """Replicas A, B and C (stubs in that order)."""
    root = tmp_path_factory.mktemp("replicas")
    processes = start_all([lambda n=n: replica(root / n, module_store) for n in "abc"])  # type: ignore[misc]
    stubs = [connect(p.address) for p in processes]
    yield stubs
    for s in stubs:
        s.channel.close()
    for p in processes:
        p.kill()


def test_register_alias_delete_seen_by_every_replica_within_2_s(trio: list[Stubs]) -> None:
    a, b, c = trio
    W = np.array([[1.0, -2.0, 0.5]], np.float32)
    one, two = linear_onnx(W, [0.25]), linear_onnx(2 * W, [-1.0])
    X = np.random.default_rng(0).random((32, 3), dtype=np.float32)

    register(a, "fresh", one)
    for stubs in (b, c):
        out = within(FRESHNESS_SECONDS, lambda s=stubs: None if code_of(lambda: predict(s, "fresh", X)) else 1)  # type: ignore[misc]
        assert out == 1
        np.testing.assert_allclose(predict(stubs, "fresh", X), onnx_eval(one, X), atol=1e-5)

    register(a, "fresh", two)
    b.registry.SetAlias(registry_pb2.SetAliasRequest(name="fresh", alias="prod", version=1), timeout=30)
    np.testing.assert_allclose(predict(c, "fresh@prod", X), onnx_eval(one, X), atol=1e-5)
    b.registry.SetAlias(registry_pb2.SetAliasRequest(name="fresh", alias="prod", version=2), timeout=30)

    def flipped() -> bool | None:
        got = c.registry.GetModel(registry_pb2.GetModelRequest(model_ref="fresh@prod"), timeout=10).model.version
        return True if got == 2 else None

    within(FRESHNESS_SECONDS, flipped)
    np.testing.assert_allclose(predict(c, "fresh@prod", X), onnx_eval(two, X), atol=1e-5)

    np.testing.assert_allclose(predict(a, "fresh:2", X), onnx_eval(two, X), atol=1e-5)  # A holds it converted
    c.registry.DeleteModel(registry_pb2.DeleteModelRequest(model_ref="fresh:2"), timeout=30)
    gone = within(
        FRESHNESS_SECONDS,
        lambda: code_of(lambda: predict(a, "fresh:2", X)) or None,
    )
    assert gone == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: predict(b, "fresh@prod", X)) == grpc.StatusCode.NOT_FOUND  # the alias went with it
    np.testing.assert_allclose(predict(b, "fresh:1", X), onnx_eval(one, X), atol=1e-5)


def test_twelve_concurrent_registrations_through_two_replicas_get_1_to_12(trio: list[Stubs]) -> None:
    a, b, _ = trio
    models = [linear_onnx(np.array([[float(i), 1.0]], np.float32), [0.0]) for i in range(12)]
    start = threading.Barrier(12)

    def go(i: int) -> tuple[int, str]:
        start.wait(timeout=30)
        info = register(a if i % 2 else b, "race", models[i])
        return info.version, info.sha256

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(go, range(12)))
    assert sorted(v for v, _ in results) == list(range(1, 13))
    listed = a.registry.ListModels(registry_pb2.ListModelsRequest(name="race", all_versions=True), timeout=30).models
    assert sorted((m.version, m.sha256) for m in listed) == sorted(results)


def test_train_on_any_replica_registers_into_the_shared_store(
    trio: list[Stubs], module_store: SharedStore, moto_server: MotoServer
) -> None:
    a, b, c = trio
    X, walls, theme, y = table(300)
    events = list(c.inference.Train(train_requests(X, walls, theme, y, name="trained", epochs=3), timeout=300))
    model = events[-1].result.model
    assert (model.name, model.version, model.source) == ("trained", 1, registry_pb2.MODEL_SOURCE_TRAIN)
    key = f"registry/blobs/{model.sha256}.onnx"
    assert key in moto_server.keys(module_store.bucket)
    onnx_bytes = moto_server.client().get_object(Bucket=module_store.bucket, Key=key)["Body"].read()
    rows = np.random.default_rng(2).random((16, model.input_width), dtype=np.float32)
    for stubs in (a, b):
        listed = stubs.registry.ListModels(registry_pb2.ListModelsRequest(name="trained"), timeout=30).models
        assert [(m.version, m.sha256) for m in listed] == [(1, model.sha256)]
        np.testing.assert_allclose(predict(stubs, "trained", rows), onnx_eval(onnx_bytes, rows), atol=1e-4)


def test_sigkill_mid_upload_leaves_no_half_model_and_restart_cleans_up(
    trio: list[Stubs], module_store: SharedStore, moto_server: MotoServer, tmp_path: Path
) -> None:
    _, b, c = trio
    stable = linear_onnx(np.array([[3.0, -1.0]], np.float32), [0.5])
    stable_info = register(b, "stable", stable)
    big = big_mlp(250_000)  # about 9 MB: a multipart upload
    assert len(big) > 8 * 2**20

    dying = replica(tmp_path / "dying", module_store, PREIMAGE_TEST_PAUSE_STAGE="120")
    try:
        dying.wait_serving()
        stubs = connect(dying.address)
        call = stubs.registry.RegisterModel.future(upload_requests("big", big), timeout=120)
        within(60, lambda: True if any("preimage-test-pause: stage" in line for line in dying.stderr_lines) else None)
        staged = [k for k in moto_server.keys(module_store.bucket) if k.startswith("registry/tmp/")]
        assert len(staged) == 1 and staged[0].endswith(".part")
        dying.kill()
        assert code_of(call.result) is not None  # the call died with the process
        stubs.channel.close()
    finally:
        dying.kill()

    for stubs in (b, c):
        names = [m.name for m in stubs.registry.ListModels(registry_pb2.ListModelsRequest(), timeout=30).models]
        assert "big" not in names
        assert code_of(lambda s=stubs: predict(s, "big", np.zeros((1, 8), np.float32))) == grpc.StatusCode.NOT_FOUND  # type: ignore[misc]
    X = np.random.default_rng(3).random((8, 2), dtype=np.float32)
    np.testing.assert_allclose(predict(c, "stable", X), onnx_eval(stable, X), atol=1e-5)

    with replica(tmp_path / "dying", module_store) as restarted:
        restarted.wait_serving()
        keys = moto_server.keys(module_store.bucket)
        assert not [k for k in keys if k.startswith("registry/tmp/")]
        assert f"registry/blobs/{stable_info.sha256}.onnx" in keys
        assert any("registry clean-up: removed" in line for line in restarted.stderr_lines)
    np.testing.assert_allclose(predict(b, "stable", X), onnx_eval(stable, X), atol=1e-5)


def test_postgres_down_means_not_serving_and_back_when_it_returns(
    trio: list[Stubs], postgres_server: PostgresServer, module_store: SharedStore, tmp_path: Path
) -> None:
    a, b, _ = trio
    model = linear_onnx(np.array([[1.0, 1.0]], np.float32), [0.0])
    register(a, "steady", model)
    X = np.ones((2, 2), np.float32)
    with replica(tmp_path / "watcher", module_store) as watched:
        watched.wait_serving()
        w = connect(watched.address)
        postgres_server.stop()
        try:
            within(20, lambda: True if health(w) == NOT_SERVING and health(a) == NOT_SERVING else None)
            assert code_of(lambda: predict(b, "steady", X)) == grpc.StatusCode.UNAVAILABLE
            line = within(5, lambda: next((x for x in watched.stderr_lines if "reporting NOT_SERVING" in x), None))
            assert "the model registry at postgresql://postgres@127.0.0.1:" in line and "unavailable" in line
        finally:
            postgres_server.start()
        within(30, lambda: True if health(w) == SERVING and health(a) == SERVING else None)
        within(5, lambda: True if any("reporting SERVING" in x for x in watched.stderr_lines) else None)
        np.testing.assert_allclose(predict(b, "steady", X), onnx_eval(model, X), atol=1e-5)
        np.testing.assert_allclose(predict(w, "steady", X), onnx_eval(model, X), atol=1e-5)
        w.channel.close()


def test_s3_errors_are_unavailable_naming_the_store(postgres_server: PostgresServer, tmp_path: Path) -> None:
    s3 = MotoServer()
    try:
        bucket = s3.new_bucket()
        store = SharedStore(postgres_server.new_database(), f"s3://{bucket}/r", bucket, s3.env)
        model = linear_onnx(np.array([[2.0, 0.0]], np.float32), [1.0])
        with replica(tmp_path / "first", store) as first:
            first.wait_serving()
            stubs = connect(first.address)
            register(stubs, "remote", model)
            stubs.channel.close()
        # A replica with an empty cache: the blob has to come from S3, which then goes away.
        with replica(tmp_path / "second", store) as second:
            second.wait_serving()
            stubs = connect(second.address)
            s3.close()
            X = np.ones((1, 2), np.float32)
            for call in (
                lambda: predict(stubs, "remote", X),
                lambda: register(stubs, "other", model),
            ):
                with pytest.raises(grpc.RpcError) as caught:
                    call()
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert f"the blob store s3://{bucket}/r is unavailable" in caught.value.details()
            stubs.channel.close()
    finally:
        s3.close()
