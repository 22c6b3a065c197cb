"""The input space one Invert run searches: bounds, feature kinds and fixed features.

:class:`InputSpace` resolves a model's :class:`~preimage.registry.schema.FeatureSchema`
and the request's bounds and fixed features into per-column arrays the engine
works with, and validates them (``InvalidArgumentError`` naming the request
field). Every pattern the engine returns satisfies :meth:`InputSpace.contains`
exactly, in float32: bounds, integer values, 0/1 binaries, exactly one 1 per
one-hot group and the fixed values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property

import numpy as np

from preimage.errors import InvalidArgumentError
from preimage.registry.schema import FeatureKind, FeatureSchema, InputFeature
from preimage.server.engine.types import BoundSpec, FixedSpec

__all__ = ["ColumnKind", "DiscreteFactor", "InputSpace"]

# Integers above 2**24 are not all representable in float32, the model's input type.
_MAX_INTEGER = 2**24
# Spaces with at most this many discrete points (and no free continuous column) are enumerated.
MAX_ENUMERATION = 2**20


class ColumnKind(IntEnum):
    """Type of one model input column."""

    CONTINUOUS = 0
    INTEGER = 1
    BINARY = 2
    ONE_HOT = 3


@dataclass(frozen=True)
class DiscreteFactor:
    """A free (not fixed) discrete feature: the unit the enumeration and the local search change.

    Attributes:
        feature: Feature name.
        kind: ``INTEGER``, ``BINARY`` or ``ONE_HOT`` (a categorical group).
        columns: Model input columns it spans (one, or the group's one-hot columns).
        low: Smallest value (integer features; 0 otherwise).
        levels: Number of values it takes (levels of a group, ``high - low + 1`` for integers).
    """

    feature: str
    kind: ColumnKind
    columns: tuple[int, ...]
    low: int
    levels: int


@dataclass(frozen=True, eq=False)
class InputSpace:
    """Per-column constraints of one Invert run (``d`` model input columns).

    Build it with :meth:`from_schema`. Arrays are read-only.

    Attributes:
        schema: The model's feature schema.
        lower: ``d`` float32 lower bounds, each the smallest float32 at or above the requested
            bound (0 for binary and one-hot columns; the fixed value for fixed columns).
        upper: ``d`` float32 upper bounds, each the largest float32 at or below the requested bound.
        kinds: ``d`` :class:`ColumnKind` codes (int8).
        fixed: ``d`` booleans, True for columns of fixed features.
        fixed_values: ``d`` float32 values of fixed columns (0 elsewhere).
        groups: Column indices of each categorical feature's one-hot group, fixed or not.
        factors: The free discrete features.
        infeasible: Why the constraints admit no input at all, or ``None``.

    Example:
        >>> schema = FeatureSchema.from_dict({"inputs": [
        ...     {"name": "speed"}, {"name": "walls", "kind": "integer", "min": 0, "max": 3},
        ...     {"name": "theme", "kind": "categorical", "levels": ["ice", "lava"]}]})
        >>> space = InputSpace.from_schema(schema, bounds=(BoundSpec(None, 0.0, 1.0),),
        ...                                fixed=(FixedSpec("theme", level="lava"),))
        >>> space.width, space.bounds.shape, space.free_continuous.tolist()
        (4, (2, 4), [True, False, False, False])
    """

    schema: FeatureSchema
    lower: np.ndarray
    upper: np.ndarray
    kinds: np.ndarray
    fixed: np.ndarray
    fixed_values: np.ndarray
    groups: tuple[tuple[int, ...], ...]
    factors: tuple[DiscreteFactor, ...]
    infeasible: str | None = None

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_schema(
        cls,
        schema: FeatureSchema,
        bounds: Sequence[BoundSpec] = (),
        fixed: Sequence[FixedSpec] = (),
    ) -> InputSpace:
        """Resolve the schema's bounds, the request's bounds and fixed features into a space.

        An unnamed :class:`BoundSpec` applies to every continuous and integer feature; named
        ones apply after all unnamed ones, whatever their order, and override them. Request
        bounds override the schema's.

        Args:
            schema: The model's feature schema.
            bounds: Request bounds (field ``bounds[i]``).
            fixed: Features held at one value (field ``fixed_features[i]``).

        Returns:
            The space. When an integer feature's bounds hold no integer (or a continuous
            feature's hold no float32 number) the space is returned with ``infeasible`` set:
            Invert reports that as a result, not an error.

        Raises:
            InvalidArgumentError: A bound is not finite, has its lower end above its upper end,
                names an unknown feature or a binary/categorical one; a fixed feature is unknown,
                repeated, out of its bounds, not an integer / 0 or 1 / a known level as its kind
                needs; or a continuous or integer feature that is not fixed has no finite bounds
                from the schema or the request (the message names them).
        """
        features = schema.inputs
        names = [f.name for f in features]
        index = {name: i for i, name in enumerate(names)}
        lo = [math.nan if f.min is None else float(f.min) for f in features]
        hi = [math.nan if f.max is None else float(f.max) for f in features]
        numeric = [f.kind in (FeatureKind.CONTINUOUS, FeatureKind.INTEGER) for f in features]

        ordered = [(i, b) for i, b in enumerate(bounds) if b.feature is None]
        ordered += [(i, b) for i, b in enumerate(bounds) if b.feature is not None]
        for i, bound in ordered:
            where = f"bounds[{i}]"
            if not (math.isfinite(bound.lower) and math.isfinite(bound.upper)):
                raise InvalidArgumentError(
                    f"{where}: bounds must be finite, got [{bound.lower}, {bound.upper}]", field=where
                )
            if bound.lower > bound.upper:
                label = f" for feature {bound.feature!r}" if bound.feature else ""
                raise InvalidArgumentError(
                    f"{where}: lower bound {bound.lower} is above upper bound {bound.upper}{label}", field=where
                )
            if bound.feature is None:
                targets = [k for k in range(len(features)) if numeric[k]]
            else:
                if bound.feature not in index:
                    raise InvalidArgumentError(
                        f"{where}: no input feature named {bound.feature!r}; features are {names}", field=where
                    )
                k = index[bound.feature]
                if not numeric[k]:
                    raise InvalidArgumentError(
                        f"{where}: feature {bound.feature!r} is {features[k].kind.value} and takes no bounds",
                        field=where,
                    )
                targets = [k]
            for k in targets:
                lo[k], hi[k] = float(bound.lower), float(bound.upper)

        fixed_by_feature: dict[int, float | str] = {}
        for i, item in enumerate(fixed):
            where = f"fixed_features[{i}]"
            if item.feature not in index:
                raise InvalidArgumentError(
                    f"{where}: no input feature named {item.feature!r}; features are {names}", field=where
                )
            k = index[item.feature]
            if k in fixed_by_feature:
                raise InvalidArgumentError(f"{where}: feature {item.feature!r} is fixed twice", field=where)
            fixed_by_feature[k] = _fixed_value(features[k], item, lo[k], hi[k], where)

        unbounded = [
            names[k]
            for k in range(len(features))
            if numeric[k] and k not in fixed_by_feature and not (math.isfinite(lo[k]) and math.isfinite(hi[k]))
        ]
        if unbounded:
            raise InvalidArgumentError(
                f"Invert needs finite bounds for every continuous or integer feature that is not fixed; "
                f"none given for {unbounded}: pass bounds for them (or one range for all)",
                field="bounds",
            )
        huge = [
            names[k]
            for k, f in enumerate(features)
            if f.kind is FeatureKind.INTEGER
            and k not in fixed_by_feature
            and max(abs(lo[k]), abs(hi[k])) > _MAX_INTEGER
        ]
        if huge:
            raise InvalidArgumentError(
                f"integer features {huge} have bounds beyond ±2^24, where float32 inputs skip integers", field="bounds"
            )
        return cls._build(schema, lo, hi, fixed_by_feature)

    @classmethod
    def _build(
        cls, schema: FeatureSchema, lo: list[float], hi: list[float], fixed_by_feature: dict[int, float | str]
    ) -> InputSpace:
        d = schema.input_width
        lower = np.zeros(d, dtype=np.float32)
        upper = np.ones(d, dtype=np.float32)
        kinds = np.zeros(d, dtype=np.int8)
        fixed_mask = np.zeros(d, dtype=bool)
        fixed_values = np.zeros(d, dtype=np.float32)
        groups: list[tuple[int, ...]] = []
        factors: list[DiscreteFactor] = []
        infeasible: str | None = None
        col = 0
        for k, feature in enumerate(schema.inputs):
            cols = tuple(range(col, col + feature.width))
            col += feature.width
            value = fixed_by_feature.get(k)
            if feature.kind is FeatureKind.CATEGORICAL:
                kinds[list(cols)] = ColumnKind.ONE_HOT
                groups.append(cols)
                if value is None:
                    factors.append(DiscreteFactor(feature.name, ColumnKind.ONE_HOT, cols, 0, len(cols)))
                else:
                    level = feature.levels.index(str(value))
                    fixed_mask[list(cols)] = True
                    fixed_values[list(cols)] = 0.0
                    fixed_values[cols[level]] = 1.0
                    lower[list(cols)] = upper[list(cols)] = fixed_values[list(cols)]
                continue
            c = cols[0]
            if feature.kind is FeatureKind.BINARY:
                kinds[c] = ColumnKind.BINARY
                if value is None:
                    factors.append(DiscreteFactor(feature.name, ColumnKind.BINARY, cols, 0, 2))
            elif feature.kind is FeatureKind.INTEGER:
                kinds[c] = ColumnKind.INTEGER
                if value is None:
                    low, high = math.ceil(lo[k]), math.floor(hi[k])
                    lower[c], upper[c] = low, high
                    if low > high:
                        infeasible = infeasible or (
                            f"integer feature {feature.name!r} has bounds [{lo[k]}, {hi[k]}], which hold no integer"
                        )
                        upper[c] = low
                    else:
                        factors.append(DiscreteFactor(feature.name, ColumnKind.INTEGER, cols, low, high - low + 1))
            else:
                kinds[c] = ColumnKind.CONTINUOUS
                if value is None:
                    lower[c], upper[c] = _float32_inside(lo[k], hi[k])
                    if lower[c] > upper[c]:
                        infeasible = infeasible or (
                            f"continuous feature {feature.name!r} has bounds [{lo[k]}, {hi[k]}], "
                            "which hold no float32 number"
                        )
                        upper[c] = lower[c]
            if value is not None:
                fixed_mask[c] = True
                fixed_values[c] = float(value)
                lower[c] = upper[c] = fixed_values[c]
        for array in (lower, upper, kinds, fixed_mask, fixed_values):
            array.setflags(write=False)
        return cls(
            schema=schema,
            lower=lower,
            upper=upper,
            kinds=kinds,
            fixed=fixed_mask,
            fixed_values=fixed_values,
            groups=tuple(groups),
            factors=tuple(factors),
            infeasible=infeasible,
        )

    # -- layout ---------------------------------------------------------------------------

    @property
    def width(self) -> int:
        """Number of model input columns ``d``."""
        return int(self.lower.shape[0])

    @property
    def bounds(self) -> np.ndarray:
        """``2 x d`` float32 bounds (row 0 lower, row 1 upper), BoTorch's layout."""
        return np.stack([self.lower, self.upper])

    # Computed once per space (spaces are immutable and cached per model and constraint set).
    @cached_property
    def free_continuous(self) -> np.ndarray:
        """``d`` booleans: continuous columns that are not fixed (the ones Newton steps move)."""
        return _read_only((self.kinds == ColumnKind.CONTINUOUS) & ~self.fixed)

    @cached_property
    def free_numeric(self) -> np.ndarray:
        """``d`` booleans: continuous and integer columns that are not fixed."""
        return _read_only(((self.kinds == ColumnKind.CONTINUOUS) | (self.kinds == ColumnKind.INTEGER)) & ~self.fixed)

    @cached_property
    def discrete_size(self) -> int | None:
        """Number of points of the space when every free column is discrete, else ``None``."""
        if self.free_continuous.any():
            return None
        return math.prod(f.levels for f in self.factors)

    @cached_property
    def enumerable(self) -> bool:
        """Whether the space is all discrete with at most :data:`MAX_ENUMERATION` points."""
        size = self.discrete_size
        return size is not None and size <= MAX_ENUMERATION

    def column_names(self) -> list[str]:
        """A readable name per column (``theme=ice`` for one-hot columns)."""
        out: list[str] = []
        for feature in self.schema.inputs:
            if feature.kind is FeatureKind.CATEGORICAL:
                out.extend(f"{feature.name}={level}" for level in feature.levels)
            else:
                out.append(feature.name)
        return out

    # -- points ---------------------------------------------------------------------------

    def decode(self, index: np.ndarray) -> np.ndarray:
        """Rows of an all-discrete space by their mixed-radix index (first factor fastest).

        Args:
            index: ``k`` integers in ``[0, discrete_size)``.

        Returns:
            ``k x d`` float32 rows; fixed columns hold their values.
        """
        index = np.asarray(index, dtype=np.int64)
        X = np.broadcast_to(self.fixed_values, (index.shape[0], self.width)).copy()
        rest = index.copy()
        rows = np.arange(index.shape[0])
        for factor in self.factors:
            digit = rest % factor.levels
            rest //= factor.levels
            if factor.kind is ColumnKind.ONE_HOT:
                X[:, list(factor.columns)] = 0.0
                X[rows, np.asarray(factor.columns)[digit]] = 1.0
            else:
                X[:, factor.columns[0]] = (factor.low + digit).astype(np.float32)
        return X

    def digits(self, X: np.ndarray) -> np.ndarray:
        """The value index of every free discrete factor in rows ``X``: ``k x len(factors)`` int64."""
        out = np.zeros((X.shape[0], len(self.factors)), dtype=np.int64)
        for j, factor in enumerate(self.factors):
            if factor.kind is ColumnKind.ONE_HOT:
                out[:, j] = np.argmax(X[:, list(factor.columns)], axis=1)
            else:
                out[:, j] = np.rint(X[:, factor.columns[0]]).astype(np.int64) - factor.low
        return out

    def contains(self, X: np.ndarray) -> np.ndarray:
        """Which rows satisfy every constraint exactly (as float32 values).

        Args:
            X: ``k x d`` rows.

        Returns:
            ``k`` booleans: finite, inside the bounds, integers where integer, 0/1 where binary,
            exactly one 1 per one-hot group, fixed columns equal to their values.
        """
        X = np.asarray(X, dtype=np.float32)
        ok = np.isfinite(X).all(axis=1)
        ok &= ((self.lower <= X) & (self.upper >= X)).all(axis=1)
        discrete = self.kinds != ColumnKind.CONTINUOUS
        ok &= (X[:, discrete] == np.rint(X[:, discrete])).all(axis=1)
        for cols in self.groups:
            ok &= X[:, list(cols)].sum(axis=1) == 1.0
        ok &= (X[:, self.fixed] == self.fixed_values[self.fixed]).all(axis=1)
        return np.asarray(ok, dtype=bool)


def _float32_inside(lo: float, hi: float) -> tuple[np.float32, np.float32]:
    """The smallest float32 at or above ``lo`` and the largest at or below ``hi``."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if float(lo32) < lo:
        lo32 = np.nextafter(lo32, np.float32(np.inf))
    if float(hi32) > hi:
        hi32 = np.nextafter(hi32, np.float32(-np.inf))
    return lo32, hi32


def _fixed_value(feature: InputFeature, item: FixedSpec, lo: float, hi: float, where: str) -> float | str:
    """Check one fixed feature against its kind and bounds; return its value (a level for categoricals)."""
    name = feature.name
    if feature.kind is FeatureKind.CATEGORICAL:
        if item.level is None:
            raise InvalidArgumentError(
                f"{where}: categorical feature {name!r} is fixed by level, one of {list(feature.levels)}",
                field=where,
            )
        if item.level not in feature.levels:
            raise InvalidArgumentError(
                f"{where}: {item.level!r} is not a level of {name!r}; levels are {list(feature.levels)}", field=where
            )
        return item.level
    if item.value is None:
        raise InvalidArgumentError(f"{where}: feature {name!r} is {feature.kind.value}: give a number", field=where)
    value = float(item.value)
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{where}: value for {name!r} must be finite, got {value}", field=where)
    if feature.kind is FeatureKind.BINARY:
        if value not in (0.0, 1.0):
            raise InvalidArgumentError(f"{where}: binary feature {name!r} takes 0 or 1, got {value}", field=where)
        return value
    if feature.kind is FeatureKind.INTEGER:
        if value != math.floor(value):
            raise InvalidArgumentError(f"{where}: integer feature {name!r} needs an integer, got {value}", field=where)
        if abs(value) > _MAX_INTEGER:
            raise InvalidArgumentError(
                f"{where}: integer {value} for {name!r} is beyond ±2^24, which float32 cannot hold exactly",
                field=where,
            )
    elif not math.isfinite(float(np.float32(value))):
        raise InvalidArgumentError(f"{where}: value {value} for {name!r} overflows float32", field=where)
    if (math.isfinite(lo) and value < lo) or (math.isfinite(hi) and value > hi):
        raise InvalidArgumentError(
            f"{where}: value {value} for {name!r} is outside its bounds [{lo}, {hi}]", field=where
        )
    if feature.kind is FeatureKind.CONTINUOUS:
        # The model sees float32: keep the rounded value inside the bounds.
        lo32, hi32 = _float32_inside(lo if math.isfinite(lo) else -math.inf, hi if math.isfinite(hi) else math.inf)
        return float(np.clip(np.float32(value), lo32, hi32))
    return value


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array
