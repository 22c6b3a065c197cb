"""Retries with backoff only for UNAVAILABLE, or RESOURCE_EXHAUSTED with RetryInfo, on idempotent calls.

Metadata goes on every call.

A scripted fake server counts the attempts each method receives.
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest

from preimage.client import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    ResourceExhaustedError,
    RetryPolicy,
    UnavailableError,
    aio,
    sync,
)
from tests.client.fakes import FakeServer, Script, retry_info, status_details

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


# -- RESOURCE_EXHAUSTED with a RetryInfo hint (the server's admission queue is full) -----------

HINT = 0.5
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
HINTED = status_details(EXHAUSTED.value[0], "queue full", retry_info(0, int(HINT * 1e9)))


def _exhausted(hinted: bool = True, fail_after_first: bool = False, **failures: int) -> Script:
    return Script(
        failures=Counter(failures),
        failure_code=EXHAUSTED,
        details=HINTED if hinted else None,
        fail_after_first=fail_after_first,
    )


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits both clients make between attempts, recorded instead of slept."""
    recorded: list[float] = []

    def record(seconds: float) -> None:
        recorded.append(seconds)

    async def record_async(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(sync, "_sleep", record)
    monkeypatch.setattr(aio, "_sleep", record_async)
    return recorded


SAFE_CALLS = [
    ("ListModels", lambda c: c.models()),
    ("GetModel", lambda c: c.model("fake")),
    ("Predict", lambda c: c.predict("fake", np.zeros((2, 2), np.float32))),
    ("Check", lambda c: c.health()),
    ("Invert", lambda c: c.invert("fake", target=1.0, n=1).to_numpy()),
]


@pytest.mark.parametrize(("method", "call"), SAFE_CALLS)
def test_hinted_resource_exhausted_is_retried_after_the_hint(method: str, call: Any, waits: list[float]) -> None:
    with FakeServer(_exhausted(**{method: 2})) as fake, Client(fake.address, retry=FAST, timeout=30) as client:
        call(client)
        assert fake.calls[method] == 3
    # The hint is longer than the backoff (at most 0.02 s): every wait is at least the hint.
    assert len(waits) == 2 and all(w >= HINT for w in waits)


@pytest.mark.parametrize(("method", "call"), SAFE_CALLS)
async def test_async_hinted_resource_exhausted_is_retried_after_the_hint(
    method: str, call: Any, waits: list[float]
) -> None:
    with FakeServer(_exhausted(**{method: 2})) as fake:
        async with AsyncClient(fake.address, retry=FAST, timeout=30) as client:
            await call(client)
        assert fake.calls[method] == 3
    assert len(waits) == 2 and all(w >= HINT for w in waits)


def test_jitter_only_lengthens_the_hinted_wait(waits: list[float]) -> None:
    policy = RetryPolicy(max_attempts=6, initial_backoff=0.01, max_backoff=0.02, jitter=0.5)
    with FakeServer(_exhausted(ListModels=5)) as fake, Client(fake.address, retry=policy, timeout=30) as client:
        client.models()
        assert fake.calls["ListModels"] == 6
    assert len(waits) == 5 and all(HINT <= w <= HINT * 1.5 for w in waits)


def test_hinted_retries_give_up_at_max_attempts_with_the_original_error(waits: list[float]) -> None:
    with FakeServer(_exhausted(Predict=10)) as fake, Client(fake.address, retry=FAST, timeout=30) as client:
        with pytest.raises(ResourceExhaustedError) as caught:
            client.predict("fake", np.zeros((1, 2), np.float32))
        assert fake.calls["Predict"] == FAST.max_attempts
    assert caught.value.retry_after == pytest.approx(HINT) and "scripted" in caught.value.message
    assert len(waits) == FAST.max_attempts - 1


def test_a_hint_past_the_deadline_is_not_waited_for(waits: list[float]) -> None:
    # The deadline (0.3 s) ends before the hinted 0.5 s: one attempt, the server's own error.
    with FakeServer(_exhausted(ListModels=3)) as fake, Client(fake.address, retry=FAST, timeout=0.3) as client:
        with pytest.raises(ResourceExhaustedError) as caught:
            client.models()
        assert fake.calls["ListModels"] == 1
    assert caught.value.retry_after == pytest.approx(HINT) and waits == []


async def test_async_a_hint_past_the_deadline_is_not_waited_for(waits: list[float]) -> None:
    with FakeServer(_exhausted(Invert=3)) as fake:
        async with AsyncClient(fake.address, retry=FAST, timeout=0.3) as client:
            with pytest.raises(ResourceExhaustedError):
                await client.invert("fake", target=1.0, n=1).to_numpy()
        assert fake.calls["Invert"] == 1
    assert waits == []


@pytest.mark.parametrize(("method", "call"), SAFE_CALLS)
def test_resource_exhausted_without_a_hint_is_not_retried(method: str, call: Any, waits: list[float]) -> None:
    with FakeServer(_exhausted(hinted=False, **{method: 1})) as fake, Client(fake.address, retry=FAST) as client:
        with pytest.raises(ResourceExhaustedError) as caught:
            call(client)
        assert fake.calls[method] == 1
    assert caught.value.retry_after is None and waits == []


async def test_async_resource_exhausted_without_a_hint_is_not_retried(waits: list[float]) -> None:
    with FakeServer(_exhausted(hinted=False, Predict=1, Invert=1)) as fake:
        async with AsyncClient(fake.address, retry=FAST) as client:
            with pytest.raises(ResourceExhaustedError):
                await client.predict("fake", np.zeros((1, 2), np.float32))
            with pytest.raises(ResourceExhaustedError):
                await client.invert("fake", target=1.0, n=1).to_numpy()
        assert fake.calls == Counter(Predict=1, Invert=1)
    assert waits == []


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("RegisterModel", lambda c: c.register(b"\x00" * 10, "fake")),
        ("DeleteModel", lambda c: c.delete("fake:1")),
    ],
)
def test_mutating_calls_never_retry_hinted_resource_exhausted(method: str, call: Any, waits: list[float]) -> None:
    with FakeServer(_exhausted(**{method: 1})) as fake, Client(fake.address, retry=FAST, timeout=30) as client:
        with pytest.raises(ResourceExhaustedError):
            call(client)
        assert fake.calls[method] == 1
    assert waits == []


async def test_async_mutating_calls_never_retry_hinted_resource_exhausted(waits: list[float]) -> None:
    with FakeServer(_exhausted(RegisterModel=1, DeleteModel=1)) as fake:
        async with AsyncClient(fake.address, retry=FAST, timeout=30) as client:
            with pytest.raises(ResourceExhaustedError):
                await client.register(b"\x00" * 10, "fake")
            with pytest.raises(ResourceExhaustedError):
                await client.delete("fake:1")
        assert fake.calls == Counter(RegisterModel=1, DeleteModel=1)
    assert waits == []


def test_invert_is_not_retried_after_its_first_message_on_resource_exhausted(waits: list[float]) -> None:
    script = _exhausted(fail_after_first=True, Invert=1)
    with FakeServer(script) as fake, Client(fake.address, retry=FAST, timeout=30) as client:
        stream = client.invert("fake", target=1.0, n=5)
        next(stream)
        with pytest.raises(ResourceExhaustedError):
            list(stream)
        assert fake.calls["Invert"] == 1
    assert waits == []


async def test_async_invert_is_not_retried_after_its_first_message_on_resource_exhausted(
    waits: list[float],
) -> None:
    script = _exhausted(fail_after_first=True, Invert=1)
    with FakeServer(script) as fake:
        async with AsyncClient(fake.address, retry=FAST, timeout=30) as client:
            stream = client.invert("fake", target=1.0, n=5)
            await stream.__anext__()
            with pytest.raises(ResourceExhaustedError):
                async for _ in stream:
                    pass
        assert fake.calls["Invert"] == 1
    assert waits == []
