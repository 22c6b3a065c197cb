"""Settings precedence: flags over environment variables over the TOML file over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from preimage.server.cli import settings_from_args
from preimage.server.settings import Settings


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "preimage.toml"
    config.write_text(
        'address = "127.0.0.1:6000"\nlog_format = "json"\ncache_size = 3\nmax_concurrent_inverts = 5\n'
        'read_tokens = ["r1", "r2"]\n'
    )
    monkeypatch.setenv("PREIMAGE_CONFIG", str(config))
    monkeypatch.setenv("PREIMAGE_CACHE_SIZE", "4")
    monkeypatch.setenv("PREIMAGE_MAX_CONCURRENT_INVERTS", "6")
    settings = settings_from_args(["--max-concurrent-inverts", "7"])
    assert settings.address == "127.0.0.1:6000"  # file
    assert settings.log_format == "json"  # file
    assert settings.cache_size == 4  # env over file
    assert settings.max_concurrent_inverts == 7  # flag over env
    assert settings.read_tokens == ["r1", "r2"]
    assert settings.max_model_bytes == 256 * 2**20  # default


def test_shared_registry_from_flags_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "preimage.toml"
    config.write_text('index = "postgresql://file@db:5432/preimage"\nblobs = "s3://file-bucket/models"\n')
    assert (Settings(config=config).index, Settings(config=config).blobs) == (
        "postgresql://file@db:5432/preimage",
        "s3://file-bucket/models",
    )
    monkeypatch.setenv("PREIMAGE_INDEX", "postgresql://env@db:5432/preimage")
    monkeypatch.setenv("PREIMAGE_BLOBS", "s3://env-bucket/models")
    assert (Settings(config=config).index, Settings(config=config).blobs) == (
        "postgresql://env@db:5432/preimage",
        "s3://env-bucket/models",
    )
    flags = settings_from_args(["--index", "postgresql://flag@db/p", "--blobs", "gs://flag-bucket/m"])
    assert (flags.index, flags.blobs) == ("postgresql://flag@db/p", "gs://flag-bucket/m")
    monkeypatch.delenv("PREIMAGE_INDEX")
    monkeypatch.delenv("PREIMAGE_BLOBS")
    assert (Settings().index, Settings().blobs) == (None, None)  # the embedded default


def test_env_tokens_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREIMAGE_ADMIN_TOKENS", "a, b")
    assert Settings().admin_tokens == ["a", "b"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-cert", "x.pem"], "tls_cert and tls_key"),
        (["--max-concurrent-inverts", "0"], "max_concurrent_inverts"),
        (["--config", "/nonexistent.toml"], "does not exist"),
        (["--log-format", "xml"], "invalid choice"),
        (["--index", "postgresql://u@h:5432/db"], "index and blobs go together"),
        (["--blobs", "s3://bucket/prefix"], "index and blobs go together"),
        (["--index", "mysql://u@h/db", "--blobs", "s3://b/p"], "index must be a postgresql://"),
        (["--index", "postgresql://u@h/db", "--blobs", "ftp://b/p"], "blobs must be a URL like s3://BUCKET/PREFIX"),
        (["--index", "postgresql://u@h/db", "--blobs", "bucket/prefix"], "blobs must be a URL like s3://BUCKET/PREFIX"),
    ],
)
def test_bad_settings_exit_with_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        settings_from_args(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`PREIMAGE_{name.upper()}`" in doc, f"{name} missing from docs/configuration.md"


def test_concurrent_inverts_default_to_the_cores_between_2_and_8(monkeypatch: pytest.MonkeyPatch) -> None:
    from preimage.server import settings as settings_module

    for cores, expected in ((1, 2), (2, 2), (6, 6), (64, 8)):
        monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert Settings().max_concurrent_inverts == expected
    assert settings_from_args(["--max-concurrent-inverts", "3"]).max_concurrent_inverts == 3


def test_serve_sets_the_interpreter_switch_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from preimage.server import app

    assert Settings().switch_interval_ms == 0.5
    settings = settings_from_args(["--switch-interval-ms", "2"])
    assert settings.switch_interval_ms == 2
    monkeypatch.setattr(app.asyncio, "run", lambda main: main.close())  # serve nothing
    before = sys.getswitchinterval()
    try:
        assert app.run(settings) == 0
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)
