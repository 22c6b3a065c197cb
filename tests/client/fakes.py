"""A scripted fake preimage server: counts calls, records metadata, fails on demand.

Used where the real server cannot be made to fail the way a test needs
(UNAVAILABLE on the Nth call, a status with rich details).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from preimage.client import _wire
from preimage.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    tensor_pb2,
)


@dataclass
class Script:
    """What the fake does: ``failures[method]`` calls fail first with ``failure_code``.

    ``fail_after_first`` makes Invert fail *after* its first message instead.
    """

    failures: Counter[str] = field(default_factory=Counter)
    failure_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    fail_after_first: bool = False
    details: bytes | None = None


class _Fake(registry_pb2_grpc.RegistryServiceServicer, inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: Counter[str] = Counter()
        self.metadata: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[method] += 1
            self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
            fail = self.script.failures[method] > 0 and not (method == "Invert" and self.script.fail_after_first)
            if fail:
                self.script.failures[method] -= 1
        if fail:
            self._abort(context)

    def _abort(self, context: grpc.ServicerContext) -> None:
        if self.script.details is not None:
            context.set_trailing_metadata((("grpc-status-details-bin", self.script.details),))
        context.abort(self.script.failure_code, f"scripted {self.script.failure_code.name}")

    def Check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """``grpc.health.v1.Health/Check``: SERVING (raw bytes in and out)."""
        self._enter("Check", context)
        return bytes(_wire.HealthCheckResponse(status=1).SerializeToString())

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> registry_pb2.ListModelsResponse:
        self._enter("ListModels", context)
        return registry_pb2.ListModelsResponse(models=[registry_pb2.ModelInfo(name="fake", version=1)])

    def GetModel(self, request: Any, context: grpc.ServicerContext) -> registry_pb2.GetModelResponse:
        self._enter("GetModel", context)
        return registry_pb2.GetModelResponse(model=registry_pb2.ModelInfo(name="fake", version=1))

    def DeleteModel(self, request: Any, context: grpc.ServicerContext) -> registry_pb2.DeleteModelResponse:
        self._enter("DeleteModel", context)
        return registry_pb2.DeleteModelResponse()

    def RegisterModel(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        for _ in request_iterator:
            pass
        self._enter("RegisterModel", context)
        return registry_pb2.RegisterModelResponse(model=registry_pb2.ModelInfo(name="fake", version=1))

    def Predict(self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext) -> Any:
        self._enter("Predict", context)
        rows = request.inputs.rows
        return inference_pb2.PredictResponse(outputs=tensor_pb2.Matrix(rows=rows, cols=1, values=[1.0] * rows))

    def Invert(self, request: inference_pb2.InvertRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        self._enter("Invert", context)
        batch = inference_pb2.PatternBatch(
            inputs=tensor_pb2.Matrix(rows=1, cols=2, values=[0.5, 0.5]),
            outputs=tensor_pb2.Matrix(rows=1, cols=1, values=[1.0]),
            errors=tensor_pb2.Matrix(rows=1, cols=1, values=[0.0]),
        )
        yield inference_pb2.InvertResponse(patterns=batch)
        if self.script.fail_after_first and self.script.failures["Invert"] > 0:
            self.script.failures["Invert"] -= 1
            self._abort(context)
        yield inference_pb2.InvertResponse(
            summary=inference_pb2.InvertSummary(
                status=inference_pb2.INVERT_STATUS_COMPLETE, requested=request.count, returned=1
            )
        )


class FakeServer:
    """A fake server on a free loopback port; use as a context manager."""

    def __init__(self, script: Script | None = None) -> None:
        self.fake = _Fake(script or Script())
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(self.fake, self.server)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self.fake, self.server)
        health = {"Check": grpc.unary_unary_rpc_method_handler(self.fake.Check)}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("grpc.health.v1.Health", health),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    @property
    def calls(self) -> Counter[str]:
        """Calls received per method (failed ones included)."""
        return self.fake.calls

    @property
    def metadata(self) -> list[dict[str, str]]:
        """Invocation metadata of every call, in order."""
        return self.fake.metadata

    def __enter__(self) -> FakeServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(None)


def status_details(code: int, message: str, *details: Any) -> bytes:
    """A serialized ``google.rpc.Status`` with packed details (real ``google.rpc`` types)."""
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    return status_pb2.Status(code=code, message=message, details=packed).SerializeToString()


def bad_request(field_name: str) -> error_details_pb2.BadRequest:
    """A BadRequest naming one field."""
    return error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field_name, description="bad")]
    )


def retry_info(seconds: int, nanos: int) -> error_details_pb2.RetryInfo:
    """A RetryInfo with the given delay."""
    info = error_details_pb2.RetryInfo()
    info.retry_delay.seconds = seconds
    info.retry_delay.nanos = nanos
    return info
