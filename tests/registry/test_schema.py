"""Feature schemas and statistics stored with a model: argument, metadata, default, default bounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from preimage.registry import (
    DataStatistics,
    FeatureKind,
    FeatureSchema,
    Registry,
    SchemaError,
)
from preimage.registry.convert import sample_rows
from tests.models import ISSUE_SCHEMA
from tests.registry.builders import gemm


def _data(d: int = 6, m: int = 1, metadata: dict[str, str] | None = None) -> bytes:
    return gemm(d=d, m=m, metadata=metadata).SerializeToString()


def test_schema_given_is_stored_and_survives_reopening(tmp_path: Path) -> None:
    schema = FeatureSchema.from_dict(ISSUE_SCHEMA)
    registry = Registry.open(tmp_path / "r", parity_rows=8)
    record = registry.register_bytes("game", _data(), schema=schema)
    assert record.schema == schema
    registry.close()
    reopened = Registry.open(tmp_path / "r")
    try:
        assert reopened.get("game").schema == schema
        assert reopened.load("game").schema == schema
    finally:
        reopened.close()


def test_schema_from_metadata_props(registry: Registry) -> None:
    record = registry.register_bytes("game", _data(metadata={"preimage.schema": json.dumps(ISSUE_SCHEMA)}))
    assert record.schema == FeatureSchema.from_dict(ISSUE_SCHEMA)


def test_schema_argument_wins_over_metadata(registry: Registry) -> None:
    other = {"inputs": [{"name": f"f{i}", "min": -1, "max": 1} for i in range(6)]}
    record = registry.register_bytes(
        "game", _data(metadata={"preimage.schema": json.dumps(ISSUE_SCHEMA)}), schema=FeatureSchema.from_dict(other)
    )
    assert record.schema.feature_names == [f"f{i}" for i in range(6)]
    assert [o.name for o in record.schema.outputs] == ["y0"]  # output names filled in


def test_spread_outputs_are_stored_and_survive_reopening(tmp_path: Path) -> None:
    inputs = [{"name": f"f{i}", "min": 0, "max": 1} for i in range(6)]
    outputs = [{"name": "y"}, {"name": "y_spread", "spread_of": "y"}]
    schema = FeatureSchema.from_dict({"inputs": inputs, "outputs": outputs})
    assert schema.spread_columns == (1,) and schema.to_dict()["outputs"] == outputs
    registry = Registry.open(tmp_path / "r", parity_rows=8)
    registry.register_bytes("ens", _data(m=2, metadata={"preimage.schema": json.dumps(schema.to_dict())}))
    registry.close()
    reopened = Registry.open(tmp_path / "r")
    try:
        assert reopened.get("ens").schema.spread_columns == (1,)
        assert reopened.load("ens").schema == schema
    finally:
        reopened.close()


@pytest.mark.parametrize(
    ("outputs", "words"),
    [
        ([{"name": "y"}, {"name": "s", "spread_of": "nosuch"}], "spread_of 'nosuch' must name an output"),
        ([{"name": "y"}, {"name": "s", "spread_of": "s"}], "spread_of 's' must name an output"),
        (
            [{"name": "y"}, {"name": "s", "spread_of": "y"}, {"name": "t", "spread_of": "s"}],
            "not itself a spread",
        ),
        ([{"name": "y"}, {"name": "s", "spread_of": "y"}, {"name": "t", "spread_of": "y"}], "at most one spread"),
    ],
)
def test_bad_spread_outputs_are_refused(outputs: list[dict[str, str]], words: str) -> None:
    with pytest.raises(SchemaError, match=words):
        FeatureSchema.from_dict({"inputs": [{"name": "a"}], "outputs": outputs})


def test_default_schema(registry: Registry) -> None:
    record = registry.register_bytes("plain", _data(d=3, m=2))
    assert record.schema == FeatureSchema.default(3, 2)
    assert not record.schema.bounded


def test_width_mismatch_names_both_numbers(registry: Registry) -> None:
    with pytest.raises(SchemaError, match="the schema's inputs span 6 columns but the model takes 4 input columns"):
        registry.register_bytes("game", _data(d=4), schema=FeatureSchema.from_dict(ISSUE_SCHEMA))
    two_outputs = {**ISSUE_SCHEMA, "outputs": [{"name": "a"}, {"name": "b"}]}
    with pytest.raises(SchemaError, match="the schema names 2 outputs but the model has 1 outputs"):
        registry.register_bytes("game", _data(), schema=FeatureSchema.from_dict(two_outputs))
    assert registry.list() == []


def test_bad_metadata_schema_says_where_it_came_from(registry: Registry) -> None:
    with pytest.raises(SchemaError, match=r"metadata_props 'preimage\.schema': not valid JSON"):
        registry.register_bytes("game", _data(metadata={"preimage.schema": "{nope"}))
    narrow = json.dumps({"inputs": [{"name": "a"}]})
    with pytest.raises(SchemaError, match="span 1 columns but the model takes 6"):
        registry.register_bytes("game", _data(metadata={"preimage.schema": narrow}))


def test_default_bounds_fill_missing_bounds_only(registry: Registry) -> None:
    schema = FeatureSchema.from_dict(
        {
            "inputs": [
                {"name": "free"},
                {"name": "low_only", "min": -0.5},
                {"name": "count", "kind": "integer"},
                {"name": "flag", "kind": "binary"},
                {"name": "kept", "min": 2, "max": 3},
                {"name": "c", "kind": "categorical", "levels": ["p", "q"]},
            ]
        }
    )
    record = registry.register_bytes("b", _data(d=7), schema=schema, default_bounds=(0.0, 1.0))
    got = {f.name: (f.min, f.max) for f in record.schema.inputs}
    assert got == {
        "free": (0.0, 1.0),
        "low_only": (-0.5, 1.0),
        "count": (0.0, 1.0),
        "flag": (None, None),
        "kept": (2.0, 3.0),
        "c": (None, None),
    }
    plain = registry.register_bytes("plain", _data(d=3), default_bounds=(-2.0, 5.0))
    assert plain.schema.bounded and plain.schema.column_bounds() == ([-2.0] * 3, [5.0] * 3)


@pytest.mark.parametrize(
    ("bounds", "message"),
    [((1.0, 0.0), "above upper bound"), ((0.0, float("inf")), "finite"), ((float("nan"), 1.0), "finite")],
)
def test_bad_default_bounds(registry: Registry, bounds: tuple[float, float], message: str) -> None:
    with pytest.raises(SchemaError, match=message) as caught:
        registry.register_bytes("b", _data(d=3), default_bounds=bounds)
    assert caught.value.field == "default_bounds"


def test_default_bounds_that_contradict_a_given_bound(registry: Registry) -> None:
    schema = FeatureSchema.from_dict({"inputs": [{"name": "a", "min": 5.0}, {"name": "b"}, {"name": "c"}]})
    with pytest.raises(SchemaError, match=r"inputs\[0\] \(a\): min 5.0 is above max 1.0"):
        registry.register_bytes("b", _data(d=3), schema=schema, default_bounds=(0.0, 1.0))


def test_statistics_are_stored_and_checked(registry: Registry) -> None:
    stats = DataStatistics(rows=10, mean=(0.0, 1.0, 2.0), covariance=tuple(np.eye(3).ravel()))
    assert registry.register_bytes("s", _data(d=3), statistics=stats).statistics == stats
    assert registry.get("s").statistics == stats
    assert registry.load("s").statistics == stats
    with pytest.raises(SchemaError, match="mean has 3 columns but the model takes 4"):
        registry.register_bytes("s", _data(d=4), statistics=stats)


def test_parity_rows_respect_the_schema() -> None:
    # The registration check draws rows inside the bounds and of the right kinds.
    schema = FeatureSchema.from_dict(
        {
            "inputs": [
                {"name": "u", "min": 2.0, "max": 3.0},
                {"name": "k", "kind": "integer", "min": -1, "max": 1},
                {"name": "b", "kind": "binary"},
                {"name": "c", "kind": "categorical", "levels": ["x", "y", "z"]},
                {"name": "n"},
                {"name": "lo", "min": 10.0},
            ]
        }
    )
    X = sample_rows(schema, 200, np.random.default_rng(0))
    assert X.shape == (200, 8) and X.dtype == np.float32
    assert ((X[:, 0] >= 2) & (X[:, 0] <= 3)).all()
    assert set(np.unique(X[:, 1])) == {-1.0, 0.0, 1.0}
    assert set(np.unique(X[:, 2])) == {0.0, 1.0}
    assert (X[:, 3:6].sum(axis=1) == 1).all() and set(np.unique(X[:, 3:6])) == {0.0, 1.0}
    assert X[:, 6].min() < 0 < X[:, 6].max()
    assert (X[:, 7] >= 10).all()
    assert schema.inputs[1].kind is FeatureKind.INTEGER


def test_loaded_module_accepts_rows_of_the_schema(registry: Registry) -> None:
    registry.register_bytes("game", _data(), schema=FeatureSchema.from_dict(ISSUE_SCHEMA))
    loaded = registry.load("game")
    X = torch.from_numpy(sample_rows(loaded.schema, 5, np.random.default_rng(1)))
    assert loaded.module(X).shape == (5, 1)


def test_schema_types_import_without_torch() -> None:
    # The schema, records, references and errors are plain Python; only Registry needs torch.
    code = (
        "import sys; from preimage.registry import FeatureSchema, ModelRef, ModelRecord, ModelNotFoundError; "
        "import preimage.registry.schema; print('torch' in sys.modules, 'onnx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]
