"""Bearer-token authorization as a server interceptor.

With any token configured, every call except health checks must carry
``authorization: Bearer <token>``. Read tokens may call the read-only RPCs
(Predict, Invert, ListModels, GetModel, reflection); admin tokens may call
everything. No token or an unknown one is UNAUTHENTICATED; a read token on an
admin RPC is PERMISSION_DENIED.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

__all__ = ["ADMIN_METHODS", "OPEN_PREFIXES", "TokenAuthInterceptor"]

# The Open Inference Protocol's liveness and readiness are health checks too (probes carry no token).
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
READ_METHODS = frozenset(
    {
        "/preimage.v1.InferenceService/Predict",
        "/preimage.v1.InferenceService/Invert",
        "/preimage.v1.RegistryService/ListModels",
        "/preimage.v1.RegistryService/GetModel",
        "/inference.GRPCInferenceService/ServerMetadata",
        "/inference.GRPCInferenceService/ModelReady",
        "/inference.GRPCInferenceService/ModelMetadata",
        "/inference.GRPCInferenceService/ModelInfer",
    }
)
READ_PREFIXES = ("/grpc.reflection.",)
ADMIN_METHODS = frozenset(
    {
        "/preimage.v1.RegistryService/RegisterModel",
        "/preimage.v1.RegistryService/DeleteModel",
        "/preimage.v1.RegistryService/SetAlias",
        "/preimage.v1.RegistryService/DeleteAlias",
        "/preimage.v1.InferenceService/Train",
    }
)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks bearer tokens before a call reaches its servicer."""

    def __init__(self, admin_tokens: Sequence[str], read_tokens: Sequence[str]) -> None:
        self._admin = [t.encode() for t in admin_tokens]
        self._read = [t.encode() for t in read_tokens]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        role = self._role(handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if role is None:
            return _refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown bearer token: send metadata 'authorization: Bearer <token>'",
            )
        if role == "admin" or method in READ_METHODS or method.startswith(READ_PREFIXES):
            return handler
        return _refusal(
            handler,
            grpc.StatusCode.PERMISSION_DENIED,
            f"this token is read-only; {method.rsplit('/', 1)[-1]} needs an admin token",
        )

    def _role(self, metadata: Sequence[tuple[str, Any]] | None) -> str | None:
        for key, value in metadata or ():
            if key != "authorization":
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return None
            supplied = token.strip().encode()
            # Compare against every token so timing does not reveal which matched.
            admin = any([hmac.compare_digest(supplied, t) for t in self._admin])
            read = any([hmac.compare_digest(supplied, t) for t in self._read])
            return "admin" if admin else "read" if read else None
        return None


def _refusal(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts with ``code``."""

    async def abort_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    request_streaming = bool(handler and handler.request_streaming)
    response_streaming = bool(handler and handler.response_streaming)
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort_unary)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort_unary)
