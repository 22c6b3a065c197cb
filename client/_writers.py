"""Pattern and prediction output of the ``preimage`` CLI, formatted a batch at a time.

Every writer takes whole arrays (a streamed message of patterns) and formats
them with one ``%`` over a row format repeated ``n`` times and the batch's
values flattened in row order: the per-value work runs in C (float ``repr`` and
``%g``), with no Python loop per value. Measured against the alternatives
(``json.dumps`` per row, ``np.savetxt`` into a buffer, ``np.char`` ops) in
bench/cli_writers.py, this is the fastest and keeps the output byte for byte.

Formats:

- ``jsonl``: ``{"input":[...],"output":[...],"error":[...]}`` per pattern, numbers as
  Python's ``json`` writes them (shortest round-trip ``repr``; ``NaN``/``Infinity``);
  with ``named``, ``input`` is ``{feature: value}`` with levels by name.
- ``csv``: a header row, then one row per pattern: the input columns (or, with
  ``named``, one column per feature, levels by name), the outputs, then one error
  per output; numbers at full precision.
- ``table``: the human table (features by name, outputs, the largest error; 6
  significant digits), which needs every pattern for its column widths.
- ``npy``: one structured array, fields ``input`` (``d``), ``output`` and ``error``
  (``m``), float32, written by ``np.save``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import IO, Any

import numpy as np

from preimage.client._requests import PatternArrays
from preimage.client.types import FeatureKind, FeatureSchema, FloatArray

__all__ = [
    "FORMATS",
    "CsvWriter",
    "JsonlWriter",
    "NpyWriter",
    "PatternWriter",
    "TableWriter",
    "csv_header",
    "csv_patterns",
    "jsonl_patterns",
    "npy_dtype",
    "pattern_table",
    "prediction_lines",
    "table_cells",
    "table_header",
    "table_text",
]

FORMATS = ("table", "jsonl", "csv", "npy")
"""Values of ``preimage invert --format``."""


def _formatted(fmt: str, values: Sequence[Any], rows: int) -> str:
    """``fmt`` (one row, no newline) applied to ``rows`` rows of ``values`` (row-major), one line each."""
    if rows == 0:
        return ""
    return ((fmt + "\n") * rows) % tuple(values)


def _json_fixup(text: str, values: np.ndarray[Any, Any]) -> str:
    """``repr`` spells non-finite numbers ``nan``/``inf``; ``json`` writes ``NaN``/``Infinity``."""
    if np.isfinite(values).all():
        return text
    return text.replace("nan", "NaN").replace("inf", "Infinity")


def _strings(fmt: str, column: np.ndarray[Any, Any] | Sequence[Any]) -> list[str]:
    """One column formatted to strings (``fmt`` per value), in C."""
    values = column.tolist() if isinstance(column, np.ndarray) else list(column)
    if not values:
        return []
    return ((fmt + "\n") * len(values) % tuple(values)).split("\n")[:-1]


def _interleave(columns: Sequence[Sequence[Any]]) -> list[Any]:
    """Columns to one row-major list."""
    return list(chain.from_iterable(zip(*columns, strict=True)))


def _feature_columns(schema: FeatureSchema, X: FloatArray, *, json: bool) -> list[list[Any]]:
    """One list per feature: floats, ints (integer and binary, rounded) or level names.

    Level names come JSON-quoted with ``json``; as they are otherwise. Values are
    those of :meth:`FeatureSchema.decode_row`, per column instead of per row.
    """
    import json as _json

    columns: list[list[Any]] = []
    start = 0
    X64 = X.astype(np.float64, copy=False)
    for feature in schema.inputs:
        block = X64[:, start : start + feature.width]
        start += feature.width
        if feature.kind is FeatureKind.CATEGORICAL:
            names = [_json.dumps(level) if json else level for level in feature.levels]
            columns.append(np.asarray(names, dtype=object)[np.argmax(block, axis=1)].tolist())
            continue
        values = block[:, 0]
        if feature.kind in (FeatureKind.INTEGER, FeatureKind.BINARY) and np.isfinite(values).all():
            columns.append(np.rint(values).astype(np.int64).tolist())
        elif feature.kind in (FeatureKind.INTEGER, FeatureKind.BINARY):
            # As decode does: rounded where finite, the float itself where not.
            columns.append([round(v) if np.isfinite(v) else v for v in values.tolist()])
        else:
            columns.append(values.tolist())
    return columns


def jsonl_patterns(batch: PatternArrays, schema: FeatureSchema | None = None) -> str:
    """JSON lines for a batch of patterns; with ``schema``, inputs as ``{feature: value}``.

    Example:
        >>> x, y = np.array([[0.5, 1.0]], np.float32), np.array([[2.0]], np.float32)
        >>> jsonl_patterns(PatternArrays(x, y, y * 0))
        '{"input":[0.5,1.0],"output":[2.0],"error":[0.0]}\\n'
    """
    X, Y, E = batch
    n, d = X.shape
    m = Y.shape[1]
    numbers = np.hstack([Y, E]).astype(np.float64)
    tail = '],"output":[' + ",".join(["%r"] * m) + '],"error":[' + ",".join(["%r"] * m) + "]}"
    if schema is None:
        values = np.hstack([X.astype(np.float64), numbers])
        fmt = '{"input":[' + ",".join(["%r"] * d) + tail
        return _json_fixup(_formatted(fmt, values.ravel().tolist(), n), values)
    import json

    features = _feature_columns(schema, X, json=True)
    # Numbers among the features are formatted first, so a level name can never be rewritten.
    cells = [
        col if f.kind is FeatureKind.CATEGORICAL else _json_strings(col)
        for f, col in zip(schema.inputs, features, strict=True)
    ]
    keys = ",".join(f"{json.dumps(f.name)}:%s" for f in schema.inputs)
    fmt = '{"input":{' + keys + "}" + tail.replace("]", "", 1)
    return _json_fixup(_formatted(fmt, _interleave([*cells, *numbers.T.tolist()]), n), numbers)


def _json_strings(column: Sequence[Any]) -> list[str]:
    strings = _strings("%r", column)
    floats = np.asarray(column, dtype=np.float64)
    return strings if np.isfinite(floats).all() else [_json_fixup(s, floats) for s in strings]


def _csv_cell(text: str) -> str:
    """A CSV field, quoted when it holds a separator, a quote or a line break (RFC 4180)."""
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _output_names(schema: FeatureSchema | None, m: int) -> list[str]:
    names = schema.output_names if schema is not None else []
    return names if len(names) == m else [f"y{i}" for i in range(m)]


def csv_header(schema: FeatureSchema | None, d: int, m: int, *, named: bool) -> str:
    """The CSV header row: input columns (or features), outputs, then ``error_<output>`` per output.

    Input columns are named after their feature; a categorical feature's one-hot
    columns ``feature=level``. With ``named``, one column per feature.
    """
    if schema is None:
        inputs = [f"x{i}" for i in range(d)]
    elif named:
        inputs = schema.feature_names
    else:
        inputs = []
        for f in schema.inputs:
            inputs += [f"{f.name}={level}" for level in f.levels] if f.kind is FeatureKind.CATEGORICAL else [f.name]
    outputs = _output_names(schema, m)
    return ",".join(_csv_cell(name) for name in [*inputs, *outputs, *(f"error_{o}" for o in outputs)]) + "\n"


def csv_patterns(batch: PatternArrays, schema: FeatureSchema | None = None, *, named: bool = False) -> str:
    """CSV rows for a batch of patterns (no header), numbers at full precision."""
    X, Y, E = batch
    n, d = X.shape
    m = Y.shape[1]
    numbers = np.hstack([Y, E]).astype(np.float64)
    if not named or schema is None:
        values = np.hstack([X.astype(np.float64), numbers])
        return _formatted(",".join(["%r"] * (d + 2 * m)), values.ravel().tolist(), n)
    features = _feature_columns(schema, X, json=False)
    cells = [
        [_csv_cell(v) for v in col] if f.kind is FeatureKind.CATEGORICAL and _needs_quotes(f.levels) else col
        for f, col in zip(schema.inputs, features, strict=True)
    ]
    kinds = ["%s" if f.kind is FeatureKind.CATEGORICAL else "%r" for f in schema.inputs]
    fmt = ",".join([*kinds, *["%r"] * (2 * m)])
    return _formatted(fmt, _interleave([*cells, *numbers.T.tolist()]), n)


def _needs_quotes(levels: Sequence[str]) -> bool:
    return any(_csv_cell(level) != level for level in levels)


def table_header(schema: FeatureSchema | None, d: int, m: int) -> list[str]:
    """The table's column names: features (or ``x0..``), outputs (or ``y0..``), ``error``."""
    inputs = schema.feature_names if schema is not None else [f"x{i}" for i in range(d)]
    return [*inputs, *_output_names(schema, m), "error"]


def table_cells(batch: PatternArrays, schema: FeatureSchema | None) -> list[list[str]]:
    """A batch's table cells, one list of strings per column (see :func:`table_header`)."""
    X, Y, E = batch
    if schema is not None:
        columns = [
            col if f.kind is FeatureKind.CATEGORICAL else _table_strings(col, f.kind)
            for f, col in zip(schema.inputs, _feature_columns(schema, X, json=False), strict=True)
        ]
    else:
        columns = [_strings("%.6g", X[:, i].astype(np.float64)) for i in range(X.shape[1])]
    columns += [_strings("%.6g", Y[:, j].astype(np.float64)) for j in range(Y.shape[1])]
    columns.append(_strings("%.6g", np.max(E, axis=1, initial=0.0).astype(np.float64)))
    return columns


def table_text(header: Sequence[str], columns: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart under ``header``, no trailing spaces; ``(no patterns)`` for none."""
    n = len(columns[0]) if columns else 0
    if n == 0:
        return "(no patterns)"
    widths = [max(len(h), max(map(len, col))) for h, col in zip(header, columns, strict=True)]
    # Every column padded but the last: what rstrip of a fully padded line leaves.
    fmt = "  ".join([*(f"%-{w}s" for w in widths[:-1]), "%s"])
    return fmt % tuple(header) + "\n" + _formatted(fmt, _interleave(columns), n).rstrip("\n")


def pattern_table(batch: PatternArrays, schema: FeatureSchema | None) -> str:
    """Patterns as the CLI's table: features (by name when known), outputs, then the largest error.

    Values to 6 significant digits, columns left-aligned two spaces apart, no
    trailing spaces; ``(no patterns)`` for none.
    """
    header = table_header(schema, batch.inputs.shape[1], batch.outputs.shape[1])
    return table_text(header, table_cells(batch, schema))


def _table_strings(column: Sequence[Any], kind: FeatureKind) -> list[str]:
    """A numeric feature column for the table: integers in full (as ``str``), floats to 6 digits."""
    if kind in (FeatureKind.INTEGER, FeatureKind.BINARY):
        if all(type(v) is int for v in column):
            return _strings("%d", column)
        return [str(v) if type(v) is int else f"{v:.6g}" for v in column]
    return _strings("%.6g", column)


def npy_dtype(d: int, m: int) -> np.dtype[Any]:
    """The record of one pattern in ``--format npy``: ``input`` (``d``), ``output`` and ``error`` (``m``), float32."""
    return np.dtype([("input", "<f4", (d,)), ("output", "<f4", (m,)), ("error", "<f4", (m,))])


def prediction_lines(outputs: FloatArray, *, jsonl: bool) -> str:
    """``preimage predict`` output: a JSON array per row, or comma-separated values to 6 digits."""
    n, m = outputs.shape
    values = outputs.astype(np.float64)
    if jsonl:
        return _json_fixup(_formatted("[" + ",".join(["%r"] * m) + "]", values.ravel().tolist(), n), values)
    return _formatted(",".join(["%.6g"] * m), values.ravel().tolist(), n)


class PatternWriter:
    """Writes an Invert stream's batches to a file in one format; :meth:`close` finishes the file."""

    def __init__(self, out: IO[Any], schema: FeatureSchema | None, *, named: bool = False) -> None:
        self.out = out
        self.schema = schema
        self.named = named
        self.written = 0

    def write(self, batch: PatternArrays) -> None:
        """Write one batch (``inputs n x d``, ``outputs`` and ``errors`` ``n x m``)."""
        raise NotImplementedError

    def close(self, width: tuple[int, int] | None) -> None:
        """Finish the output; ``width`` is ``(d, m)`` when the stream said it, for empty outputs."""


class JsonlWriter(PatternWriter):
    """JSON lines, written and flushed a batch at a time (a reader sees patterns as they come)."""

    def write(self, batch: PatternArrays) -> None:
        self.out.write(jsonl_patterns(batch, self.schema if self.named else None))
        self.out.flush()
        self.written += len(batch.inputs)


class CsvWriter(PatternWriter):
    """CSV with a header row, written a batch at a time."""

    def _header(self, d: int, m: int) -> None:
        if self.written == 0 and not getattr(self, "_headed", False):
            self.out.write(csv_header(self.schema, d, m, named=self.named))
            self._headed = True

    def write(self, batch: PatternArrays) -> None:
        self._header(batch.inputs.shape[1], batch.outputs.shape[1])
        self.out.write(csv_patterns(batch, self.schema, named=self.named))
        self.out.flush()
        self.written += len(batch.inputs)

    def close(self, width: tuple[int, int] | None) -> None:
        if width is not None:
            self._header(*width)
            self.out.flush()


class _Collecting(PatternWriter):
    def __init__(self, out: IO[Any], schema: FeatureSchema | None, *, named: bool = False) -> None:
        super().__init__(out, schema, named=named)
        self.batches: list[PatternArrays] = []

    def write(self, batch: PatternArrays) -> None:
        self.batches.append(batch)
        self.written += len(batch.inputs)

    def collected(self, width: tuple[int, int] | None) -> PatternArrays:
        d, m = width or (0, 0)
        if not self.batches:
            empty = np.zeros((0, d), np.float32)
            return PatternArrays(empty, np.zeros((0, m), np.float32), np.zeros((0, m), np.float32))
        return PatternArrays(*(np.concatenate(parts) for parts in zip(*self.batches, strict=True)))


class TableWriter(PatternWriter):
    """The human table: cells formatted as batches come, laid out once all are in (widths need them all)."""

    def __init__(self, out: IO[Any], schema: FeatureSchema | None, *, named: bool = False) -> None:
        super().__init__(out, schema, named=named)
        self._columns: list[list[str]] = []
        self._width: tuple[int, int] | None = None

    def write(self, batch: PatternArrays) -> None:
        cells = table_cells(batch, self.schema)
        if not self._columns:
            self._columns = [[] for _ in cells]
        for column, part in zip(self._columns, cells, strict=True):
            column.extend(part)
        self._width = (batch.inputs.shape[1], batch.outputs.shape[1])
        self.written += len(batch.inputs)

    def close(self, width: tuple[int, int] | None) -> None:
        d, m = self._width or width or (0, 0)
        self.out.write(table_text(table_header(self.schema, d, m), self._columns) + "\n")
        self.out.flush()


class NpyWriter(_Collecting):
    """One structured ``.npy`` array (see :func:`npy_dtype`), written at the end."""

    def close(self, width: tuple[int, int] | None) -> None:
        X, Y, E = self.collected(width)
        records = np.empty(len(X), dtype=npy_dtype(X.shape[1], Y.shape[1]))
        records["input"], records["output"], records["error"] = X, Y, E
        np.save(self.out, records, allow_pickle=False)
        self.out.flush()
