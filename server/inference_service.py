"""``preimage.v1.InferenceService``: Predict, Invert and Train over the engine.

The servicer only translates: proto → engine types, the engine in a worker
thread, engine results → proto. Streams create a stop event, set it when the
RPC ends for any reason (done-callback and ``finally``), and pull one engine
event at a time from a worker thread, so a cancelled or expired call stops the
work within one engine step.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc

from preimage.errors import ResourceExhaustedError
from preimage.server.calls import Call, rpc, stop_event
from preimage.server.convert import (
    columns_from_chunk,
    invert_request_to_spec,
    invert_summary_to_proto,
    matrix_from_proto,
    matrix_to_proto,
    pattern_batch_to_proto,
    required_ref,
    split_stream,
    train_config_to_spec,
    train_event_to_proto,
    train_result_to_proto,
    training_report,
)
from preimage.server.runtime import Runtime
from preimage.v1 import inference_pb2, inference_pb2_grpc, tensor_pb2

__all__ = ["InferenceServicer"]

_END = object()
DEFAULT_PATTERNS_PER_MESSAGE = 256
_SPECS = 1024
"""Parsed Invert requests remembered by their bytes (a game server repeats the same request)."""


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Predict, Invert and Train RPCs."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.metrics = runtime.metrics
        self._specs: dict[bytes, tuple[Any, Any, Any]] = {}

    async def _load(self, ref: str) -> Any:
        """Resolve and load a model in a worker thread, counting cache hits."""
        required_ref(ref)
        return await self.runtime.load(ref)

    @rpc("Predict", model_ref=lambda r: r.model_ref)
    async def Predict(  # type: ignore[override]
        self, request: inference_pb2.PredictRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> inference_pb2.PredictResponse:
        required_ref(request.model_ref)
        X = matrix_from_proto(request.inputs, "inputs")
        record, outputs = await self.runtime.predict(request.model_ref, X)
        labels = (record.name, str(record.version), "preimage")
        self.metrics.child(self.metrics.model_inferences, *labels).inc()
        self.metrics.child(self.metrics.model_rows, *labels).inc(X.shape[0])
        return inference_pb2.PredictResponse(
            model=tensor_pb2.ModelVersionRef(name=record.name, version=record.version),
            outputs=matrix_to_proto(outputs, raw=request.raw_outputs),
        )

    @rpc("Invert", model_ref=lambda r: r.model_ref)
    async def Invert(  # type: ignore[override]
        self, request: inference_pb2.InvertRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> AsyncIterator[inference_pb2.InvertResponse]:
        from preimage.server.engine import PatternBatch, invert

        settings = self.runtime.settings
        if request.count > settings.max_invert_count:
            raise ResourceExhaustedError(
                f"count {request.count} is over the server's limit of {settings.max_invert_count} patterns per call"
            )
        spec, bounds, fixed = self._spec(request)
        loaded = await self._load(request.model_ref)
        record = loaded.record
        call.model_ref = f"{record.name}:{record.version}"
        space = await self.runtime.input_space(loaded, bounds, fixed)
        if self._shareable(request, spec, space):
            key = (
                record.name,
                record.version,
                record.sha256,
                spec.targets,
                spec.tolerance,
                spec.prior,
                spec.in_distribution_weight,
                bounds,
                fixed,
                spec.max_uncertainty,
            )
            shared = await self.runtime.shared_runs.get(key, loaded, space, spec)
            remaining = context.time_remaining()
            budget = spec.max_seconds if remaining is None else min(spec.max_seconds, remaining)
            async for event in shared.take(spec.n, time.monotonic() + budget, spec.batch_size):
                if isinstance(event, PatternBatch):
                    self.metrics.patterns.inc(len(event))
                    yield pattern_batch_to_proto(event, raw=request.raw_outputs)
                else:
                    self.metrics.shared_calls.inc()
                    yield invert_summary_to_proto(event, record.name, record.version)
            return
        async with self.runtime.invert_admission.slot(_lane(context, request.model_ref), context.time_remaining()):
            stop = stop_event(context)
            try:

                def start() -> tuple[Any, list[Any]]:
                    # invert() validates and runs one forward pass before it returns: off the event loop
                    # too, in the same worker hop as the first step.
                    events = invert(
                        loaded.module,
                        space,
                        spec,
                        statistics=loaded.statistics,
                        stop=stop,
                        pilots=self.runtime.pilots,
                        spreads=loaded.schema.spread_columns,
                    )
                    return events, _pull(events, 0, spec.n)

                events, pulled = await self.runtime.run(start)
                returned = 0
                while pulled:
                    for event in pulled:
                        if isinstance(event, PatternBatch):
                            returned += len(event)
                            self.metrics.patterns.inc(len(event))
                            yield pattern_batch_to_proto(event, raw=request.raw_outputs)
                        else:
                            self.metrics.count_invert_work(
                                event.forward_passes, event.backward_passes, event.rows_evaluated
                            )
                            yield invert_summary_to_proto(event, record.name, record.version)
                    pulled = await self.runtime.run(_pull, events, returned, spec.n)
            finally:
                stop.set()

    def _spec(self, request: inference_pb2.InvertRequest) -> tuple[Any, Any, Any]:
        """The request's engine spec (budget capped by the server's limits), bounds and fixed features.

        Remembered by the request's bytes: the specs are frozen, and the many identical small calls
        of a game server then skip the parse. Requests that fail to parse are not remembered.
        """
        key = request.SerializeToString(deterministic=True)
        parsed = self._specs.get(key)
        if parsed is None:
            settings = self.runtime.settings
            spec, bounds, fixed = invert_request_to_spec(request, batch_size=DEFAULT_PATTERNS_PER_MESSAGE)
            parsed = (_capped(spec, settings.invert_max_seconds, settings.invert_max_passes), bounds, fixed)
            if len(self._specs) >= _SPECS:
                self._specs.clear()
            self._specs[key] = parsed
        return parsed

    def _shareable(self, request: inference_pb2.InvertRequest, spec: Any, space: Any) -> bool:
        """Whether the call can take its patterns from a run shared with concurrent calls (sharing.py)."""
        from preimage.server.engine import InvertMode

        settings = self.runtime.settings
        return (
            settings.invert_sharing
            and spec.seed is None
            and spec.mode is InvertMode.SAMPLE
            and spec.min_distance == 0
            and request.budget.max_passes == 0
            and spec.n <= settings.invert_shared_max_count
            and not space.enumerable
            and space.infeasible is None
        )

    @rpc("Train")
    async def Train(  # type: ignore[override]
        self, request_iterator: AsyncIterator[inference_pb2.TrainRequest], context: grpc.aio.ServicerContext, call: Call
    ) -> AsyncIterator[inference_pb2.TrainResponse]:
        from preimage.registry import ModelSource
        from preimage.server.engine import TableBuilder, TrainedModel, train

        settings = self.runtime.settings
        async with self.runtime.train_admission.slot(context.peer(), context.time_remaining()):
            config, chunks = await split_stream(request_iterator, rpc="Train", head="config", rest="data")
            spec = train_config_to_spec(config, max_seconds=settings.train_max_seconds)
            call.model_ref = spec.name
            registry = self.runtime.registry()
            await self.runtime.run(registry.check_name, spec.name)
            # total_rows sizes the column buffers once; a wrong hint only costs a regrowth.
            builder = TableBuilder(spec, min_rows=settings.train_min_rows, expected_rows=config.total_rows or None)
            index = 0
            async for chunk in chunks:
                await self.runtime.run(builder.add_chunk, columns_from_chunk(chunk, index))
                index += 1
            table = await self.runtime.run(builder.finish)
            stop = stop_event(context)
            self.metrics.training_running.inc()
            outcome = "failed"
            try:
                events = train(table, spec, stop=stop)
                while (event := await self.runtime.run(next, events, _END)) is not _END:
                    if isinstance(event, TrainedModel):
                        record = await self.runtime.run(
                            registry.register_bytes,
                            spec.name,
                            event.onnx_bytes,
                            schema=event.schema,
                            statistics=event.statistics,
                            source=ModelSource.TRAIN,
                            training=training_report(event),
                        )
                        self.metrics.registered.labels("train").inc()
                        call.model_ref = f"{record.name}:{record.version}"
                        outcome = "registered"
                        yield train_result_to_proto(event, record)
                    else:
                        yield train_event_to_proto(event)
            finally:
                stop.set()
                self.metrics.training_running.dec()
                self.metrics.training_jobs.labels(outcome).inc()


def _pull(events: Any, returned: int, n: int) -> list[Any]:
    """In a worker: the engine's next event, and the summary with it when that batch completes the call.

    A call's last batch and its summary then cost one worker hop, not two. Empty at the end.
    """
    from preimage.server.engine import PatternBatch

    event = next(events, _END)
    if event is _END:
        return []
    pulled = [event]
    if isinstance(event, PatternBatch) and returned + len(event) >= n:
        after = next(events, _END)  # the engine ends a complete run at once: its summary
        if after is not _END:
            pulled.append(after)
    return pulled


def _lane(context: grpc.aio.ServicerContext, model_ref: str) -> str:
    """The admission queue's fairness key: the client connection and the model it calls."""
    return f"{context.peer()}|{model_ref}"


def _capped(spec: Any, max_seconds: float, max_passes: int) -> Any:
    """The spec with its budget capped by the server's limits."""
    return replace(
        spec,
        max_seconds=min(spec.max_seconds or max_seconds, max_seconds),
        max_passes=min(spec.max_passes or max_passes, max_passes),
    )
