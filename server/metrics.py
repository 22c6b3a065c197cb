"""Prometheus metrics of one server instance.

Each server owns its own ``CollectorRegistry`` so several servers can live in
one process (tests); ``--metrics-address`` exposes it over HTTP.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics"]

M = TypeVar("M", Counter, Gauge, Histogram)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """Counters, gauges and histograms the servicers update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "preimage_requests", "RPCs finished, by method and status code.", ["rpc", "code"], registry=r
        )
        self.latency = Histogram(
            "preimage_request_duration_seconds",
            "RPC duration, by method.",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("preimage_in_flight_streams", "Streaming RPCs running, by method.", ["rpc"], registry=r)
        self.patterns = Counter("preimage_invert_patterns", "Patterns returned by Invert.", registry=r)
        self.passes = Counter(
            "preimage_invert_passes", "Batched model passes spent by Invert, by direction.", ["direction"], registry=r
        )
        self.rows_evaluated = Counter("preimage_invert_rows_evaluated", "Rows pushed forward by Invert.", registry=r)
        self.predict_rows = Counter("preimage_predict_rows", "Rows evaluated by Predict.", registry=r)
        self.predict_passes = Counter(
            "preimage_predict_passes", "Forward passes run by Predict (coalesced calls share one).", registry=r
        )
        self.predict_inline = Counter(
            "preimage_predict_inline_calls",
            "Small Predict calls run on the event loop, without the hop to a worker thread.",
            registry=r,
        )
        self.predict_pass_calls = Histogram(
            "preimage_predict_calls_per_pass",
            "Predict calls served by one forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        per_model = ["model", "version", "protocol"]
        self.model_inferences = Counter(
            "preimage_model_inferences",
            "Forward calls answered, by model, version and protocol (preimage Predict, oip ModelInfer).",
            per_model,
            registry=r,
        )
        self.model_rows = Counter(
            "preimage_model_rows", "Rows evaluated forwards, by model, version and protocol.", per_model, registry=r
        )
        self.models_loaded = Gauge("preimage_models_loaded", "Converted models held in memory.", registry=r)
        self.model_loads = Counter(
            "preimage_model_loads", "Model look-ups by the inference service, by cache result.", ["result"], registry=r
        )
        self.training_jobs = Counter(
            "preimage_training_jobs", "Train calls finished, by outcome.", ["outcome"], registry=r
        )
        self.training_running = Gauge("preimage_training_jobs_running", "Train calls running.", registry=r)
        self.registered = Counter("preimage_models_registered", "Models registered, by source.", ["source"], registry=r)
        self.shared_calls = Counter(
            "preimage_invert_shared_calls", "Invert calls served from a run shared with other calls.", registry=r
        )
        self.queue_depth = Gauge(
            "preimage_queue_depth", "Calls waiting for a running slot, by method.", ["rpc"], registry=r
        )
        self.running_calls = Gauge(
            "preimage_running_calls", "Calls holding a running slot, by method.", ["rpc"], registry=r
        )
        self.queue_wait = Histogram(
            "preimage_queue_wait_seconds",
            "Time a call waited for a running slot, by method (0 when one was free).",
            ["rpc"],
            buckets=(0.0, *_LATENCY_BUCKETS),
            registry=r,
        )
        self.admission_refused = Counter(
            "preimage_admission_refused",
            "Calls refused RESOURCE_EXHAUSTED by admission, by method and reason (queue_full, deadline).",
            ["rpc", "reason"],
            registry=r,
        )

    def child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, remembered: the hot paths update a few children per call, and
        ``labels()`` validates and locks each time (several microseconds on the event loop)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child  # type: ignore[no-any-return]

    def count_invert_work(self, forward_passes: int, backward_passes: int, rows_evaluated: int) -> None:
        """Add an Invert engine run's work (from its summary) to the pass and row counters."""
        self.child(self.passes, "forward").inc(forward_passes)
        self.child(self.passes, "backward").inc(backward_passes)
        self.rows_evaluated.inc(rows_evaluated)

    def serve_http(self, address: str) -> object:
        """Start the HTTP exposition endpoint on ``HOST:PORT``; returns the HTTP server."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)
        return server
