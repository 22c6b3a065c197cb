"""Smoke run of examples/game_levels/generate.py against a real server (CI runs it)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "game_levels" / "generate.py"


def _rule() -> Any:
    """The example's own difficulty rule (the true function the model was trained on)."""
    spec = importlib.util.spec_from_file_location("game_levels_generate", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_game_levels_example(server: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--server",
            server.address,
            "--out",
            str(out),
            "--rows",
            "1500",
            "--epochs",
            "30",
            "--per-level",
            "20",
            "--name",
            "smoke-levels",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trained smoke-levels:1" in done.stdout  # trained on the server, not the fallback
    assert (out / "difficulty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rule = _rule()
    levels = [json.loads(line) for line in (out / "levels.jsonl").read_text().splitlines()]
    assert Counter(level["requested"] for level in levels) == {d: 20 for d in range(1, 11)}
    misses = []
    for entry in levels:
        level = entry["level"]
        assert isinstance(level["enemy_count"], int) and 0 <= level["enemy_count"] <= 30
        assert isinstance(level["time_limit"], int) and 30 <= level["time_limit"] <= 180
        assert level["has_boss"] in (0, 1) and level["theme"] in rule.THEMES
        assert 0.0 <= level["enemy_speed"] <= 1.0 and 0.5 <= level["gap_width"] <= 3.0
        misses.append(abs(rule.difficulty(level) - entry["requested"]))
    # The model is an approximation of the rule: most levels must still land close.
    assert float(np.mean(np.array(misses) <= 0.5)) >= 0.9
