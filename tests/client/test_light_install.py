"""``pip install preimage`` is the client alone: a fresh virtual environment without torch uses it.

Builds the wheel from a copy of the checkout, checks that it installs nothing
but the ``preimage`` namespace, installs it with only grpcio, protobuf and
numpy (pinned by constraints.txt) into a new venv made without system site
packages, then registers, predicts and inverts against a real server from there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.models import EXAMPLE_MODEL, onnx_eval

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "preimage", "client", "server", "registry")

pytestmark = pytest.mark.slow

SCRIPT = """
import importlib.util, json, sys
import numpy as np
from preimage.client import Client
missing = [m for m in ("torch", "onnx", "onnx2torch", "onnxruntime") if importlib.util.find_spec(m) is not None]
address, model = sys.argv[1], sys.argv[2]
with Client(address, timeout=120) as client:
    client.wait_ready(30)
    info = client.register(model, "light")
    y = client.predict(info.ref, np.full((1, 10), 0.5, np.float32))
    X, Y, E = client.invert(info.ref, target=7.0, n=20, seed=3).to_numpy()
print(json.dumps({"present": missing, "ref": info.ref, "y": y.tolist(), "X": X.tolist(), "Y": Y.tolist()}))
"""


def _run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the sources (the checkout stays untouched)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, src / name)
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, src)
    (built,) = out.glob("preimage-*.whl")
    return built


def test_wheel_installs_only_the_preimage_namespace(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top <= {"preimage", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert not top & {"server", "client", "registry", "tests"}
    assert "preimage/client/sync.py" in names and "preimage/server/app.py" in names
    assert "preimage/v1/inference_pb2.pyi" in names and "preimage/client/py.typed" in names
    metadata = _dist_info_text(wheel, "METADATA")
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    plain = [line for line in requires if "extra ==" not in line]
    assert sorted(line.split()[1].split(">")[0].split("=")[0].split("<")[0] for line in plain) == [
        "grpcio",
        "numpy",
        "protobuf",
    ]


def _dist_info_text(wheel: Path, name: str) -> str:
    """A file of the wheel's dist-info folder."""
    with zipfile.ZipFile(wheel) as archive:
        (path,) = [n for n in archive.namelist() if n.endswith(f".dist-info/{name}")]
        return archive.read(path).decode()


def test_client_works_from_a_venv_without_torch(wheel: Path, tmp_path: Path, server: Any) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    pins = ROOT / "constraints.txt"
    _run(python, "-m", "pip", "install", "-q", "-c", pins, "grpcio", "protobuf", "numpy")
    _run(python, "-m", "pip", "install", "-q", "--no-deps", wheel)

    script = tmp_path / "use_client.py"
    script.write_text(SCRIPT)
    out = json.loads(_run(python, script, server.address, EXAMPLE_MODEL).strip().splitlines()[-1])
    assert out["present"] == []
    X, Y = np.asarray(out["X"], np.float32), np.asarray(out["Y"], np.float32)
    assert X.shape == (20, 10)
    truth = onnx_eval(EXAMPLE_MODEL, X)
    assert np.all(np.abs(truth - 7.0) <= 1e-3 + 1e-4)
    np.testing.assert_allclose(Y, truth, atol=1e-4)
    np.testing.assert_allclose(out["y"], onnx_eval(EXAMPLE_MODEL, np.full((1, 10), 0.5, np.float32)), atol=1e-4)

    # The console script is there too: client commands work, `serve` says what to install.
    preimage = venv / "bin" / "preimage"
    assert _run(preimage, "--server", server.address, "models").splitlines()[1].startswith("light")
    serve = subprocess.run([str(preimage), "serve"], capture_output=True, text=True, timeout=120)
    assert serve.returncode == 1 and "pip install 'preimage[server]'" in serve.stderr
