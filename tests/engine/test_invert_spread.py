"""Invert on a model with spread outputs: targets on the means, ``max_uncertainty`` on the spreads.

The model is linear with a known preimage: output 0 (the "mean") is ``x0 + x1``, output 1
(its "spread") is ``0.5 * x0``, so ``spread <= U`` is ``x0 <= 2U``. Patterns are checked
with onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest

from preimage.errors import InvalidArgumentError
from preimage.server.engine.invert import invert
from preimage.server.engine.types import InvertMode, InvertStatus
from tests.engine.helpers import check_constraints, module_of, run_invert, space_of, spec
from tests.models import linear_onnx, onnx_eval

MODEL = linear_onnx(np.array([[1.0, 1.0], [0.5, 0.0]]), [0.0, 0.0])
SCHEMA = {
    "inputs": [{"name": "a", "min": 0.0, "max": 1.0}, {"name": "b", "min": 0.0, "max": 1.0}],
    "outputs": [{"name": "y"}, {"name": "y_spread", "spread_of": "y"}],
}
SPREADS = (1,)


@pytest.mark.parametrize("mode", [InvertMode.SAMPLE, InvertMode.OPTIMIZE])
def test_max_uncertainty_bounds_every_spread(mode: InvertMode) -> None:
    space = space_of(SCHEMA)
    result = run_invert(MODEL, space, spec(1.0, n=300, tolerance=1e-3, mode=mode, max_uncertainty=0.1), spreads=SPREADS)
    assert result.summary.status is InvertStatus.COMPLETE
    F = onnx_eval(MODEL, result.X)
    assert np.all(np.abs(F[:, 0] - 1.0) <= 1e-3) and np.all(F[:, 1] <= 0.1)
    check_constraints(SCHEMA, result.X)
    assert result.F.shape == (300, 2)  # the means, then the spreads
    np.testing.assert_allclose(result.F, F, atol=1e-6)
    if mode is InvertMode.SAMPLE:
        # The uniform prior restricted to {x0 + x1 = 1, x0 <= 0.2}: x0 uniform on [0, 0.2].
        assert result.X[:, 0].max() <= 0.2 and abs(float(np.mean(result.X[:, 0])) - 0.1) < 0.02


def test_without_max_uncertainty_the_spread_is_neither_searched_nor_returned() -> None:
    result = run_invert(MODEL, space_of(SCHEMA), spec(1.0, n=300, tolerance=1e-3), spreads=SPREADS)
    assert result.summary.status is InvertStatus.COMPLETE and result.F.shape == (300, 1)
    F = onnx_eval(MODEL, result.X)
    assert np.all(np.abs(F[:, 0] - 1.0) <= 1e-3)
    assert F[:, 1].max() > 0.3  # the level set's x0 spans [0, 1]: spreads up to 0.5


def test_unreachable_spread_limit_is_unreachable_and_says_why() -> None:
    # x0 + x1 = 1.9 needs x0 >= 0.9, i.e. a spread >= 0.45.
    invert_spec = spec(1.9, n=10, tolerance=1e-3, mode=InvertMode.OPTIMIZE, max_uncertainty=0.2)
    result = run_invert(MODEL, space_of(SCHEMA), invert_spec, spreads=SPREADS)
    assert result.summary.status is InvertStatus.UNREACHABLE and result.summary.returned == 0
    assert "max_uncertainty = 0.2" in result.summary.message


@pytest.mark.parametrize(
    ("options", "spreads", "field"),
    [
        ({"max_uncertainty": 0.1}, (), "max_uncertainty"),
        ({"max_uncertainty": float("nan")}, SPREADS, "max_uncertainty"),
        ({"max_uncertainty": float("inf")}, SPREADS, "max_uncertainty"),
        ({"max_uncertainty": -0.1}, SPREADS, "max_uncertainty"),
        ({"max_uncertainty": 0.0}, SPREADS, "max_uncertainty"),
    ],
)
def test_bad_max_uncertainty_names_the_field(options: dict[str, float], spreads: tuple[int, ...], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        invert(module_of(MODEL), space_of(SCHEMA), spec(1.0, n=5, **options), spreads=spreads)
    assert info.value.field == field


def test_a_target_for_a_spread_output_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="give one per output that is not a spread") as info:
        invert(module_of(MODEL), space_of(SCHEMA), spec(1.0, 0.1, n=5), spreads=SPREADS)
    assert info.value.field == "targets"
