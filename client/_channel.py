"""Connection settings shared by the blocking and asyncio clients: channels, metadata, retries."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from preimage.client.errors import DeadlineExceededError, retry_hint

__all__ = ["ChannelConfig", "Deadline", "Retries", "RetryPolicy"]

# Replies (Predict outputs, model lists, pattern batches) may be larger than
# gRPC's 4 MiB default; requests are chunked by the client and need no raise.
_MAX_RECEIVE_BYTES = 256 * 2**20
_EXPIRED = 1e-6


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for UNAVAILABLE, and for RESOURCE_EXHAUSTED with a retry hint, on idempotent calls.

    Only ``models``, ``model``, ``predict``, ``health`` and an ``invert`` that has
    not received its first message are retried; ``register``, ``train``,
    ``delete`` and alias changes never are, because a lost reply does not mean
    the server did nothing.

    UNAVAILABLE waits the backoff. RESOURCE_EXHAUSTED is retried only when the
    server attached a ``google.rpc.RetryInfo`` (its admission queue is full, or
    the deadline cannot be met yet); the wait is then the larger of the hint and
    the backoff, with up to ``jitter`` of it *added*, so a client never comes back
    before the server asked and many clients told the same hint spread out.
    RESOURCE_EXHAUSTED without a hint (a message or count over a limit) would
    fail again and is never retried. No wait runs past the call's deadline: a
    retry that would is not made, and the original error is raised.

    Attributes:
        max_attempts: Attempts in all, the first included (1 disables retries).
        initial_backoff: Seconds before the first retry.
        max_backoff: Longest wait between attempts.
        multiplier: Growth of the wait per attempt.
        jitter: Random share (0..1) taken off each wait so clients spread out.

    Example:
        >>> list(RetryPolicy(max_attempts=4, jitter=0.0).delays())
        [0.1, 0.2, 0.4]
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delays(self) -> Iterator[float]:
        """The waits before each retry, ``max_attempts - 1`` of them."""
        delay = self.initial_backoff
        for _ in range(max(self.max_attempts, 1) - 1):
            yield min(delay, self.max_backoff) * (1.0 - self.jitter * random.random())
            delay *= self.multiplier

    def after_hint(self, hint: float, backoff: float) -> float:
        """The wait when the server asked for ``hint`` seconds and the backoff says ``backoff``.

        Example:
            >>> RetryPolicy(jitter=0.0).after_hint(1.5, 0.1)
            1.5
        """
        if hint <= backoff:
            return backoff
        return hint * (1.0 + self.jitter * random.random())


class Retries:
    """The retry decisions of one call: which failures to retry, and how long to wait first.

    Args:
        policy: The backoff.
        deadline: The call's deadline; no wait may run past it.
        idempotent: Whether the call may be retried at all.

    Example:
        >>> Retries(RetryPolicy(), Deadline(1.0), idempotent=False).delay(None) is None
        True
    """

    def __init__(self, policy: RetryPolicy, deadline: Deadline, *, idempotent: bool = True) -> None:
        self.policy = policy
        self.deadline = deadline
        self._delays = policy.delays() if idempotent else iter(())

    def delay(self, exc: grpc.RpcError | None) -> float | None:
        """Seconds to wait before retrying after ``exc``, or ``None`` when it must be raised."""
        code_fn = getattr(exc, "code", None)
        code = code_fn() if callable(code_fn) else None
        if code is grpc.StatusCode.UNAVAILABLE:
            hint = 0.0
        elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            found = retry_hint(exc)  # type: ignore[arg-type]
            if found is None:
                return None
            hint = found
        else:
            return None
        backoff = next(self._delays, None)
        if backoff is None:
            return None
        wait = self.policy.after_hint(hint, backoff)
        return wait if self.deadline.allows(wait) else None


class Deadline:
    """An absolute deadline for a call and all its retries; ``None`` seconds means none.

    Example:
        >>> Deadline(None).remaining() is None
        True
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._at = None if seconds is None else time.monotonic() + seconds

    def check(self, request_id: str | None = None) -> None:
        """Raise :class:`DeadlineExceededError` when the deadline has already passed.

        Checked before every call and retry, so a spent deadline fails at once
        instead of racing a fast server inside gRPC's timer granularity.
        """
        if self._at is not None and time.monotonic() >= self._at:
            raise DeadlineExceededError(
                f"the deadline of {self.seconds:g} s passed before the call could be made",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
                request_id=request_id,
            )

    def remaining(self) -> float | None:
        """Seconds left, or ``None`` without a deadline.

        Never below a microsecond: gRPC takes a timeout of 0 as *no* deadline, so
        a deadline that has passed must still reach it as a tiny positive one.
        """
        return None if self._at is None else max(self._at - time.monotonic(), _EXPIRED)

    def allows(self, wait: float) -> bool:
        """Whether waiting ``wait`` seconds still leaves time for another attempt."""
        return self._at is None or time.monotonic() + wait < self._at


@dataclass(frozen=True)
class ChannelConfig:
    """How to reach and authenticate to a server.

    Attributes:
        target: ``HOST:PORT``.
        token: Sent as ``authorization: Bearer <token>`` on every call.
        root_certificates: PEM CA bundle (bytes or a path); enables TLS.
        private_key: PEM client key for mutual TLS (bytes or a path).
        certificate_chain: PEM client certificate for mutual TLS (bytes or a path).
        tls: Force TLS on (with the system roots) or off; default: on when any PEM is given.
        timeout: Default per-call deadline in seconds (``None``: none).
        retry: Backoff for UNAVAILABLE and hinted RESOURCE_EXHAUSTED on idempotent calls.
        options: Extra gRPC channel options.
        metadata: Extra metadata sent on every call.
    """

    target: str = "127.0.0.1:50051"
    token: str | None = None
    root_certificates: bytes | str | Path | None = None
    private_key: bytes | str | Path | None = None
    certificate_chain: bytes | str | Path | None = None
    tls: bool | None = None
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    options: Sequence[tuple[str, Any]] = ()
    metadata: Sequence[tuple[str, str]] = ()

    @property
    def secure(self) -> bool:
        """Whether the channel uses TLS."""
        if self.tls is not None:
            return self.tls
        return any(v is not None for v in (self.root_certificates, self.private_key, self.certificate_chain))

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials from the configured PEM material."""
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_certificates),
            private_key=_pem(self.private_key),
            certificate_chain=_pem(self.certificate_chain),
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """gRPC channel options: a large receive limit, then the caller's."""
        return [("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES), *self.options]

    def channel(self) -> grpc.Channel:
        """A blocking channel."""
        if self.secure:
            return grpc.secure_channel(self.target, self.credentials(), options=self.channel_options())
        return grpc.insecure_channel(self.target, options=self.channel_options())

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel (create it inside the running event loop)."""
        if self.secure:
            return grpc.aio.secure_channel(self.target, self.credentials(), options=self.channel_options())
        return grpc.aio.insecure_channel(self.target, options=self.channel_options())

    def call_metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        """Metadata for one call: the request id, the bearer token, and the configured extras."""
        items = [("x-request-id", request_id)]
        if self.token:
            items.append(("authorization", f"Bearer {self.token}"))
        items.extend(self.metadata)
        return tuple(items)

    def deadline(self, timeout: float | None) -> Deadline:
        """The deadline of a call given its own ``timeout`` (falls back to :attr:`timeout`)."""
        return Deadline(self.timeout if timeout is None else timeout)


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()
