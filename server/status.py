"""The one table from domain errors to gRPC status codes, with rich details.

Invalid arguments carry a ``google.rpc.BadRequest`` field violation when the
error names a field; limits carry ``google.rpc.RetryInfo`` when a retry hint
exists. Anything not in the table becomes INTERNAL with a generic message; the
traceback goes only to the log.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from preimage.errors import (
    CancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    PreimageError,
    ResourceExhaustedError,
    UnavailableError,
)

__all__ = ["PermissionDeniedError", "UnauthenticatedError", "code_for", "status_for"]


class UnauthenticatedError(PreimageError):
    """The call carried no valid credentials (UNAUTHENTICATED)."""


class PermissionDeniedError(PreimageError):
    """The credentials do not allow this call (PERMISSION_DENIED)."""


_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (CancelledError, grpc.StatusCode.CANCELLED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
)

INTERNAL_MESSAGE = "internal error; the server log has the details (request id {request_id})"


def code_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for an exception: the first matching row of the table, else INTERNAL."""
    for error_type, code in _TABLE:
        if isinstance(exc, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def status_for(exc: BaseException, request_id: str) -> grpc.Status:
    """A ``grpc.Status`` (code, message, rich-detail trailers) for an exception."""
    code = code_for(exc)
    message = str(exc) if code is not grpc.StatusCode.INTERNAL else INTERNAL_MESSAGE.format(request_id=request_id)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    if isinstance(exc, InvalidArgumentError) and exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.message)
        status.details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(exc, ResourceExhaustedError) and exc.retry_after_seconds is not None:
        seconds = max(0.0, exc.retry_after_seconds)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int(math.modf(seconds)[0] * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status.details.append(_pack(error_details_pb2.RequestInfo(request_id=request_id)))
    return rpc_status.to_status(status)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed
