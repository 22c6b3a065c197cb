"""Retries with backoff only for UNAVAILABLE on idempotent calls; metadata on every call.

A scripted fake server counts the attempts each method receives.
"""

from __future__ import annotations

import socket
from collections import Counter

import grpc
import numpy as np
import pytest

from preimage.client import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    RetryPolicy,
    UnavailableError,
)
from tests.client.fakes import FakeServer, Script

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02, jitter=0.0)


def _script(**failures: int) -> Script:
    return Script(failures=Counter(failures))


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("ListModels", lambda c: c.models()),
        ("GetModel", lambda c: c.model("fake")),
        ("Predict", lambda c: c.predict("fake", np.zeros((2, 2), np.float32))),
        ("Invert", lambda c: c.invert("fake", target=1.0, n=1).to_numpy()),
    ],
)
def test_idempotent_calls_retry_unavailable(method: str, call: object) -> None:
    with FakeServer(_script(**{method: 2})) as fake, Client(fake.address, retry=FAST, timeout=10) as client:
        call(client)  # type: ignore[operator]
        assert fake.calls[method] == 3


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("RegisterModel", lambda c: c.register(b"\x00" * 10, "fake")),
        ("DeleteModel", lambda c: c.delete("fake:1")),
    ],
)
def test_mutating_calls_never_retry(method: str, call: object) -> None:
    with FakeServer(_script(**{method: 1})) as fake, Client(fake.address, retry=FAST, timeout=10) as client:
        with pytest.raises(UnavailableError):
            call(client)  # type: ignore[operator]
        assert fake.calls[method] == 1


def test_retries_give_up_after_max_attempts() -> None:
    with FakeServer(_script(ListModels=10)) as fake, Client(fake.address, retry=FAST, timeout=10) as client:
        with pytest.raises(UnavailableError) as caught:
            client.models()
        assert fake.calls["ListModels"] == FAST.max_attempts
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE


def test_only_unavailable_is_retried() -> None:
    script = Script(failures=Counter(ListModels=1), failure_code=grpc.StatusCode.INVALID_ARGUMENT)
    with FakeServer(script) as fake, Client(fake.address, retry=FAST, timeout=10) as client:
        with pytest.raises(InvalidArgumentError):
            client.models()
        assert fake.calls["ListModels"] == 1


def test_invert_is_not_retried_after_its_first_message() -> None:
    script = Script(failures=Counter(Invert=1), fail_after_first=True)
    with FakeServer(script) as fake, Client(fake.address, retry=FAST, timeout=10) as client:
        stream = client.invert("fake", target=1.0, n=5)
        first = next(stream)
        np.testing.assert_array_equal(first.input, [0.5, 0.5])
        with pytest.raises(UnavailableError):
            list(stream)
        assert fake.calls["Invert"] == 1


def test_closed_port_is_unavailable_after_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now.
    with Client(f"127.0.0.1:{port}", retry=FAST, timeout=10) as client, pytest.raises(UnavailableError):
        client.models()


def test_metadata_token_and_request_id() -> None:
    with FakeServer() as fake, Client(fake.address, token="s3cret", metadata=[("x-team", "levels")]) as client:
        client.models()
        client.predict("fake", np.zeros((1, 2), np.float32), request_id="abc123")
    first, second = fake.metadata
    assert first["authorization"] == "Bearer s3cret" and first["x-team"] == "levels"
    assert len(first["x-request-id"]) == 32
    assert second["x-request-id"] == "abc123"


async def test_async_retries_follow_the_same_rules() -> None:
    with FakeServer(_script(ListModels=2, RegisterModel=1, Invert=1)) as fake:
        async with AsyncClient(fake.address, retry=FAST, timeout=10) as client:
            assert [m.name for m in await client.models()] == ["fake"]
            with pytest.raises(UnavailableError):
                await client.register(b"\x00" * 10, "fake")
            arrays = await client.invert("fake", target=1.0, n=1).to_numpy()
        assert arrays.inputs.shape == (1, 2)
        assert fake.calls == Counter(ListModels=3, RegisterModel=1, Invert=2)
