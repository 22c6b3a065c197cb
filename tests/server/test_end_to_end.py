"""Register → predict → invert through a real server, checked with onnxruntime."""

from __future__ import annotations

import numpy as np

from preimage.v1 import inference_pb2, registry_pb2, tensor_pb2
from tests.models import linear_onnx, onnx_eval
from tests.server.conftest import Stubs, register


def as_array(matrix: tensor_pb2.Matrix) -> np.ndarray:
    return np.asarray(matrix.values, dtype=np.float32).reshape(matrix.rows, matrix.cols)


def to_matrix(X: np.ndarray) -> tensor_pb2.Matrix:
    X = np.asarray(X, dtype=np.float32)
    return tensor_pb2.Matrix(rows=X.shape[0], cols=X.shape[1], values=X.ravel().tolist())


def collect(stream) -> tuple[np.ndarray, np.ndarray, np.ndarray, inference_pb2.InvertSummary, int]:
    inputs, outputs, errors, messages, summary = [], [], [], 0, None
    for response in stream:
        if response.WhichOneof("event") == "patterns":
            messages += 1
            inputs.append(as_array(response.patterns.inputs))
            outputs.append(as_array(response.patterns.outputs))
            errors.append(as_array(response.patterns.errors))
        else:
            assert summary is None, "exactly one summary, last"
            summary = response.summary
    assert summary is not None
    d = inputs[0].shape[1] if inputs else 0
    return (
        np.concatenate(inputs) if inputs else np.zeros((0, d)),
        np.concatenate(outputs) if outputs else np.zeros((0, 1)),
        np.concatenate(errors) if errors else np.zeros((0, 1)),
        summary,
        messages,
    )


def test_register_predict_invert_example(stubs: Stubs, example_model_bytes: bytes) -> None:
    info = register(stubs, "difficulty", example_model_bytes)
    assert (info.name, info.version, info.input_width, info.output_width) == ("difficulty", 1, 10, 1)
    # The example carries its schema in the ONNX metadata: bounds [0, 1] for every feature.
    assert [(f.min, f.max) for f in info.schema.inputs] == [(0.0, 1.0)] * 10

    rng = np.random.default_rng(0)
    X = rng.random((64, 10), dtype=np.float32)
    response = stubs.inference.Predict(inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(X)))
    assert (response.model.name, response.model.version) == ("difficulty", 1)
    np.testing.assert_allclose(as_array(response.outputs), onnx_eval(example_model_bytes, X), rtol=1e-5, atol=1e-5)

    request = inference_pb2.InvertRequest(
        model_ref="difficulty:1", targets=[inference_pb2.Target(value=7.0)], count=300, tolerance=1e-3, seed=11
    )
    X, Y, E, summary, messages = collect(stubs.inference.Invert(request, timeout=120))
    assert summary.status == inference_pb2.INVERT_STATUS_COMPLETE
    assert summary.requested == 300 and summary.returned == len(X) == 300
    assert messages >= 2, "several patterns per message, more than one message for 300 patterns"
    assert summary.forward_passes > 0 and summary.elapsed_seconds > 0
    assert (summary.model.name, summary.model.version) == ("difficulty", 1)
    assert np.all((X >= 0.0) & (X <= 1.0))
    independent = onnx_eval(example_model_bytes, X)
    assert np.all(np.abs(independent - 7.0) <= 1e-3)
    np.testing.assert_allclose(Y, independent, atol=1e-5)
    np.testing.assert_allclose(E, np.abs(Y - 7.0), atol=1e-6)
    assert len(np.unique(X, axis=0)) == len(X)


def test_invert_with_request_bounds_on_unbounded_model(stubs: Stubs) -> None:
    W = np.array([[1.0, 2.0, -1.0]], dtype=np.float32)
    data = linear_onnx(W, [0.5])
    info = register(stubs, "lin", data)
    assert all(not f.HasField("min") for f in info.schema.inputs)
    request = inference_pb2.InvertRequest(
        model_ref="lin",
        targets=[inference_pb2.Target(value=1.25)],
        count=50,
        seed=3,
        bounds=[
            inference_pb2.FeatureBounds(lower=-2, upper=2),
            inference_pb2.FeatureBounds(feature="x1", lower=0, upper=0.5),
        ],
    )
    X, _, _, summary, _ = collect(stubs.inference.Invert(request, timeout=60))
    assert summary.returned == 50
    assert np.all((X >= -2) & (X <= 2)) and np.all((X[:, 1] >= 0) & (X[:, 1] <= 0.5))
    assert np.all(np.abs(onnx_eval(data, X)[:, 0] - 1.25) <= 1e-3)


def test_unreachable_target_ends_with_summary(stubs: Stubs, example_model_bytes: bytes) -> None:
    register(stubs, "difficulty", example_model_bytes)
    request = inference_pb2.InvertRequest(
        model_ref="difficulty", targets=[inference_pb2.Target(value=50.0)], count=10, seed=1
    )
    X, _, _, summary, _ = collect(stubs.inference.Invert(request, timeout=120))
    assert len(X) == 0
    assert summary.status == inference_pb2.INVERT_STATUS_UNREACHABLE
    assert summary.returned == 0 and len(summary.closest_output) == 1
    # The model's outputs top out near 10: the closest output found says how near it got.
    assert 8.0 < summary.closest_output[0] < 10.5
    assert summary.closest_error > 39


def test_list_get_delete(stubs: Stubs, example_model_bytes: bytes) -> None:
    register(stubs, "difficulty", example_model_bytes)
    second = register(stubs, "difficulty", example_model_bytes)
    assert second.version == 2 and second.latest
    listed = stubs.registry.ListModels(registry_pb2.ListModelsRequest(all_versions=True)).models
    assert [(m.name, m.version) for m in listed] == [("difficulty", 1), ("difficulty", 2)]
    got = stubs.registry.GetModel(registry_pb2.GetModelRequest(model_ref="difficulty")).model
    assert got.version == 2 and got.sha256 == second.sha256 and got.size_bytes == len(example_model_bytes)
    deleted = stubs.registry.DeleteModel(registry_pb2.DeleteModelRequest(model_ref="difficulty:2")).deleted
    assert [m.version for m in deleted] == [2]
    assert stubs.registry.GetModel(registry_pb2.GetModelRequest(model_ref="difficulty")).model.version == 1


def test_model_over_default_message_limit_registers(stubs: Stubs) -> None:
    rng = np.random.default_rng(5)
    from tests.models import mlp_onnx

    data = mlp_onnx([10, 1200, 1000, 1], seed=1)
    assert len(data) > 4 * 2**20
    info = register(stubs, "big", data)
    assert info.size_bytes == len(data)
    X = rng.random((8, 10), dtype=np.float32)
    response = stubs.inference.Predict(inference_pb2.PredictRequest(model_ref="big", inputs=to_matrix(X)))
    np.testing.assert_allclose(as_array(response.outputs), onnx_eval(data, X), rtol=1e-4, atol=1e-4)
