"""Training tables as streams of column chunks (``TrainDataChunk`` messages).

A table is a mapping of column name to values, or a CSV file with a header
row. It is cut into slices of rows small enough that each message stays far
below gRPC's message limits (about 1 MiB by default), so a table of
1,000,000 rows x 20 columns streams through without the whole of it ever
being one message. Within a slice, a column whose cells all parse as numbers
travels as ``numbers``; a categorical column, or one with any cell that is not
a number, travels as ``strings`` (the server then names the offending row and
column).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from preimage.client.errors import InvalidArgumentError
from preimage.v1 import inference_pb2

__all__ = ["DEFAULT_CHUNK_BYTES", "Table", "csv_table", "mapping_table"]

DEFAULT_CHUNK_BYTES = 1 << 20
# A slice that still comes out above this after estimating is halved until it fits.
_HARD_LIMIT_BYTES = 3 << 20


@dataclass(frozen=True)
class Table:
    """A training table ready to stream.

    Attributes:
        columns: Column names in table order.
        rows: Number of data rows.
        source: Where it came from (for messages).
        read: ``read(step)`` iterates the table as slices ``{column: cells}`` of at most
            ``step`` rows each, from the start.
    """

    columns: tuple[str, ...]
    rows: int
    source: str
    read: Callable[[int], Iterator[dict[str, Any]]]

    def chunks(
        self, categorical: Sequence[str] = (), chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> Iterator[inference_pb2.TrainDataChunk]:
        """Yield the table as ``TrainDataChunk`` messages of about ``chunk_bytes`` each.

        Args:
            categorical: Columns always sent as level strings.
            chunk_bytes: Target encoded size of one chunk.
        """
        as_strings = set(categorical)
        # The first rows size the slices: 8 bytes a number, the text length a string.
        sample = next(self.read(256), None)
        if sample is None:
            return
        step = _rows_per_chunk(sample, as_strings, chunk_bytes)
        for block in self.read(step):
            yield from _encode(block, as_strings)


def _cell_bytes(values: Any, as_string: bool) -> float:
    """Estimated encoded bytes per cell of one column slice."""
    if not as_string:
        try:
            np.asarray(values, dtype=np.float64)
            return 8.0
        except (TypeError, ValueError):
            pass
    sample = [str(v) for v in list(values)[:256]]
    return 3.0 + (sum(len(s.encode()) for s in sample) / max(len(sample), 1))


def _rows_per_chunk(block: Mapping[str, Any], as_strings: set[str], chunk_bytes: int) -> int:
    per_row = sum(_cell_bytes(values, name in as_strings) for name, values in block.items())
    return max(1, int(chunk_bytes // max(per_row, 1.0)))


def _column(name: str, values: Any, as_string: bool) -> inference_pb2.Column:
    if not as_string:
        try:
            numbers = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            pass
        else:
            return inference_pb2.Column(name=name, numbers=numbers.reshape(-1).tolist())
    return inference_pb2.Column(name=name, strings=["" if v is None else str(v) for v in values])


def _encode(block: Mapping[str, Any], as_strings: set[str]) -> Iterator[inference_pb2.TrainDataChunk]:
    chunk = inference_pb2.TrainDataChunk(
        columns=[_column(name, values, name in as_strings) for name, values in block.items()]
    )
    n = len(next(iter(block.values()))) if block else 0
    if chunk.ByteSize() > _HARD_LIMIT_BYTES and n > 1:
        half = n // 2
        yield from _encode({k: v[:half] for k, v in block.items()}, as_strings)
        yield from _encode({k: v[half:] for k, v in block.items()}, as_strings)
        return
    yield chunk


def mapping_table(data: Mapping[str, Any]) -> Table:
    """A table from ``{column name: values}`` (lists, tuples or 1-D numpy arrays).

    Raises:
        InvalidArgumentError: No columns, a column that is not 1-D, or columns of different lengths.

    Example:
        >>> table = mapping_table({"x": [0.0, 1.0], "theme": ["ice", "lava"]})
        >>> table.rows, table.columns
        (2, ('x', 'theme'))
    """
    if not data:
        raise InvalidArgumentError("the training table has no columns", field="data")
    columns: dict[str, Any] = {}
    for name, values in data.items():
        array = values if isinstance(values, np.ndarray) else np.asarray(list(values), dtype=object)
        if array.ndim != 1:
            raise InvalidArgumentError(f"column {name!r} must be 1-D, got shape {array.shape}", field=str(name))
        columns[str(name)] = array
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise InvalidArgumentError(f"columns differ in length: {lengths}", field="data")
    rows = next(iter(lengths.values()))

    def read(step: int) -> Iterator[dict[str, Any]]:
        for start in range(0, rows, step):
            yield {name: values[start : start + step] for name, values in columns.items()}

    return Table(tuple(columns), rows, "table", read)


def csv_table(path: str | Path) -> Table:
    """A table from a CSV file with a header row, read lazily slice by slice.

    Raises:
        InvalidArgumentError: The file cannot be read, is empty, or a line has the wrong
            number of cells (the message gives the line number).
    """
    path = Path(path)
    rows = 0
    # One pass up front counts the rows (for progress) and checks every line's
    # width, so streaming never fails half-way on a malformed file.
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise InvalidArgumentError(f"{path}: empty file, expected a header row", field="data")
            for line in reader:
                if len(line) != len(header):
                    raise InvalidArgumentError(
                        f"{path} line {reader.line_num}: {len(line)} cells, the header has {len(header)}",
                        field="data",
                    )
                rows += 1
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc.strerror or exc}", field="data") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{path}: not a readable CSV file ({exc})", field="data") from None
    names = tuple(h.strip() for h in header)

    def read(step: int) -> Iterator[dict[str, Any]]:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            next(reader)
            block: list[list[str]] = []
            for line in reader:
                block.append(line)
                if len(block) >= step:
                    yield {name: [row[i] for row in block] for i, name in enumerate(names)}
                    block = []
            if block:
                yield {name: [row[i] for row in block] for i, name in enumerate(names)}

    return Table(names, rows, str(path), read)
