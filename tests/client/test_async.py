"""The asyncio client end to end against a real server (patterns checked with onnxruntime)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from preimage.client import (
    AsyncClient,
    CancelledError,
    DeadlineExceededError,
    InvertStatus,
    ModelNotFoundError,
    TrainProgress,
    TrainResult,
)
from tests.models import EXAMPLE_MODEL, onnx_eval

TOL, SLACK = 1e-3, 1e-4


async def test_register_predict_invert_async(server: Any, unique_name: str) -> None:
    async with AsyncClient(server.address, timeout=120) as client:
        await client.wait_ready(10)
        assert await client.health() == "SERVING"
        info = await client.register(EXAMPLE_MODEL, unique_name)
        assert [m.ref for m in await client.models(unique_name)] == [info.ref]
        assert (await client.model(info.ref)).sha256 == info.sha256

        X = np.random.default_rng(3).random((16, 10), dtype=np.float32)
        np.testing.assert_allclose(await client.predict(info.ref, X), onnx_eval(EXAMPLE_MODEL, X), atol=SLACK)
        names = info.schema.feature_names
        by_name = [dict(zip(names, row.tolist(), strict=True)) for row in X[:2]]
        np.testing.assert_allclose(await client.predict(info.ref, by_name), onnx_eval(EXAMPLE_MODEL, X[:2]), atol=SLACK)

        stream = client.invert(info.ref, target=3.0, n=30, seed=9, named=True)
        patterns = [p async for p in stream]
        assert len(patterns) == 30 and stream.summary is not None
        assert stream.summary.status is InvertStatus.COMPLETE
        X = np.stack([p.input for p in patterns])
        assert np.all(np.abs(onnx_eval(EXAMPLE_MODEL, X) - 3.0) <= TOL + SLACK)
        assert X.min() >= 0.0 and X.max() <= 1.0
        assert all(p.features is not None and list(p.features) == names for p in patterns)

        arrays = await client.invert(info.ref, target=3.0, n=30, seed=9).to_numpy()
        np.testing.assert_array_equal(arrays.inputs, X)  # same seed, same stream

        await client.alias(info.name, "live", info.version)
        assert (await client.model(f"{info.name}@live")).version == info.version
        await client.unalias(info.name, "live")
        assert [m.ref for m in await client.delete(info.ref)] == [info.ref]
        with pytest.raises(ModelNotFoundError):
            await client.model(info.ref)


async def test_async_cancel_and_deadline(server: Any, unique_name: str) -> None:
    async with AsyncClient(server.address, timeout=120) as client:
        info = await client.register(EXAMPLE_MODEL, unique_name)
        async with client.invert(info.ref, target=7.0, n=2_000_000, batch_size=16, seed=0) as stream:
            first = await anext(aiter(stream))
            assert abs(float(onnx_eval(EXAMPLE_MODEL, first.input[None])[0, 0]) - 7.0) <= TOL + SLACK
        assert stream.cancelled and [p async for p in stream] == [] and stream.summary is None

        with pytest.raises(DeadlineExceededError):
            await client.invert(info.ref, target=7.0, n=5_000_000, seed=0, timeout=2.0).to_numpy()
        assert await client.health() == "SERVING"


async def test_task_cancellation_propagates(server: Any, unique_name: str) -> None:
    async with AsyncClient(server.address, timeout=120) as client:
        info = await client.register(EXAMPLE_MODEL, unique_name)

        async def consume() -> None:
            async for _ in client.invert(info.ref, target=7.0, n=2_000_000, batch_size=16, seed=0):
                await asyncio.sleep(0)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await client.health() == "SERVING"


async def test_train_async(server: Any, unique_name: str) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(400), rng.random(400)
    table = {"a": a, "b": b, "y": 2.0 * a - b}
    async with AsyncClient(server.address, timeout=120) as client:
        run = client.train(table, name=unique_name, target="y", epochs=10, seed=0)
        events = [e async for e in run]
        assert any(isinstance(e, TrainProgress) for e in events) and isinstance(events[-1], TrainResult)
        assert run.result is not None and run.result.model.name == unique_name

        run = client.train(table, name=f"{unique_name}x", target="y", epochs=100_000, seed=0)
        async for event in run:
            if isinstance(event, TrainProgress):
                run.cancel()
        with pytest.raises(CancelledError):
            await run.wait()
        assert await client.models(f"{unique_name}x") == []
