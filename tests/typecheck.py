"""Run mypy over the installed ``preimage`` namespace.

mypy cannot follow the editable install's package-dir mapping, so the namespace is
laid out as it is installed, with links into the checkout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_mypy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """mypy with the project's config and ``args``, run on a linked ``preimage`` tree in ``tmp_path``."""
    package = tmp_path / "preimage"
    package.mkdir()
    for name in ("__init__.py", "py.typed", "errors.py", "v1"):
        (package / name).symlink_to(ROOT / "preimage" / name)
    for name in ("client", "server", "registry"):
        (package / name).symlink_to(ROOT / name)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    command += ["--cache-dir", str(tmp_path / ".mypy_cache"), *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
