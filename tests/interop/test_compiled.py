"""A missing Go or Java toolchain skips locally, and fails under CI (CI=true)."""

from __future__ import annotations

import pytest

from tests.interop import compiled


def test_missing_toolchain_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match=r"CI=true and `go` is missing: scripts/install\.sh"):
        compiled.unavailable("`go`")


def test_missing_toolchain_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match=r"`javac` is missing: scripts/install\.sh"):
        compiled.unavailable("`javac`")


def test_a_tool_not_on_path_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "IN_CI", True)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="`protoc` is missing"):
        compiled._tool("protoc")
