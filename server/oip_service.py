"""``inference.GRPCInferenceService``: the Open Inference Protocol (KServe v2) on preimage's port.

Forward inference only, so that Triton/KServe/MLServer clients, dashboards and
load tools can call every registered model; Invert and Train stay in
``preimage.v1`` (no standard has them). The servicer only translates:
:mod:`preimage.server.oip_convert` reads and writes the messages, and
ModelInfer goes through :meth:`Runtime.predict`, the forward path Predict uses.

``model_version`` is empty (the latest version), a version number or an alias
name. Readiness is the same truth as ``grpc.health.v1``: ServerReady answers
what the health service reports for the whole server.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from preimage import __version__
from preimage.errors import InvalidArgumentError, NotFoundError
from preimage.oip import grpc_predict_v2_pb2 as oip_pb2
from preimage.oip import grpc_predict_v2_pb2_grpc as oip_pb2_grpc
from preimage.server.calls import Call, rpc
from preimage.server.oip_convert import (
    infer_request_to_input,
    infer_response,
    input_error,
    model_metadata,
    model_ref,
)
from preimage.server.runtime import Runtime

__all__ = ["EXTENSIONS", "SERVER_NAME", "OipServicer"]

SERVER_NAME = "preimage"
EXTENSIONS: tuple[str, ...] = ()
"""Protocol extensions served: none (no model repository, shared memory, statistics, trace or logging)."""
PROTOCOL = "oip"
"""The ``protocol`` label of the per-model metrics."""


class OipServicer(oip_pb2_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol's six data-plane RPCs.

    Args:
        runtime: What the servicers share (registry, worker threads, metrics).
        ready: Whether the server reports SERVING on ``grpc.health.v1``.
    """

    def __init__(self, runtime: Runtime, ready: Callable[[], bool]) -> None:
        self.runtime = runtime
        self.metrics = runtime.metrics
        self._ready = ready

    @rpc("ServerLive")
    async def ServerLive(  # type: ignore[override]
        self, request: oip_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> oip_pb2.ServerLiveResponse:
        # Answering at all is being live: the process and its event loop are up.
        return oip_pb2.ServerLiveResponse(live=True)

    @rpc("ServerReady")
    async def ServerReady(  # type: ignore[override]
        self, request: oip_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> oip_pb2.ServerReadyResponse:
        return oip_pb2.ServerReadyResponse(ready=self._ready())

    @rpc("ServerMetadata")
    async def ServerMetadata(  # type: ignore[override]
        self, request: oip_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> oip_pb2.ServerMetadataResponse:
        return oip_pb2.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    @rpc("ModelReady", model_ref=lambda r: f"{r.name}/{r.version}")
    async def ModelReady(  # type: ignore[override]
        self, request: oip_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> oip_pb2.ModelReadyResponse:
        # Every stored version is servable (it was validated and converted at registration),
        # so a model is ready when the server is and the name and version resolve.
        if not self._ready():
            return oip_pb2.ModelReadyResponse(ready=False)
        try:
            ref = model_ref(request.name, request.version)
            await self.runtime.run(self.runtime.registry().get, ref)
        except NotFoundError:
            return oip_pb2.ModelReadyResponse(ready=False)
        return oip_pb2.ModelReadyResponse(ready=True)

    @rpc("ModelMetadata", model_ref=lambda r: f"{r.name}/{r.version}")
    async def ModelMetadata(  # type: ignore[override]
        self, request: oip_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> oip_pb2.ModelMetadataResponse:
        ref = model_ref(request.name, request.version)
        registry = self.runtime.registry()

        def read() -> oip_pb2.ModelMetadataResponse:
            record = registry.get(ref)
            versions = [r.version for r in registry.list(record.name, all_versions=True)]
            return model_metadata(record.name, versions, record.input_width, record.output_width)

        return await self.runtime.run(read)

    @rpc("ModelInfer", model_ref=lambda r: f"{r.model_name}/{r.model_version}")
    async def ModelInfer(  # type: ignore[override]
        self, request: oip_pb2.ModelInferRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> oip_pb2.ModelInferResponse:
        ref = model_ref(request.model_name, request.model_version)
        given = infer_request_to_input(request)
        try:
            record, outputs = await self.runtime.predict(ref, given.X)
        except InvalidArgumentError as exc:
            if exc.field != "inputs":
                raise
            raise input_error(given.X, exc) from exc
        call.model_ref = record.ref
        labels = (record.name, str(record.version), PROTOCOL)
        self.metrics.child(self.metrics.model_inferences, *labels).inc()
        self.metrics.child(self.metrics.model_rows, *labels).inc(given.X.shape[0])
        return infer_response(request, record.name, record.version, outputs, raw=given.raw)
