"""Feature schemas: names, types and ranges of a model's inputs and outputs.

A schema is stored with every model and used by Predict (rows by feature name)
and Invert (bounds, integer/binary/categorical constraints). Its JSON form::

    {"inputs": [
        {"name": "speed", "kind": "continuous", "min": 0.0, "max": 1.0},
        {"name": "walls", "kind": "integer", "min": 0, "max": 12},
        {"name": "has_boss", "kind": "binary"},
        {"name": "theme", "kind": "categorical", "levels": ["ice", "lava", "forest"]}],
     "outputs": [{"name": "difficulty"}]}

A categorical feature spans ``len(levels)`` consecutive one-hot columns; every
other kind spans one column. Plain data, no torch: the engine, the registry and
the transport all share these types.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from preimage.errors import InvalidArgumentError

__all__ = [
    "Column",
    "DataStatistics",
    "FeatureKind",
    "FeatureSchema",
    "InputFeature",
    "OutputFeature",
    "SchemaError",
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")


class SchemaError(InvalidArgumentError):
    """A schema is malformed or does not fit its model."""

    def __init__(self, message: str, *, field: str | None = "schema") -> None:
        super().__init__(f"invalid schema: {message}", field=field)


class FeatureKind(str, Enum):
    """How an input feature is typed."""

    CONTINUOUS = "continuous"
    INTEGER = "integer"
    BINARY = "binary"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class InputFeature:
    """One input feature.

    Attributes:
        name: Unique feature name.
        kind: Feature type.
        min: Lower bound (continuous, integer); ``None`` = unbounded.
        max: Upper bound (continuous, integer); ``None`` = unbounded.
        levels: Level names of a categorical feature, in column order.
    """

    name: str
    kind: FeatureKind = FeatureKind.CONTINUOUS
    min: float | None = None
    max: float | None = None
    levels: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        """Number of model input columns the feature spans."""
        return len(self.levels) if self.kind is FeatureKind.CATEGORICAL else 1

    @property
    def bounded(self) -> bool:
        """Whether every column of the feature has finite bounds."""
        if self.kind in (FeatureKind.BINARY, FeatureKind.CATEGORICAL):
            return True
        return self.min is not None and self.max is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this feature."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind.value}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.levels:
            out["levels"] = list(self.levels)
        return out

    def validate(self, where: str) -> None:
        """Raise :class:`SchemaError` when the feature is inconsistent."""
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SchemaError(f"{where}: name {self.name!r} must match {_NAME.pattern}")
        for label, value in (("min", self.min), ("max", self.max)):
            if value is not None and not math.isfinite(value):
                raise SchemaError(f"{where} ({self.name}): {label} must be finite, got {value}")
        if self.kind in (FeatureKind.CONTINUOUS, FeatureKind.INTEGER):
            if self.levels:
                raise SchemaError(f"{where} ({self.name}): only categorical features have levels")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise SchemaError(f"{where} ({self.name}): min {self.min} is above max {self.max}")
            if self.kind is FeatureKind.INTEGER:
                lo = math.ceil(self.min) if self.min is not None else None
                hi = math.floor(self.max) if self.max is not None else None
                if lo is not None and hi is not None and lo > hi:
                    raise SchemaError(f"{where} ({self.name}): no integer lies in [{self.min}, {self.max}]")
        elif self.kind is FeatureKind.BINARY:
            if self.levels or self.min is not None or self.max is not None:
                raise SchemaError(f"{where} ({self.name}): a binary feature takes no min, max or levels")
        elif self.kind is FeatureKind.CATEGORICAL:
            if self.min is not None or self.max is not None:
                raise SchemaError(f"{where} ({self.name}): a categorical feature takes no min or max")
            if len(self.levels) < 2:
                raise SchemaError(f"{where} ({self.name}): a categorical feature needs at least 2 levels")
            if len(set(self.levels)) != len(self.levels):
                raise SchemaError(f"{where} ({self.name}): levels must be unique, got {list(self.levels)}")
            if any(not isinstance(level, str) or not level for level in self.levels):
                raise SchemaError(f"{where} ({self.name}): levels must be non-empty strings")


@dataclass(frozen=True)
class OutputFeature:
    """One model output.

    Attributes:
        name: Unique output name.
        spread_of: For the spread output of a deep ensemble, the name of the output whose
            spread (standard deviation across the members) it is; ``None`` for an ordinary output.
    """

    name: str
    spread_of: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this output (``spread_of`` only when set, so older readers see no change)."""
        out: dict[str, Any] = {"name": self.name}
        if self.spread_of is not None:
            out["spread_of"] = self.spread_of
        return out


@dataclass(frozen=True)
class Column:
    """One model input column and the feature it belongs to.

    Attributes:
        index: Column index in the model input.
        feature: Index of the owning feature in ``FeatureSchema.inputs``.
        level: For a categorical feature, the level this one-hot column stands for.
    """

    index: int
    feature: int
    level: str | None = None


@dataclass(frozen=True)
class FeatureSchema:
    """Names, types and ranges of a model's inputs and outputs.

    Example:
        >>> schema = FeatureSchema.from_dict({
        ...     "inputs": [{"name": "speed", "min": 0, "max": 1},
        ...                {"name": "theme", "kind": "categorical", "levels": ["ice", "lava"]}],
        ...     "outputs": [{"name": "difficulty"}]})
        >>> schema.input_width
        3
    """

    inputs: tuple[InputFeature, ...]
    outputs: tuple[OutputFeature, ...] = field(default=())

    # -- construction -----------------------------------------------------------------

    @classmethod
    def default(cls, input_width: int, output_width: int) -> FeatureSchema:
        """The schema of a model registered without one: unbounded continuous ``x0…``, outputs ``y0…``."""
        return cls(
            inputs=tuple(InputFeature(name=f"x{i}") for i in range(input_width)),
            outputs=tuple(OutputFeature(name=f"y{i}") for i in range(output_width)),
        )

    @classmethod
    def uniform_bounds(cls, input_width: int, output_width: int, lower: float, upper: float) -> FeatureSchema:
        """A default schema whose continuous features all lie in ``[lower, upper]``."""
        return cls(
            inputs=tuple(InputFeature(name=f"x{i}", min=lower, max=upper) for i in range(input_width)),
            outputs=tuple(OutputFeature(name=f"y{i}") for i in range(output_width)),
        ).validated()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        """Parse the JSON form, validating it. Raises :class:`SchemaError`."""
        if not isinstance(data, Mapping):
            raise SchemaError(f"expected a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"inputs", "outputs", "statistics"}
        if unknown:
            raise SchemaError(f"unknown keys {sorted(unknown)}; expected 'inputs' and 'outputs'")
        raw_inputs = data.get("inputs")
        if not isinstance(raw_inputs, list) or not raw_inputs:
            raise SchemaError("'inputs' must be a non-empty list")
        inputs = []
        for i, item in enumerate(raw_inputs):
            where = f"inputs[{i}]"
            if not isinstance(item, Mapping):
                raise SchemaError(f"{where} must be an object")
            extra = set(item) - {"name", "kind", "min", "max", "levels"}
            if extra:
                raise SchemaError(f"{where}: unknown keys {sorted(extra)}")
            try:
                kind = FeatureKind(item.get("kind", "continuous"))
            except ValueError:
                raise SchemaError(
                    f"{where}: kind {item.get('kind')!r} is not one of {[k.value for k in FeatureKind]}"
                ) from None
            levels = item.get("levels", ())
            if not isinstance(levels, (list, tuple)):
                raise SchemaError(f"{where}: levels must be a list of strings")
            inputs.append(
                InputFeature(
                    name=item.get("name", f"x{i}"),
                    kind=kind,
                    min=_optional_float(item.get("min"), f"{where}.min"),
                    max=_optional_float(item.get("max"), f"{where}.max"),
                    levels=tuple(levels),
                )
            )
        raw_outputs = data.get("outputs", [])
        if not isinstance(raw_outputs, list):
            raise SchemaError("'outputs' must be a list")
        outputs = []
        for i, item in enumerate(raw_outputs):
            if not isinstance(item, Mapping) or set(item) - {"name", "spread_of"}:
                raise SchemaError(f"outputs[{i}] must be an object with a 'name' (and optionally 'spread_of')")
            outputs.append(OutputFeature(name=item.get("name", f"y{i}"), spread_of=item.get("spread_of")))
        return cls(inputs=tuple(inputs), outputs=tuple(outputs)).validated()

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureSchema:
        """Parse a JSON document. Raises :class:`SchemaError`."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SchemaError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> FeatureSchema:
        """Read a JSON file. Raises :class:`SchemaError`."""
        return cls.from_json(Path(path).read_bytes())

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the schema."""
        return {"inputs": [f.to_dict() for f in self.inputs], "outputs": [o.to_dict() for o in self.outputs]}

    def to_json(self) -> str:
        """Compact JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    # -- validation ---------------------------------------------------------------------

    def validated(self) -> FeatureSchema:
        """Return ``self`` after checking names, kinds and bounds. Raises :class:`SchemaError`."""
        if not self.inputs:
            raise SchemaError("at least one input feature is required")
        for i, feature in enumerate(self.inputs):
            feature.validate(f"inputs[{i}]")
        names = [f.name for f in self.inputs]
        duplicate = sorted({n for n in names if names.count(n) > 1})
        if duplicate:
            raise SchemaError(f"input names must be unique; repeated: {duplicate}")
        out_names = [o.name for o in self.outputs]
        for i, name in enumerate(out_names):
            if not isinstance(name, str) or not _NAME.match(name):
                raise SchemaError(f"outputs[{i}]: name {name!r} must match {_NAME.pattern}")
        if len(set(out_names)) != len(out_names):
            raise SchemaError("output names must be unique")
        spread_names = [o.name for o in self.outputs if o.spread_of is not None]
        for i, output in enumerate(self.outputs):
            if output.spread_of is None:
                continue
            if output.spread_of not in out_names or output.spread_of in spread_names:
                raise SchemaError(
                    f"outputs[{i}] ({output.name}): spread_of {output.spread_of!r} must name an output "
                    "that is not itself a spread"
                )
        spread_of = [o.spread_of for o in self.outputs if o.spread_of is not None]
        if len(set(spread_of)) != len(spread_of):
            raise SchemaError("each output has at most one spread output")
        return self

    def fit(self, input_width: int, output_width: int) -> FeatureSchema:
        """Check the schema against a model's widths; fill in default output names.

        Raises:
            SchemaError: The total input width or the number of outputs differs from the model's,
                naming both numbers.
        """
        self.check_input_width(input_width)
        if not self.outputs:
            return FeatureSchema(self.inputs, tuple(OutputFeature(f"y{i}") for i in range(output_width)))
        if len(self.outputs) != output_width:
            raise SchemaError(f"the schema names {len(self.outputs)} outputs but the model has {output_width} outputs")
        return self

    def check_input_width(self, input_width: int) -> None:
        """Validate the schema and check its inputs span ``input_width`` columns (the half of
        :meth:`fit` that can run before the model's output width is known).

        Raises:
            SchemaError: Malformed, or the widths differ (naming both numbers).
        """
        self.validated()
        if self.input_width != input_width:
            raise SchemaError(
                f"the schema's inputs span {self.input_width} columns but the model takes {input_width} input columns"
            )

    def with_default_bounds(self, lower: float, upper: float) -> FeatureSchema:
        """A copy where every continuous or integer feature's missing ``min`` becomes ``lower`` and
        missing ``max`` becomes ``upper`` (bounds the schema gives are kept).

        Raises:
            SchemaError: ``lower``/``upper`` are not finite or ``lower > upper`` (field ``default_bounds``),
                or a filled-in feature ends up inconsistent (e.g. its own ``min`` above ``upper``).
        """
        if not (math.isfinite(lower) and math.isfinite(upper)):
            raise SchemaError(f"default bounds must be finite, got [{lower}, {upper}]", field="default_bounds")
        if lower > upper:
            raise SchemaError(f"default lower bound {lower} is above upper bound {upper}", field="default_bounds")
        inputs = tuple(
            replace(
                f,
                min=float(lower) if f.min is None else f.min,
                max=float(upper) if f.max is None else f.max,
            )
            if f.kind in (FeatureKind.CONTINUOUS, FeatureKind.INTEGER)
            else f
            for f in self.inputs
        )
        return FeatureSchema(inputs, self.outputs).validated()

    # -- layout -------------------------------------------------------------------------

    @property
    def input_width(self) -> int:
        """Total number of model input columns."""
        return sum(f.width for f in self.inputs)

    @property
    def output_width(self) -> int:
        """Number of outputs named by the schema."""
        return len(self.outputs)

    @property
    def spread_columns(self) -> tuple[int, ...]:
        """Indices of the spread outputs (``spread_of`` set), in output order; empty for most models."""
        return tuple(j for j, output in enumerate(self.outputs) if output.spread_of is not None)

    @property
    def columns(self) -> tuple[Column, ...]:
        """Every model input column, in order, with the feature it belongs to."""
        cols: list[Column] = []
        for fi, feature in enumerate(self.inputs):
            if feature.kind is FeatureKind.CATEGORICAL:
                cols.extend(Column(len(cols), fi, level) for level in feature.levels)
            else:
                cols.append(Column(len(cols), fi))
        return tuple(cols)

    def feature_columns(self, name: str) -> range:
        """The column indices of the feature ``name``. Raises :class:`SchemaError` if unknown."""
        start = 0
        for feature in self.inputs:
            if feature.name == name:
                return range(start, start + feature.width)
            start += feature.width
        raise SchemaError(f"no input feature named {name!r}; features are {self.feature_names}", field=None)

    def feature(self, name: str) -> InputFeature:
        """The input feature called ``name``. Raises :class:`SchemaError` if unknown."""
        for feature in self.inputs:
            if feature.name == name:
                return feature
        raise SchemaError(f"no input feature named {name!r}; features are {self.feature_names}", field=None)

    @property
    def feature_names(self) -> list[str]:
        """Input feature names in order."""
        return [f.name for f in self.inputs]

    def column_bounds(self) -> tuple[list[float], list[float]]:
        """Per-column lower and upper bounds; ``-inf``/``inf`` where unbounded, ``[0, 1]`` for one-hot and binary."""
        lower: list[float] = []
        upper: list[float] = []
        for feature in self.inputs:
            if feature.kind in (FeatureKind.BINARY, FeatureKind.CATEGORICAL):
                lower.extend([0.0] * feature.width)
                upper.extend([1.0] * feature.width)
            else:
                lower.append(-math.inf if feature.min is None else float(feature.min))
                upper.append(math.inf if feature.max is None else float(feature.max))
        return lower, upper

    @property
    def bounded(self) -> bool:
        """Whether every column has finite bounds (Invert then needs no bounds in the request)."""
        return all(f.bounded for f in self.inputs)


@dataclass(frozen=True)
class DataStatistics:
    """Statistics of the data a model was trained on, per input column.

    Attributes:
        rows: Number of training rows.
        mean: Per-column mean, length ``d`` (model input columns).
        covariance: ``d x d`` covariance, row-major, length ``d * d``.
        quantile_levels: Ascending levels in ``[0, 1]``.
        quantiles: ``d x len(quantile_levels)``, row-major.
    """

    rows: int
    mean: tuple[float, ...]
    covariance: tuple[float, ...]
    quantile_levels: tuple[float, ...] = ()
    quantiles: tuple[float, ...] = ()

    @property
    def width(self) -> int:
        """Number of input columns described."""
        return len(self.mean)

    def validated(self, input_width: int | None = None) -> DataStatistics:
        """Return ``self`` after checking shapes and values. Raises :class:`SchemaError`."""
        d = len(self.mean)
        where = "statistics"
        if self.rows < 1:
            raise SchemaError(f"{where}: rows must be positive, got {self.rows}", field=where)
        if input_width is not None and d != input_width:
            raise SchemaError(
                f"{where}: mean has {d} columns but the model takes {input_width} input columns", field=where
            )
        if len(self.covariance) != d * d:
            raise SchemaError(f"{where}: covariance needs {d * d} values, got {len(self.covariance)}", field=where)
        k = len(self.quantile_levels)
        if len(self.quantiles) != d * k:
            raise SchemaError(f"{where}: quantiles need {d * k} values, got {len(self.quantiles)}", field=where)
        if any(not 0.0 <= q <= 1.0 for q in self.quantile_levels) or list(self.quantile_levels) != sorted(
            self.quantile_levels
        ):
            raise SchemaError(f"{where}: quantile levels must ascend within [0, 1]", field=where)
        values: Sequence[float] = (*self.mean, *self.covariance, *self.quantiles)
        if any(not math.isfinite(v) for v in values):
            raise SchemaError(f"{where}: values must be finite", field=where)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "rows": self.rows,
            "mean": list(self.mean),
            "covariance": list(self.covariance),
            "quantile_levels": list(self.quantile_levels),
            "quantiles": list(self.quantiles),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataStatistics:
        """Parse the JSON form, validating shapes. Raises :class:`SchemaError`."""
        try:
            stats = cls(
                rows=int(data["rows"]),
                mean=tuple(float(v) for v in data["mean"]),
                covariance=tuple(float(v) for v in data["covariance"]),
                quantile_levels=tuple(float(v) for v in data.get("quantile_levels", ())),
                quantiles=tuple(float(v) for v in data.get("quantiles", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"statistics: malformed ({exc})", field="statistics") from None
        return stats.validated()


def _optional_float(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(f"{where} must be a number, got {value!r}")
    return float(value)
