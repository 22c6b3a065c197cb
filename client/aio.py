"""The asyncio client: :class:`AsyncClient`, with :class:`AsyncInvertStream` and :class:`AsyncTrainRun`.

Same methods, arguments and results as :class:`preimage.client.Client`, awaited
(``invert`` and ``train`` return their stream at once, read with ``async for``).
Create the client inside the running event loop.

Example:
    >>> async def main() -> None:                                           # doctest: +SKIP
    ...     async with AsyncClient("127.0.0.1:50051") as client:
    ...         info = await client.register("difficulty.onnx", "difficulty")
    ...         async for pattern in client.invert(info.ref, target=7.0, n=10):
    ...             print(pattern.output)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

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

__all__ = ["AsyncClient", "AsyncInvertStream", "AsyncTrainRun"]

R = TypeVar("R")
T = TypeVar("T")

_sleep = asyncio.sleep  # the wait between retries; a name tests can replace


async def _in_thread(source: Iterator[T]) -> AsyncIterator[T]:
    """Iterate a blocking iterator (file reads, CSV parsing) off the event loop."""
    end = object()
    while (item := await asyncio.to_thread(next, source, end)) is not end:
        yield item  # type: ignore[misc]


class AsyncInvertStream(InvertStreamBase):
    """The patterns of one Invert call, for ``async for``; then its summary.

    Example:
        >>> async with client.invert("difficulty", target=7.0, n=100) as stream:  # doctest: +SKIP
        ...     async for pattern in stream:
        ...         print(pattern.output)
        >>> stream.summary.returned                                               # doctest: +SKIP
        100
    """

    async def _pull(self) -> None:
        """Read one message (reopening on UNAVAILABLE only before the first one)."""
        if self._call is None:
            info = await self._client.model(self._ref, timeout=self._deadline.remaining()) if self._named else None
            self._start(info)
        try:
            response = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            delay = self._retry_delay(exc)
            if delay is None:
                raise self._failed(exc) from exc
            await _sleep(delay)
            self._open()
            return
        except asyncio.CancelledError:
            # Our own cancel() ends the stream; anyone else's cancellation propagates.
            if self._cancelled:
                return
            raise
        self._accept(None if response is grpc.aio.EOF else response)

    def __aiter__(self) -> AsyncInvertStream:
        return self

    async def __anext__(self) -> Pattern:
        while not self._state.buffered:
            if self._done:
                raise StopAsyncIteration
            await self._pull()
        return self._state.pop_pattern()

    async def batches(self) -> AsyncIterator[PatternArrays]:
        """Iterate the remaining patterns a streamed message at a time, as arrays."""
        while True:
            while not self._state.buffered:
                if self._done:
                    return
                await self._pull()
            yield self._state.pop_batch()

    async def to_numpy(self) -> PatternArrays:
        """Read the stream to its end and return every pattern not yet iterated."""
        while not self._done:
            await self._pull()
        return self._state.take_all()

    async def finish(self) -> InvertSummary | None:
        """Read the stream to its end, keeping unread patterns for iteration; return the summary."""
        while not self._done:
            await self._pull()
        return self._state.summary

    async def __aenter__(self) -> AsyncInvertStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class AsyncTrainRun(TrainRunBase):
    """One Train call, for ``async for`` over its events; :meth:`wait` for the result.

    Example:
        >>> run = client.train("levels.csv", name="levels", target="difficulty")  # doctest: +SKIP
        >>> result = await run.wait()
    """

    def __aiter__(self) -> AsyncTrainRun:
        return self

    async def __anext__(self) -> TrainEvent:
        while not self._done:
            try:
                response = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                raise self._failed(exc) from exc
            except asyncio.CancelledError:
                if self._cancelled:
                    break
                raise
            if response is grpc.aio.EOF:
                self._ended()
                break
            event = self._event(response)
            if event is not None:
                return event
        raise StopAsyncIteration

    async def wait(self) -> TrainResult:
        """Run to the end, dropping unread events, and return the result.

        Raises:
            CancelledError: The run was cancelled.
        """
        async for _ in self:
            pass
        return self._final()

    async def __aenter__(self) -> AsyncTrainRun:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class AsyncClient(ClientBase[AsyncInvertStream, AsyncTrainRun]):
    """Asyncio client for a preimage server; arguments as for :class:`preimage.client.Client`.

    Example:
        >>> async with AsyncClient("127.0.0.1:50051") as client:             # doctest: +SKIP
        ...     info = await client.register("difficulty.onnx", "difficulty")
        ...     arrays = await client.invert(info.ref, target=7.0, n=100).to_numpy()
    """

    def _open_channel(self) -> grpc.aio.Channel:
        return self.config.aio_channel()

    async def _run(self, call: _requests.Unary[R], timeout: float | None, request_id: str | None = None) -> R:
        """Make one unary call, retrying UNAVAILABLE and hinted RESOURCE_EXHAUSTED when it is idempotent."""
        rid = request_id or _requests.new_request_id()
        metadata = self.config.call_metadata(rid)
        deadline = self.config.deadline(timeout)
        retries = Retries(self.config.retry, deadline, idempotent=call.idempotent)
        method = self._method(call)
        while True:
            # A request stream (register) is read off the loop; it is never retried, so it is read once.
            request = _in_thread(call.request) if isinstance(call.request, CapturingIterator) else call.request
            deadline.check(rid)
            try:
                return call.parse(await method(request, timeout=deadline.remaining(), metadata=metadata))
            except grpc.aio.AioRpcError as exc:
                if isinstance(call.request, CapturingIterator) and call.request.error is not None:
                    raise call.request.error from exc
                delay = retries.delay(exc)
                if delay is not None:
                    await _sleep(delay)
                    continue
                raise error_from_rpc(exc, request_id=rid) from exc

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's ``grpc.health.v1`` status, e.g. ``"SERVING"``.

        Example:
            >>> await client.health()                                       # doctest: +SKIP
            'SERVING'
        """
        return await self._run(_requests.health_call(service), timeout)

    async def wait_ready(self, timeout: float = 30.0, *, service: str = "") -> None:
        """Wait until the server answers SERVING; :class:`DeadlineExceededError` after ``timeout`` s.

        Example:
            >>> await client.wait_ready(timeout=10)                         # doctest: +SKIP
        """
        deadline = Deadline(timeout)
        call = _requests.health_call(service)
        check = self._method(call)
        last = "no answer"
        while True:
            try:
                response = await check(
                    call.request,
                    timeout=max(deadline.remaining() or 0.0, 0.01),
                    metadata=self.config.call_metadata(_requests.new_request_id()),
                    wait_for_ready=True,
                )
                last = call.parse(response)
                if last == "SERVING":
                    return
            except grpc.aio.AioRpcError as exc:
                last = error_from_rpc(exc).message
            if not deadline.allows(0.05):
                raise DeadlineExceededError(f"server {self.config.target} not serving after {timeout:g} s ({last})")
            await asyncio.sleep(0.05)

    async def register(
        self,
        model: str | Path | bytes,
        name: str,
        schema: FeatureSchema | Mapping[str, Any] | str | Path | None = None,
        *,
        bounds: tuple[float, float] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ModelInfo:
        """Upload an ONNX model in chunks; see :meth:`preimage.client.Client.register`.

        Example:
            >>> (await client.register("model.onnx", "difficulty", bounds=(0.0, 1.0))).ref # doctest: +SKIP
            'difficulty:1'
        """
        upload = await asyncio.to_thread(Upload.of, model)
        call = _requests.register_call(upload, name, schema, bounds, self.chunk_size)
        return await self._run(call, timeout, request_id)

    async def models(
        self, name: str | None = None, all_versions: bool = False, *, timeout: float | None = None
    ) -> list[ModelInfo]:
        """List models; see :meth:`preimage.client.Client.models`.

        Example:
            >>> [m.ref for m in await client.models()]                      # doctest: +SKIP
            ['difficulty:2', 'levels:1']
        """
        return await self._run(_requests.list_call(name, all_versions), timeout)

    async def model(self, ref: str, *, timeout: float | None = None) -> ModelInfo:
        """Describe one version; see :meth:`preimage.client.Client.model`.

        Example:
            >>> (await client.model("difficulty@prod")).version             # doctest: +SKIP
            3
        """
        return await self._run(_requests.get_call(ref), timeout)

    async def delete(self, ref: str, all_versions: bool = False, *, timeout: float | None = None) -> list[ModelInfo]:
        """Delete one version or every version; see :meth:`preimage.client.Client.delete`.

        Example:
            >>> [m.ref for m in await client.delete("difficulty:1")]        # doctest: +SKIP
            ['difficulty:1']
        """
        return await self._run(_requests.delete_call(ref, all_versions), timeout)

    async def alias(self, name: str, alias: str, version: int, *, timeout: float | None = None) -> ModelInfo:
        """Point ``NAME@ALIAS`` at ``version``; see :meth:`preimage.client.Client.alias`.

        Example:
            >>> (await client.alias("difficulty", "prod", 2)).aliases       # doctest: +SKIP
            ('prod',)
        """
        return await self._run(_requests.alias_call(name, alias, version), timeout)

    async def unalias(self, name: str, alias: str, *, timeout: float | None = None) -> None:
        """Remove ``NAME@ALIAS``.

        Example:
            >>> await client.unalias("difficulty", "prod")                  # doctest: +SKIP
        """
        await self._run(_requests.unalias_call(name, alias), timeout)

    async def predict(
        self, ref: str, rows: Any, *, timeout: float | None = None, request_id: str | None = None
    ) -> FloatArray:
        """Evaluate the model on rows (array or by feature name); see :meth:`preimage.client.Client.predict`.

        Example:
            >>> (await client.predict("difficulty", [[0.5] * 10])).shape    # doctest: +SKIP
            (1, 1)
        """
        X, named = _requests.rows_argument(rows)
        if named is not None:
            info = await self.model(ref, timeout=timeout)
            ref, X = info.ref, info.schema.encode_rows(named)
        assert X is not None
        parts = [
            await self._run(_requests.predict_call(ref, part), timeout, request_id)
            for part in _requests.predict_slices(X)
        ]
        return _requests.stack(parts)

    def _invert_stream(
        self, ref: str, options: dict[str, Any], named: bool, deadline: Deadline, request_id: str
    ) -> AsyncInvertStream:
        return AsyncInvertStream(self, ref, options, named, deadline, request_id)

    def _train_run(self, requests: CapturingIterator[Any], deadline: Deadline, request_id: str) -> AsyncTrainRun:
        call = self._inference.Train(
            _in_thread(requests), timeout=deadline.remaining(), metadata=self.config.call_metadata(request_id)
        )
        return AsyncTrainRun(call, requests, request_id)
