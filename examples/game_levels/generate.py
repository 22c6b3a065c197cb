"""A small game content generator on preimage: levels made to order by difficulty.

The studio's designers score levels with a rule of their own (``difficulty``
below: a platformer level's enemies, speed, gaps, boss, time limit and theme
give a difficulty from 1 to 10). This script plays the studio's pipeline:

1. makes a table of random levels scored by the rule,
2. trains a model on it *inside preimage* (the Train RPC: the table streams
   up, progress streams back, the model is registered with its schema),
3. asks preimage for ``--per-level`` fresh levels at each difficulty 1..10
   (Invert, by feature name, categoricals as theme names),
4. scores every returned level with the designers' rule and writes
   ``levels.jsonl`` and ``difficulty.png``: requested against achieved difficulty.

If the server has no Train RPC (UNIMPLEMENTED), it registers the shipped
``examples/difficulty/difficulty.onnx`` instead, says so, and reports the
model's own difficulty as "achieved" (that model's rule lives in
``examples/difficulty/make_model.py``).

Needs the client (``pip install preimage``) and matplotlib; a server must be
running (``preimage serve``)::

    python examples/game_levels/generate.py --server 127.0.0.1:50051 --out levels/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from preimage.client import Client, FeatureValue, TrainProgress, UnimplementedError

HERE = Path(__file__).resolve().parent
FALLBACK_MODEL = HERE.parent / "difficulty" / "difficulty.onnx"
THEMES = ("ice", "forest", "lava")
THEME_WEIGHT = {"ice": 0.0, "forest": 0.5, "lava": 1.0}
TARGET_HALF_WIDTH = 0.25  # "difficulty 7" means a level scoring within [6.75, 7.25]


def difficulty(level: dict[str, Any]) -> float:
    """The designers' rule: a difficulty in [1, 10] for one level.

    Every term lies in [0, 1] and the weights add up to 1, so the easiest level
    (few slow enemies, narrow gaps, no boss, lots of time, ice) scores exactly 1
    and the hardest exactly 10.
    """
    speed = level["enemy_speed"]
    enemies = level["enemy_count"] / 30.0
    gaps = (level["gap_width"] - 0.5) / 2.5
    rush = 1.0 - (level["time_limit"] - 30.0) / 150.0
    score = (
        0.25 * speed
        + 0.15 * enemies
        + 0.10 * speed * enemies
        + 0.15 * gaps
        + 0.15 * level["has_boss"]
        + 0.10 * rush
        + 0.10 * THEME_WEIGHT[str(level["theme"])]
    )
    return 1.0 + 9.0 * score


def make_table(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Random levels and their difficulty, as columns."""
    rng = np.random.default_rng(seed)
    table: dict[str, np.ndarray] = {
        "enemy_count": rng.integers(0, 31, rows),
        "enemy_speed": rng.random(rows),
        "gap_width": rng.uniform(0.5, 3.0, rows),
        "has_boss": rng.integers(0, 2, rows),
        "time_limit": rng.integers(30, 181, rows),
        "theme": rng.choice(THEMES, rows),
    }
    levels = [{name: column[i] for name, column in table.items()} for i in range(rows)]
    table["difficulty"] = np.array([difficulty(level) for level in levels])
    return table


def train(client: Client, name: str, rows: int, epochs: int, seed: int) -> tuple[str, bool]:
    """Train the difficulty model on the server; fall back to the shipped model without Train.

    Returns:
        The model reference and whether it was trained on this script's rule.
    """
    table = make_table(rows, seed)
    run = client.train(
        table, name=name, target="difficulty", categorical=["theme"], hidden=[64, 64], epochs=epochs, seed=seed
    )
    try:
        for event in run:
            if isinstance(event, TrainProgress) and (event.epoch % 10 == 0 or event.epoch == event.epochs):
                print(f"  epoch {event.epoch}/{event.epochs}  validation loss {event.validation_loss:.4g}")
    except UnimplementedError:
        print(f"this server has no Train RPC: registering {FALLBACK_MODEL} instead")
        return client.register(FALLBACK_MODEL, name).ref, False
    assert run.result is not None
    metrics = run.result.metrics[0]
    print(f"trained {run.result.model.ref}: validation MAE {metrics.mae:.3f}, R2 {metrics.r2:.4f}")
    return run.result.model.ref, True


def generate(client: Client, ref: str, per_level: int, seed: int, own_rule: bool) -> list[dict[str, Any]]:
    """``per_level`` levels at each difficulty 1..10, each scored again (by the rule when it applies)."""
    levels: list[dict[str, Any]] = []
    for wanted in range(1, 11):
        lo, hi = max(1.0, wanted - TARGET_HALF_WIDTH), min(10.0, wanted + TARGET_HALF_WIDTH)
        stream = client.invert(ref, target_range=(lo, hi), n=per_level, seed=seed + wanted, named=True)
        found = list(stream)
        summary = stream.summary
        status = summary.status.value if summary else "cancelled"
        for pattern in found:
            assert pattern.features is not None
            features: dict[str, FeatureValue] = pattern.features
            model_says = float(pattern.output[0])
            achieved = difficulty(features) if own_rule else model_says
            levels.append({"requested": wanted, "achieved": achieved, "model": model_says, "level": features})
        print(f"  difficulty {wanted:2d}: {len(found)} levels ({status})")
    return levels


def plot(levels: list[dict[str, Any]], path: Path, own_rule: bool) -> None:
    """Requested against achieved difficulty, one dot per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    requested = np.array([lv["requested"] for lv in levels], dtype=float)
    achieved = np.array([lv["achieved"] for lv in levels], dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(requested))
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0.5, 10.5], [0.5, 10.5], color="grey", linewidth=1, label="achieved = requested")
    ax.scatter(requested + jitter, achieved, s=12, alpha=0.7, label="generated level")
    ax.set_xlabel("requested difficulty")
    ax.set_ylabel("achieved difficulty (" + ("designers' rule" if own_rule else "model") + ")")
    ax.set_xticks(range(1, 11))
    ax.set_xlim(0.5, 10.5)
    ax.set_ylim(0.5, 10.5)
    ax.set_title(f"{len(levels)} levels generated by preimage")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the pipeline; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("PREIMAGE_SERVER", "127.0.0.1:50051"))
    parser.add_argument("--out", type=Path, default=Path("game_levels_out"), help="folder for the outputs")
    parser.add_argument("--name", default="game-levels", help="model name to register")
    parser.add_argument("--rows", type=int, default=5000, help="levels in the training table")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--per-level", type=int, default=20, help="levels to generate per difficulty")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    with Client(args.server, timeout=900) as client:
        client.wait_ready(30)
        print(f"training on {args.rows} levels")
        ref, own_rule = train(client, args.name, args.rows, args.epochs, args.seed)
        print(f"asking {ref} for {args.per_level} levels at each difficulty 1..10")
        levels = generate(client, ref, args.per_level, args.seed, own_rule)

    with (args.out / "levels.jsonl").open("w") as handle:
        for level in levels:
            handle.write(json.dumps(level) + "\n")
    plot(levels, args.out / "difficulty.png", own_rule)
    errors = np.abs(np.array([lv["achieved"] - lv["requested"] for lv in levels], dtype=float))
    within = float(np.mean(errors <= 0.5)) if len(errors) else 0.0
    print(
        f"{len(levels)} levels; {within:.0%} within 0.5 of the requested difficulty "
        f"(median miss {np.median(errors) if len(errors) else float('nan'):.3f}); "
        f"wrote {args.out / 'levels.jsonl'} and {args.out / 'difficulty.png'} in {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
