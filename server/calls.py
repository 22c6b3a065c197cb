"""Per-call bookkeeping for servicer methods: request ids, errors, access log, metrics.

Every RPC method of a servicer is decorated with :func:`rpc`. The decorator
gives the method a :class:`Call` (request id, model ref for the log), turns
domain errors into statuses through :mod:`preimage.server.status`, writes one
access-log line per request and updates the request metrics. Cancellation is
never swallowed: it is logged and re-raised.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from preimage.errors import PreimageError
from preimage.server.logs import ACCESS_LOGGER
from preimage.server.metrics import Metrics
from preimage.server.status import status_for

__all__ = ["REQUEST_ID_KEY", "Call", "rpc", "stop_event"]

REQUEST_ID_KEY = "x-request-id"
_access = logging.getLogger(ACCESS_LOGGER)
_log = logging.getLogger("preimage.server")


class Call:
    """What the access log records about one RPC; servicers fill in ``model_ref``."""

    def __init__(self, rpc_name: str, context: grpc.aio.ServicerContext) -> None:
        self.rpc = rpc_name
        self.model_ref = ""
        self.started = time.perf_counter()
        metadata = dict(context.invocation_metadata() or ())
        supplied = metadata.get(REQUEST_ID_KEY)
        self.request_id = supplied if isinstance(supplied, str) and 0 < len(supplied) <= 128 else uuid.uuid4().hex
        self.peer = context.peer()


class _Host:
    """What a servicer must provide for :func:`rpc`."""

    metrics: Metrics


def rpc(name: str, model_ref: Callable[[Any], str] | None = None) -> Callable[[Any], Any]:
    """Decorate a servicer method ``(self, request, context, call)``, unary or async-generator.

    Args:
        name: RPC name for logs and metrics.
        model_ref: Reads the model reference off a unary request, for the log.
    """

    def decorate(method: Any) -> Any:
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def streaming(self: _Host, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                call = _begin(name, request, context, model_ref)
                self.metrics.child(self.metrics.in_flight, name).inc()
                try:
                    async for message in method(self, request, context, call):
                        yield message
                except BaseException as exc:
                    await _fail(self, call, context, exc)
                else:
                    _finish(self, call, grpc.StatusCode.OK)
                finally:
                    self.metrics.child(self.metrics.in_flight, name).dec()

            return streaming

        @functools.wraps(method)
        async def unary(self: _Host, request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _begin(name, request, context, model_ref)
            try:
                response = await method(self, request, context, call)
            except BaseException as exc:
                await _fail(self, call, context, exc)
                raise AssertionError("unreachable: _fail always raises") from exc
            _finish(self, call, grpc.StatusCode.OK)
            return response

        return unary

    return decorate


def stop_event(context: grpc.aio.ServicerContext) -> threading.Event:
    """An event set when the RPC ends for any reason (done, cancelled, deadline), for engine work to poll."""
    stop = threading.Event()

    def on_done(_context: grpc.aio.ServicerContext) -> None:
        stop.set()

    # grpc-stubs types the callback as a private class; any one-argument callable is what grpc calls.
    context.add_done_callback(on_done)  # type: ignore[arg-type]
    return stop


def _begin(name: str, request: Any, context: grpc.aio.ServicerContext, model_ref: Callable[[Any], str] | None) -> Call:
    call = Call(name, context)
    if model_ref is not None:
        call.model_ref = model_ref(request)
    return call


def _finish(host: _Host, call: Call, code: grpc.StatusCode, message: str = "") -> None:
    duration = time.perf_counter() - call.started
    host.metrics.child(host.metrics.requests, call.rpc, code.name).inc()
    host.metrics.child(host.metrics.latency, call.rpc).observe(duration)
    _access.info(
        "%s %s %s",
        call.rpc,
        code.name,
        call.model_ref or "-",
        extra={
            "rpc": call.rpc,
            "model_ref": call.model_ref,
            "code": code.name,
            "duration_ms": round(duration * 1000, 3),
            "request_id": call.request_id,
            "peer": call.peer,
            **({"error": message} if message else {}),
        },
    )


async def _fail(host: _Host, call: Call, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Log and translate ``exc``; always raises."""
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        code = (
            grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
        )
        _finish(host, call, code)
        raise exc
    if isinstance(exc, grpc.aio.AbortError):
        _finish(host, call, context.code() or grpc.StatusCode.UNKNOWN)
        raise exc
    if not isinstance(exc, PreimageError):
        _log.error("unexpected error in %s (request id %s)", call.rpc, call.request_id, exc_info=exc)
    status = status_for(exc, call.request_id)
    _finish(host, call, status.code, status.details)
    await context.abort(status.code, status.details, status.trailing_metadata)
