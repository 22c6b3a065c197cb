"""``preimage.v1.RegistryService``: translates registry RPCs, nothing more."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc

from preimage.errors import InvalidArgumentError
from preimage.server.calls import Call, rpc
from preimage.server.convert import (
    model_info_to_proto,
    required_ref,
    schema_from_proto,
    split_stream,
    statistics_from_proto,
)
from preimage.server.runtime import Runtime
from preimage.v1 import registry_pb2, registry_pb2_grpc

__all__ = ["RegistryServicer"]


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Registry RPCs over :class:`preimage.registry.Registry`, run in worker threads."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.metrics = runtime.metrics

    @rpc("RegisterModel")
    async def RegisterModel(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[registry_pb2.RegisterModelRequest],
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> registry_pb2.RegisterModelResponse:
        from preimage.registry import ModelSource

        registry = self.runtime.registry()
        header, chunks = await split_stream(
            request_iterator, rpc="RegisterModel", head="header", rest="chunk", hint=" (with the model name)"
        )
        call.model_ref = header.name
        schema = schema_from_proto(header.schema, "header.schema") if header.HasField("schema") else None
        statistics = statistics_from_proto(header.statistics) if header.HasField("statistics") else None
        default_bounds = _default_bounds(header)
        upload = await self.runtime.run(registry.begin_upload, header.size_bytes or None, header.sha256 or None)
        try:
            async for chunk in chunks:
                await self.runtime.run(upload.write, chunk)
            record = await self.runtime.run(
                upload.commit,
                header.name,
                schema=schema,
                statistics=statistics,
                source=ModelSource.UPLOAD,
                default_bounds=default_bounds,
            )
        except BaseException:
            # Synchronous on purpose: it only deletes a temp file, and it must run
            # even when this coroutine is being cancelled.
            upload.abort()
            raise
        self.metrics.registered.labels("upload").inc()
        call.model_ref = f"{record.name}:{record.version}"
        return registry_pb2.RegisterModelResponse(model=model_info_to_proto(record))

    @rpc("ListModels")
    async def ListModels(  # type: ignore[override]
        self, request: registry_pb2.ListModelsRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> registry_pb2.ListModelsResponse:
        records = await self.runtime.run(self.runtime.registry().list, request.name or None, request.all_versions)
        return registry_pb2.ListModelsResponse(models=[model_info_to_proto(r) for r in records])

    @rpc("GetModel", model_ref=lambda r: r.model_ref)
    async def GetModel(  # type: ignore[override]
        self, request: registry_pb2.GetModelRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> registry_pb2.GetModelResponse:
        record = await self.runtime.run(self.runtime.registry().get, required_ref(request.model_ref))
        return registry_pb2.GetModelResponse(model=model_info_to_proto(record))

    @rpc("DeleteModel", model_ref=lambda r: r.model_ref)
    async def DeleteModel(  # type: ignore[override]
        self, request: registry_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> registry_pb2.DeleteModelResponse:
        deleted = await self.runtime.run(
            self.runtime.registry().delete, required_ref(request.model_ref), request.all_versions
        )
        return registry_pb2.DeleteModelResponse(deleted=[model_info_to_proto(r) for r in deleted])

    @rpc("SetAlias", model_ref=lambda r: f"{r.name}@{r.alias}")
    async def SetAlias(  # type: ignore[override]
        self, request: registry_pb2.SetAliasRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> registry_pb2.SetAliasResponse:
        if request.version == 0:
            raise InvalidArgumentError("version must be 1 or more", field="version")
        record = await self.runtime.run(self.runtime.registry().set_alias, request.name, request.alias, request.version)
        return registry_pb2.SetAliasResponse(model=model_info_to_proto(record))

    @rpc("DeleteAlias", model_ref=lambda r: f"{r.name}@{r.alias}")
    async def DeleteAlias(  # type: ignore[override]
        self, request: registry_pb2.DeleteAliasRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> registry_pb2.DeleteAliasResponse:
        await self.runtime.run(self.runtime.registry().delete_alias, request.name, request.alias)
        return registry_pb2.DeleteAliasResponse()


def _default_bounds(header: Any) -> tuple[float, float] | None:
    has_min, has_max = header.HasField("default_min"), header.HasField("default_max")
    if not has_min and not has_max:
        return None
    if has_min != has_max:
        raise InvalidArgumentError("default_min and default_max must be given together", field="header.default_min")
    lower, upper = header.default_min, header.default_max
    if not (math.isfinite(lower) and math.isfinite(upper)):
        raise InvalidArgumentError(f"default bounds must be finite, got [{lower}, {upper}]", field="header.default_min")
    if lower > upper:
        raise InvalidArgumentError(
            f"default lower bound {lower} is above upper bound {upper}", field="header.default_min"
        )
    return lower, upper
