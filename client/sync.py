"""The blocking client: :class:`Client`, with :class:`InvertStream` and :class:`TrainRun`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np
from preimage.client import _requests, _wire, convert
from preimage.client._channel import ChannelConfig, Deadline, RetryPolicy
from preimage.client._requests import CapturingIterator, InvertState, PatternArrays, Upload
from preimage.client.errors import (
    CancelledError,
    DeadlineExceededError,
    InternalError,
    error_from_rpc,
)
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

__all__ = ["Client", "InvertStream", "TrainRun"]

R = TypeVar("R")

_SERVING = 1
_HEALTH_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _retryable(exc: grpc.RpcError) -> bool:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code is grpc.StatusCode.UNAVAILABLE


class InvertStream:
    """The patterns of one Invert call, as they arrive; then its summary.

    Iterate it for :class:`Pattern`s (or :meth:`batches` for arrays), then read
    :attr:`summary`; :meth:`to_numpy` collects every pattern; :meth:`cancel`
    stops the server's search. Use it as a context manager to cancel on exit.

    Example:
        >>> with client.invert("difficulty", target=7.0, n=100, seed=1) as stream:  # doctest: +SKIP
        ...     for pattern in stream:
        ...         print(pattern.input, pattern.output, pattern.error)
        >>> stream.summary.status                                                  # doctest: +SKIP
        <InvertStatus.COMPLETE: 'complete'>
    """

    def __init__(
        self,
        open_call: Callable[[], Any],
        *,
        schema: FeatureSchema | None,
        retry: RetryPolicy,
        deadline: Deadline,
        request_id: str,
    ) -> None:
        self._open_call = open_call
        self._delays = retry.delays()
        self._deadline = deadline
        self.request_id = request_id
        """The ``x-request-id`` the call was sent with."""
        self._state = InvertState(schema)
        self._call: Any = open_call()
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
            self._call.cancel()

    def _pull(self) -> None:
        """Read one message (retrying UNAVAILABLE only before the first one)."""
        try:
            response = next(self._call)
        except StopIteration:
            self._done = True
            self._state.finished()
            return
        except grpc.RpcError as exc:
            if self._cancelled:
                return
            if _retryable(exc) and self._state.received == 0:
                delay = next(self._delays, None)
                if delay is not None and self._deadline.allows(delay):
                    time.sleep(delay)
                    self._call = self._open_call()
                    return
            self._done = True
            raise error_from_rpc(exc, request_id=self.request_id) from exc
        self._state.accept(response)

    def __iter__(self) -> Iterator[Pattern]:
        return self

    def __next__(self) -> Pattern:
        while not self._state.buffered:
            if self._done:
                raise StopIteration
            self._pull()
        return self._state.pop_pattern()

    def batches(self) -> Iterator[PatternArrays]:
        """Iterate the remaining patterns a streamed batch at a time, as arrays."""
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


class TrainRun:
    """One Train call: iterate its events (progress, warnings, then the result).

    Example:
        >>> run = client.train("levels.csv", name="levels", target="difficulty", epochs=50)  # doctest: +SKIP
        >>> for event in run:
        ...     if isinstance(event, TrainProgress):
        ...         print(event.epoch, event.validation_loss)
        >>> run.result.model.ref
        'levels:1'
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

    def __iter__(self) -> Iterator[TrainEvent]:
        return self

    def __next__(self) -> TrainEvent:
        while not self._done:
            try:
                response = next(self._call)
            except StopIteration:
                self._done = True
                if self.result is None and not self._cancelled:
                    raise InternalError("the Train stream ended without a result") from None
                break
            except grpc.RpcError as exc:
                self._done = True
                if self._cancelled:
                    break
                if self._requests.error is not None:
                    raise self._requests.error from exc
                raise error_from_rpc(exc, request_id=self.request_id) from exc
            event = convert.train_event_from_proto(response)
            if event is None:
                continue
            if isinstance(event, TrainResult):
                self.result = event
            return event
        raise StopIteration

    def wait(self) -> TrainResult:
        """Run to the end, dropping unread events, and return the result.

        Raises:
            CancelledError: The run was cancelled.
        """
        for _ in self:
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

    def __enter__(self) -> TrainRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class Client:
    """Blocking client for a preimage server.

    Args:
        target: ``HOST:PORT`` of the server.
        token: Bearer token sent as ``authorization`` metadata.
        root_certificates: PEM CA bundle (bytes or path); turns TLS on.
        private_key: PEM client key for mutual TLS.
        certificate_chain: PEM client certificate for mutual TLS.
        tls: Force TLS on (system roots) or off.
        timeout: Default per-call deadline in seconds; ``None`` waits as long as it takes.
        retry: Backoff for UNAVAILABLE on idempotent calls.
        chunk_size: Bytes per RegisterModel chunk.
        options: Extra gRPC channel options.
        metadata: Extra metadata for every call.

    Example:
        >>> from preimage.client import Client
        >>> with Client("127.0.0.1:50051") as client:                      # doctest: +SKIP
        ...     info = client.register("difficulty.onnx", "difficulty")
        ...     X = client.invert(info.ref, target=7.0, n=100, seed=0).to_numpy().inputs
        ...     client.predict(info.ref, X)[:3]
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
        self._channel = self.config.channel()
        self._registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._inference = inference_pb2_grpc.InferenceServiceStub(self._channel)
        self._health: Any = self._channel.unary_unary(
            _wire.HEALTH_CHECK_METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=_wire.HealthCheckResponse.FromString,
        )

    # -- plumbing -------------------------------------------------------------------------

    def _unary(
        self,
        method: Callable[..., R],
        request: Any,
        *,
        idempotent: bool,
        timeout: float | None,
        request_id: str | None,
        **kwargs: Any,
    ) -> R:
        rid = request_id or _requests.new_request_id()
        metadata = self.config.call_metadata(rid)
        deadline = self.config.deadline(timeout)
        delays = self.config.retry.delays() if idempotent else iter(())
        captured = request if isinstance(request, CapturingIterator) else None
        while True:
            try:
                return method(request, timeout=deadline.remaining(), metadata=metadata, **kwargs)
            except grpc.RpcError as exc:
                if captured is not None and captured.error is not None:
                    raise captured.error from exc
                if _retryable(exc):
                    delay = next(delays, None)
                    if delay is not None and deadline.allows(delay):
                        time.sleep(delay)
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
        response = self._unary(
            self._health,
            _wire.HealthCheckRequest(service=service),
            idempotent=True,
            timeout=timeout,
            request_id=None,
        )
        return _HEALTH_NAMES.get(int(response.status), "UNKNOWN")

    def wait_ready(self, timeout: float = 30.0, *, service: str = "") -> None:
        """Block until the server answers SERVING.

        Raises:
            DeadlineExceededError: Not serving within ``timeout`` seconds; the message gives
                the last status or error seen.

        Example:
            >>> Client("127.0.0.1:50051").wait_ready(timeout=10)      # doctest: +SKIP
        """
        deadline = Deadline(timeout)
        last = "no answer"
        while True:
            left = deadline.remaining()
            try:
                response = self._health(
                    _wire.HealthCheckRequest(service=service),
                    timeout=max(left or 0.0, 0.01),
                    metadata=self.config.call_metadata(_requests.new_request_id()),
                    wait_for_ready=True,
                )
                if int(response.status) == _SERVING:
                    return
                last = _HEALTH_NAMES.get(int(response.status), "UNKNOWN")
            except grpc.RpcError as exc:
                last = error_from_rpc(exc).message
            if not deadline.allows(0.05):
                raise DeadlineExceededError(
                    f"server {self.config.target} not serving after {timeout:g} s (last: {last})"
                )
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
        """Upload an ONNX model (streamed in chunks, so any size up to the server's limit).

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
        requests = CapturingIterator(
            _requests.register_requests(
                upload, name, convert.schema_argument(schema), bounds, self.chunk_size
            )
        )
        response = self._unary(
            self._registry.RegisterModel, requests, idempotent=False, timeout=timeout, request_id=request_id
        )
        return convert.model_info_from_proto(response.model)

    def models(
        self, name: str | None = None, all_versions: bool = False, *, timeout: float | None = None
    ) -> list[ModelInfo]:
        """List models: the latest version of each name, or every version.

        Example:
            >>> [m.ref for m in client.models()]          # doctest: +SKIP
            ['difficulty:2', 'levels:1']
        """
        request = registry_pb2.ListModelsRequest(name=name or "", all_versions=all_versions)
        response = self._unary(
            self._registry.ListModels, request, idempotent=True, timeout=timeout, request_id=None
        )
        return [convert.model_info_from_proto(m) for m in response.models]

    def model(self, ref: str, *, timeout: float | None = None) -> ModelInfo:
        """Describe one version: ``NAME`` (latest), ``NAME:VERSION`` or ``NAME@ALIAS``.

        Raises:
            ModelNotFoundError: No such model, version or alias.

        Example:
            >>> client.model("difficulty@prod").version   # doctest: +SKIP
            3
        """
        response = self._unary(
            self._registry.GetModel,
            registry_pb2.GetModelRequest(model_ref=ref),
            idempotent=True,
            timeout=timeout,
            request_id=None,
        )
        return convert.model_info_from_proto(response.model)

    def delete(self, ref: str, all_versions: bool = False, *, timeout: float | None = None) -> list[ModelInfo]:
        """Delete one version (``NAME:VERSION``, ``NAME@ALIAS``) or, with ``all_versions``, every version.

        Returns:
            The deleted versions.

        Example:
            >>> [m.ref for m in client.delete("difficulty", all_versions=True)]   # doctest: +SKIP
            ['difficulty:1', 'difficulty:2']
        """
        response = self._unary(
            self._registry.DeleteModel,
            registry_pb2.DeleteModelRequest(model_ref=ref, all_versions=all_versions),
            idempotent=False,
            timeout=timeout,
            request_id=None,
        )
        return [convert.model_info_from_proto(m) for m in response.deleted]

    def alias(self, name: str, alias: str, version: int, *, timeout: float | None = None) -> ModelInfo:
        """Point ``NAME@ALIAS`` at ``version``; returns that version.

        Example:
            >>> client.alias("difficulty", "prod", 2).aliases   # doctest: +SKIP
            ('prod',)
        """
        response = self._unary(
            self._registry.SetAlias,
            registry_pb2.SetAliasRequest(name=name, alias=alias, version=version),
            idempotent=False,
            timeout=timeout,
            request_id=None,
        )
        return convert.model_info_from_proto(response.model)

    def unalias(self, name: str, alias: str, *, timeout: float | None = None) -> None:
        """Remove ``NAME@ALIAS``.

        Example:
            >>> client.unalias("difficulty", "prod")      # doctest: +SKIP
        """
        self._unary(
            self._registry.DeleteAlias,
            registry_pb2.DeleteAliasRequest(name=name, alias=alias),
            idempotent=False,
            timeout=timeout,
            request_id=None,
        )

    # -- inference ------------------------------------------------------------------------

    def predict(
        self,
        ref: str,
        rows: Any,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> FloatArray:
        """Evaluate the model on rows.

        Args:
            ref: Model reference.
            rows: An ``n x d`` array of raw input columns (a 1-D array is one row), or
                mappings by feature name with categorical levels by name (encoded with
                the model's schema, fetched first).
            timeout: Deadline in seconds for the whole call (large inputs go in several requests).
            request_id: Request id to send.

        Returns:
            ``n x m`` float32 outputs.

        Raises:
            InvalidArgumentError: Unknown feature names or levels (found client-side), or a
                wrong width, NaN or infinity (from the server).

        Example:
            >>> client.predict("difficulty", [[0.5] * 10])                       # doctest: +SKIP
            array([[5.43]], dtype=float32)
            >>> client.predict("levels", [{"speed": 0.2, "theme": "lava"}])      # doctest: +SKIP
        """
        X, named = _requests.rows_argument(rows)
        if named is not None:
            info = self.model(ref, timeout=timeout)
            ref, X = info.ref, info.schema.encode_rows(named)
        assert X is not None
        outputs = []
        for part in _requests.predict_slices(X):
            request = inference_pb2.PredictRequest(model_ref=ref, inputs=convert.matrix_to_proto(part))
            response = self._unary(
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
    ) -> InvertStream:
        """Find ``n`` input patterns whose outputs hit a target, streamed as they are found.

        Args:
            ref: Model reference.
            target: One value per output (a bare number for one output); outputs must be
                within ``tolerance`` of it.
            n: Number of patterns wanted.
            target_range: Instead of ``target``: ``(lo, hi)`` per output (a bare pair for one output).
            tolerance: Allowed ``|f(x) - y|`` (server default 1e-3).
            seed: Random seed; the same seed, request and model give the same stream.
            bounds: ``(lo, hi)`` for every continuous/integer feature, or ``{feature: (lo, hi)}``
                (the key ``""`` meaning every feature, applied first).
            fixed: Features held at a value while the rest are solved for
                (``{"speed": 0.5, "theme": "lava"}``).
            mode: ``"optimize"`` (fast, clustered) or ``"sample"`` (draws from the prior
                restricted to the preimage); ``None``: the server's default.
            prior: ``"uniform"`` or ``"data"`` (the training distribution).
            min_distance: Minimum Euclidean distance between returned patterns.
            in_distribution_weight: Weight of the penalty keeping patterns near the training data.
            max_seconds: Wall-clock budget (the server's cap applies too).
            max_passes: Budget in batched model passes.
            batch_size: Most patterns per streamed message (0: the server chooses).
            named: Also give each pattern as ``{feature: value}`` (fetches the schema first).
            timeout: Deadline in seconds for the whole stream; when it passes, the server
                stops and iteration raises :class:`DeadlineExceededError`.
            request_id: Request id to send.

        Returns:
            An :class:`InvertStream`.

        Raises:
            InvalidArgumentError: Bad arguments (from the client or the server, when iterating).
            ModelNotFoundError: Unknown model (when iterating, or at once with ``named=True``).

        Example:
            >>> stream = client.invert("difficulty", target=7.0, n=20, seed=3, named=True)  # doctest: +SKIP
            >>> next(iter(stream)).features["enemy_density"]
            0.71
        """
        schema = None
        if named:
            info = self.model(ref, timeout=timeout)
            ref, schema = info.ref, info.schema
        request = _requests.invert_request(
            ref,
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
        rid = request_id or _requests.new_request_id()
        metadata = self.config.call_metadata(rid)
        deadline = self.config.deadline(timeout)

        def open_call() -> Any:
            return self._inference.Invert(request, timeout=deadline.remaining(), metadata=metadata)

        return InvertStream(open_call, schema=schema, retry=self.config.retry, deadline=deadline, request_id=rid)

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
    ) -> TrainRun:
        """Fit a model on a table on the server, register it, and stream progress.

        Args:
            data: ``{column: values}`` (lists or 1-D arrays) or a CSV file with a header row.
                Streamed in chunks of about 1 MiB, so tables of millions of rows go through.
            name: Name to register the model under.
            target: Target column(s).
            features: Feature columns in model order (default: every non-target column).
            categorical: Columns holding level strings, one-hot encoded by the server.
            hidden: Hidden layer sizes (server default 64, 64).
            activation: ``"relu"``, ``"tanh"``, ``"silu"`` or ``"gelu"``.
            epochs: Maximum epochs.
            batch_size: Mini-batch size.
            learning_rate: Adam learning rate.
            weight_decay: AdamW weight decay.
            validation_fraction: Share of rows held out.
            patience: Epochs without improvement before early stopping.
            seed: Seed for split, initialization and shuffling (deterministic on one machine).
            overrides: Overrides of the inferred schema by feature, e.g.
                ``{"walls": {"kind": "integer", "min": 0, "max": 12}}``.
            timeout: Deadline in seconds; when it passes, training stops and nothing is registered.
            request_id: Request id to send.

        Returns:
            A :class:`TrainRun` yielding :class:`TrainProgress` / :class:`TrainWarning` events
            and finally a :class:`TrainResult`.

        Raises:
            InvalidArgumentError: A bad table (when iterating; the message names the row and column).

        Example:
            >>> result = client.train({"x": xs, "y": ys}, name="toy", target="y", epochs=20).wait()  # doctest: +SKIP
            >>> result.metrics[0].r2 > 0.9
            True
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
            requests,
            timeout=self.config.deadline(timeout).remaining(),
            metadata=self.config.call_metadata(rid),
        )
        return TrainRun(call, requests, rid)

