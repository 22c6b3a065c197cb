"""Everything registered survives a server restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from preimage.v1 import inference_pb2, registry_pb2
from tests.models import onnx_eval
from tests.process import ServerProcess
from tests.server.conftest import connect, register
from tests.server.test_end_to_end import as_array, to_matrix


def test_models_survive_restart(tmp_path: Path, example_model_bytes: bytes) -> None:
    registry_dir = tmp_path / "registry"
    with ServerProcess(registry_dir) as first:
        first.wait_serving()
        stubs = connect(first.address)
        info = register(stubs, "difficulty", example_model_bytes)
        stubs.channel.close()
        assert first.terminate() == 0

    with ServerProcess(registry_dir) as second:
        second.wait_serving()
        stubs = connect(second.address)
        listed = stubs.registry.ListModels(registry_pb2.ListModelsRequest()).models
        assert [(m.name, m.version, m.sha256) for m in listed] == [("difficulty", 1, info.sha256)]
        X = np.random.default_rng(1).random((16, 10), dtype=np.float32)
        out = stubs.inference.Predict(inference_pb2.PredictRequest(model_ref="difficulty:1", inputs=to_matrix(X)))
        np.testing.assert_allclose(as_array(out.outputs), onnx_eval(example_model_bytes, X), atol=1e-5)
        stubs.channel.close()
