"""The blocking client: :class:`Client`, with :class:`InvertStream` and :class:`TrainRun`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from preimage.client import _requests
from preimage.client._base import ClientBase, InvertStreamBase, TrainRunBase
from preimage.client._channel import Deadline, Retries
from preimage.client._requests import CapturingIterator, PatternArrays, Upload
from preimage.client.errors import DeadlineExceededError, error_from_rpc
from preimage.client.types import (
    FeatureSchema,
    FloatArray,
    InvertSummary,
    ModelInfo,
    Pattern,
    TrainEvent,
    TrainResult,
)
from preimage.v1 import inference_pb2

__all__ = ["Client", "InvertStream", "TrainRun"]

R = TypeVar("R")

_sleep = time.sleep  # the wait between retries; a name tests can replace


class InvertStream(InvertStreamBase):
    """The patterns of one Invert call, as they arrive; then its summary.

    Iterate it for :class:`Pattern`s (or :meth:`batches` for arrays), then read
    :attr:`summary`; :meth:`to_numpy` collects every pattern; :meth:`cancel`
    stops the server's search. As a context manager it cancels on exit.

    Example:
        >>> with client.invert("difficulty", target=7.0, n=100, seed=1) as stream:  # doctest: +SKIP
        ...     for pattern in stream:
        ...         print(pattern.input, pattern.output, pattern.error)
        >>> stream.summary.status                                                  # doctest: +SKIP
        <InvertStatus.COMPLETE: 'complete'>
    """

    def _pull(self) -> None:
        """Read one message (reopening on UNAVAILABLE only before the first one)."""
        if self._call is None:
            info = self._client.model(self._ref, timeout=self._deadline.remaining()) if self._named else None
            self._start(info)
        try:
            response: inference_pb2.InvertResponse | None = next(self._call, None)
        except grpc.RpcError as exc:
            if self._cancelled:
                return
            delay = self._retry_delay(exc)
            if delay is None:
                raise self._failed(exc) from exc
            _sleep(delay)
            self._open()
            return
        self._accept(response)

    def __iter__(self) -> Iterator[Pattern]:
        return self

    def __next__(self) -> Pattern:
        while not self._state.buffered:
            if self._done:
                raise StopIteration
            self._pull()
        return self._state.pop_pattern()

    def batches(self) -> Iterator[PatternArrays]:
        """Iterate the remaining patterns a streamed message at a time, as arrays."""
        while True:
            while not self._state.buffered:
                if self._done:
                    return
                self._pull()
            yield self._state.pop_batch()

    def to_numpy(self) -> PatternArrays:
        """Read the stream to its end and return every pattern not yet iterated.

        Returns:
            ``(inputs n x d, outputs n x m, errors n x m)``, float32.

        Example:
            >>> X, Y, E = client.invert("difficulty", target=7.0, n=100).to_numpy()   # doctest: +SKIP
            >>> X.shape, Y.shape
            ((100, 10), (100, 1))
        """
        while not self._done:
            self._pull()
        return self._state.take_all()

    def finish(self) -> InvertSummary | None:
        """Read the stream to its end, keeping unread patterns for iteration; return the summary."""
        while not self._done:
            self._pull()
        return self._state.summary

    def __enter__(self) -> InvertStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class TrainRun(TrainRunBase):
    """One Train call: iterate its events (progress, warnings, then the result).

    Example:
        >>> run = client.train("levels.csv", name="levels", target="difficulty", epochs=50)  # doctest: +SKIP
        >>> for event in run:
        ...     if isinstance(event, TrainProgress):
        ...         print(event.epoch, event.validation_loss)
        >>> run.result.model.ref
        'levels:1'
    """

    def __iter__(self) -> Iterator[TrainEvent]:
        return self

    def __next__(self) -> TrainEvent:
        while not self._done:
            try:
                response = next(self._call, None)
            except grpc.RpcError as exc:
                if self._cancelled:
                    break
                raise self._failed(exc) from exc
            if response is None:
                self._ended()
                break
            event = self._event(response)
            if event is not None:
                return event
        raise StopIteration

    def wait(self) -> TrainResult:
        """Run to the end, dropping unread events, and return the result.

        Raises:
            CancelledError: The run was cancelled.
        """
        for _ in self:
            pass
        return self._final()

    def __enter__(self) -> TrainRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class Client(ClientBase[InvertStream, TrainRun]):
    """Blocking client for a preimage server.

    Args:
        target: ``HOST:PORT`` of the server.
        token: Bearer token, sent as ``authorization: Bearer <token>`` metadata.
        root_certificates: PEM CA bundle (bytes or path); turns TLS on.
        private_key: PEM client key for mutual TLS.
        certificate_chain: PEM client certificate for mutual TLS.
        tls: Force TLS on (system roots) or off.
        timeout: Default per-call deadline in seconds; ``None`` waits as long as it takes.
        retry: Backoff for UNAVAILABLE, and for RESOURCE_EXHAUSTED carrying a RetryInfo hint,
            on idempotent calls (list, get, predict, health, and invert before its first message).
        chunk_size: Bytes per RegisterModel chunk.
        options: Extra gRPC channel options.
        metadata: Extra metadata for every call.

    Every call also sends an ``x-request-id`` (a fresh one unless given), which
    errors carry as ``.request_id`` and the server logs.

    Example:
        >>> from preimage.client import Client
        >>> with Client("127.0.0.1:50051") as client:                      # doctest: +SKIP
        ...     info = client.register("difficulty.onnx", "difficulty")
        ...     X = client.invert(info.ref, target=7.0, n=100, seed=0).to_numpy().inputs
        ...     client.predict(info.ref, X)[:3]
    """

    def _open_channel(self) -> grpc.Channel:
        return self.config.channel()

    def _run(self, call: _requests.Unary[R], timeout: float | None, request_id: str | None = None) -> R:
        """Make one unary call, retrying UNAVAILABLE and hinted RESOURCE_EXHAUSTED when it is idempotent."""
        rid = request_id or _requests.new_request_id()
        metadata = self.config.call_metadata(rid)
        deadline = self.config.deadline(timeout)
        retries = Retries(self.config.retry, deadline, idempotent=call.idempotent)
        method = self._method(call)
        while True:
            deadline.check(rid)
            try:
                return call.parse(method(call.request, timeout=deadline.remaining(), metadata=metadata))
            except grpc.RpcError as exc:
                if isinstance(call.request, CapturingIterator) and call.request.error is not None:
                    raise call.request.error from exc
                delay = retries.delay(exc)
                if delay is not None:
                    _sleep(delay)
                    continue
                raise error_from_rpc(exc, request_id=rid) from exc

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- health ---------------------------------------------------------------------------

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's ``grpc.health.v1`` status: ``"SERVING"``, ``"NOT_SERVING"``, ...

        Example:
            >>> client.health()                    # doctest: +SKIP
            'SERVING'
        """
        return self._run(_requests.health_call(service), timeout)

    def wait_ready(self, timeout: float = 30.0, *, service: str = "") -> None:
        """Block until the server answers SERVING.

        Raises:
            DeadlineExceededError: Not serving within ``timeout`` seconds; the message gives
                the last status or error seen.

        Example:
            >>> Client("127.0.0.1:50051").wait_ready(timeout=10)      # doctest: +SKIP
        """
        deadline = Deadline(timeout)
        call = _requests.health_call(service)
        check = self._method(call)
        last = "no answer"
        while True:
            try:
                response = check(
                    call.request,
                    timeout=max(deadline.remaining() or 0.0, 0.01),
                    metadata=self.config.call_metadata(_requests.new_request_id()),
                    wait_for_ready=True,
                )
                last = call.parse(response)
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                last = error_from_rpc(exc).message
            if not deadline.allows(0.05):
                raise DeadlineExceededError(f"server {self.config.target} not serving after {timeout:g} s ({last})")
            time.sleep(0.05)

    # -- registry -------------------------------------------------------------------------

    def register(
        self,
        model: str | Path | bytes,
        name: str,
        schema: FeatureSchema | Mapping[str, Any] | str | Path | None = None,
        *,
        bounds: tuple[float, float] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ModelInfo:
        """Upload an ONNX model, streamed in chunks, so any size up to the server's limit goes.

        Never retried: a lost reply does not mean nothing was stored.

        Args:
            model: A path to an ``.onnx`` file, or its bytes.
            name: Model name, matching ``[a-z0-9][a-z0-9._-]{0,63}``.
            schema: Feature schema as a :class:`FeatureSchema`, a dict in the JSON form, or a
                JSON file path; ``None`` uses the model's embedded ``preimage.schema`` metadata
                or a default schema.
            bounds: ``(lo, hi)`` given to every continuous or integer feature the schema
                leaves unbounded.
            timeout: Deadline in seconds.
            request_id: Request id to send (a fresh one by default).

        Returns:
            The new version.

        Raises:
            InvalidArgumentError: The server refused the model; the message says why.
            ResourceExhaustedError: The model is over the server's size limit.

        Example:
            >>> client.register("model.onnx", "difficulty", bounds=(0.0, 1.0)).ref   # doctest: +SKIP
            'difficulty:1'
        """
        upload = Upload.of(model)
        return self._run(_requests.register_call(upload, name, schema, bounds, self.chunk_size), timeout, request_id)

    def models(
        self, name: str | None = None, all_versions: bool = False, *, timeout: float | None = None
    ) -> list[ModelInfo]:
        """List models: the latest version of each name, or every version.

        Example:
            >>> [m.ref for m in client.models()]          # doctest: +SKIP
            ['difficulty:2', 'levels:1']
        """
        return self._run(_requests.list_call(name, all_versions), timeout)

    def model(self, ref: str, *, timeout: float | None = None) -> ModelInfo:
        """Describe one version: ``NAME`` (latest), ``NAME:VERSION`` or ``NAME@ALIAS``.

        Raises:
            ModelNotFoundError: No such model, version or alias.

        Example:
            >>> client.model("difficulty@prod").version   # doctest: +SKIP
            3
        """
        return self._run(_requests.get_call(ref), timeout)

    def delete(self, ref: str, all_versions: bool = False, *, timeout: float | None = None) -> list[ModelInfo]:
        """Delete one version (``NAME:VERSION``, ``NAME@ALIAS``) or, with ``all_versions``, every version.

        Returns:
            The deleted versions.

        Example:
            >>> [m.ref for m in client.delete("difficulty", all_versions=True)]   # doctest: +SKIP
            ['difficulty:1', 'difficulty:2']
        """
        return self._run(_requests.delete_call(ref, all_versions), timeout)

    def alias(self, name: str, alias: str, version: int, *, timeout: float | None = None) -> ModelInfo:
        """Point ``NAME@ALIAS`` at ``version``; returns that version.

        Example:
            >>> client.alias("difficulty", "prod", 2).aliases   # doctest: +SKIP
            ('prod',)
        """
        return self._run(_requests.alias_call(name, alias, version), timeout)

    def unalias(self, name: str, alias: str, *, timeout: float | None = None) -> None:
        """Remove ``NAME@ALIAS``.

        Example:
            >>> client.unalias("difficulty", "prod")      # doctest: +SKIP
        """
        self._run(_requests.unalias_call(name, alias), timeout)

    # -- inference ------------------------------------------------------------------------

    def predict(
        self, ref: str, rows: Any, *, timeout: float | None = None, request_id: str | None = None
    ) -> FloatArray:
        """Evaluate the model on rows.

        Args:
            ref: Model reference.
            rows: An ``n x d`` array of raw input columns (a 1-D array is one row), or
                mappings by feature name with categorical levels by name (encoded with
                the model's schema, fetched first; the call is pinned to that version).
            timeout: Deadline in seconds of each request (large inputs go in several).
            request_id: Request id to send.

        Returns:
            ``n x m`` float32 outputs.

        Raises:
            InvalidArgumentError: Unknown feature names or levels (found client-side), or a
                wrong width, NaN or infinity (from the server).

        Example:
            >>> client.predict("difficulty", [[0.5] * 10]).shape                       # doctest: +SKIP
            (1, 1)
            >>> client.predict("levels", [{"speed": 0.2, "theme": "lava"}])      # doctest: +SKIP
        """
        X, named = _requests.rows_argument(rows)
        if named is not None:
            info = self.model(ref, timeout=timeout)
            ref, X = info.ref, info.schema.encode_rows(named)
        assert X is not None
        parts = [
            self._run(_requests.predict_call(ref, part), timeout, request_id) for part in _requests.predict_slices(X)
        ]
        return _requests.stack(parts)

    def _invert_stream(
        self, ref: str, options: dict[str, Any], named: bool, deadline: Deadline, request_id: str
    ) -> InvertStream:
        return InvertStream(self, ref, options, named, deadline, request_id)

    def _train_run(self, requests: CapturingIterator[Any], deadline: Deadline, request_id: str) -> TrainRun:
        call = self._inference.Train(
            requests, timeout=deadline.remaining(), metadata=self.config.call_metadata(request_id)
        )
        return TrainRun(call, requests, request_id)
