"""Status codes map to the client's error tree, with the server's message and rich details.

One table maps every code through a scripted fake (exact codes and trailers);
one table provokes each error from the real server.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from preimage.client import (
    CancelledError,
    Client,
    DeadlineExceededError,
    InternalError,
    InvalidArgument,
    InvalidArgumentError,
    ModelNotFound,
    ModelNotFoundError,
    PermissionDeniedError,
    PreimageError,
    ResourceExhaustedError,
    RetryPolicy,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from preimage.client.errors import error_from_rpc
from tests.client.fakes import FakeServer, Script, bad_request, retry_info, status_details
from tests.models import EXAMPLE_MODEL

NO_RETRY = RetryPolicy(max_attempts=1)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, ModelNotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.FAILED_PRECONDITION, InvalidArgumentError),
        (grpc.StatusCode.OUT_OF_RANGE, InvalidArgumentError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.CANCELLED, CancelledError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.UNIMPLEMENTED, UnimplementedError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNKNOWN, InternalError),
        (grpc.StatusCode.DATA_LOSS, InternalError),
        (grpc.StatusCode.ALREADY_EXISTS, InternalError),
    ],
)
def test_every_status_code_maps_to_one_class(code: grpc.StatusCode, error: type[PreimageError]) -> None:
    script = Script(failures=Counter(GetModel=1), failure_code=code)
    with FakeServer(script) as fake, Client(fake.address, retry=NO_RETRY, timeout=10) as client:
        with pytest.raises(error) as caught:
            client.model("fake", timeout=10)
    exc = caught.value
    assert type(exc) is error
    assert exc.code is code and exc.message == f"scripted {code.name}"
    assert isinstance(exc.__cause__, grpc.RpcError)
    assert exc.request_id is not None and len(exc.request_id) == 32
    assert exc.exit_code > 2  # distinct from success, generic failure and usage


def test_bad_request_field_and_retry_info_are_read_from_trailers() -> None:
    script = Script(
        failures=Counter(GetModel=2),
        failure_code=grpc.StatusCode.INVALID_ARGUMENT,
        details=status_details(3, "bad", bad_request("targets[1]")),
    )
    with FakeServer(script) as fake, Client(fake.address, retry=NO_RETRY, timeout=10) as client:
        with pytest.raises(InvalidArgument) as caught:
            client.model("fake")
        assert caught.value.field == "targets[1]"
        fake.fake.script.failure_code = grpc.StatusCode.RESOURCE_EXHAUSTED
        fake.fake.script.details = status_details(8, "busy", retry_info(2, 500_000_000))
        with pytest.raises(ResourceExhaustedError) as limited:
            client.model("fake")
        assert limited.value.retry_after == pytest.approx(2.5)


def test_malformed_details_do_not_hide_the_error() -> None:
    class Broken(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.INVALID_ARGUMENT

        def details(self) -> str:
            return "nope"

        def trailing_metadata(self) -> Any:
            return (("grpc-status-details-bin", b"\xff\xff not a status"),)

    exc = error_from_rpc(Broken())
    assert isinstance(exc, InvalidArgumentError) and exc.field is None and exc.message == "nope"


def test_short_names_are_the_same_classes() -> None:
    assert ModelNotFound is ModelNotFoundError and InvalidArgument is InvalidArgumentError
    assert issubclass(InvalidArgumentError, ValueError)


# -- the real server ------------------------------------------------------------------------

ADMIN, READER = "admin-token", "read-token"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with tokens and a small model-size limit, the example model registered."""
    from preimage.server.app import start_server
    from preimage.server.settings import Settings

    settings = Settings(
        registry_dir=tmp_path_factory.mktemp("guarded"),
        address="127.0.0.1:0",
        admin_tokens=[ADMIN],
        read_tokens=[READER],
        max_model_bytes=64 * 1024,
        shutdown_grace_seconds=0,
        torch_threads=1,
    )
    running = start_server(settings)
    with Client(running.address, token=ADMIN, timeout=60) as admin:
        admin.register(EXAMPLE_MODEL, "example")
    yield running.address
    running.stop()


CASES: list[tuple[str, str | None, Callable[[Client], Any], type[PreimageError]]] = [
    ("unknown model", ADMIN, lambda c: c.model("nope"), ModelNotFoundError),
    ("unknown version", ADMIN, lambda c: c.predict("example:99", np.zeros((1, 10))), ModelNotFoundError),
    ("n = 0", ADMIN, lambda c: c.invert("example", target=7.0, n=0).to_numpy(), InvalidArgumentError),
    (
        "NaN target",
        ADMIN,
        lambda c: c.invert("example", target=math.nan, n=1).to_numpy(),
        InvalidArgumentError,
    ),
    (
        "negative tolerance",
        ADMIN,
        lambda c: c.invert("example", target=7.0, n=1, tolerance=-1.0).to_numpy(),
        InvalidArgumentError,
    ),
    (
        "lower bound above upper",
        ADMIN,
        lambda c: c.invert("example", target=7.0, n=1, bounds=(1.0, 0.0)).to_numpy(),
        InvalidArgumentError,
    ),
    ("wrong width", ADMIN, lambda c: c.predict("example", np.zeros((2, 3))), InvalidArgumentError),
    ("NaN row", ADMIN, lambda c: c.predict("example", np.full((1, 10), np.nan)), InvalidArgumentError),
    ("garbage ONNX", ADMIN, lambda c: c.register(b"not a model", "junk"), InvalidArgumentError),
    ("over the size limit", ADMIN, lambda c: c.register(b"\x00" * 100_000, "big"), ResourceExhaustedError),
    ("no token", None, lambda c: c.models(), UnauthenticatedError),
    ("read token, admin call", READER, lambda c: c.delete("example:1"), PermissionDeniedError),
]


@pytest.mark.parametrize(("case", "token", "call", "error"), CASES, ids=[c[0] for c in CASES])
def test_real_server_errors(
    guarded: str, case: str, token: str | None, call: Callable[[Client], Any], error: type[PreimageError]
) -> None:
    with Client(guarded, token=token, retry=NO_RETRY, timeout=60) as client:
        with pytest.raises(error) as caught:
            call(client)
        assert caught.value.message  # the server's own words
        # The server keeps serving after every one of them.
        assert client.health() == "SERVING"
    with Client(guarded, token=READER, timeout=60) as reader:
        assert [m.ref for m in reader.models()] == ["example:1"]


def test_invalid_argument_names_the_field(guarded: str) -> None:
    with Client(guarded, token=ADMIN, retry=NO_RETRY, timeout=60) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            client.invert("example", target=[7.0, 8.0], n=1).to_numpy()
        assert caught.value.field is not None and "target" in caught.value.field


def test_register_refuses_unreadable_file(tmp_path: Path) -> None:
    with Client("127.0.0.1:1") as client, pytest.raises(InvalidArgumentError) as caught:
        client.register(tmp_path / "missing.onnx", "x")
    assert "cannot read" in caught.value.message and caught.value.code is None


def test_train_on_a_server_without_it_is_unimplemented() -> None:
    # The fake implements no Train: gRPC answers UNIMPLEMENTED (what examples/game_levels falls back on).
    with FakeServer() as fake, Client(fake.address, retry=NO_RETRY, timeout=10) as client:
        run = client.train({"x": [0.0, 1.0], "y": [1.0, 2.0]}, name="t", target="y")
        with pytest.raises(UnimplementedError):
            run.wait()
