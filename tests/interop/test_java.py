"""The Java client (tests/interop/java/Client.java, stubs generated from protos/) against a real TLS server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.interop.checks import check_client


@pytest.mark.slow
def test_java_client_over_tls_registers_predicts_inverts_cancels_and_reads_details(
    java_client: list[str], secure_server: Any, pki: Path, tmp_path: Path
) -> None:
    check_client(java_client, "java", secure_server, pki, tmp_path)
