"""The CLI's batch writers give exactly what formatting one pattern at a time gives.

The reference is the per-pattern formatting the CLI used before (``json.dumps`` of
``Pattern.to_dict``, a padded table of ``%.6g`` cells), on a schema with every kind of
feature, awkward numbers and non-finite values.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from preimage.client import _writers
from preimage.client._requests import PatternArrays
from preimage.client.types import FeatureSchema, Pattern

SCHEMA = FeatureSchema.from_dict(
    {
        "inputs": [
            {"name": "speed", "min": 0, "max": 1},
            {"name": "walls", "kind": "integer"},
            {"name": "has_boss", "kind": "binary"},
            {"name": "theme", "kind": "categorical", "levels": ["ice", 'la,"va', "forest"]},
        ],
        "outputs": [{"name": "difficulty"}, {"name": "fun"}],
    }
)


@pytest.fixture
def batch() -> PatternArrays:
    rng = np.random.default_rng(0)
    n = 30
    X = np.c_[rng.random(n), rng.integers(0, 10**8, n), rng.integers(0, 2, n), np.eye(3)[rng.integers(0, 3, n)]]
    X[0, 0], X[1, 0], X[2, 1] = 1e-7, 123456789.0, 2.5
    Y = rng.normal(size=(n, 2)) * 1000
    return PatternArrays(X.astype(np.float32), Y.astype(np.float32), np.abs(Y / 7).astype(np.float32))


def _patterns(batch: PatternArrays, named: bool) -> list[Pattern]:
    return [Pattern(x, y, e, SCHEMA.decode_row(x) if named else None) for x, y, e in zip(*batch, strict=True)]


def _line(record: dict[str, object]) -> str:
    return json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n"


def test_jsonl_is_json_dumps_per_pattern(batch: PatternArrays) -> None:
    expected = "".join(_line(p.to_dict()) for p in _patterns(batch, named=False))
    assert _writers.jsonl_patterns(batch) == expected


def test_named_jsonl_is_json_dumps_per_pattern(batch: PatternArrays) -> None:
    lines = []
    for p in _patterns(batch, named=True):
        record = p.to_dict()
        lines.append(_line({"input": record["features"], "output": record["output"], "error": record["error"]}))
    assert _writers.jsonl_patterns(batch, SCHEMA) == "".join(lines)


def test_non_finite_numbers_are_spelled_as_json_does() -> None:
    batch = PatternArrays(
        np.array([[np.nan, np.inf]], np.float32), np.array([[-np.inf]], np.float32), np.zeros((1, 1), np.float32)
    )
    assert _writers.jsonl_patterns(batch) == '{"input":[NaN,Infinity],"output":[-Infinity],"error":[0.0]}\n'


def test_table_is_the_padded_per_pattern_table(batch: PatternArrays) -> None:
    header = [*SCHEMA.feature_names, "difficulty", "fun", "error"]
    rows = [[str(h) for h in header]]
    for p in _patterns(batch, named=True):
        assert p.features is not None
        values = [*p.features.values(), *(float(v) for v in p.output), float(p.error.max(initial=0.0))]
        rows.append([f"{v:.6g}" if isinstance(v, float) else str(v) for v in values])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    expected = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    assert _writers.pattern_table(batch, SCHEMA) == expected
    # Cells formatted batch by batch lay out the same.
    writer = _writers.TableWriter(io.StringIO(), SCHEMA)
    for start in range(0, 30, 7):
        writer.write(PatternArrays(*(a[start : start + 7] for a in batch)))
    writer.close(None)
    assert writer.out.getvalue() == expected + "\n"  # type: ignore[attr-defined]


@pytest.mark.parametrize("named", [False, True])
def test_csv_parses_back_at_full_precision(batch: PatternArrays, named: bool) -> None:
    out = io.StringIO()
    writer = _writers.CsvWriter(out, SCHEMA, named=named)
    writer.write(batch)
    writer.close(None)
    header, *rows = list(csv.reader(io.StringIO(out.getvalue())))
    one_hot = ["speed", "walls", "has_boss", "theme=ice", 'theme=la,"va', "theme=forest"]
    inputs = SCHEMA.feature_names if named else one_hot
    assert header == [*inputs, "difficulty", "fun", "error_difficulty", "error_fun"]
    assert len(rows) == 30
    tail = np.array([row[len(inputs) :] for row in rows], np.float64).astype(np.float32)
    np.testing.assert_array_equal(tail, np.hstack([batch.outputs, batch.errors]))
    if named:
        decoded = [SCHEMA.decode_row(x) for x in batch.inputs]
        assert [row[3] for row in rows] == [d["theme"] for d in decoded]
        assert [int(row[1]) for row in rows] == [d["walls"] for d in decoded]
    else:
        np.testing.assert_array_equal(np.array([row[:6] for row in rows], np.float64).astype(np.float32), batch.inputs)


def test_npy_round_trip(batch: PatternArrays) -> None:
    out = io.BytesIO()
    writer = _writers.NpyWriter(out, SCHEMA)
    writer.write(PatternArrays(*(a[:10] for a in batch)))
    writer.write(PatternArrays(*(a[10:] for a in batch)))
    writer.close(None)
    records = np.load(io.BytesIO(out.getvalue()), allow_pickle=False)
    assert records.dtype == _writers.npy_dtype(6, 2)
    for name, array in zip(("input", "output", "error"), batch, strict=True):
        np.testing.assert_array_equal(records[name], array)


def test_empty_outputs() -> None:
    empty = PatternArrays(np.zeros((0, 6), np.float32), np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
    assert _writers.jsonl_patterns(empty) == ""
    assert _writers.pattern_table(empty, SCHEMA) == "(no patterns)"
    out = io.StringIO()
    _writers.CsvWriter(out, SCHEMA).close((6, 2))
    assert out.getvalue().count("\n") == 1  # the header alone


def test_prediction_lines() -> None:
    outputs = np.array([[0.1, np.nan], [1234567.0, -2.0]], np.float32)
    assert _writers.prediction_lines(outputs, jsonl=True) == "".join(
        json.dumps(row, separators=(",", ":")) + "\n" for row in outputs.tolist()
    )
    assert _writers.prediction_lines(outputs, jsonl=False) == "0.1,nan\n1.23457e+06,-2\n"
