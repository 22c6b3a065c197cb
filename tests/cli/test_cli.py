"""The ``preimage`` CLI as a user runs it: subprocesses against a ``preimage serve`` process.

Pattern outputs are checked with onnxruntime (``tests.models.onnx_eval``).
"""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.cli.conftest import Run, Served, preimage_command, run_preimage
from tests.models import EXAMPLE_MODEL, ISSUE_SCHEMA, linear_onnx, onnx_eval

TOL, SLACK = 1e-3, 1e-4
MIXED_W = np.array([[2.0, 0.5, 1.5, 0.0, 2.0, -1.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def example(served: Served) -> str:
    """The example model registered through the CLI once for the module."""
    done = run_preimage(["register", str(EXAMPLE_MODEL), "--name", "difficulty"], served.address)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def mixed(served: Served, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """A linear model over one feature of every kind, registered with ``--schema``."""
    folder = tmp_path_factory.mktemp("mixed")
    model = linear_onnx(MIXED_W, [1.0])
    (folder / "mixed.onnx").write_bytes(model)
    (folder / "schema.json").write_text(json.dumps(ISSUE_SCHEMA))
    args = ["register", str(folder / "mixed.onnx"), "--name", "mixed", "--schema", str(folder / "schema.json")]
    done = run_preimage(args, served.address)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), model


def test_register_prints_name_version_and_models_lists_it(cli: Run, example: str) -> None:
    assert example == "difficulty:1"
    table = cli("models")
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "VERSION"]
    assert any(row.split()[:2] == ["difficulty", "1"] for row in rows)
    listed = json.loads(cli("models", "--json").stdout)
    entry = next(m for m in listed if m["name"] == "difficulty")
    assert entry["input_width"] == 10 and entry["schema"]["inputs"][0]["name"] == "enemy_density"
    shown = json.loads(cli("show", "difficulty", "--json").stdout)
    assert shown["version"] == 1 and shown["sha256"] == entry["sha256"]
    assert "enemy_density" in cli("show", "difficulty").stdout


def test_register_with_bounds(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    path.write_bytes(linear_onnx(np.ones((1, 3), np.float32), [0.0]))
    done = cli("register", str(path), "--name", "plain", "--bounds", "0:2")
    assert done.returncode == 0 and done.stdout.strip() == "plain:1"
    inputs = json.loads(cli("show", "plain:1", "--json").stdout)["schema"]["inputs"]
    assert [(f["min"], f["max"]) for f in inputs] == [(0.0, 2.0)] * 3


def test_predict_from_flags_files_and_stdin(cli: Run, example: str, mixed: tuple[str, bytes], tmp_path: Path) -> None:
    rows = np.random.default_rng(0).random((3, 10)).round(4)
    truth = onnx_eval(EXAMPLE_MODEL, rows.astype(np.float32))
    flags = [arg for row in rows for arg in ("--input", ",".join(map(str, row)))]
    printed = cli("predict", example, *flags)
    assert printed.returncode == 0, printed.stderr
    np.testing.assert_allclose([float(line) for line in printed.stdout.split()], truth[:, 0], rtol=1e-5)

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(row.tolist()) for row in rows) + "\n")
    from_file = cli("predict", example, "--file", str(jsonl), "--jsonl")
    np.testing.assert_allclose([json.loads(line) for line in from_file.stdout.splitlines()], truth, atol=SLACK)

    ref, model = mixed
    named = [
        {"speed": 0.5, "walls": 2, "has_boss": 1, "theme": "ice"},
        {"speed": 0, "walls": 7, "has_boss": 0, "theme": "forest"},
    ]
    encoded = np.array([[0.5, 2, 1, 1, 0, 0], [0, 7, 0, 0, 0, 1]], np.float32)
    by_name = cli("predict", ref, "--file", "-", stdin="\n".join(map(json.dumps, named)))
    assert by_name.returncode == 0, by_name.stderr
    np.testing.assert_allclose([float(v) for v in by_name.stdout.split()], onnx_eval(model, encoded)[:, 0], rtol=1e-5)


def test_invert_jsonl_prints_only_patterns(cli: Run, example: str) -> None:
    done = cli("invert", example, "--target", "7", "-n", "25", "--seed", "4", "--jsonl")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 25
    assert all(set(r) == {"input", "output", "error"} for r in records)
    X = np.array([r["input"] for r in records], np.float32)
    truth = onnx_eval(EXAMPLE_MODEL, X)
    assert np.all(np.abs(truth - 7.0) <= TOL + SLACK) and X.min() >= 0 and X.max() <= 1
    np.testing.assert_allclose([r["output"] for r in records], truth, atol=SLACK)
    np.testing.assert_allclose([r["error"] for r in records], np.abs(truth - 7.0), atol=SLACK)
    assert "complete: 25 of 25" in done.stderr


def test_invert_names_fix_bounds_and_ranges(cli: Run, mixed: tuple[str, bytes]) -> None:
    ref, model = mixed
    common = ["--target-range", "4:6", "-n", "12", "--seed", "8", "--fix", "theme=lava", "--bounds", "speed=0.2:0.4"]
    raw = cli("invert", ref, *common, "--jsonl")
    named = cli("invert", ref, *common, "--jsonl", "--names")
    assert raw.returncode == 0 and named.returncode == 0, raw.stderr + named.stderr
    X = np.array([json.loads(line)["input"] for line in raw.stdout.splitlines()], np.float32)
    truth = onnx_eval(model, X)
    assert len(X) == 12 and np.all((truth >= 4 - SLACK) & (truth <= 6 + SLACK))
    assert np.all((X[:, 0] >= 0.2 - 1e-6) & (X[:, 0] <= 0.4 + 1e-6))
    np.testing.assert_array_equal(X[:, 3:], np.tile([0, 1, 0], (12, 1)))
    features = [json.loads(line)["input"] for line in named.stdout.splitlines()]
    assert [f["theme"] for f in features] == ["lava"] * 12
    np.testing.assert_allclose([f["speed"] for f in features], X[:, 0], rtol=1e-6)
    assert all(isinstance(f["walls"], int) for f in features)


def test_invert_table_and_summary(cli: Run, example: str) -> None:
    done = cli("invert", example, "--target", "3", "-n", "4", "--seed", "1", "--mode", "optimize")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["enemy_density", "enemy_speed"] and lines[0].split()[-2:] == ["difficulty", "error"]
    assert len([line for line in lines[1:5] if line.strip()]) == 4
    assert any(line.startswith("complete: 4 of 4 patterns from difficulty:1") for line in lines)


EXAMPLE_FEATURES = json.loads((EXAMPLE_MODEL.parent / "schema.json").read_text())["inputs"]
INVERT_7 = ["--target", "7", "-n", "40", "--seed", "6"]


def _check_example(X: np.ndarray, Y: np.ndarray, *, atol: float = SLACK) -> None:
    """Patterns of the example model at target 7, judged by onnxruntime."""
    truth = onnx_eval(EXAMPLE_MODEL, X.astype(np.float32))
    assert len(X) == 40 and X.min() >= 0 and X.max() <= 1
    assert np.all(np.abs(truth - 7.0) <= TOL + atol)
    np.testing.assert_allclose(Y, truth, atol=atol)


def test_invert_formats_to_files_parse_back(cli: Run, example: str, tmp_path: Path) -> None:
    jsonl, csv, table, npy = (tmp_path / f"out.{ext}" for ext in ("jsonl", "csv", "txt", "npy"))
    for fmt, path in (("jsonl", jsonl), ("csv", csv), ("table", table), ("npy", npy)):
        done = cli("invert", example, *INVERT_7, "--format", fmt, "-o", str(path))
        assert done.returncode == 0, done.stderr
        assert done.stdout == "" and "complete: 40 of 40" in done.stderr  # the file holds only patterns

    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    X = np.array([r["input"] for r in records], np.float32)
    _check_example(X, np.array([r["output"] for r in records]))

    header, *rows = csv.read_text().splitlines()
    names = [f["name"] for f in EXAMPLE_FEATURES]
    assert header.split(",") == [*names, "difficulty", "error_difficulty"]
    values = np.array([row.split(",") for row in rows], np.float64)
    # Full precision: the CSV holds exactly the patterns of the JSON lines (same seed, same stream).
    np.testing.assert_array_equal(values[:, :10].astype(np.float32), X)
    _check_example(values[:, :10], values[:, 10:11])
    np.testing.assert_allclose(values[:, 11], np.abs(values[:, 10] - 7.0), atol=SLACK)

    head, *lines = table.read_text().splitlines()
    assert head.split() == [*names, "difficulty", "error"] and len(lines) == 40
    cells = np.array([line.split() for line in lines], np.float64)
    _check_example(cells[:, :10], cells[:, 10:11], atol=1e-3)  # 6 significant digits

    records_npy = np.load(npy)
    assert records_npy.dtype.names == ("input", "output", "error")
    assert records_npy["input"].shape == (40, 10) and records_npy["output"].shape == (40, 1)
    assert records_npy["input"].dtype == np.float32
    np.testing.assert_array_equal(records_npy["input"], X)
    _check_example(records_npy["input"], records_npy["output"])
    np.testing.assert_allclose(records_npy["error"], np.abs(records_npy["output"] - 7.0), atol=SLACK)


def test_invert_csv_on_stdout_by_feature_name(cli: Run, mixed: tuple[str, bytes]) -> None:
    ref, model = mixed
    args = ["invert", ref, "--target-range", "4:6", "-n", "12", "--seed", "8", "--fix", "theme=lava"]
    raw = cli(*args, "--format", "csv")
    named = cli(*args, "--format", "csv", "--names")
    assert raw.returncode == 0 and named.returncode == 0, raw.stderr + named.stderr
    header, *rows = raw.stdout.splitlines()
    assert header == "speed,walls,has_boss,theme=ice,theme=lava,theme=forest,difficulty,error_difficulty"
    X = np.array([row.split(",")[:6] for row in rows], np.float32)
    truth = onnx_eval(model, X)
    assert len(X) == 12 and np.all((truth >= 4 - SLACK) & (truth <= 6 + SLACK))
    named_header, *named_rows = named.stdout.splitlines()
    assert named_header == "speed,walls,has_boss,theme,difficulty,error_difficulty"
    cells = [row.split(",") for row in named_rows]
    assert [c[3] for c in cells] == ["lava"] * 12
    assert [int(c[1]) for c in cells] == X[:, 1].astype(int).tolist()
    np.testing.assert_array_equal(np.array([c[0] for c in cells], np.float32), X[:, 0])


def test_invert_npy_refuses_a_terminal_and_needs_an_output(cli: Run, served: Served, example: str) -> None:
    missing = cli("invert", example, *INVERT_7, "--format", "npy")
    assert missing.returncode == 2 and "--output" in missing.stderr and missing.stdout == ""
    # A terminal on stdout: binary is refused before any call.
    leader, follower = pty.openpty()
    try:
        env = {**os.environ, "PREIMAGE_SERVER": served.address}
        done = subprocess.run(
            [*preimage_command(), "invert", example, *INVERT_7, "--format", "npy", "-o", "-"],
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 2 and "binary" in done.stderr
    contradiction = cli("invert", example, *INVERT_7, "--jsonl", "--format", "csv")
    assert contradiction.returncode == 2 and "--jsonl" in contradiction.stderr


def test_invert_npy_into_a_pipe(served: Served, example: str) -> None:
    done = subprocess.run(
        [*preimage_command(), "invert", example, *INVERT_7, "--format", "npy", "-o", "-"],
        capture_output=True,
        env={**os.environ, "PREIMAGE_SERVER": served.address},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    records = np.load(io.BytesIO(done.stdout))
    _check_example(records["input"], records["output"])


def test_alias_and_delete(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "v.onnx"
    path.write_bytes(linear_onnx(np.ones((1, 2), np.float32), [0.0]))
    for expected in ("versions:1", "versions:2", "versions:3"):
        assert cli("register", str(path), "--name", "versions", "--bounds", "0:1").stdout.strip() == expected
    assert cli("alias", "versions@prod", "1").stdout.strip() == "versions@prod -> versions:1"
    assert json.loads(cli("show", "versions@prod", "--json").stdout)["version"] == 1
    assert cli("unalias", "versions@prod").returncode == 0
    assert cli("show", "versions@prod").returncode == 3
    assert cli("delete", "versions:2").stdout.split() == ["deleted", "versions:2"]
    assert cli("delete", "versions").stdout.splitlines() == ["deleted versions:1", "deleted versions:3"]
    assert json.loads(cli("models", "--json", "--name", "versions").stdout) == []


@pytest.mark.parametrize(
    ("args", "status", "needle"),
    [
        (["show", "nope"], 3, "NOT_FOUND"),
        (["invert", "difficulty", "--target", "nan", "-n", "1"], 4, "INVALID_ARGUMENT"),
        (["predict", "difficulty", "--input", "1,2,3"], 4, "INVALID_ARGUMENT"),
        (["invert", "difficulty", "--target-range", "7", "-n", "1"], 2, "expected LO:HI"),
        (["invert", "difficulty", "-n", "1"], 2, "give --target"),
        (["alias", "noalias", "1"], 2, "NAME@ALIAS"),
        (["--server", "127.0.0.1:1", "--timeout", "20", "models"], 8, "UNAVAILABLE"),
    ],
)
def test_failures_exit_non_zero_with_the_message(
    cli: Run, example: str, args: list[str], status: int, needle: str
) -> None:
    done = cli(*args)
    assert done.returncode == status, done.stderr
    assert needle in done.stderr and done.stdout == ""


def _first_line_then_sigint(address: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREIMAGE_SERVER": address}
    process = subprocess.Popen(
        [*preimage_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first, process.stderr.read() if process.stderr else ""
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, first + out, err)


def test_ctrl_c_cancels_invert(served: Served, cli: Run, example: str) -> None:
    args = ["invert", example, "--target", "7", "-n", "2000000", "--jsonl", "--max-seconds", "120"]
    done = _first_line_then_sigint(served.address, args)
    assert done.returncode == 130 and "cancelled" in done.stderr
    assert set(json.loads(done.stdout.splitlines()[0])) == {"input", "output", "error"}
    assert cli("health").stdout.strip() == "SERVING"


LEVELS = ["--target", "difficulty", "--categorical", "theme"]


def _levels_csv(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(5)
    a, b = rng.random(rows), rng.random(rows)
    theme = rng.choice(["ice", "lava"], rows)
    y = 2.0 + 3.0 * a - b + np.where(theme == "lava", 1.0, 0.0)
    lines = [
        "a,b,theme,difficulty",
        *(f"{x:.6f},{z:.6f},{t},{v:.6f}" for x, z, t, v in zip(a, b, theme, y, strict=True)),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_jsonl_and_progress(cli: Run, tmp_path: Path) -> None:
    data = _levels_csv(tmp_path / "levels.csv", 400)
    done = cli("train", str(data), "--name", "levels", *LEVELS, *"--hidden 16,16 --epochs 15 --seed 0 --jsonl".split())
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert {e["event"] for e in events[:-1]} <= {"progress", "warning"} and events[-1]["event"] == "result"
    assert [e["epoch"] for e in events if e["event"] == "progress"][:2] == [1, 2]
    assert events[-1]["model"] == "levels:1" and events[-1]["metrics"][0]["output"] == "difficulty"

    human = cli("train", str(data), "--name", "levels", *LEVELS, "--epochs", "3", "--seed", "0")
    assert human.returncode == 0, human.stderr
    assert human.stdout.splitlines()[0] == "levels:2"
    assert human.stdout.splitlines()[1].startswith("difficulty: mse")
    assert "epoch 3/3" in human.stderr  # the progress bar, on stderr
    assert "epochs (max_epochs)" in human.stdout and "* network" in human.stdout  # the search, the chosen one
    shown = cli("show", "levels:2").stdout
    assert "3 epochs (max_epochs)" in shown and "validation difficulty: mse" in shown and "p95 |residual|" in shown
    training = json.loads(cli("show", "levels:2", "--json").stdout)["training"]
    assert training["stop_reason"] == "max_epochs" and training["rows"] == 400

    budget = cli(
        "train",
        str(data),
        "--name",
        "levels",
        *LEVELS,
        *"--epochs 100000 --patience 100000".split(),
        "--time-budget",
        "1",
        "--jsonl",
    )
    assert budget.returncode == 0, budget.stderr
    assert json.loads(budget.stdout.splitlines()[-1])["stop_reason"] == "time_budget"


def test_train_an_ensemble_then_invert_with_max_uncertainty(cli: Run, tmp_path: Path) -> None:
    data = _levels_csv(tmp_path / "levels.csv", 300)
    args = "--hidden 16 --epochs 20 --seed 0 --ensemble 3".split()
    done = cli("train", str(data), "--name", "ens", *LEVELS, *args)
    assert done.returncode == 0, done.stderr
    assert "ensemble of 3 members" in done.stdout and "spread median" in done.stdout
    shown = cli("show", "ens").stdout
    assert "x 3 ensemble members" in shown and "spread median" in shown and "difficulty_spread" in shown
    report = json.loads(cli("show", "ens", "--json").stdout)
    assert report["training"]["ensemble"] == 3
    assert report["schema"]["outputs"][1] == {"name": "difficulty_spread", "spread_of": "difficulty"}
    limit = report["training"]["metrics"][0]["spread_p95"]
    inverted = cli(
        "invert", "ens", *"--target 3 -n 20 --seed 1 --tolerance 0.01 --jsonl --max-uncertainty".split(), str(limit)
    )
    assert inverted.returncode == 0, inverted.stderr
    patterns = [json.loads(line) for line in inverted.stdout.splitlines()]
    assert len(patterns) == 20 and all(abs(p["output"][0] - 3) <= 0.01 and p["output"][1] <= limit for p in patterns)
    refused = cli("invert", "ens", "--target", "3", "--max-uncertainty", "-1")
    assert refused.returncode != 0 and "max_uncertainty" in refused.stderr


def test_ctrl_c_cancels_train(served: Served, cli: Run, tmp_path: Path) -> None:
    data = _levels_csv(tmp_path / "levels.csv", 400)
    args = ["train", str(data), "--name", "interrupted", *LEVELS, "--epochs", "100000", "--jsonl"]
    done = _first_line_then_sigint(served.address, args)
    assert done.returncode == 130 and "nothing was registered" in done.stderr
    assert json.loads(cli("models", "--json", "--name", "interrupted").stdout) == []


def test_health_and_serve_help(cli: Run) -> None:
    assert cli("health", "--wait", "10").stdout.strip() == "SERVING"
    helped = cli("serve", "--help")
    assert helped.returncode == 0 and "--registry" in helped.stdout
