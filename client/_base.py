"""What the blocking and the asyncio client share: construction, argument handling, stream state.

:class:`ClientBase` holds the connection settings and the stubs and turns the
arguments of ``invert`` and ``train`` into requests; the subclasses only start
the calls and wait for them, each in its own way. :class:`InvertStreamBase`
and :class:`TrainRunBase` hold the state and the bookkeeping of the two
streaming calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Generic, TypeVar

import grpc

from preimage.client import _requests, _wire, convert
from preimage.client._channel import ChannelConfig, Deadline, Retries, RetryPolicy
from preimage.client._requests import CapturingIterator, InvertState
from preimage.client.errors import CancelledError, InternalError, PreimageError, error_from_rpc
from preimage.client.types import (
    Activation,
    FeatureSchema,
    FeatureValue,
    InvertMode,
    InvertSummary,
    ModelInfo,
    Prior,
    TrainEvent,
    TrainResult,
)
from preimage.v1 import inference_pb2, inference_pb2_grpc, registry_pb2_grpc

__all__ = ["ClientBase", "InvertStreamBase", "TrainRunBase"]

S = TypeVar("S")
T = TypeVar("T")


class InvertStreamBase:
    """State of one Invert stream: buffered patterns, summary, retry and cancel bookkeeping."""

    def __init__(
        self, client: Any, ref: str, options: dict[str, Any], named: bool, deadline: Deadline, request_id: str
    ) -> None:
        self._client = client
        self._ref = ref
        self._options = options
        self._named = named
        self._deadline = deadline
        self._retries = Retries(client.config.retry, deadline)
        self.request_id = request_id
        """The ``x-request-id`` the call was sent with."""
        self._metadata = client.config.call_metadata(request_id)
        self._state = InvertState(None)
        self._request: inference_pb2.InvertRequest | None = None
        self._call: Any = None
        self._done = False
        self._cancelled = False

    @property
    def summary(self) -> InvertSummary | None:
        """How the search ended; ``None`` until the stream has been read to its end, or if cancelled."""
        return self._state.summary

    @property
    def schema(self) -> FeatureSchema | None:
        """The model's schema when the stream was opened with ``named=True`` (after the first read)."""
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

    def _start(self, info: ModelInfo | None) -> None:
        """Open the call; with ``info`` (``named=True``), pinned to that version and decoding with its schema."""
        ref = info.ref if info is not None else self._ref
        self._request = _requests.invert_request(ref, **self._options)
        self._state = InvertState(info.schema if info is not None else None)
        self._open()

    def _open(self) -> None:
        if not self._deadline.allows(0.0):
            self._done = True
            self._deadline.check(self.request_id)
        self._call = self._client._inference.Invert(
            self._request, timeout=self._deadline.remaining(), metadata=self._metadata
        )

    def _retry_delay(self, exc: grpc.RpcError) -> float | None:
        """The wait before reopening after ``exc``, or ``None`` when it must not be retried.

        UNAVAILABLE, and RESOURCE_EXHAUSTED with a retry hint (the server's
        admission queue is full), are retried only before the first message:
        after that, a new call would repeat patterns already handed out.
        """
        if self._state.received:
            return None
        return self._retries.delay(exc)

    def _failed(self, exc: grpc.RpcError) -> PreimageError:
        self._done = True
        return error_from_rpc(exc, request_id=self.request_id)

    def _accept(self, response: Any) -> None:
        """Take one message, or the end of the stream (``None``)."""
        if response is None:
            self._done = True
            self._state.finished()
        else:
            self._state.accept(response)


class TrainRunBase:
    """State of one Train call: the result, cancel bookkeeping, response and error translation."""

    def __init__(self, call: Any, requests: CapturingIterator[Any], request_id: str) -> None:
        self._call = call
        self._requests = requests
        self.request_id = request_id
        """The ``x-request-id`` the call was sent with."""
        self.result: TrainResult | None = None
        """The registered model and its metrics, once the run has finished."""
        self._done = False
        self._cancelled = False

    def cancel(self) -> None:
        """Cancel training: the server stops and registers nothing."""
        if not self._done:
            self._cancelled = True
            self._done = True
            self._call.cancel()

    def _failed(self, exc: grpc.RpcError) -> BaseException:
        """The exception to raise for a failed call: the request stream's own error comes first."""
        self._done = True
        if self._requests.error is not None:
            return self._requests.error
        return error_from_rpc(exc, request_id=self.request_id)

    def _ended(self) -> None:
        self._done = True
        if self.result is None and not self._cancelled:
            raise InternalError("the Train stream ended without a result")

    def _event(self, response: inference_pb2.TrainResponse) -> TrainEvent | None:
        event = convert.train_event_from_proto(response)
        if isinstance(event, TrainResult):
            self.result = event
        return event

    def _final(self) -> TrainResult:
        if self.result is None:
            raise CancelledError("the Train run was cancelled", request_id=self.request_id)
        return self.result


class ClientBase(Generic[S, T]):
    """Settings, stubs and request building shared by :class:`Client` and :class:`AsyncClient`.

    ``S`` is the client's Invert stream type, ``T`` its Train run type.
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
        self._channel: Any = self._open_channel()
        self._inference: Any = inference_pb2_grpc.InferenceServiceStub(self._channel)
        health = SimpleNamespace(
            Check=self._channel.unary_unary(
                _wire.HEALTH_CHECK_METHOD,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=_wire.HealthCheckResponse.FromString,
            )
        )
        self._stubs: dict[str, Any] = {
            "registry": registry_pb2_grpc.RegistryServiceStub(self._channel),
            "inference": self._inference,
            "health": health,
        }

    def _open_channel(self) -> Any:
        raise NotImplementedError

    def _method(self, call: _requests.Unary[Any]) -> Any:
        return getattr(self._stubs[call.service], call.method)

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
        max_uncertainty: float | None = None,
        named: bool = False,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> S:
        """Find ``n`` input patterns whose outputs hit a target, streamed as they are found.

        Not a coroutine, in either client: the call starts when the stream is first read.

        Args:
            ref: Model reference: ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``.
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
            max_uncertainty: For a deep ensemble (trained with ``ensemble=k``): the largest
                spread (standard deviation across the members) a pattern may have on every
                output; each pattern's ``output`` then holds the means, then the spreads.
            named: Also give each pattern as ``{feature: value}``, categoricals as level
                names (the schema is fetched first, and the stream pinned to that version).
            timeout: Deadline in seconds for the whole stream; when it passes, the server
                stops and reading raises :class:`DeadlineExceededError`.
            request_id: Request id to send (a fresh one by default).

        Returns:
            A stream of :class:`Pattern`: an :class:`InvertStream` (iterate it) from
            :class:`Client`, an :class:`AsyncInvertStream` (``async for``) from :class:`AsyncClient`.

        Raises:
            InvalidArgumentError: Bad arguments, at once when the client can tell, else from
                the server on the first read.
            ModelNotFoundError: Unknown model (on the first read).

        Example:
            >>> stream = client.invert("difficulty", target=7.0, n=20, seed=3, named=True)  # doctest: +SKIP
            >>> first = next(iter(stream))
            >>> abs(first.output[0] - 7.0) <= 1e-3, sorted(first.features)[:2]
            (True, ['boss_strength', 'checkpoint_spacing'])
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
            max_uncertainty=max_uncertainty,
        )
        _requests.invert_request(ref, **options)  # bad arguments fail here, not on the first read
        rid = request_id or _requests.new_request_id()
        return self._invert_stream(ref, options, named, self.config.deadline(timeout), rid)

    def _invert_stream(self, ref: str, options: dict[str, Any], named: bool, deadline: Deadline, request_id: str) -> S:
        raise NotImplementedError

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
        time_budget: float | None = None,
        ensemble: int | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> T:
        """Fit a model on a table on the server, register it, and stream progress.

        Not a coroutine, in either client: returns the run at once.

        Args:
            data: ``{column: values}`` (lists or 1-D arrays) or a CSV file with a header row.
                Streamed in chunks of about 1 MiB, so tables of millions of rows go through.
            name: Name to register the model under.
            target: Target column(s).
            features: Feature columns in model order (default: every non-target column).
            categorical: Columns holding level strings, one-hot encoded by the server.
            hidden: Hidden layer sizes (server default: a small search kept on validation loss).
            activation: ``"relu"``, ``"tanh"``, ``"silu"`` or ``"gelu"``.
            epochs: Maximum epochs (training stops earlier once the validation loss stops improving).
            batch_size: Mini-batch size (server default: scaled to the table).
            learning_rate: Initial AdamW learning rate.
            weight_decay: AdamW weight decay.
            validation_fraction: Share of rows held out.
            patience: Epochs without improvement before early stopping.
            seed: Seed for split, initialization and shuffling (deterministic on one machine).
            overrides: Overrides of the inferred schema by feature, e.g.
                ``{"walls": {"kind": "integer", "min": 0, "max": 12}}``.
            time_budget: Seconds of training at most; the best model so far is registered
                when it runs out (the stop reason says so).
            ensemble: Members ``k`` of a deep ensemble (0 or ``None``: one network). The model
                then outputs the members' mean, then their spread, per target (schema
                ``spread_of``); ``invert(..., max_uncertainty=U)`` keeps to where they agree.
            timeout: Deadline in seconds; when it passes, training stops and nothing is registered.
            request_id: Request id to send.

        Returns:
            A run yielding :class:`TrainProgress` / :class:`TrainWarning` events and finally a
            :class:`TrainResult`: a :class:`TrainRun` from :class:`Client` (iterate it, or
            ``.wait()``), an :class:`AsyncTrainRun` from :class:`AsyncClient`.

        Raises:
            InvalidArgumentError: A table the client cannot read, at once; a bad table per the
                server (the message names the row and column) when reading events.

        Example:
            >>> run = client.train({"x": xs, "y": ys}, name="toy", target="y", epochs=20)  # doctest: +SKIP
            >>> for event in run:
            ...     print(event)
            >>> run.result.metrics[0].r2 > 0.9
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
                time_budget=time_budget,
                ensemble=ensemble,
            )
        )
        rid = request_id or _requests.new_request_id()
        return self._train_run(requests, self.config.deadline(timeout), rid)

    def _train_run(self, requests: CapturingIterator[Any], deadline: Deadline, request_id: str) -> T:
        raise NotImplementedError
