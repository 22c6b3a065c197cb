"""TLS (and mTLS) with certificates made in the test; bearer tokens of both kinds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from preimage.server.app import start_server
from preimage.server.settings import Settings
from preimage.v1 import inference_pb2, registry_pb2
from tests.models import linear_onnx
from tests.server.conftest import connect, upload_requests

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "openssl"], capture_output=True).returncode != 0, reason="needs the openssl CLI"
)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed by the CA."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=preimage-test-ca", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_pki(d)
    return d


def health_status(stubs: object) -> int:
    return stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=10).status  # type: ignore[attr-defined]


def test_tls(tmp_path: Path, pki: Path) -> None:
    settings = Settings(
        registry_dir=tmp_path / "r", address="127.0.0.1:0", tls_cert=pki / "server.pem", tls_key=pki / "server.key"
    )
    with start_server(settings) as running:
        credentials = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        stubs = connect(running.address, credentials=credentials)
        assert health_status(stubs) == health_pb2.HealthCheckResponse.SERVING
        stubs.channel.close()
        plain = connect(running.address)
        with pytest.raises(grpc.RpcError) as caught:
            health_status(plain)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        plain.channel.close()


def test_mutual_tls(tmp_path: Path, pki: Path) -> None:
    settings = Settings(
        registry_dir=tmp_path / "r",
        address="127.0.0.1:0",
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem",
    )
    ca = (pki / "ca.pem").read_bytes()
    with start_server(settings) as running:
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.pem").read_bytes(),
        )
        stubs = connect(running.address, credentials=with_cert)
        assert health_status(stubs) == health_pb2.HealthCheckResponse.SERVING
        stubs.channel.close()
        without_cert = connect(running.address, credentials=grpc.ssl_channel_credentials(root_certificates=ca))
        with pytest.raises(grpc.RpcError) as caught:
            health_status(without_cert)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        without_cert.channel.close()


def test_bearer_tokens(tmp_path: Path) -> None:
    settings = Settings(
        registry_dir=tmp_path / "r", address="127.0.0.1:0", admin_tokens=["admin-secret"], read_tokens=["read-secret"]
    )
    model = linear_onnx(np.ones((1, 2)), [0.0])
    admin = [("authorization", "Bearer admin-secret")]
    read = [("authorization", "Bearer read-secret")]
    wrong = [("authorization", "Bearer nope")]
    with start_server(settings) as running:
        stubs = connect(running.address)
        # Health stays open for probes.
        assert health_status(stubs) == health_pb2.HealthCheckResponse.SERVING
        for metadata in ((), wrong, [("authorization", "Basic admin-secret")]):
            with pytest.raises(grpc.RpcError) as caught:
                stubs.registry.ListModels(registry_pb2.ListModelsRequest(), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A read token may not register, delete, alias or train.
        with pytest.raises(grpc.RpcError) as caught:
            stubs.registry.RegisterModel(upload_requests("m", model), metadata=read)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as caught:
            stubs.registry.DeleteModel(registry_pb2.DeleteModelRequest(model_ref="m:1"), metadata=read)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as caught:
            list(stubs.inference.Train(iter([inference_pb2.TrainRequest()]), metadata=read))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # The admin token may; the read token may then read and predict.
        info = stubs.registry.RegisterModel(upload_requests("m", model), metadata=admin).model
        assert info.version == 1
        assert [m.name for m in stubs.registry.ListModels(registry_pb2.ListModelsRequest(), metadata=read).models] == [
            "m"
        ]
        X = inference_pb2.PredictRequest(model_ref="m", inputs={"rows": 1, "cols": 2, "values": [1.0, 2.0]})
        assert list(stubs.inference.Predict(X, metadata=read).outputs.values) == [3.0]
        stubs.channel.close()
