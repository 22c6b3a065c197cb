"""The client's own error tree, mapped from gRPC status codes.

Every failed call raises a subclass of :class:`PreimageError` ``from`` the
original :class:`grpc.RpcError`, carrying the server's message, the status code,
the request id the call was sent with and, where the server attached them, the
``google.rpc.BadRequest`` field (:attr:`InvalidArgumentError.field`) and the
``google.rpc.RetryInfo`` hint (:attr:`ResourceExhaustedError.retry_after`).

Class names end in ``Error`` (the project's style); the short names the issue
uses (``ModelNotFound``, ``InvalidArgument``, ...) are aliases of the same classes.

Example:
    >>> from preimage.client import Client, ModelNotFound
    >>> with Client("127.0.0.1:50051") as client:          # doctest: +SKIP
    ...     try:
    ...         client.model("no-such-model")
    ...     except ModelNotFound as exc:
    ...         print(exc.code.name, exc.message)
    NOT_FOUND model 'no-such-model' not found
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

from preimage.client import _wire

__all__ = [
    "Cancelled",
    "CancelledError",
    "DeadlineExceeded",
    "DeadlineExceededError",
    "Internal",
    "InternalError",
    "InvalidArgument",
    "InvalidArgumentError",
    "ModelNotFound",
    "ModelNotFoundError",
    "PermissionDenied",
    "PermissionDeniedError",
    "PreimageError",
    "ResourceExhausted",
    "ResourceExhaustedError",
    "Unauthenticated",
    "UnauthenticatedError",
    "Unavailable",
    "UnavailableError",
    "Unimplemented",
    "UnimplementedError",
    "error_from_rpc",
    "retry_hint",
]


class PreimageError(Exception):
    """Base of every error the client raises.

    Args:
        message: The server's message (or the client's, for errors found before sending).
        code: The gRPC status code; ``None`` for errors the client found itself.
        request_id: The ``x-request-id`` the call was sent with, to find it in the server log.

    Attributes:
        exit_code: The ``preimage`` CLI's exit status for this class of error.
    """

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, request_id: str | None = None) -> None:
        text = message if code is None else f"{code.name}: {message}"
        super().__init__(text)
        self.message = message
        self.code = code
        self.request_id = request_id


class ModelNotFoundError(PreimageError):
    """The model, version or alias does not exist (NOT_FOUND)."""

    exit_code: ClassVar[int] = 3


class InvalidArgumentError(PreimageError, ValueError):
    """The request was invalid (INVALID_ARGUMENT); nothing changed on the server.

    Args:
        message: What is wrong.
        field: The request field at fault (``"targets[0]"``, ``"schema"``), from the
            status's ``google.rpc.BadRequest`` detail, when the server named one.
        code: As for :class:`PreimageError`.
        request_id: As for :class:`PreimageError`.
    """

    exit_code: ClassVar[int] = 4

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: grpc.StatusCode | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code, request_id=request_id)
        self.field = field


class ResourceExhaustedError(PreimageError):
    """A server limit was hit (RESOURCE_EXHAUSTED): size, concurrency or count.

    Args:
        message: Which limit, and the numbers.
        retry_after: Seconds after which retrying may succeed, from the status's
            ``google.rpc.RetryInfo`` detail, when the server gave one.
        code: As for :class:`PreimageError`.
        request_id: As for :class:`PreimageError`.
    """

    exit_code: ClassVar[int] = 5

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        code: grpc.StatusCode | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code, request_id=request_id)
        self.retry_after = retry_after


class PermissionDeniedError(PreimageError):
    """The credentials are valid but may not do this (PERMISSION_DENIED)."""

    exit_code: ClassVar[int] = 6


class UnauthenticatedError(PreimageError):
    """No valid credentials were sent (UNAUTHENTICATED): check the token or client certificate."""

    exit_code: ClassVar[int] = 6


class DeadlineExceededError(PreimageError):
    """The call's deadline passed before it finished (DEADLINE_EXCEEDED)."""

    exit_code: ClassVar[int] = 7


class CancelledError(PreimageError):
    """The call was cancelled (CANCELLED)."""

    exit_code: ClassVar[int] = 130


class UnavailableError(PreimageError):
    """The server cannot be reached or cannot serve now (UNAVAILABLE); retrying may help."""

    exit_code: ClassVar[int] = 8


class UnimplementedError(PreimageError):
    """The server does not offer this call (UNIMPLEMENTED), e.g. an older server without Train."""

    exit_code: ClassVar[int] = 9


class InternalError(PreimageError):
    """The server failed unexpectedly (INTERNAL, UNKNOWN, DATA_LOSS, ...); its log has the details."""

    exit_code: ClassVar[int] = 10


# The short names of the issue and the brief, kept as aliases of the classes above.
ModelNotFound = ModelNotFoundError
InvalidArgument = InvalidArgumentError
ResourceExhausted = ResourceExhaustedError
PermissionDenied = PermissionDeniedError
Unauthenticated = UnauthenticatedError
DeadlineExceeded = DeadlineExceededError
Cancelled = CancelledError
Unavailable = UnavailableError
Unimplemented = UnimplementedError
Internal = InternalError

_BY_CODE: dict[grpc.StatusCode, type[PreimageError]] = {
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    # The server reports a bad state of a request (e.g. a second config message)
    # as FAILED_PRECONDITION or OUT_OF_RANGE; for a caller both mean "fix the request".
    grpc.StatusCode.FAILED_PRECONDITION: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def _details(metadata: Any) -> tuple[str | None, float | None]:
    """The BadRequest field and RetryInfo delay from ``grpc-status-details-bin``, when present."""
    raw: bytes | None = None
    for item in metadata or ():
        key, value = item
        if key == _wire.STATUS_DETAILS_KEY and isinstance(value, bytes):
            raw = value
    if raw is None:
        return None, None
    field: str | None = None
    retry_after: float | None = None
    try:
        status = _wire.Status.FromString(raw)
        for detail in status.details:
            type_name = detail.type_url.rsplit("/", 1)[-1]
            if type_name == _wire.BAD_REQUEST_TYPE and field is None:
                violations = _wire.BadRequest.FromString(detail.value).field_violations
                if violations:
                    field = str(violations[0].field) or None
            elif type_name == _wire.RETRY_INFO_TYPE:
                delay = _wire.RetryInfo.FromString(detail.value).retry_delay
                retry_after = float(delay.seconds) + float(delay.nanos) / 1e9
    except Exception:
        # Details are a courtesy: a malformed trailer must not hide the real error.
        return None, None
    return field, retry_after


def retry_hint(exc: grpc.RpcError) -> float | None:
    """The ``google.rpc.RetryInfo`` delay a failed call carries, in seconds, or ``None``.

    Works for blocking and asyncio errors alike.
    """
    trailing_fn = getattr(exc, "trailing_metadata", None)
    return _details(trailing_fn() if callable(trailing_fn) else None)[1]


def error_from_rpc(exc: grpc.RpcError, *, request_id: str | None = None) -> PreimageError:
    """Translate a failed call into the client's error tree.

    Works for blocking (:class:`grpc.Call`) and asyncio (:class:`grpc.aio.AioRpcError`)
    errors alike. Raise the result ``from exc``.

    Args:
        exc: The error gRPC raised.
        request_id: The request id the call was sent with.

    Returns:
        The matching :class:`PreimageError` subclass, carrying the server's message.

    Example:
        >>> try:                                          # doctest: +SKIP
        ...     stub.GetModel(request)
        ... except grpc.RpcError as exc:
        ...     raise error_from_rpc(exc) from exc
    """
    code_fn = getattr(exc, "code", None)
    code = code_fn() if callable(code_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(exc, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(exc) or code.name.lower()
    trailing_fn = getattr(exc, "trailing_metadata", None)
    trailing = trailing_fn() if callable(trailing_fn) else None
    field, retry_after = _details(trailing)
    cls = _BY_CODE.get(code, InternalError)
    if cls is InvalidArgumentError:
        return InvalidArgumentError(message, field=field, code=code, request_id=request_id)
    if cls is ResourceExhaustedError:
        return ResourceExhaustedError(message, retry_after=retry_after, code=code, request_id=request_id)
    return cls(message, code=code, request_id=request_id)
