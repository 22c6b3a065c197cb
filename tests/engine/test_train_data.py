"""Training tables: chunked building, bad-data errors naming row and column, schema inference, statistics."""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from preimage.errors import InvalidArgumentError
from preimage.registry.schema import FeatureKind, InputFeature
from preimage.server.engine.data import (
    QUANTILE_LEVELS,
    BadCellError,
    ChunkMismatchError,
    ConstantTargetError,
    MissingColumnError,
    TableBuilder,
    TooFewRowsError,
    build_table,
    data_statistics,
    encode,
    infer_schema,
)
from preimage.server.engine.types import FeatureOverride, TrainSpec

Columns = Mapping[str, Any]


def _spec(**kwargs: Any) -> TrainSpec:
    kwargs.setdefault("target_columns", ("y",))
    return TrainSpec(name="m", **kwargs)


def _numeric(rows: int = 30, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 1, rows), rng.uniform(-2, 2, rows)
    return {"a": a, "b": b, "y": a + b}


def _slice(columns: Columns, start: int, stop: int) -> dict[str, Any]:
    return {name: cells[start:stop] for name, cells in columns.items()}


def _build(columns: Columns, spec: TrainSpec | None = None, *, chunk: int = 10, min_rows: int = 20) -> Any:
    """Feed ``columns`` in chunks of ``chunk`` rows and finish."""
    builder = TableBuilder(spec or _spec(), min_rows=min_rows)
    rows = len(next(iter(columns.values())))
    for start in range(0, rows, chunk):
        builder.add_chunk(_slice(columns, start, start + chunk))
    return builder.finish()


# -- building ----------------------------------------------------------------------------


def test_chunks_accumulate_in_data_order() -> None:
    columns = _numeric(rows=45)
    table = _build(columns, chunk=7)
    assert table.rows == 45
    assert table.features == ("a", "b")
    assert table.targets == ("y",)
    np.testing.assert_array_equal(table.numbers("b"), columns["b"])
    np.testing.assert_array_equal(table.target_matrix()[:, 0], columns["y"])


def test_numbers_sent_as_text_are_parsed_and_unused_columns_ignored() -> None:
    columns = _numeric()
    columns["a"] = [repr(float(v)) for v in columns["a"]]  # a client that sent text it could have parsed
    columns["note"] = ["free text"] * 30  # not a feature: never parsed
    table = _build(columns, _spec(feature_columns=("a", "b")))
    assert table.features == ("a", "b")
    np.testing.assert_array_equal(table.numbers("a"), _numeric()["a"])


def test_feature_columns_default_to_every_non_target_column_in_order() -> None:
    columns = {"z": np.arange(30.0), "y": np.arange(30.0) ** 2, "k": np.arange(30.0) % 3}
    assert _build(columns).features == ("z", "k")


def test_categorical_levels_from_text_and_numbers() -> None:
    rows = 30
    columns = {
        "theme": (["lava", "ice", "forest"] * 10),
        "size": np.array([10.0, 2.0, 1.5] * 10),  # numbers naming levels
        "y": np.arange(rows, dtype=float),
    }
    table = _build(columns, _spec(categorical_columns=("theme", "size")))
    schema, warnings = infer_schema(table)
    assert warnings == ()
    assert schema.feature("theme").levels == ("forest", "ice", "lava")
    assert schema.feature("size").levels == ("1.5", "2", "10")  # numeric order, shortest text
    X = encode(table, schema)
    assert X.shape == (rows, 6)
    # Row 0 is lava / 10: one-hot columns theme[2] and size[2].
    np.testing.assert_array_equal(X[0], [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(X.sum(axis=1), 2)


# -- bad data: each case names its row and column -------------------------------------


def _with(cells: Sequence[Any], index: int, value: Any) -> list[Any]:
    out = list(cells)
    out[index] = value
    return out


def _nan_at(columns: Columns, name: str, index: int, value: float) -> dict[str, Any]:
    out = dict(columns)
    out[name] = np.array(columns[name], dtype=float)
    out[name][index] = value
    return out


BAD_DATA: list[tuple[str, Callable[[], tuple[Columns, TrainSpec]], type[Exception], str]] = [
    (
        "text outside a categorical column",
        lambda: ({**_numeric(), "b": _with([str(v) for v in _numeric()["b"]], 16, "hard")}, _spec()),
        BadCellError,
        "row 17, column 'b': 'hard' is not a number",
    ),
    (
        "empty cell in a numeric column",
        lambda: ({**_numeric(), "a": _with(list(_numeric()["a"]), 3, "")}, _spec()),
        BadCellError,
        "row 4, column 'a': the cell is empty",
    ),
    (
        "NaN",
        lambda: (_nan_at(_numeric(), "a", 22, np.nan), _spec()),
        BadCellError,
        "row 23, column 'a': NaN is not allowed",
    ),
    (
        "infinity in the target",
        lambda: (_nan_at(_numeric(), "y", 11, -np.inf), _spec()),
        BadCellError,
        "row 12, column 'y': infinite value -inf",
    ),
    (
        "first bad cell in data order wins across columns",
        lambda: (
            {**_nan_at(_numeric(), "b", 14, np.nan), "a": _with(list(_numeric()["a"]), 18, "x")},
            _spec(),
        ),
        BadCellError,
        "row 15, column 'b'",
    ),
    (
        "empty categorical cell",
        lambda: ({**_numeric(), "t": _with(["p", "q"] * 15, 25, "")}, _spec(categorical_columns=("t",))),
        BadCellError,
        "row 26, column 't': the cell is empty",
    ),
    (
        "missing target column",
        lambda: (_numeric(), _spec(target_columns=("difficulty",))),
        MissingColumnError,
        "target column 'difficulty' is not in the data; its columns are ['a', 'b', 'y']",
    ),
    (
        "unknown feature column",
        lambda: (_numeric(), _spec(feature_columns=("a", "speed"))),
        MissingColumnError,
        "feature column 'speed' is not in the data",
    ),
    (
        "unknown categorical column",
        lambda: (_numeric(), _spec(categorical_columns=("theme",))),
        MissingColumnError,
        "categorical column 'theme' is not in the data",
    ),
    (
        "override of no feature",
        lambda: (_numeric(), _spec(feature_overrides=(FeatureOverride("speed", max=1.0),))),
        InvalidArgumentError,
        "feature_overrides: no feature column named 'speed'",
    ),
    (
        "too few rows",
        lambda: (_slice(_numeric(), 0, 19), _spec()),
        TooFewRowsError,
        "the table has 19 rows; training needs at least 20",
    ),
    (
        "constant target",
        lambda: ({**_numeric(), "y": np.full(30, 4.5)}, _spec()),
        ConstantTargetError,
        "target column 'y' is constant (4.5 in every row)",
    ),
]


@pytest.mark.parametrize(
    ("columns_and_spec", "error", "message"),
    [case[1:] for case in BAD_DATA],
    ids=[case[0] for case in BAD_DATA],
)
def test_bad_data_names_row_and_column(
    columns_and_spec: Callable[[], tuple[Columns, TrainSpec]], error: type[Exception], message: str
) -> None:
    columns, spec = columns_and_spec()
    with pytest.raises(error, match=re.escape(message)) as info:
        _build(columns, spec)
    assert isinstance(info.value, InvalidArgumentError)


def test_bad_cell_keeps_structured_fields() -> None:
    with pytest.raises(BadCellError) as info:
        _build(_nan_at(_numeric(), "b", 7, np.nan))
    assert (info.value.row, info.value.column, info.value.field) == (8, "b", "data")


def test_chunks_must_agree_on_columns_and_lengths() -> None:
    columns = _numeric()
    builder = TableBuilder(_spec())
    builder.add_chunk(_slice(columns, 0, 10))
    with pytest.raises(ChunkMismatchError, match=r"data chunk 2: column 'b' is missing"):
        builder.add_chunk({k: v for k, v in _slice(columns, 10, 20).items() if k != "b"})
    builder = TableBuilder(_spec())
    with pytest.raises(ChunkMismatchError, match=r"data chunk 1: column 'b' has 9 cells but column 'a' has 10"):
        builder.add_chunk({"a": columns["a"][:10], "b": columns["b"][:9], "y": columns["y"][:10]})


@pytest.mark.parametrize(
    ("spec_kwargs", "field"),
    [
        ({"target_columns": ()}, "target_columns"),
        ({"feature_columns": ("a", "y")}, "feature_columns"),
        ({"categorical_columns": ("y",)}, "categorical_columns"),
        ({"feature_columns": ("a", "a")}, "feature_columns"),
        (
            {"categorical_columns": ("a",), "feature_overrides": (FeatureOverride("a", kind=FeatureKind.INTEGER),)},
            "feature_overrides",
        ),
    ],
)
def test_contradictory_column_lists_name_the_field(spec_kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        TableBuilder(_spec(**spec_kwargs))
    assert info.value.field == field


def test_constant_feature_is_a_warning() -> None:
    columns = {**_numeric(), "flat": np.full(30, 2.0)}
    table = _build(columns)
    assert [(w.column, "constant" in w.message) for w in table.warnings] == [("flat", True)]
    schema, _ = infer_schema(table)
    assert schema.feature("flat").min == schema.feature("flat").max == 2.0


def test_single_level_categorical_needs_declared_levels() -> None:
    columns = {**_numeric(), "t": ["ice"] * 30}
    table = _build(columns, _spec(categorical_columns=("t",)))
    assert [w.column for w in table.warnings] == ["t"]
    with pytest.raises(InvalidArgumentError, match="holds only the level 'ice'"):
        infer_schema(table)
    schema, warnings = infer_schema(table, [FeatureOverride("t", levels=("ice", "lava"))])
    assert schema.feature("t").levels == ("ice", "lava")
    assert "never occur" in warnings[0].message


# -- schema inference ------------------------------------------------------------------------


def _mixed(rows: int = 40, seed: int = 1) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "speed": rng.uniform(0.5, 3.0, rows),
        "walls": rng.integers(2, 9, rows).astype(float),
        "boss": rng.integers(0, 2, rows).astype(float),
        "theme": list(rng.choice(["ice", "lava", "forest"], rows)),
        "difficulty": rng.uniform(1, 10, rows),
    }


def test_schema_inference_on_mixed_columns() -> None:
    columns = _mixed()
    table = _build(columns, _spec(target_columns=("difficulty",), categorical_columns=("theme",)), chunk=13)
    schema, warnings = infer_schema(table)
    assert warnings == ()
    speed, walls, boss, theme = schema.inputs
    assert (speed.kind, speed.min, speed.max) == (
        FeatureKind.CONTINUOUS,
        columns["speed"].min(),
        columns["speed"].max(),
    )
    assert (walls.kind, walls.min, walls.max) == (FeatureKind.INTEGER, columns["walls"].min(), columns["walls"].max())
    assert (boss.kind, boss.min, boss.max) == (FeatureKind.BINARY, None, None)
    assert (theme.kind, theme.levels) == (FeatureKind.CATEGORICAL, ("forest", "ice", "lava"))
    assert all(type(level) is str for level in theme.levels)  # numpy string cells become plain str
    assert [o.name for o in schema.outputs] == ["difficulty"]
    assert schema.input_width == 6


def test_overrides_win_for_kind_bounds_and_levels() -> None:
    columns = _mixed()
    overrides = (
        FeatureOverride("walls", max=20.0),  # kind stays integer, bound widened
        InputFeature("speed", kind=FeatureKind.CONTINUOUS, min=0.0, max=2.0),  # narrower than the data
        FeatureOverride("boss", kind=FeatureKind.INTEGER),
        FeatureOverride("theme", levels=("lava", "ice", "forest", "swamp")),
    )
    spec = _spec(target_columns=("difficulty",), categorical_columns=("theme",), feature_overrides=overrides)
    table = _build(columns, spec)
    schema, warnings = infer_schema(table, spec.feature_overrides)
    assert schema.feature("walls") == InputFeature("walls", FeatureKind.INTEGER, columns["walls"].min(), 20.0)
    assert schema.feature("speed") == InputFeature("speed", FeatureKind.CONTINUOUS, 0.0, 2.0)
    assert schema.feature("boss") == InputFeature("boss", FeatureKind.INTEGER, 0.0, 1.0)
    assert schema.feature("theme").levels == ("lava", "ice", "forest", "swamp")
    assert sorted(w.column for w in warnings) == ["speed", "theme"]
    X = encode(table, schema)
    lava = np.array([t == "lava" for t in columns["theme"]])
    np.testing.assert_array_equal(X[:, 3], lava)  # "lava" is now the first one-hot column
    np.testing.assert_array_equal(X[:, 6], 0)  # "swamp" never occurs


def test_override_categorical_on_a_numeric_column_reads_numbers_as_levels() -> None:
    columns = {**_numeric(), "tier": np.array([1.0, 2.0, 3.0] * 10)}
    spec = _spec(feature_overrides=(InputFeature("tier", kind=FeatureKind.CATEGORICAL, levels=("1", "2", "3")),))
    schema, _ = infer_schema(_build(columns, spec), spec.feature_overrides)
    assert schema.feature("tier").levels == ("1", "2", "3")


def test_overrides_contradicted_by_data_name_the_row() -> None:
    columns = {**_numeric(), "flag": np.array([0.0, 1.0] * 10 + [0.0, 2.0] + [1.0] * 8)}
    table = _build(columns)
    with pytest.raises(BadCellError, match=re.escape("row 22, column 'flag': 2 is not 0 or 1")):
        infer_schema(table, [FeatureOverride("flag", kind=FeatureKind.BINARY)])
    columns = {**_numeric(), "t": ["p", "q"] * 10 + ["r"] + ["p"] * 9}
    table = _build(columns, _spec(categorical_columns=("t",)))
    with pytest.raises(BadCellError, match=re.escape("row 21, column 't': level 'r' is not among")):
        infer_schema(table, [FeatureOverride("t", levels=("p", "q"))])


# -- statistics ------------------------------------------------------------------------------


def test_statistics_of_encoded_columns() -> None:
    columns = _mixed(rows=200)
    table = _build(columns, _spec(target_columns=("difficulty",), categorical_columns=("theme",)), chunk=64)
    schema, _ = infer_schema(table)
    X = encode(table, schema)
    stats = data_statistics(X)
    assert stats.rows == 200 and stats.width == 6
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(stats.mean, X64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.reshape(stats.covariance, (6, 6)), np.cov(X64, rowvar=False), rtol=1e-9, atol=1e-12)
    assert stats.quantile_levels == QUANTILE_LEVELS
    quantiles = np.reshape(stats.quantiles, (6, len(QUANTILE_LEVELS)))
    np.testing.assert_allclose(quantiles[:, 0], X64.min(axis=0))
    np.testing.assert_allclose(quantiles[:, -1], X64.max(axis=0))
    np.testing.assert_allclose(quantiles[0, 7], np.median(X64[:, 0]), rtol=1e-6)


# -- scale -----------------------------------------------------------------------------------


def test_million_rows_by_twenty_columns_in_chunks_stays_compact() -> None:
    rows, width, chunk = 1_000_000, 20, 100_000
    names = [f"f{j}" for j in range(width - 1)]
    spec = TrainSpec(name="big", target_columns=("y",))
    raw_bytes = rows * width * 8
    tracemalloc.start()
    try:
        builder = TableBuilder(spec)  # no row-count hint: the buffer has to grow
        for start in range(0, rows, chunk):
            block = np.random.default_rng(start).uniform(0, 1, (chunk, width))
            builder.add_chunk({**{name: block[:, j] for j, name in enumerate(names)}, "y": block[:, -1]})
            del block
        table = builder.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert table.rows == rows
    # The table itself is rows x width float64; growing it and one chunk in flight stay below 1.6x that.
    assert table.values.nbytes == raw_bytes
    assert peak < 1.6 * raw_bytes, f"peak {peak / 2**20:.0f} MiB for {raw_bytes / 2**20:.0f} MiB of data"
    last = np.random.default_rng(rows - chunk).uniform(0, 1, (chunk, width))
    np.testing.assert_array_equal(table.numbers("f3")[-chunk:], last[:, 3])
    np.testing.assert_array_equal(table.target_matrix()[-chunk:, 0], last[:, -1])
    schema, _ = infer_schema(table)
    stats = data_statistics(encode(table, schema))
    assert stats.rows == rows and stats.width == width - 1
    np.testing.assert_allclose(stats.mean, 0.5, atol=2e-3)


def test_build_table_is_one_chunk() -> None:
    table = build_table(_numeric(), _spec())
    assert table.rows == 30 and table.warnings == ()
