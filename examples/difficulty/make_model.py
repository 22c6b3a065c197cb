"""Generate the example difficulty model shipped in this folder.

A game studio scores 10-feature level patterns with a difficulty from 1 to 10.
This script plays the studio: it draws 20,000 synthetic level patterns with
every feature in [0, 1], scores them with a hand-written rule (``difficulty``
below), trains a small MLP on them and exports it to ``difficulty.onnx`` with
its feature schema embedded (ONNX metadata key ``preimage.schema``) and also
written to ``schema.json``. Deterministic for the fixed seed::

    python examples/difficulty/make_model.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
FEATURES = [
    "enemy_density",
    "enemy_speed",
    "gap_width",
    "platform_spread",
    "hazard_ratio",
    "time_pressure",
    "checkpoint_spacing",
    "boss_strength",
    "powerup_rate",
    "visibility",
]
SEED = 7


def difficulty(X: np.ndarray) -> np.ndarray:
    """The studio's rule: a difficulty in [1, 10] for each row of ``X`` (n x 10, in [0, 1])."""
    d, s, g, p, h, t, c, b, u, v = X.T
    score = (
        2.0 * d
        + 1.5 * s
        + 1.2 * g
        + 0.8 * h
        + 1.0 * t
        + 0.7 * c
        + 1.3 * b
        - 1.0 * u
        - 0.8 * v
        + 0.6 * d * s
        + 0.5 * np.sin(3.0 * p) * g
    )
    return 1.0 + 9.0 / (1.0 + np.exp(-(score - 3.2) / 0.9))


def main() -> None:
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    X = rng.random((20_000, len(FEATURES)))
    y = difficulty(X)[:, None]
    split = 16_000
    Xt = torch.tensor(X, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    net = nn.Sequential(nn.Linear(10, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150)
    for _epoch in range(150):
        perm = torch.randperm(split)
        for i in range(0, split, 256):
            idx = perm[i : i + 256]
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        val = (net(Xt[split:]) - yt[split:]).abs()
    print(f"validation MAE {val.mean().item():.4f}, max abs error {val.max().item():.4f}")

    schema = {
        "inputs": [{"name": name, "kind": "continuous", "min": 0.0, "max": 1.0} for name in FEATURES],
        "outputs": [{"name": "difficulty"}],
    }
    (HERE / "schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    path = HERE / "difficulty.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 10),),
        str(path),
        input_names=["features"],
        output_names=["difficulty"],
        dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
        dynamo=True,
        opset_version=18,
        external_data=False,
    )
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"preimage.schema": json.dumps(schema)})
    model.doc_string = "Example level-difficulty model: 10 features in [0, 1] -> difficulty in [1, 10]."
    onnx.save(model, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes) and schema.json")


if __name__ == "__main__":
    main()
