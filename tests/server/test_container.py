"""The Dockerfile installs exactly as CI does (no Docker engine runs here to build it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_and_ci_use_the_same_install_script() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_script = (ROOT / "scripts" / "test.sh").read_text()
    run_lines = [line for line in dockerfile.splitlines() if line.startswith("RUN ")]
    installs = [line for line in run_lines if "scripts/install.sh" in line]
    assert len(installs) == 1, "the image installs with scripts/install.sh, once"
    assert "scripts/test.sh" in ci and "scripts/install.sh" in test_script
    # No other package installation in the image that CI would not also run.
    assert not any(re.search(r"\bpip\b|\bnpm\b|apt-get install", line) for line in run_lines)


def test_dockerfile_runs_unprivileged_with_volume_and_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^VOLUME \[\"/data\"\]", dockerfile, flags=re.M)
    assert "PREIMAGE_REGISTRY_DIR=/data/registry" in dockerfile
    healthcheck = re.search(r"^HEALTHCHECK .*\n(?:\s+.*\n)*", dockerfile, flags=re.M)
    assert healthcheck and "preimage" in healthcheck.group(0) and "health" in healthcheck.group(0)
    assert re.search(r'^CMD \["preimage", "serve"\]', dockerfile, flags=re.M)


def test_healthcheck_command_works_against_a_server(tmp_path: Path) -> None:
    import json
    import shutil
    import subprocess

    from preimage.server.app import start_server
    from preimage.server.settings import Settings

    dockerfile = (ROOT / "Dockerfile").read_text()
    match = re.search(r"HEALTHCHECK [^\n]*\\\n\s+CMD (\[.*\])", dockerfile)
    assert match, "HEALTHCHECK ... CMD [json array]"
    command = json.loads(match.group(1))
    executable = shutil.which(command[0]) or str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / command[0])
    with start_server(Settings(registry_dir=tmp_path / "r", address="127.0.0.1:0")) as running:
        argv = [executable, *(running.address if a == "127.0.0.1:50051" else a for a in command[1:])]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"
