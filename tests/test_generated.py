"""The committed generated code in preimage/v1 and preimage/oip matches the protos (scripts/gen_protos.py --check)."""

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
    for package in ("v1", "oip"):
        protos = list((ROOT / "protos" / "preimage" / package).glob("*.proto"))
        assert protos, f"no protos under protos/preimage/{package}"
        for proto in protos:
            stem = proto.stem
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
                assert (ROOT / "preimage" / package / f"{stem}{suffix}").is_file(), f"{package}/{stem}{suffix} missing"
