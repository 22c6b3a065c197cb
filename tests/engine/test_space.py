"""InputSpace.from_schema: bounds precedence, fixed features, infeasibility and every error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from preimage.errors import InvalidArgumentError
from preimage.server.engine import BoundSpec, FixedSpec
from preimage.server.engine.space import ColumnKind
from tests.engine.helpers import space_of

SCHEMA: dict[str, Any] = {
    "inputs": [
        {"name": "speed", "min": 0.0, "max": 1.0},
        {"name": "walls", "kind": "integer", "min": 0, "max": 12},
        {"name": "boss", "kind": "binary"},
        {"name": "theme", "kind": "categorical", "levels": ["ice", "lava", "forest"]},
        {"name": "free"},
    ]
}


def test_layout_and_kinds() -> None:
    space = space_of(SCHEMA, bounds=(BoundSpec("free", -2.0, 3.0),))
    assert space.width == 7
    assert space.kinds.tolist() == [ColumnKind.CONTINUOUS, ColumnKind.INTEGER, ColumnKind.BINARY] + [
        ColumnKind.ONE_HOT
    ] * 3 + [ColumnKind.CONTINUOUS]
    assert space.bounds.shape == (2, 7)
    assert space.lower.tolist() == [0, 0, 0, 0, 0, 0, -2] and space.upper.tolist() == [1, 12, 1, 1, 1, 1, 3]
    assert space.groups == ((3, 4, 5),)
    assert [f.feature for f in space.factors] == ["walls", "boss", "theme"]
    assert space.discrete_size is None and not space.enumerable
    assert space.column_names()[3:6] == ["theme=ice", "theme=lava", "theme=forest"]


def test_unnamed_bounds_apply_first_and_named_ones_override_whatever_the_order() -> None:
    bounds = (BoundSpec("speed", 0.25, 0.5), BoundSpec(None, -1.0, 5.0), BoundSpec("walls", 2.0, 3.5))
    space = space_of(SCHEMA, bounds=bounds)
    assert space.lower[[0, 1, 6]].tolist() == [0.25, 2.0, -1.0]
    assert space.upper[[0, 1, 6]].tolist() == [0.5, 3.0, 5.0]  # integer bounds shrink to integers


def test_float32_bounds_lie_inside_the_requested_ones() -> None:
    space = space_of({"inputs": [{"name": "a", "min": 0.1, "max": 0.3}]})
    assert float(space.lower[0]) >= 0.1 and float(space.upper[0]) <= 0.3
    assert space.lower.dtype == np.float32


def test_fixed_features() -> None:
    fixed = (FixedSpec("speed", value=0.1), FixedSpec("theme", level="lava"), FixedSpec("boss", value=1.0))
    space = space_of(SCHEMA, bounds=(BoundSpec("free", 0, 1),), fixed=fixed)
    assert space.fixed.tolist() == [True, False, True, True, True, True, False]
    assert space.fixed_values[[2, 3, 4, 5]].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert float(space.fixed_values[0]) >= 0.1 or np.float32(0.1) == space.fixed_values[0]
    assert [f.feature for f in space.factors] == ["walls"]
    assert space.free_continuous.tolist() == [False] * 6 + [True]


def test_a_fixed_feature_needs_no_bounds() -> None:
    space = space_of(SCHEMA, fixed=(FixedSpec("free", value=123.0),))
    assert space.fixed_values[6] == 123.0


def test_all_discrete_space_enumerates_in_mixed_radix_order() -> None:
    schema = {
        "inputs": [
            {"name": "b", "kind": "binary"},
            {"name": "c", "kind": "categorical", "levels": ["x", "y"]},
            {"name": "k", "kind": "integer", "min": -1, "max": 1},
        ]
    }
    space = space_of(schema)
    assert space.discrete_size == 12 and space.enumerable
    rows = space.decode(np.arange(12))
    assert len({r.tobytes() for r in rows}) == 12
    assert rows[1].tolist() == [1, 1, 0, -1] and rows[2].tolist() == [0, 0, 1, -1] and rows[4].tolist() == [0, 1, 0, 0]
    assert (space.digits(rows) == np.array([[i % 2, (i // 2) % 2, i // 4] for i in range(12)])).all()
    assert space.contains(rows).all()


def test_contains_rejects_each_violation() -> None:
    space = space_of(SCHEMA, bounds=(BoundSpec("free", 0, 1),), fixed=(FixedSpec("free", value=0.5),))
    good = np.array([[0.5, 3, 1, 0, 1, 0, 0.5]], dtype=np.float32)
    assert space.contains(good).all()
    for col, value in [(0, 1.5), (1, 2.5), (1, 13), (2, 0.5), (3, 1.0), (4, 0.0), (6, 0.25), (0, np.nan)]:
        bad = good.copy()
        bad[0, col] = value
        assert not space.contains(bad).any(), (col, value)


@pytest.mark.parametrize(
    ("bounds", "fixed", "field", "fragment"),
    [
        ((BoundSpec("speed", 1.0, 0.0),), (), "bounds[0]", "lower bound 1.0 is above upper bound 0.0"),
        ((BoundSpec("free", 0, 1), BoundSpec(None, float("nan"), 1.0)), (), "bounds[1]", "finite"),
        ((BoundSpec("free", 0, float("inf")),), (), "bounds[0]", "finite"),
        ((BoundSpec("nope", 0, 1),), (), "bounds[0]", "no input feature named 'nope'"),
        ((BoundSpec("boss", 0, 1),), (), "bounds[0]", "binary and takes no bounds"),
        ((BoundSpec("theme", 0, 1),), (), "bounds[0]", "categorical and takes no bounds"),
        ((), (), "bounds", "['free']"),
        ((BoundSpec("free", 0, 1),), (FixedSpec("nope", value=1.0),), "fixed_features[0]", "no input feature"),
        ((BoundSpec("free", 0, 1),), (FixedSpec("speed", value=2.0),), "fixed_features[0]", "outside its bounds"),
        ((BoundSpec("free", 0, 1),), (FixedSpec("walls", value=2.5),), "fixed_features[0]", "needs an integer"),
        ((BoundSpec("free", 0, 1),), (FixedSpec("boss", value=0.5),), "fixed_features[0]", "takes 0 or 1"),
        ((BoundSpec("free", 0, 1),), (FixedSpec("theme", level="sand"),), "fixed_features[0]", "not a level"),
        ((BoundSpec("free", 0, 1),), (FixedSpec("theme", value=1.0),), "fixed_features[0]", "fixed by level"),
        ((BoundSpec("free", 0, 1),), (FixedSpec("speed", level="x"),), "fixed_features[0]", "give a number"),
        ((BoundSpec("free", 0, 1),), (FixedSpec("speed", value=float("nan")),), "fixed_features[0]", "finite"),
        (
            (BoundSpec("free", 0, 1),),
            (FixedSpec("speed", value=0.5), FixedSpec("speed", value=0.6)),
            "fixed_features[1]",
            "fixed twice",
        ),
        ((BoundSpec("free", 0, 1), BoundSpec("walls", 0, 1e9)), (), "bounds", "2^24"),
    ],
)
def test_invalid_constraints_name_the_field(
    bounds: tuple[BoundSpec, ...], fixed: tuple[FixedSpec, ...], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        space_of(SCHEMA, bounds=bounds, fixed=fixed)
    assert info.value.field == field
    assert fragment in info.value.message


def test_unbounded_features_are_all_named() -> None:
    schema = {"inputs": [{"name": "a"}, {"name": "b", "kind": "integer"}, {"name": "c", "min": 0, "max": 1}]}
    with pytest.raises(InvalidArgumentError, match=r"\['a', 'b'\]"):
        space_of(schema)


def test_integer_bounds_without_integers_make_the_space_infeasible() -> None:
    space = space_of(SCHEMA, bounds=(BoundSpec("free", 0, 1), BoundSpec("walls", 0.2, 0.8)))
    assert space.infeasible is not None and "'walls'" in space.infeasible and "no integer" in space.infeasible
