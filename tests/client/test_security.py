"""TLS, mutual TLS and bearer tokens from the client and the CLI, against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from preimage.client import Client, RetryPolicy, UnauthenticatedError, UnavailableError
from tests.models import EXAMPLE_MODEL, onnx_eval

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "openssl"], capture_output=True).returncode != 0, reason="needs the openssl CLI"
)

TOKEN = "client-test-admin"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server requiring TLS, a client certificate signed by its CA, and a token; with its PKI folder."""
    from preimage.server.app import start_server
    from preimage.server.settings import Settings
    from tests.server.test_security import make_pki

    pki = tmp_path_factory.mktemp("pki")
    make_pki(pki)
    settings = Settings(
        registry_dir=tmp_path_factory.mktemp("registry"),
        address="127.0.0.1:0",
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem",
        admin_tokens=[TOKEN],
        shutdown_grace_seconds=0,
        torch_threads=1,
    )
    running = start_server(settings)
    yield running.address, pki
    running.stop()


def test_mutual_tls_and_token(secure: tuple[str, Path]) -> None:
    address, pki = secure
    with Client(
        address,
        root_certificates=pki / "ca.pem",
        private_key=pki / "client.key",
        certificate_chain=pki / "client.pem",
        token=TOKEN,
        timeout=60,
    ) as client:
        info = client.register(EXAMPLE_MODEL, "secure")
        X = client.invert(info.ref, target=5.0, n=10, seed=0).to_numpy().inputs
        assert np.all(np.abs(onnx_eval(EXAMPLE_MODEL, X) - 5.0) <= 1e-3 + 1e-4)

    no_token = Client(address, root_certificates=(pki / "ca.pem").read_bytes(), private_key=pki / "client.key",
                      certificate_chain=pki / "client.pem", timeout=60)  # fmt: skip
    with no_token, pytest.raises(UnauthenticatedError):
        no_token.models()
    # Without a client certificate the handshake fails: the server is unavailable to this client.
    no_cert = Client(address, root_certificates=pki / "ca.pem", token=TOKEN, timeout=10, retry=RetryPolicy(1))
    with no_cert, pytest.raises(UnavailableError):
        no_cert.models()


def test_cli_tls_options(secure: tuple[str, Path]) -> None:
    address, pki = secure
    script = Path(sys.executable).with_name("preimage")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "preimage.client.cli"]
    tls = ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")]
    env = {**os.environ, "PREIMAGE_SERVER": address, "PREIMAGE_TOKEN": TOKEN}
    done = subprocess.run([*command, *tls, "health"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "SERVING", done.stderr
    done = subprocess.run([*command, *tls, "models", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    env.pop("PREIMAGE_TOKEN")
    refused = subprocess.run([*command, *tls, "models"], capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 6 and "UNAUTHENTICATED" in refused.stderr
