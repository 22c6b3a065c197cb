"""Prometheus metrics scraped over HTTP move with the traffic."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import numpy as np

from preimage.server.app import start_server
from preimage.server.settings import Settings
from preimage.v1 import inference_pb2, registry_pb2
from tests.server.conftest import connect, register
from tests.server.test_end_to_end import to_matrix


def scrape(address: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+0-9.eE]+|NaN|[+-]Inf)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def test_metrics_endpoint(tmp_path: Path, example_model_bytes: bytes) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    metrics_address = f"127.0.0.1:{metrics_port}"
    settings = Settings(registry_dir=tmp_path / "r", address="127.0.0.1:0", metrics_address=metrics_address)
    with start_server(settings) as running:
        stubs = connect(running.address)
        register(stubs, "difficulty", example_model_bytes)
        before = scrape(metrics_address)
        X = np.full((5, 10), 0.5, dtype=np.float32)
        stubs.inference.Predict(inference_pb2.PredictRequest(model_ref="difficulty", inputs=to_matrix(X)))
        responses = list(
            stubs.inference.Invert(
                inference_pb2.InvertRequest(
                    model_ref="difficulty", targets=[inference_pb2.Target(value=7)], count=40, seed=1
                )
            )
        )
        try:
            stubs.registry.GetModel(registry_pb2.GetModelRequest(model_ref="nosuch"))
        except Exception:
            pass
        after = scrape(metrics_address)
        stubs.channel.close()

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta('preimage_requests_total{code="OK",rpc="Predict"}') == 1
    assert delta('preimage_requests_total{code="OK",rpc="Invert"}') == 1
    assert delta('preimage_requests_total{code="NOT_FOUND",rpc="GetModel"}') == 1
    assert delta('preimage_request_duration_seconds_count{rpc="Predict"}') == 1
    assert delta("preimage_invert_patterns_total") == responses[-1].summary.returned == 40
    assert delta('preimage_invert_passes_total{direction="forward"}') == responses[-1].summary.forward_passes
    assert delta("preimage_predict_rows_total") == 5
    assert after['preimage_in_flight_streams{rpc="Invert"}'] == 0
    assert after['preimage_models_registered_total{source="upload"}'] == 1
    loads = delta('preimage_model_loads_total{result="hit"}') + delta('preimage_model_loads_total{result="miss"}')
    assert loads == 2  # Predict and Invert each looked the model up once
    assert after["preimage_models_loaded"] == 1
