"""A real server on a free loopback port, with raw generated stubs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from preimage.server.app import RunningServer, start_server
from preimage.server.settings import Settings
from preimage.v1 import inference_pb2_grpc, registry_pb2, registry_pb2_grpc, schema_pb2

CHUNK = 1 << 20


@dataclass
class Stubs:
    """Stubs on one channel to a running server."""

    channel: grpc.Channel
    registry: registry_pb2_grpc.RegistryServiceStub
    inference: inference_pb2_grpc.InferenceServiceStub
    health: health_pb2_grpc.HealthStub


def connect(address: str, *, credentials: grpc.ChannelCredentials | None = None, options: Any = ()) -> Stubs:
    """Open a channel and its stubs."""
    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20), *options]
    channel = (
        grpc.secure_channel(address, credentials, options=opts)
        if credentials
        else grpc.insecure_channel(address, options=opts)
    )
    return Stubs(
        channel,
        registry_pb2_grpc.RegistryServiceStub(channel),
        inference_pb2_grpc.InferenceServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
    )


def upload_requests(
    name: str, data: bytes, *, schema: dict[str, Any] | None = None, bounds: tuple[float, float] | None = None
) -> Iterator[registry_pb2.RegisterModelRequest]:
    """A RegisterModel request stream: header, then 1 MiB chunks."""
    header = registry_pb2.RegisterModelHeader(name=name, size_bytes=len(data))
    if schema is not None:
        header.schema.CopyFrom(schema_to_message(schema))
    if bounds is not None:
        header.default_min, header.default_max = bounds
    yield registry_pb2.RegisterModelRequest(header=header)
    for start in range(0, len(data), CHUNK):
        yield registry_pb2.RegisterModelRequest(chunk=data[start : start + CHUNK])


def schema_to_message(schema: dict[str, Any]) -> schema_pb2.FeatureSchema:
    """Build the proto schema from its JSON form (independently of the server's converter)."""
    message = schema_pb2.FeatureSchema()
    for item in schema["inputs"]:
        feature = message.inputs.add(
            name=item["name"],
            kind=schema_pb2.FeatureKind.Value(f"FEATURE_KIND_{item.get('kind', 'continuous').upper()}"),
            levels=item.get("levels", []),
        )
        if "min" in item:
            feature.min = item["min"]
        if "max" in item:
            feature.max = item["max"]
    for item in schema.get("outputs", []):
        message.outputs.add(name=item["name"])
    return message


def register(stubs: Stubs, name: str, data: bytes, **kwargs: Any) -> registry_pb2.ModelInfo:
    """Register a model and return its info."""
    return stubs.registry.RegisterModel(upload_requests(name, data, **kwargs), timeout=120).model


@pytest.fixture
def server_settings(tmp_path: Path) -> Settings:
    """Settings of a fresh server on a free loopback port with its registry under tmp_path."""
    return Settings(registry_dir=tmp_path / "registry", address="127.0.0.1:0", shutdown_grace_seconds=0)


@pytest.fixture
def server(server_settings: Settings) -> Iterator[RunningServer]:
    """A running in-process server."""
    running = start_server(server_settings)
    yield running
    running.stop()


@pytest.fixture
def stubs(server: RunningServer) -> Iterator[Stubs]:
    """Stubs connected to ``server``."""
    connected = connect(server.address)
    yield connected
    connected.channel.close()


@pytest.fixture
def example_schema() -> dict[str, Any]:
    """The example model's schema."""
    path = Path(__file__).resolve().parents[2] / "examples" / "difficulty" / "schema.json"
    return json.loads(path.read_text())
