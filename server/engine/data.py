"""Training tables: columns streamed in chunks, checked, typed and summarized.

The Train servicer feeds each data chunk, as plain columns by name, to a
:class:`TableBuilder` made from the run's :class:`TrainSpec`; :meth:`TableBuilder.finish`
returns a :class:`Table`. From a table, :func:`infer_schema` derives the model's
:class:`FeatureSchema` (bounds from the observed range, 0/1 columns binary,
whole-number columns integer, named columns categorical; client overrides win),
:func:`encode` builds the ``n x d`` float32 model input (categoricals one-hot) and
:func:`data_statistics` summarizes it for Invert's data prior.

Every problem with the data raises an :class:`InvalidArgumentError` whose message
names the row (counted from 1 in the order the rows were sent) and the column.

Example:
    >>> import numpy as np
    >>> spec = TrainSpec(name="m", target_columns=("y",), categorical_columns=("theme",))
    >>> builder = TableBuilder(spec, min_rows=4)
    >>> builder.add_chunk({"x": np.array([0.0, 1.0]), "theme": ["ice", "lava"], "y": np.array([1.0, 2.0])})
    >>> builder.add_chunk({"x": np.array([2.0, 3.0]), "theme": ["ice", "ice"], "y": np.array([3.0, 5.0])})
    >>> table = builder.finish()
    >>> schema, warnings = infer_schema(table)
    >>> [(f.name, f.kind.value) for f in schema.inputs]
    [('x', 'integer'), ('theme', 'categorical')]
    >>> encode(table, schema).shape
    (4, 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from preimage.errors import InvalidArgumentError
from preimage.registry.schema import DataStatistics, FeatureKind, FeatureSchema, InputFeature, OutputFeature
from preimage.server.engine.types import FeatureOverride, TrainSpec, TrainWarning

__all__ = [
    "DEFAULT_MIN_ROWS",
    "QUANTILE_LEVELS",
    "BadCellError",
    "ChunkMismatchError",
    "ConstantTargetError",
    "MissingColumnError",
    "Table",
    "TableBuilder",
    "TooFewRowsError",
    "build_table",
    "data_statistics",
    "encode",
    "infer_schema",
]

DEFAULT_MIN_ROWS = 20
"""Fewest rows a table may have (the server's ``train_min_rows`` setting overrides it)."""

QUANTILE_LEVELS: tuple[float, ...] = (
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0,
)  # fmt: skip
"""Levels at which :func:`data_statistics` records per-column quantiles."""

_GROWTH = 1.5  # buffer growth factor: amortized appends without doubling peak memory
_BLOCK_ROWS = 65536  # rows per block when accumulating the covariance in float64

Override: TypeAlias = InputFeature | FeatureOverride
ColumnData: TypeAlias = np.ndarray | Sequence[Any]


# -- errors ----------------------------------------------------------------------------------


MAX_PREALLOCATED_ROWS = 1_000_000
"""Most rows a client's ``expected_rows`` hint may preallocate."""


class BadCellError(InvalidArgumentError):
    """A cell of the table cannot be used.

    Args:
        row: Row number, counted from 1 in the order the rows were sent.
        column: Column name.
        problem: What is wrong with the cell.
    """

    def __init__(self, row: int, column: str, problem: str) -> None:
        super().__init__(f"row {row}, column {column!r}: {problem}", field="data")
        self.row = row
        self.column = column
        self.problem = problem


class MissingColumnError(InvalidArgumentError):
    """The configuration names a column the data does not have.

    Args:
        column: The missing column.
        role: ``"target"``, ``"feature"`` or ``"categorical"``: which configuration list named it.
        available: The columns the data does have.
    """

    def __init__(self, column: str, role: str, available: Sequence[str]) -> None:
        super().__init__(
            f"{role} column {column!r} is not in the data; its columns are {list(available)}",
            field=f"{role}_columns",
        )
        self.column = column
        self.role = role
        self.available = tuple(available)


class ChunkMismatchError(InvalidArgumentError):
    """A data chunk's columns differ from the first chunk's, or from each other in length.

    Args:
        chunk: Chunk number, counted from 1.
        detail: What differs.
    """

    def __init__(self, chunk: int, detail: str) -> None:
        super().__init__(f"data chunk {chunk}: {detail}", field="data")
        self.chunk = chunk
        self.detail = detail


class TooFewRowsError(InvalidArgumentError):
    """The table has fewer rows than the configured minimum."""

    def __init__(self, rows: int, min_rows: int) -> None:
        super().__init__(f"the table has {rows} rows; training needs at least {min_rows}", field="data")
        self.rows = rows
        self.min_rows = min_rows


class ConstantTargetError(InvalidArgumentError):
    """A target column holds one value in every row: there is nothing to learn."""

    def __init__(self, column: str, value: float) -> None:
        super().__init__(
            f"target column {column!r} is constant ({value:g} in every row); there is nothing to learn",
            field="target_columns",
        )
        self.column = column
        self.value = value


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Table:
    """A checked training table.

    Attributes:
        rows: Number of rows.
        features: Feature column names in model order.
        targets: Target column names in output order.
        numeric_columns: Names of the columns of ``values`` (numeric features, then targets).
        values: ``rows x len(numeric_columns)`` float64, every value finite.
        categorical_columns: Names of the columns of ``codes``.
        codes: ``rows x len(categorical_columns)`` int32 indices into ``levels``.
        levels: Per categorical column, its level strings in code order (order first seen).
        warnings: Problems found while building that do not stop training (constant features).
    """

    rows: int
    features: tuple[str, ...]
    targets: tuple[str, ...]
    numeric_columns: tuple[str, ...]
    values: np.ndarray
    categorical_columns: tuple[str, ...]
    codes: np.ndarray
    levels: tuple[tuple[str, ...], ...]
    warnings: tuple[TrainWarning, ...] = ()

    def is_categorical(self, name: str) -> bool:
        """Whether ``name`` is a categorical column."""
        return name in self.categorical_columns

    def numbers(self, name: str) -> np.ndarray:
        """The float64 values of a numeric column (a view, length ``rows``)."""
        return self.values[:, self.numeric_columns.index(name)]

    def categories(self, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """The int32 codes of a categorical column and the level each code stands for."""
        j = self.categorical_columns.index(name)
        return self.codes[:, j], self.levels[j]

    def target_matrix(self) -> np.ndarray:
        """``rows x len(targets)`` float64 target values (a copy)."""
        return np.stack([self.numbers(name) for name in self.targets], axis=1)


class TableBuilder:
    """Accumulates a training table from chunks of columns, checking every cell on arrival.

    Numeric columns go into one preallocated float64 buffer that grows geometrically
    (``rows x columns``, realloc'ed in place where the allocator can); categorical
    columns become int32 codes. A table of 1,000,000 rows x 20 columns therefore takes
    about 160 MB, not the gigabytes Python lists of floats would.

    Args:
        spec: The run's configuration: which columns are targets, features, categorical,
            and the overrides (a column an override declares categorical is categorical).
        min_rows: Fewest rows :meth:`finish` accepts (at least 2: one to train on, one to validate).
        expected_rows: Rows the client announced, when known, to size the buffer once.

    Raises:
        InvalidArgumentError: The spec's column lists contradict each other (a column both
            target and feature, a duplicate, a categorical target...), naming the field.
    """

    def __init__(self, spec: TrainSpec, *, min_rows: int = DEFAULT_MIN_ROWS, expected_rows: int | None = None) -> None:
        if min_rows < 2:
            raise ValueError(f"min_rows must be at least 2, got {min_rows}")
        self.min_rows = min_rows
        self._targets = tuple(spec.target_columns)
        self._requested_features = tuple(spec.feature_columns)
        self._overrides = _overrides_by_name(spec.feature_overrides)
        self._categorical = _categorical_set(spec, self._overrides)
        _check_column_lists(spec, self._categorical)
        # The hint comes from the client: trust it only up to a modest buffer, then grow as rows arrive.
        self._capacity = min(max(int(expected_rows or 0), 0), MAX_PREALLOCATED_ROWS)
        self._rows = 0
        self._chunks = 0
        self._finished = False
        # Fixed by the first chunk.
        self._names: tuple[str, ...] = ()
        self._features: tuple[str, ...] = ()
        self._numeric: tuple[str, ...] = ()
        self._cat_columns: tuple[str, ...] = ()
        self._lookups: list[dict[str, int]] = []
        self._values = np.empty((0, 0), dtype=np.float64)
        self._codes = np.empty((0, 0), dtype=np.int32)

    @property
    def rows(self) -> int:
        """Rows accepted so far."""
        return self._rows

    def add_chunk(self, columns: Mapping[str, ColumnData]) -> None:
        """Append the next rows.

        Args:
            columns: Column name → cells: a numeric array (converted to float64), or a
                sequence of strings (level names of a categorical column, or cells the
                client could not parse as numbers). Every chunk carries the same columns,
                all of one length; columns the spec does not use are checked for length only.

        Raises:
            MissingColumnError: The first chunk lacks a target, feature or categorical column.
            ChunkMismatchError: The columns differ from the first chunk's or in length.
            BadCellError: A cell is not a number outside a categorical column, is NaN or
                infinite, or is empty; the first such cell in data order is reported.
        """
        if self._finished:
            raise RuntimeError("add_chunk after finish or after an error")
        # A chunk that fails leaves the builder spent: its new levels may already be in the lookups.
        self._finished = True
        self._chunks += 1
        if self._chunks == 1:
            self._start(list(columns))
        length = self._check_shape(columns)
        offset = self._rows
        numbers = [_to_array(columns[name]) for name in self._numeric]
        parsed: list[np.ndarray] = []
        first_bad: tuple[int, int, str] | None = None  # (index in chunk, column position, problem)
        for position, cells in enumerate(numbers):
            values, bad = _parse_numbers(cells)
            parsed.append(values)
            if bad is not None and (first_bad is None or (bad[0], position) < first_bad[:2]):
                first_bad = (bad[0], position, bad[1])
        codes: list[np.ndarray] = []
        for position, name in enumerate(self._cat_columns, start=len(self._numeric)):
            column_codes, bad = _encode_levels(_to_array(columns[name]), self._lookups[position - len(self._numeric)])
            codes.append(column_codes)
            if bad is not None and (first_bad is None or (bad[0], position) < first_bad[:2]):
                first_bad = (bad[0], position, bad[1])
        if first_bad is not None:
            index, position, problem = first_bad
            raise BadCellError(offset + index + 1, (*self._numeric, *self._cat_columns)[position], problem)
        self._reserve(offset + length)
        for j, values in enumerate(parsed):
            self._values[offset : offset + length, j] = values
        for j, column_codes in enumerate(codes):
            self._codes[offset : offset + length, j] = column_codes
        self._rows = offset + length
        self._finished = False

    def finish(self) -> Table:
        """The checked table.

        Raises:
            TooFewRowsError: Fewer than ``min_rows`` rows arrived.
            ConstantTargetError: A target column holds one value in every row.
        """
        if self._finished:
            raise RuntimeError("finish called twice or after an error")
        self._finished = True
        if self._rows < self.min_rows:
            raise TooFewRowsError(self._rows, self.min_rows)
        # Shrink in place: nothing else holds a view of the buffers yet.
        self._values.resize((self._rows, len(self._numeric)), refcheck=False)
        self._codes.resize((self._rows, len(self._cat_columns)), refcheck=False)
        warnings: list[TrainWarning] = []
        for j, name in enumerate(self._numeric):
            column = self._values[:, j]
            lo, hi = float(column.min()), float(column.max())
            if lo != hi:
                continue
            if name in self._targets:
                raise ConstantTargetError(name, lo)
            warnings.append(
                TrainWarning(
                    f"feature column {name!r} is constant ({lo:g} in every row); it cannot inform the model", name
                )
            )
        for j, name in enumerate(self._cat_columns):
            if len(self._lookups[j]) == 1:
                (level,) = self._lookups[j]
                warnings.append(
                    TrainWarning(
                        f"categorical column {name!r} holds one level ({level!r}) in every row; "
                        "it cannot inform the model",
                        name,
                    )
                )
        return Table(
            rows=self._rows,
            features=self._features,
            targets=self._targets,
            numeric_columns=self._numeric,
            values=self._values,
            categorical_columns=self._cat_columns,
            codes=self._codes,
            levels=tuple(tuple(lookup) for lookup in self._lookups),
            warnings=tuple(warnings),
        )

    # -- internals --------------------------------------------------------------------

    def _start(self, names: list[str]) -> None:
        """Fix the column layout from the first chunk's names."""
        self._names = tuple(names)
        for target in self._targets:
            if target not in names:
                raise MissingColumnError(target, "target", names)
        if self._requested_features:
            for feature in self._requested_features:
                if feature not in names:
                    raise MissingColumnError(feature, "feature", names)
            features = self._requested_features
        else:
            features = tuple(name for name in names if name not in self._targets)
            if not features:
                raise InvalidArgumentError(
                    f"the data has no columns besides the targets {list(self._targets)}", field="feature_columns"
                )
        for name in sorted(self._categorical):
            if name not in names:
                raise MissingColumnError(name, "categorical", names)
            if name not in features:
                raise InvalidArgumentError(
                    f"categorical column {name!r} is not among the feature columns {list(features)}",
                    field="categorical_columns",
                )
        for name in self._overrides:
            if name not in features:
                raise InvalidArgumentError(
                    f"feature_overrides: no feature column named {name!r}; the features are {list(features)}",
                    field="feature_overrides",
                )
        self._features = features
        self._numeric = (*(f for f in features if f not in self._categorical), *self._targets)
        self._cat_columns = tuple(f for f in features if f in self._categorical)
        self._lookups = [{} for _ in self._cat_columns]
        self._values = np.empty((self._capacity, len(self._numeric)), dtype=np.float64)
        self._codes = np.empty((self._capacity, len(self._cat_columns)), dtype=np.int32)

    def _check_shape(self, columns: Mapping[str, ColumnData]) -> int:
        """The chunk's row count, after checking its column set and lengths."""
        for name in self._names:
            if name not in columns:
                raise ChunkMismatchError(self._chunks, f"column {name!r} is missing (the first chunk had it)")
        for name in columns:
            if name not in self._names:
                raise ChunkMismatchError(self._chunks, f"column {name!r} was not in the first chunk")
        first = self._names[0]
        length = _length(columns[first], first, self._chunks)
        for name in self._names[1:]:
            other = _length(columns[name], name, self._chunks)
            if other != length:
                raise ChunkMismatchError(
                    self._chunks, f"column {name!r} has {other} cells but column {first!r} has {length}"
                )
        return length

    def _reserve(self, rows: int) -> None:
        """Grow the buffers to hold ``rows`` rows."""
        if rows <= self._capacity:
            return
        capacity = max(rows, int(self._capacity * _GROWTH) + 1)
        self._values.resize((capacity, self._values.shape[1]), refcheck=False)
        self._codes.resize((capacity, self._codes.shape[1]), refcheck=False)
        self._capacity = capacity


def build_table(columns: Mapping[str, ColumnData], spec: TrainSpec, *, min_rows: int = DEFAULT_MIN_ROWS) -> Table:
    """A table from one chunk holding every row (see :class:`TableBuilder`)."""
    builder = TableBuilder(spec, min_rows=min_rows)
    builder.add_chunk(columns)
    return builder.finish()


# -- schema, encoding, statistics -----------------------------------------------------------


def infer_schema(table: Table, overrides: Sequence[Override] = ()) -> tuple[FeatureSchema, tuple[TrainWarning, ...]]:
    """The model schema the data implies, with the client's overrides applied.

    Rules: a numeric column holding only 0 and 1 is binary; one holding only whole
    numbers is integer, bounded by its observed minimum and maximum; any other is
    continuous, bounded the same way. A categorical column's levels are its distinct
    cells, sorted (numerically when every level reads as a number). Outputs are named
    after the target columns.

    An override replaces, by feature name, the kind (an :class:`InputFeature` override
    always; a :class:`FeatureOverride` when its kind is set), the bounds (when given)
    and the levels (when given). A bound override on a column inferred binary makes it
    integer.

    Args:
        table: A finished table.
        overrides: Client corrections, matched by feature name.

    Returns:
        The validated schema and warnings: data outside overridden bounds, non-whole
        values in a column declared integer, declared levels absent from the data.

    Raises:
        BadCellError: Data contradicts an override (a value other than 0/1 in a column
            declared binary, a level missing from declared levels), naming the first such row.
        InvalidArgumentError: An override names no feature, contradicts a categorical column,
            or leaves a categorical feature with fewer than 2 levels; or the resulting schema
            is invalid (a :class:`~preimage.registry.schema.SchemaError`).
    """
    by_name = _overrides_by_name(overrides)
    for name in by_name:
        if name not in table.features:
            raise InvalidArgumentError(
                f"feature_overrides: no feature column named {name!r}; the features are {list(table.features)}",
                field="feature_overrides",
            )
    inputs: list[InputFeature] = []
    warnings: list[TrainWarning] = []
    for name in table.features:
        override = by_name.get(name)
        if table.is_categorical(name):
            feature = _categorical_feature(table, name, override, warnings)
        else:
            feature = _numeric_feature(name, table.numbers(name), override, warnings)
        inputs.append(feature)
    schema = FeatureSchema(tuple(inputs), tuple(OutputFeature(name) for name in table.targets))
    return schema.validated(), tuple(warnings)


def encode(table: Table, schema: FeatureSchema) -> np.ndarray:
    """The ``rows x schema.input_width`` float32 model input: numbers as they are, categoricals one-hot.

    Raises:
        InvalidArgumentError: A categorical cell has a level the schema does not list.
    """
    X = np.zeros((table.rows, schema.input_width), dtype=np.float32)
    start = 0
    for feature in schema.inputs:
        if feature.kind is FeatureKind.CATEGORICAL:
            codes, levels = table.categories(feature.name)
            position = {level: i for i, level in enumerate(feature.levels)}
            remap = np.array([position.get(level, -1) for level in levels], dtype=np.int64)
            missing = np.flatnonzero(remap < 0)
            if missing.size:
                row = int(np.flatnonzero(np.isin(codes, missing))[0])
                raise BadCellError(
                    row + 1, feature.name, f"level {levels[codes[row]]!r} is not in {list(feature.levels)}"
                )
            X[np.arange(table.rows), start + remap[codes]] = 1.0
        else:
            X[:, start] = table.numbers(feature.name)
        start += feature.width
    return X


def data_statistics(X: np.ndarray, quantile_levels: Sequence[float] = QUANTILE_LEVELS) -> DataStatistics:
    """Per-column mean, covariance and quantiles of the encoded model inputs.

    Args:
        X: ``n x d`` model inputs (n ≥ 1).
        quantile_levels: Ascending levels in ``[0, 1]``.

    Returns:
        Statistics of ``X`` (covariance with the ``n - 1`` divisor, accumulated in float64
        block by block so that a million rows need no float64 copy).
    """
    n, d = X.shape
    mean = X.mean(axis=0, dtype=np.float64)
    covariance = np.zeros((d, d), dtype=np.float64)
    for start in range(0, n, _BLOCK_ROWS):
        block = X[start : start + _BLOCK_ROWS].astype(np.float64) - mean
        covariance += block.T @ block
    covariance /= max(n - 1, 1)
    levels = np.asarray(quantile_levels, dtype=np.float64)
    # One sort per column, then numpy's default ("linear") interpolation: several times
    # faster than np.quantile's repeated partitions for a million rows.
    ordered = np.sort(X.T, axis=1)  # d x n
    position = levels * (n - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, n - 1)
    fraction = position - below
    low, high = ordered[:, below].astype(np.float64), ordered[:, above].astype(np.float64)
    quantiles = low + (high - low) * fraction  # d x k
    del ordered
    return DataStatistics(
        rows=n,
        mean=tuple(float(v) for v in mean),
        covariance=tuple(float(v) for v in covariance.ravel()),
        quantile_levels=tuple(float(v) for v in levels),
        quantiles=tuple(float(v) for v in quantiles.ravel()),
    ).validated(d)


# -- helpers ---------------------------------------------------------------------------------


def _overrides_by_name(overrides: Sequence[Override]) -> dict[str, Override]:
    by_name: dict[str, Override] = {}
    for override in overrides:
        if override.name in by_name:
            raise InvalidArgumentError(
                f"feature_overrides: {override.name!r} is overridden twice", field="feature_overrides"
            )
        by_name[override.name] = override
    return by_name


def _categorical_set(spec: TrainSpec, overrides: Mapping[str, Override]) -> frozenset[str]:
    """Columns holding levels: those the client named, and those an override declares categorical."""
    named = set(spec.categorical_columns)
    for name, override in overrides.items():
        kind = override.kind
        if kind is FeatureKind.CATEGORICAL:
            named.add(name)
        elif name in spec.categorical_columns and kind is not None:
            raise InvalidArgumentError(
                f"feature_overrides: {name!r} is a categorical column but its override says kind {kind.value!r}",
                field="feature_overrides",
            )
    return frozenset(named)


def _check_column_lists(spec: TrainSpec, categorical: frozenset[str]) -> None:
    if not spec.target_columns:
        raise InvalidArgumentError("name at least one target column", field="target_columns")
    for field, names in (
        ("target_columns", spec.target_columns),
        ("feature_columns", spec.feature_columns),
        ("categorical_columns", spec.categorical_columns),
    ):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InvalidArgumentError(f"{field}: {repeated} listed more than once", field=field)
    for name in spec.target_columns:
        if name in spec.feature_columns:
            raise InvalidArgumentError(f"column {name!r} is both a target and a feature", field="feature_columns")
        if name in categorical:
            raise InvalidArgumentError(
                f"target column {name!r} cannot be categorical: targets must be numbers", field="categorical_columns"
            )


def _length(cells: ColumnData, name: str, chunk: int) -> int:
    if isinstance(cells, np.ndarray):
        if cells.ndim != 1:
            raise ChunkMismatchError(chunk, f"column {name!r} must be one-dimensional, got shape {cells.shape}")
        return int(cells.shape[0])
    if isinstance(cells, (str, bytes)):
        raise ChunkMismatchError(chunk, f"column {name!r} must be a sequence of cells, not one string")
    return len(cells)


def _to_array(cells: ColumnData) -> np.ndarray:
    """Cells as a 1-D array: float64 when every cell is a number, else an object array of the cells."""
    if isinstance(cells, np.ndarray):
        if cells.dtype.kind in "biuf":
            return cells.astype(np.float64, copy=False)
        return cells.astype(object)
    # Text columns (the common non-numeric case) skip numpy's fixed-width string conversion.
    if not all(isinstance(cell, str) for cell in cells):
        array = np.asarray(cells)
        if array.dtype.kind in "biuf":
            return array.astype(np.float64, copy=False)
    out = np.empty(len(cells), dtype=object)
    out[:] = cells
    return out


def _parse_numbers(cells: np.ndarray) -> tuple[np.ndarray, tuple[int, str] | None]:
    """Float64 values of a numeric column, and its first bad cell (index, problem) if any."""
    if cells.dtype == np.float64:
        values = cells
    else:
        try:
            values = cells.astype(np.float64)
        except (TypeError, ValueError):
            values = np.empty(len(cells), dtype=np.float64)
            for i, cell in enumerate(cells):
                number = _cell_number(cell)
                if number is None:
                    return values, (i, _not_a_number(cell))
                values[i] = number
    finite = np.isfinite(values)
    if finite.all():
        return values, None
    i = int(np.flatnonzero(~finite)[0])
    return values, (i, "NaN is not allowed" if np.isnan(values[i]) else f"infinite value {values[i]} is not allowed")


def _cell_number(cell: Any) -> float | None:
    if isinstance(cell, (int, float, np.integer, np.floating)) and not isinstance(cell, bool):
        return float(cell)
    if isinstance(cell, str):
        try:
            return float(cell)
        except ValueError:
            return None
    return None


def _not_a_number(cell: Any) -> str:
    if cell is None or (isinstance(cell, str) and not cell.strip()):
        return "the cell is empty"
    return f"{cell!r} is not a number (only categorical columns may hold text)"


def _encode_levels(cells: np.ndarray, lookup: dict[str, int]) -> tuple[np.ndarray, tuple[int, str] | None]:
    """Int32 codes of a categorical column (``lookup`` grows with new levels) and its first bad cell."""
    if cells.dtype == np.float64:
        finite = np.isfinite(cells)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            return np.empty(0, np.int32), (i, f"{cells[i]} is not a level")
        # Numbers name levels by their shortest text: 2.0 -> "2", 0.5 -> "0.5".
        unique, inverse = np.unique(cells, return_inverse=True)
        keys = np.array([lookup.setdefault(_format_number(v), len(lookup)) for v in unique], dtype=np.int32)
        return keys[inverse].reshape(-1), None
    codes = np.empty(len(cells), dtype=np.int32)
    for i, cell in enumerate(cells):
        if isinstance(cell, str):
            level = cell if type(cell) is str else str(cell)  # np.str_ cells name plain-str levels
        else:
            number = _cell_number(cell)
            if number is None or not np.isfinite(number):
                return codes, (i, f"{cell!r} is not a level")
            level = _format_number(number)
        if not level:
            return codes, (i, "the cell is empty")
        codes[i] = lookup.setdefault(level, len(lookup))
    return codes, None


def _format_number(value: float) -> str:
    value = float(value)
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _sorted_levels(levels: Sequence[str]) -> tuple[str, ...]:
    """Levels sorted numerically when all read as numbers, else as strings."""
    try:
        return tuple(sorted(levels, key=lambda level: (float(level), level)))
    except ValueError:
        return tuple(sorted(levels))


def _categorical_feature(
    table: Table, name: str, override: Override | None, warnings: list[TrainWarning]
) -> InputFeature:
    codes, observed = table.categories(name)
    if override is not None and override.kind not in (None, FeatureKind.CATEGORICAL):
        raise InvalidArgumentError(
            f"feature_overrides: {name!r} is a categorical column but its override says kind {override.kind.value!r}",
            field="feature_overrides",
        )
    if override is not None and override.levels:
        levels = tuple(override.levels)
        missing = [code for code, level in enumerate(observed) if level not in levels]
        if missing:
            row = int(np.flatnonzero(np.isin(codes, missing))[0])
            raise BadCellError(
                row + 1, name, f"level {observed[codes[row]]!r} is not among the declared levels {list(levels)}"
            )
        unseen = [level for level in levels if level not in observed]
        if unseen:
            warnings.append(
                TrainWarning(
                    f"levels {unseen} of {name!r} never occur in the data; the model's output for them is a guess",
                    name,
                )
            )
    else:
        levels = _sorted_levels(observed)
    if len(levels) < 2:
        raise InvalidArgumentError(
            f"categorical column {name!r} holds only the level {levels[0]!r}; a categorical feature needs at "
            "least 2 levels: declare its levels in an override or leave the column out",
            field="categorical_columns",
        )
    return InputFeature(
        name=name,
        kind=FeatureKind.CATEGORICAL,
        min=None if override is None else override.min,
        max=None if override is None else override.max,
        levels=levels,
    )


def _numeric_feature(
    name: str, values: np.ndarray, override: Override | None, warnings: list[TrainWarning]
) -> InputFeature:
    lo, hi = float(values.min()), float(values.max())
    binary = bool(np.all((values == 0.0) | (values == 1.0)))
    whole = bool(np.all(values == np.floor(values)))
    kind = FeatureKind.BINARY if binary else FeatureKind.INTEGER if whole else FeatureKind.CONTINUOUS
    low: float | None = lo
    high: float | None = hi
    levels: tuple[str, ...] = ()
    if override is not None:
        bounded = override.min is not None or override.max is not None
        if override.kind is FeatureKind.CATEGORICAL:
            raise InvalidArgumentError(
                f"feature_overrides: {name!r} holds numbers; name it in categorical_columns to treat it as categorical",
                field="feature_overrides",
            )
        if override.kind is not None:
            kind = override.kind
        elif kind is FeatureKind.BINARY and bounded:
            kind = FeatureKind.INTEGER
        low = lo if override.min is None else float(override.min)
        high = hi if override.max is None else float(override.max)
        levels = tuple(override.levels)
        if kind is FeatureKind.BINARY and not binary:
            row = int(np.flatnonzero((values != 0.0) & (values != 1.0))[0])
            raise BadCellError(row + 1, name, f"{values[row]:g} is not 0 or 1, but the feature is declared binary")
        if kind is FeatureKind.INTEGER and not whole:
            warnings.append(
                TrainWarning(
                    f"{name!r} is declared integer but holds fractional values; Invert returns whole numbers", name
                )
            )
        if kind in (FeatureKind.CONTINUOUS, FeatureKind.INTEGER) and (lo < low or hi > high):
            warnings.append(
                TrainWarning(
                    f"{name!r} holds values in [{lo:g}, {hi:g}], outside the declared range [{low:g}, {high:g}]; "
                    "Invert keeps to the declared range",
                    name,
                )
            )
    if kind is FeatureKind.BINARY:
        low = high = None
    return InputFeature(name=name, kind=kind, min=low, max=high, levels=levels)
