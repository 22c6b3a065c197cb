"""Every client mistake gets a specific status and message; the server keeps serving."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from preimage.oip import grpc_predict_v2_pb2 as oip_pb2
from preimage.oip import grpc_predict_v2_pb2_grpc as oip_pb2_grpc
from preimage.registry.errors import BlobStoreUnavailableError, RegistryUnavailableError
from preimage.server.app import start_server
from preimage.server.settings import Settings
from preimage.server.status import code_for, status_for
from preimage.v1 import inference_pb2, registry_pb2, tensor_pb2
from tests.models import linear_onnx, onnx_eval
from tests.server.conftest import Stubs, connect, register, upload_requests

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def matrix(rows: list[list[float]]) -> tensor_pb2.Matrix:
    X = np.asarray(rows, dtype=np.float32)
    return tensor_pb2.Matrix(rows=X.shape[0], cols=X.shape[1], values=X.ravel().tolist())


def invert(**kwargs: Any) -> Callable[[Stubs], Any]:
    fields: dict[str, Any] = {"model_ref": "difficulty", "targets": [inference_pb2.Target(value=7.0)], "count": 5}
    fields.update(kwargs)
    return lambda s: list(s.inference.Invert(inference_pb2.InvertRequest(**fields), timeout=60))


def predict(ref: str, rows: Any) -> Callable[[Stubs], Any]:
    inputs = rows if isinstance(rows, tensor_pb2.Matrix) else matrix(rows)
    return lambda s: s.inference.Predict(inference_pb2.PredictRequest(model_ref=ref, inputs=inputs), timeout=30)


def upload(name: str, data: bytes) -> Callable[[Stubs], Any]:
    return lambda s: s.registry.RegisterModel(upload_requests(name, data), timeout=60)


def get(ref: str) -> Callable[[Stubs], Any]:
    return lambda s: s.registry.GetModel(registry_pb2.GetModelRequest(model_ref=ref), timeout=30)


def oip_infer(
    name: str = "difficulty",
    version: str = "",
    *,
    shape: tuple[int, ...] = (1, 10),
    raw: bytes | None = None,
    input_name: str = "input",
    **tensor: Any,
) -> Callable[[Stubs], Any]:
    """An Open Inference Protocol ModelInfer; FP32 ``input`` of ``shape`` filled with 0.5 unless overridden."""
    fields: dict[str, Any] = {"name": input_name, "datatype": "FP32", "shape": list(shape), **tensor}
    outputs = fields.pop("outputs", [])
    inputs = fields.pop("inputs", None)
    if raw is None and "contents" not in fields:
        fields["contents"] = oip_pb2.InferTensorContents(fp32_contents=[0.5] * math.prod(shape))
    request = oip_pb2.ModelInferRequest(
        model_name=name,
        model_version=version,
        inputs=inputs if inputs is not None else [oip_pb2.ModelInferRequest.InferInputTensor(**fields)],
        outputs=[oip_pb2.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs],
        raw_input_contents=[] if raw is None else [raw],
    )
    return lambda s: oip_pb2_grpc.GRPCInferenceServiceStub(s.channel).ModelInfer(request, timeout=30)


def oip_metadata(name: str, version: str = "") -> Callable[[Stubs], Any]:
    request = oip_pb2.ModelMetadataRequest(name=name, version=version)
    return lambda s: oip_pb2_grpc.GRPCInferenceServiceStub(s.channel).ModelMetadata(request, timeout=30)


ROW = [[0.5] * 10]
OIP_TENSOR = oip_pb2.ModelInferRequest.InferInputTensor
CASES = [
    # (id, call, code, words the message must contain, bad field or None)
    ("unknown-model", get("nosuch"), NOT_FOUND, ["nosuch"], None),
    ("unknown-version", get("difficulty:9"), NOT_FOUND, ["difficulty", "9"], None),
    ("unknown-alias", get("difficulty@prod"), NOT_FOUND, ["prod"], None),
    ("predict-unknown-model", predict("nosuch:2", ROW), NOT_FOUND, ["nosuch"], None),
    ("invert-unknown-model", invert(model_ref="nosuch"), NOT_FOUND, ["nosuch"], None),
    ("malformed-ref", get("Bad Name!"), INVALID, ["Bad Name!"], None),
    ("empty-ref", get(""), INVALID, ["model_ref"], "model_ref"),
    ("random-bytes", upload("junk", np.random.default_rng(0).bytes(4096)), INVALID, ["onnx"], None),
    ("empty-bytes", upload("junk", b""), INVALID, ["empty"], None),
    ("text-bytes", upload("junk", b"this is not a model\n" * 50), INVALID, ["onnx"], None),
    ("bad-name", upload("Bad/Name", linear_onnx(np.ones((1, 2)), [0.0])), INVALID, ["name"], None),
    ("predict-width", predict("difficulty", [[0.5] * 9]), INVALID, ["9", "10"], "inputs"),
    ("predict-nan", predict("difficulty", [[0.5] * 9 + [math.nan]]), INVALID, ["finite"], "inputs"),
    ("predict-inf", predict("difficulty", [[math.inf] + [0.5] * 9]), INVALID, ["finite"], "inputs"),
    (
        "predict-short-matrix",
        predict("difficulty", tensor_pb2.Matrix(rows=2, cols=10, values=[0.5] * 19)),
        INVALID,
        ["20", "19"],
        "inputs",
    ),
    (
        "predict-short-raw-matrix",
        predict("difficulty", tensor_pb2.Matrix(rows=2, cols=10, raw=b"\0" * 79)),
        INVALID,
        ["80", "79", "raw"],
        "inputs",
    ),
    (
        "predict-raw-and-values",
        predict("difficulty", tensor_pb2.Matrix(rows=1, cols=1, values=[0.5], raw=b"\0" * 4)),
        INVALID,
        ["raw", "values"],
        "inputs",
    ),
    ("invert-nan-target", invert(targets=[inference_pb2.Target(value=math.nan)]), INVALID, ["finite"], "targets[0]"),
    ("invert-inf-target", invert(targets=[inference_pb2.Target(value=math.inf)]), INVALID, ["finite"], "targets[0]"),
    ("invert-no-target", invert(targets=[]), INVALID, ["target"], None),
    (
        "invert-too-many-targets",
        invert(targets=[inference_pb2.Target(value=7.0), inference_pb2.Target(value=1.0)]),
        INVALID,
        ["2", "1"],
        None,
    ),
    ("invert-unset-target", invert(targets=[inference_pb2.Target()]), INVALID, ["value or a range"], "targets[0]"),
    ("invert-zero-count", invert(count=0), INVALID, ["count"], "count"),
    ("invert-negative-tolerance", invert(tolerance=-0.1), INVALID, ["tolerance"], "tolerance"),
    (
        "invert-inverted-bounds",
        invert(bounds=[inference_pb2.FeatureBounds(feature="enemy_speed", lower=0.8, upper=0.2)]),
        INVALID,
        ["0.8", "0.2"],
        "bounds[0]",
    ),
    (
        "invert-unknown-feature",
        invert(bounds=[inference_pb2.FeatureBounds(feature="nosuch", lower=0, upper=1)]),
        INVALID,
        ["nosuch"],
        None,
    ),
    (
        "invert-inverted-range",
        invert(targets=[inference_pb2.Target(range=inference_pb2.Interval(lower=8, upper=6))]),
        INVALID,
        ["8", "6"],
        "targets[0]",
    ),
    ("invert-unbounded-model", invert(model_ref="lin"), INVALID, ["bounds"], None),
    (
        "invert-max-uncertainty-without-spread",
        invert(max_uncertainty=0.1),
        INVALID,
        ["max_uncertainty", "spread outputs", "ensemble"],
        "max_uncertainty",
    ),
    ("invert-nan-max-uncertainty", invert(max_uncertainty=math.nan), INVALID, ["max_uncertainty"], "max_uncertainty"),
    ("invert-negative-max-uncertainty", invert(max_uncertainty=-1.0), INVALID, ["positive"], "max_uncertainty"),
    ("invert-over-count-limit", invert(count=10**12), grpc.StatusCode.RESOURCE_EXHAUSTED, ["limit"], None),
    (
        "delete-bare-name",
        lambda s: s.registry.DeleteModel(registry_pb2.DeleteModelRequest(model_ref="difficulty")),
        INVALID,
        ["all"],
        None,
    ),
    (
        "header-twice",
        lambda s: s.registry.RegisterModel(
            iter([registry_pb2.RegisterModelRequest(header=registry_pb2.RegisterModelHeader(name="twice"))] * 2)
        ),
        INVALID,
        ["message 1", "only the first message may be the header"],
        "chunk",
    ),
    (
        "train-without-config",
        lambda s: list(s.inference.Train(iter([inference_pb2.TrainRequest(data=inference_pb2.TrainDataChunk())]))),
        INVALID,
        ["config"],
        "config",
    ),
    (
        "train-config-twice",
        lambda s: list(
            s.inference.Train(
                iter(
                    [inference_pb2.TrainRequest(config=inference_pb2.TrainConfig(name="twice", target_columns=["y"]))]
                    * 2
                )
            )
        ),
        INVALID,
        ["message 1", "only the first message may be the config"],
        "data",
    ),
    (
        "stream-without-header",
        lambda s: s.registry.RegisterModel(iter([registry_pb2.RegisterModelRequest(chunk=b"abc")])),
        INVALID,
        ["header"],
        "header",
    ),
    # The Open Inference Protocol (inference.GRPCInferenceService) in the protocol's terms.
    ("oip-unknown-model", oip_infer("nosuch"), NOT_FOUND, ["nosuch"], None),
    ("oip-unknown-version", oip_infer(version="9"), NOT_FOUND, ["difficulty", "9"], None),
    ("oip-unknown-alias", oip_infer(version="beta"), NOT_FOUND, ["beta"], None),
    ("oip-malformed-version", oip_infer(version="1.0"), NOT_FOUND, ["1.0"], None),
    ("oip-malformed-name", oip_infer("Bad Name!"), NOT_FOUND, ["Bad Name!"], None),
    ("oip-empty-name", oip_infer(""), INVALID, ["model_name"], "model_name"),
    ("oip-metadata-unknown-model", oip_metadata("nosuch"), NOT_FOUND, ["nosuch"], None),
    ("oip-metadata-unknown-version", oip_metadata("difficulty", "3"), NOT_FOUND, ["3"], None),
    (
        "oip-wrong-datatype",
        oip_infer(datatype="FP64", contents=oip_pb2.InferTensorContents(fp64_contents=[0.5] * 10)),
        INVALID,
        ["'input'", "FP64", "FP32"],
        "inputs[0]",
    ),
    ("oip-wrong-width", oip_infer(shape=(1, 9)), INVALID, ["'input'", "[1, 9]", "9", "10"], "inputs[0]"),
    ("oip-one-dimensional", oip_infer(shape=(10,)), INVALID, ["'input'", "[10]"], "inputs[0]"),
    ("oip-wrong-input-name", oip_infer(input_name="x"), INVALID, ["'x'", "'input'"], "inputs[0]"),
    (
        "oip-two-inputs",
        oip_infer(inputs=[OIP_TENSOR(name="input", datatype="FP32", shape=[1, 10])] * 2),
        INVALID,
        ["one input", "2"],
        "inputs",
    ),
    (
        "oip-short-typed",
        oip_infer(contents=oip_pb2.InferTensorContents(fp32_contents=[0.5] * 9)),
        INVALID,
        ["'input'", "10", "9"],
        "inputs[0]",
    ),
    ("oip-short-raw", oip_infer(raw=b"\0" * 39), INVALID, ["'input'", "40", "39"], "inputs[0]"),
    (
        "oip-raw-and-typed",
        oip_infer(raw=b"\0" * 40, contents=oip_pb2.InferTensorContents(fp32_contents=[0.5] * 10)),
        INVALID,
        ["raw_input_contents", "contents"],
        "inputs[0]",
    ),
    (
        "oip-fp32-in-wrong-field",
        oip_infer(contents=oip_pb2.InferTensorContents(fp64_contents=[0.5] * 10)),
        INVALID,
        ["fp32_contents", "fp64_contents"],
        "inputs[0]",
    ),
    ("oip-unknown-output", oip_infer(outputs=["y"]), INVALID, ["'y'", "'output'"], "outputs"),
    (
        "oip-nan",
        oip_infer(contents=oip_pb2.InferTensorContents(fp32_contents=[math.nan] * 10)),
        INVALID,
        ["'input'", "finite"],
        "inputs[0]",
    ),
]


@pytest.fixture(scope="module")
def loaded_server(tmp_path_factory: pytest.TempPathFactory, example_model_bytes_module: bytes) -> Any:
    settings = Settings(
        registry_dir=tmp_path_factory.mktemp("registry"), address="127.0.0.1:0", max_invert_count=1_000_000
    )
    running = start_server(settings)
    stubs = connect(running.address)
    register(stubs, "difficulty", example_model_bytes_module)
    register(stubs, "lin", linear_onnx(np.ones((1, 3)), [0.0]))
    yield stubs
    stubs.channel.close()
    running.stop()


@pytest.fixture(scope="module")
def example_model_bytes_module() -> bytes:
    from tests.models import EXAMPLE_MODEL

    return EXAMPLE_MODEL.read_bytes()


@pytest.mark.parametrize(("call", "code", "words", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_status(
    loaded_server: Stubs,
    example_model_bytes_module: bytes,
    call: Callable[[Stubs], Any],
    code: grpc.StatusCode,
    words: list[str],
    field: str | None,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(loaded_server)
    error = caught.value
    assert error.code() == code, error.details()
    for word in words:
        assert word.lower() in error.details().lower(), error.details()
    status = rpc_status.from_call(error)
    if field is not None:
        assert status is not None
        violations = [
            v.field
            for detail in status.details
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR)
            for v in _unpack_bad_request(detail).field_violations
        ]
        assert field in violations
    # The server keeps serving, and nothing stored was lost.
    X = np.full((1, 10), 0.5, dtype=np.float32)
    out = predict("difficulty:1", X.tolist())(loaded_server)
    np.testing.assert_allclose(
        np.asarray(out.outputs.values).reshape(1, 1), onnx_eval(example_model_bytes_module, X), atol=1e-5
    )
    names = {(m.name, m.version) for m in loaded_server.registry.ListModels(registry_pb2.ListModelsRequest()).models}
    assert names == {("difficulty", 1), ("lin", 1)}


def _unpack_bad_request(detail: Any) -> error_details_pb2.BadRequest:
    message = error_details_pb2.BadRequest()
    detail.Unpack(message)
    return message


def test_model_over_size_limit_is_resource_exhausted(tmp_path: Any) -> None:
    data = linear_onnx(np.ones((1, 600)), [0.0])
    settings = Settings(registry_dir=tmp_path / "r", address="127.0.0.1:0", max_model_bytes=1024)
    with start_server(settings) as running:
        stubs = connect(running.address)
        with pytest.raises(grpc.RpcError) as caught:
            register(stubs, "big", data)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1024" in caught.value.details()
        assert list(stubs.registry.ListModels(registry_pb2.ListModelsRequest()).models) == []
        stubs.channel.close()


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            BlobStoreUnavailableError("s3://models/prod", "GenericError: connection refused"),
            "the blob store s3://models/prod is unavailable: GenericError: connection refused",
        ),
        (
            RegistryUnavailableError("postgresql://app:***@db:5432/preimage", "OperationalError: timeout"),
            "the model registry at postgresql://app:***@db:5432/preimage is unavailable",
        ),
    ],
    ids=["blob-store", "shared-index"],
)
def test_shared_store_errors_are_unavailable_naming_the_store(error: Exception, words: str) -> None:
    # The end-to-end cases (a stopped S3 server, a stopped PostgreSQL) are in tests/server/test_replicas.py.
    assert code_for(error) is grpc.StatusCode.UNAVAILABLE
    assert words in status_for(error, "r1").details
