"""The registry behind a real server: crash safety under SIGKILL, concurrency, the watched folder."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from preimage.v1 import inference_pb2, registry_pb2
from tests.models import linear_onnx, mlp_onnx, onnx_eval
from tests.process import ServerProcess
from tests.server.conftest import Stubs, connect, register, upload_requests
from tests.server.test_end_to_end import as_array, to_matrix


def registry_files(root: Path) -> tuple[set[str], set[str]]:
    blobs = {p.name for p in (root / "blobs").iterdir()} if (root / "blobs").exists() else set()
    tmp = {p.name for p in (root / "tmp").iterdir()} if (root / "tmp").exists() else set()
    return blobs, tmp


def check_servable(stubs: Stubs, ref: str, data: bytes, width: int) -> None:
    X = np.random.default_rng(0).random((4, width), dtype=np.float32)
    out = stubs.inference.Predict(inference_pb2.PredictRequest(model_ref=ref, inputs=to_matrix(X)), timeout=60)
    np.testing.assert_allclose(as_array(out.outputs), onnx_eval(data, X), rtol=1e-4, atol=1e-4)


def assert_only_earlier_model_left(root: Path, data: bytes) -> None:
    """Restart on ``root``: only difficulty:1 is listed, servable, with no orphan blob or temp file."""
    with ServerProcess(root) as server:
        server.wait_serving()
        stubs = connect(server.address)
        listed = stubs.registry.ListModels(registry_pb2.ListModelsRequest(all_versions=True)).models
        assert [(m.name, m.version) for m in listed] == [("difficulty", 1)]
        blobs, tmp = registry_files(root)
        assert blobs == {f"{listed[0].sha256}.onnx"}, "no orphan blob after start-up clean-up"
        assert tmp == set()
        check_servable(stubs, "difficulty:1", data, 10)
        stubs.channel.close()


def wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.05)


def test_sigkill_mid_upload(tmp_path: Path, example_model_bytes: bytes) -> None:
    root = tmp_path / "registry"
    big = mlp_onnx([10, 2500, 2500, 1], seed=3)  # ~25 MB
    sent = threading.Event()

    def slow_upload() -> Iterator[registry_pb2.RegisterModelRequest]:
        for i, request in enumerate(upload_requests("big", big)):
            if i == 10:
                sent.set()
                time.sleep(60)  # the server is killed while it waits for the rest
            yield request

    with ServerProcess(root) as server:
        server.wait_serving()
        stubs = connect(server.address)
        register(stubs, "difficulty", example_model_bytes)
        failure: list[BaseException] = []
        uploader = threading.Thread(
            target=lambda: _expect_error(lambda: stubs.registry.RegisterModel(slow_upload(), timeout=120), failure)
        )
        uploader.start()
        assert sent.wait(60)
        wait_for(lambda: registry_files(root)[1])  # the partial upload is on disk in tmp/
        server.kill()
        uploader.join(120)
        stubs.channel.close()

    assert_only_earlier_model_left(root, example_model_bytes)


@pytest.mark.parametrize("point", ["DELETE", "COMMIT"])
def test_sigkill_mid_delete_or_commit(tmp_path: Path, example_model_bytes: bytes, point: str) -> None:
    root = tmp_path / "registry"
    other = linear_onnx(np.arange(6, dtype=np.float32).reshape(2, 3), [0.5, -1.0])
    with ServerProcess(root) as seeder:
        seeder.wait_serving()
        stubs = connect(seeder.address)
        register(stubs, "difficulty", example_model_bytes)
        if point == "DELETE":
            register(stubs, "other", other)
        stubs.channel.close()
        assert seeder.terminate() == 0

    with ServerProcess(root, env={f"PREIMAGE_TEST_PAUSE_{point}": "60"}) as server:
        server.wait_serving()
        stubs = connect(server.address)
        if point == "DELETE":
            request = registry_pb2.DeleteModelRequest(model_ref="other:1")
            action = lambda: stubs.registry.DeleteModel(request, timeout=120)  # noqa: E731
        else:
            action = lambda: register(stubs, "other", other)  # noqa: E731
        failure: list[BaseException] = []
        caller = threading.Thread(target=lambda: _expect_error(action, failure))
        caller.start()
        wait_for(lambda: any(f"preimage-test-pause: {point.lower()}" in line for line in server.stderr_lines))
        server.kill()
        caller.join(120)
        stubs.channel.close()

    # DELETE: the index transaction had committed, so the model is gone; COMMIT: its row never landed.
    assert_only_earlier_model_left(root, example_model_bytes)


def _expect_error(call: Any, into: list[BaseException]) -> None:
    try:
        call()
    except grpc.RpcError as exc:
        into.append(exc)


def test_concurrent_registrations_get_consecutive_versions(stubs: Stubs) -> None:
    models = [linear_onnx(np.full((1, 3), float(i)), [0.0]) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        infos = list(pool.map(lambda data: register(stubs, "same", data), models))
    assert sorted(info.version for info in infos) == [1, 2, 3, 4, 5, 6]
    for info, data in zip(infos, models, strict=True):
        check_servable(stubs, f"same:{info.version}", data, 3)


def test_delete_while_inverting_lets_the_stream_finish(stubs: Stubs, example_model_bytes: bytes) -> None:
    register(stubs, "difficulty", example_model_bytes)
    stream = stubs.inference.Invert(
        inference_pb2.InvertRequest(
            model_ref="difficulty:1",
            targets=[inference_pb2.Target(value=7.0)],
            count=1_000_000,
            seed=4,
            budget=inference_pb2.InvertBudget(max_seconds=2.0),
        ),
        timeout=60,
    )
    first = next(stream)
    assert first.WhichOneof("event") == "patterns"
    stubs.registry.DeleteModel(registry_pb2.DeleteModelRequest(model_ref="difficulty:1"))
    rest = list(stream)
    assert rest[-1].summary.status == inference_pb2.INVERT_STATUS_BUDGET_SPENT
    patterns = np.concatenate([as_array(r.patterns.inputs) for r in [first, *rest[:-1]]])
    assert np.all(np.abs(onnx_eval(example_model_bytes, patterns)[:, 0] - 7.0) <= 1e-3)
    with pytest.raises(grpc.RpcError) as caught:
        stubs.registry.GetModel(registry_pb2.GetModelRequest(model_ref="difficulty:1"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_watched_folder(tmp_path: Path) -> None:
    watched = tmp_path / "models"
    (watched / "speed").mkdir(parents=True)
    first = linear_onnx(np.array([[1.0, 2.0]]), [0.0])
    second = linear_onnx(np.array([[3.0, -1.0]]), [1.0])
    schema = {"inputs": [{"name": "a", "min": 0, "max": 1}, {"name": "b", "min": 0, "max": 2}]}
    (watched / "speed" / "schema.json").write_text(json.dumps(schema))
    (watched / "speed" / "model.onnx").write_bytes(first)
    with ServerProcess(tmp_path / "registry", "--watch", str(watched), "--watch-interval", "0.2") as server:
        server.wait_serving()
        stubs = connect(server.address)

        def latest() -> registry_pb2.ModelInfo | None:
            models = stubs.registry.ListModels(registry_pb2.ListModelsRequest(name="speed")).models
            return models[0] if models else None

        wait_for(lambda: latest() is not None)
        info = latest()
        assert info is not None and info.version == 1 and info.source == registry_pb2.MODEL_SOURCE_WATCH
        assert [(f.name, f.max) for f in info.schema.inputs] == [("a", 1.0), ("b", 2.0)]

        # Requests keep succeeding while the file changes and the new version loads.
        errors: list[BaseException] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    stubs.inference.Predict(
                        inference_pb2.PredictRequest(model_ref="speed", inputs=to_matrix(np.ones((1, 2)))), timeout=30
                    )
                except grpc.RpcError as exc:
                    errors.append(exc)

        worker = threading.Thread(target=hammer)
        worker.start()
        (watched / "speed" / "model.onnx").write_bytes(second)
        wait_for(lambda: (m := latest()) is not None and m.version == 2)
        stop.set()
        worker.join(30)
        assert errors == []
        check_servable(stubs, "speed", second, 2)
        check_servable(stubs, "speed:1", first, 2)
        stubs.channel.close()
