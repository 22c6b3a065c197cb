"""``buf lint`` and ``buf breaking`` guard the v1 contract (buf from the @bufbuild/buf npm package).

``buf breaking --against '.git#branch=main'`` is trivially clean in CI, whose
clone *is* main. So the contract is compared with two fixed points instead:
the first commit that introduced ``protos/preimage/v1`` (everything since must
be a compatible change) and ``HEAD`` (uncommitted edits must be compatible).
A deliberately broken copy proves the check can fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.interop.conftest import ROOT


def _buf(buf: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _first_contract_commit() -> str:
    """The commit that first added protos/preimage/v1 (skips when the clone has no such history)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: buf breaking needs the contract's history")
    log = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "protos/preimage/v1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    commits = log.stdout.split()
    if not commits:
        pytest.skip("the clone's history does not reach the commit that introduced protos/preimage/v1 (shallow?)")
    return commits[-1]


def test_buf_lint(buf: Path) -> None:
    done = _buf(buf, "lint")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("against", ["first", "HEAD"])
def test_buf_breaking(buf: Path, against: str) -> None:
    ref = _first_contract_commit() if against == "first" else "HEAD"
    done = _buf(buf, "breaking", "--against", f".git#ref={ref}")
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_breaking_catches_a_renumbered_field(buf: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copy2(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    proto = tmp_path / "protos" / "preimage" / "v1" / "inference.proto"
    text = proto.read_text()
    assert "  uint64 count = 3;" in text
    proto.write_text(text.replace("  uint64 count = 3;", "  uint64 count = 16;"))
    done = _buf(buf, "breaking", "--against", f"{ROOT}/.git#ref={_first_contract_commit()}", cwd=tmp_path)
    assert done.returncode != 0 and 'field "3" with name "count"' in done.stdout + done.stderr
