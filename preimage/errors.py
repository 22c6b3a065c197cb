"""Domain errors shared by the registry and the engine.

Each error builds its message in its constructor and keeps structured fields.
The transport maps these base classes to gRPC status codes in one table
(``preimage.server.status``); nothing here knows about gRPC.
"""

from __future__ import annotations

__all__ = [
    "CancelledError",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "NotFoundError",
    "PreimageError",
    "ResourceExhaustedError",
    "UnavailableError",
]


class PreimageError(Exception):
    """Base of every error the registry and engine raise on purpose."""


class NotFoundError(PreimageError):
    """Something named by the caller does not exist (NOT_FOUND)."""


class InvalidArgumentError(PreimageError):
    """The caller sent something invalid (INVALID_ARGUMENT).

    Args:
        message: What is wrong, in a sentence a caller can act on.
        field: The request field at fault, dotted (``"targets[1]"``), when one is.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ResourceExhaustedError(PreimageError):
    """A configured limit was hit (RESOURCE_EXHAUSTED).

    Args:
        message: Which limit, and the numbers.
        retry_after_seconds: A hint for when retrying may succeed, when there is one.
    """

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_seconds = retry_after_seconds


class DeadlineExceededError(PreimageError):
    """The caller's deadline passed before the work finished (DEADLINE_EXCEEDED)."""


class CancelledError(PreimageError):
    """The caller cancelled; the work stopped (CANCELLED)."""


class UnavailableError(PreimageError):
    """The service cannot serve right now, e.g. the registry is unreadable (UNAVAILABLE)."""
