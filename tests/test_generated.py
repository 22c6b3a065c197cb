"""The committed generated code in preimage/v1 matches the protos (scripts/gen_protos.py --check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_proto_has_typed_stubs() -> None:
    for proto in (ROOT / "protos" / "preimage" / "v1").glob("*.proto"):
        stem = proto.stem
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert (ROOT / "preimage" / "v1" / f"{stem}{suffix}").is_file(), f"{stem}{suffix} missing"
