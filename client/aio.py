"""The asyncio client: :class:`AsyncClient`, with :class:`AsyncInvertStream` and :class:`AsyncTrainRun`.

Same methods, arguments and results as :class:`preimage.client.Client`, awaited.
Create the client inside the running event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
from preimage.client import _requests, _wire, convert
from preimage.client._channel import ChannelConfig, Deadline, RetryPolicy
from preimage.client._requests import CapturingIterator, InvertState, PatternArrays, Upload
from preimage.client.errors import CancelledError, DeadlineExceededError, InternalError, error_from_rpc
from preimage.client.types import (
    Activation,
    FeatureSchema,
    FeatureValue,
    FloatArray,
    InvertMode,
    InvertSummary,
    ModelInfo,
    Pattern,
    Prior,
    TrainEvent,
    TrainResult,
)

from preimage.v1 import inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc

__all__ = ["AsyncClient", "AsyncInvertStream", "AsyncTrainRun"]

R = TypeVar("R")
T = TypeVar("T")

_SERVING = 1
_HEALTH_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


async def _in_thread(source: Iterator[T]) -> AsyncIterator[T]:
    """Iterate a blocking iterator (file reads, CSV parsing) off the event loop."""
    done = object()
    while (item := await asyncio.to_thread(next, source, done)) is not done:
        yield item  # type: ignore[misc]


class AsyncInvertStream:
    """The patterns of one Invert call, for ``async for``; then its summary.

    Example:
        >>> async with client.invert("difficulty", target=7.0, n=100) as stream:  # doctest: +SKIP
        ...     async for pattern in stream:
        ...         print(pattern.output)
        >>> stream.summary.returned                                               # doctest: +SKIP
        100
    """

    def __init__(
        self,
        prepare: Callable[[], Awaitable[tuple[inference_pb2.InvertRequest, FeatureSchema | None]]],
        open_call: Callable[[inference_pb2.InvertRequest], Any],
        *,
        retry: RetryPolicy,
        deadline: Deadline,
        request_id: str,
    ) -> None:
        self._prepare = prepare
        self._open_call = open_call
        self._delays = retry.delays()
        self._deadline = deadline
        self.request_id = request_id
        """The ``x-request-id`` the call was sent with."""
        self._request: inference_pb2.InvertRequest | None = None
        self._state = InvertState(None)
        self._call: Any = None
        self._done = False
        self._cancelled = False

    @property
    def summary(self) -> InvertSummary | None:
        """How the search ended; ``None`` until the stream has been read to its end, or if cancelled."""
        return self._state.summary

    @property
    def schema(self) -> FeatureSchema | None:
        """The model's schema when the stream was opened with ``named=True``."""
        return self._state.schema

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called before the stream ended."""
        return self._cancelled

    def cancel(self) -> None:
        """Cancel the call: the server stops searching within one step; iteration ends."""
        if not self._done:
            self._cancelled = True
            self._done = True
            self._state.clear()
            if self._call is not None:
                self._call.cancel()

    async def _pull(self) -> None:
        if self._call is None:
            self._request, schema = await self._prepare()
            self._state = InvertState(schema)
            self._call = self._open_call(self._request)
        try:
            response = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE and self._state.received == 0:
                delay = next(self._delays, None)
                if delay is not None and self._deadline.allows(delay):
                    await asyncio.sleep(delay)
                    assert self._request is not None
                    self._call = self._open_call(self._request)
                    return
            self._done = True
            raise error_from_rpc(exc, request_id=self.request_id) from exc
        except asyncio.CancelledError:
            if self._cancelled:
                return
            raise
        if response is grpc.aio.EOF:
            self._done = True
            self._state.finished()
            return
        self._state.accept(response)

    def __aiter__(self) -> AsyncInvertStream:
        return self

    async def __anext__(self) -> Pattern:
        while not self._state.buffered:
            if self._done:
                raise StopAsyncIteration
            await self._pull()
        return self._state.pop_pattern()

    async def batches(self) -> AsyncIterator[PatternArrays]:
        """Iterate the remaining patterns a streamed batch at a time, as arrays."""
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


class AsyncTrainRun:
    """One Train call, for ``async for`` over its events; :meth:`wait` for the result.

    Example:
        >>> run = client.train("levels.csv", name="levels", target="difficulty")  # doctest: +SKIP
        >>> result = await run.wait()
    """

    def __init__(self, call: Any, requests: CapturingIterator[Any], request_id: str) -> None:
        self._call = call
        self._requests = requests
        self.request_id = request_id
        """The ``x-request-id`` the call was sent with."""
        self.result: TrainResult | None = None
        """The registered model and its metrics, once the run has finished."""
        self._done = False
        self._cancelled = False

    def __aiter__(self) -> AsyncTrainRun:
        return self

    async def __anext__(self) -> TrainEvent:
        while not self._done:
            try:
                response = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                self._done = True
                if self._requests.error is not None:
                    raise self._requests.error from exc
                raise error_from_rpc(exc, request_id=self.request_id) from exc
            except asyncio.CancelledError:
                if self._cancelled:
                    break
                raise
            if response is grpc.aio.EOF:
                self._done = True
                if self.result is None:
                    raise InternalError("the Train stream ended without a result")
                break
            event = convert.train_event_from_proto(response)
            if event is None:
                continue
            if isinstance(event, TrainResult):
                self.result = event
            return event
        raise StopAsyncIteration

    async def wait(self) -> TrainResult:
        """Run to the end, dropping unread events, and return the result.

        Raises:
            CancelledError: The run was cancelled.
        """
        async for _ in self:
            pass
        if self.result is None:
            raise CancelledError("the Train run was cancelled", request_id=self.request_id)
        return self.result

    def cancel(self) -> None:
        """Cancel training: the server stops and registers nothing."""
        if not self._done:
            self._cancelled = True
            self._done = True
            self._call.cancel()

    async def __aenter__(self) -> AsyncTrainRun:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class AsyncClient:
    """Asyncio client for a preimage server; arguments as for :class:`preimage.client.Client`.

    Example:
        >>> async with AsyncClient("127.0.0.1:50051") as client:             # doctest: +SKIP
        ...     info = await client.register("difficulty.onnx", "difficulty")
        ...     arrays = await client.invert(info.ref, target=7.0, n=100).to_numpy()
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        root_certificates: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        tls: bool | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        chunk_size: int = _requests.DEFAULT_CHUNK_SIZE,
        options: Sequence[tuple[str, Any]] = (),
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.config = ChannelConfig(
            target=target,
            token=token,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            tls=tls,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            options=tuple(options),
            metadata=tuple(metadata),
        )
        self.chunk_size = chunk_size
        self._channel = self.config.aio_channel()
        self._registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._inference = inference_pb2_grpc.InferenceServiceStub(self._channel)
        self._health: Any = self._channel.unary_unary(
            _wire.HEALTH_CHECK_METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=_wire.HealthCheckResponse.FromString,
        )

    async def _unary(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        idempotent: bool,
        timeout: float | None,
        request_id: str | None,
    ) -> Any:
        rid = request_id or _requests.new_request_id()
        metadata = self.config.call_metadata(rid)
        deadline = self.config.deadline(timeout)
        delays = self.config.retry.delays() if idempotent else iter(())
        captured = request if isinstance(request, CapturingIterator) else None
        while True:
            # A request stream is consumed once; it is only ever sent by non-idempotent calls.
            payload = _in_thread(request) if captured is not None else request
            try:
                return await method(payload, timeout=deadline.remaining(), metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if captured is not None and captured.error is not None:
                    raise captured.error from exc
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    delay = next(delays, None)
                    if delay is not None and deadline.allows(delay):
                        await asyncio.sleep(delay)
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
        """The server's ``grpc.health.v1`` status, e.g. ``"SERVING"``."""
        response = await self._unary(
            self._health, _wire.HealthCheckRequest(service=service), idempotent=True, timeout=timeout,
            request_id=None,
        )
        return _HEALTH_NAMES.get(int(response.status), "UNKNOWN")

    async def wait_ready(self, timeout: float = 30.0, *, service: str = "") -> None:
        """Wait until the server answers SERVING; :class:`DeadlineExceededError` after ``timeout`` s."""
        deadline = Deadline(timeout)
        last = "no answer"
        while True:
            try:
                response = await self._health(
                    _wire.HealthCheckRequest(service=service),
                    timeout=max(deadline.remaining() or 0.0, 0.01),
                    metadata=self.config.call_metadata(_requests.new_request_id()),
                    wait_for_ready=True,
                )
                if int(response.status) == _SERVING:
                    return
                last = _HEALTH_NAMES.get(int(response.status), "UNKNOWN")
            except grpc.aio.AioRpcError as exc:
                last = error_from_rpc(exc).message
            if not deadline.allows(0.05):
                raise DeadlineExceededError(
                    f"server {self.config.target} not serving after {timeout:g} s (last: {last})"
                )
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
        """Upload an ONNX model in chunks; see :meth:`preimage.client.Client.register`."""
        upload = await asyncio.to_thread(Upload.of, model)
        requests = CapturingIterator(
            _requests.register_requests(upload, name, convert.schema_argument(schema), bounds, self.chunk_size)
        )
        response = await self._unary(
            self._registry.RegisterModel, requests, idempotent=False, timeout=timeout, request_id=request_id
        )
        return convert.model_info_from_proto(response.model)

    async def models(
        self, name: str | None = None, all_versions: bool = False, *, timeout: float | None = None
    ) -> list[ModelInfo]:
        """List models; see :meth:`preimage.client.Client.models`."""
        request = registry_pb2.ListModelsRequest(name=name or "", all_versions=all_versions)
        response = await self._unary(
            self._registry.ListModels, request, idempotent=True, timeout=timeout, request_id=None
        )
        return [convert.model_info_from_proto(m) for m in response.models]

    async def model(self, ref: str, *, timeout: float | None = None) -> ModelInfo:
        """Describe one version; see :meth:`preimage.client.Client.model`."""
        response = await self._unary(
            self._registry.GetModel,
            registry_pb2.GetModelRequest(model_ref=ref),
            idempotent=True,
            timeout=timeout,
            request_id=None,
        )
        return convert.model_info_from_proto(response.model)

    async def delete(
        self, ref: str, all_versions: bool = False, *, timeout: float | None = None
    ) -> list[ModelInfo]:
        """Delete one version or every version; see :meth:`preimage.client.Client.delete`."""
        response = await self._unary(
            self._registry.DeleteModel,
            registry_pb2.DeleteModelRequest(model_ref=ref, all_versions=all_versions),
            idempotent=False,
            timeout=timeout,
            request_id=None,
        )
        return [convert.model_info_from_proto(m) for m in response.deleted]

    async def alias(self, name: str, alias: str, version: int, *, timeout: float | None = None) -> ModelInfo:
        """Point ``NAME@ALIAS`` at ``version``; see :meth:`preimage.client.Client.alias`."""
        response = await self._unary(
            self._registry.SetAlias,
            registry_pb2.SetAliasRequest(name=name, alias=alias, version=version),
            idempotent=False,
            timeout=timeout,
            request_id=None,
        )
        return convert.model_info_from_proto(response.model)

    async def unalias(self, name: str, alias: str, *, timeout: float | None = None) -> None:
        """Remove ``NAME@ALIAS``."""
        await self._unary(
            self._registry.DeleteAlias,
            registry_pb2.DeleteAliasRequest(name=name, alias=alias),
            idempotent=False,
            timeout=timeout,
            request_id=None,
        )

    async def predict(
        self, ref: str, rows: Any, *, timeout: float | None = None, request_id: str | None = None
    ) -> FloatArray:
        """Evaluate the model on rows (array or by feature name); see :meth:`preimage.client.Client.predict`."""
        X, named = _requests.rows_argument(rows)
        if named is not None:
            info = await self.model(ref, timeout=timeout)
            ref, X = info.ref, info.schema.encode_rows(named)
        assert X is not None
        outputs = []
        for part in _requests.predict_slices(X):
            request = inference_pb2.PredictRequest(model_ref=ref, inputs=convert.matrix_to_proto(part))
            response = await self._unary(
                self._inference.Predict, request, idempotent=True, timeout=timeout, request_id=request_id
            )
            outputs.append(convert.matrix_from_proto(response.outputs))
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]

    def invert(
        self,
        ref: str,
        target: float | Sequence[float] | None = None,
        n: int = 1,
        *,
        target_range: Sequence[float] | Sequence[Sequence[float]] | None = None,
        tolerance: float | None = None,
        seed: int | None = None,
        bounds: tuple[float, float] | Mapping[str, tuple[float, float]] | None = None,
        fixed: Mapping[str, FeatureValue] | None = None,
        mode: InvertMode | str | None = None,
        prior: Prior | str | None = None,
        min_distance: float = 0.0,
        in_distribution_weight: float = 0.0,
        max_seconds: float | None = None,
        max_passes: int | None = None,
        batch_size: int = 0,
        named: bool = False,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncInvertStream:
        """Stream patterns whose outputs hit a target; see :meth:`preimage.client.Client.invert`.

        Not a coroutine: the call starts on the stream's first ``async for`` step.
        """
        options: dict[str, Any] = dict(
            target=target,
            target_range=target_range,
            n=n,
            tolerance=tolerance,
            seed=seed,
            bounds=bounds,
            fixed=fixed,
            mode=mode,
            prior=prior,
            min_distance=min_distance,
            in_distribution_weight=in_distribution_weight,
            max_seconds=max_seconds,
            max_passes=max_passes,
            batch_size=batch_size,
        )
        # Bad arguments fail here, at the call, as with the blocking client.
        _requests.invert_request(ref, **options)
        rid = request_id or _requests.new_request_id()
        metadata = self.config.call_metadata(rid)
        deadline = self.config.deadline(timeout)

        async def prepare() -> tuple[inference_pb2.InvertRequest, FeatureSchema | None]:
            if not named:
                return _requests.invert_request(ref, **options), None
            info = await self.model(ref, timeout=deadline.remaining())
            return _requests.invert_request(info.ref, **options), info.schema

        def open_call(request: inference_pb2.InvertRequest) -> Any:
            return self._inference.Invert(request, timeout=deadline.remaining(), metadata=metadata)

        return AsyncInvertStream(prepare, open_call, retry=self.config.retry, deadline=deadline, request_id=rid)

    def train(
        self,
        data: Mapping[str, Any] | str | Path,
        *,
        name: str,
        target: str | Sequence[str],
        features: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
        hidden: Sequence[int] | None = None,
        activation: Activation | str | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        weight_decay: float | None = None,
        validation_fraction: float | None = None,
        patience: int | None = None,
        seed: int | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncTrainRun:
        """Fit and register a model, streaming progress; see :meth:`preimage.client.Client.train`.

        Not a coroutine: returns the run at once; ``async for`` its events or ``await run.wait()``.
        """
        requests = CapturingIterator(
            _requests.train_requests(
                data,
                name=name,
                target=target,
                features=features,
                categorical=categorical,
                hidden=hidden,
                activation=activation,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                weight_decay=weight_decay,
                validation_fraction=validation_fraction,
                patience=patience,
                seed=seed,
                overrides=overrides,
            )
        )
        rid = request_id or _requests.new_request_id()
        call = self._inference.Train(
            _in_thread(requests),
            timeout=self.config.deadline(timeout).remaining(),
            metadata=self.config.call_metadata(rid),
        )
        return AsyncTrainRun(call, requests, rid)
