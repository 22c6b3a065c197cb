"""The line sampler: calibration's choices, the root search, exact decisions, and its draws.

Draws are compared with references built independently: prior draws kept when onnxruntime
puts them on target. Which sampler a run took is read from the engine's debug log.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy import stats

import preimage.server.engine.lines as lines
import preimage.server.engine.sample as sample
from preimage.registry.schema import DataStatistics
from preimage.server.engine.collector import Collector
from preimage.server.engine.context import Context
from preimage.server.engine.prior import DataPrior, InDistributionPenalty, make_prior
from preimage.server.engine.run import Run
from preimage.server.engine.targets import TargetSet
from preimage.server.engine.types import PriorKind, TargetSpec
from tests.engine.helpers import EXAMPLE_SCHEMA, module_of, run_invert, space_of, spec
from tests.models import EXAMPLE_MODEL, linear_onnx, mlp_onnx, onnx_eval

EXAMPLE = EXAMPLE_MODEL.read_bytes()
TWO_D = mlp_onnx([2, 32, 1], seed=11, scale=3.0)  # many extrema: closed level curves, folds
SQUARE = {"inputs": [{"name": "u", "min": -1.0, "max": 1.0}, {"name": "v", "min": -1.0, "max": 1.0}]}
LOGGER = "preimage.server.engine.sample"


def _context(model: bytes, schema: dict[str, Any], y: float, tolerance: float, seed: int = 0) -> Context:
    space = space_of(schema)
    targets = TargetSet.from_spec((TargetSpec(value=y),), tolerance, 1)
    return Context(
        space=space,
        targets=targets,
        prior=make_prior(space, PriorKind.UNIFORM, None),
        rng=np.random.default_rng(seed),
        run=Run(module_of(model), targets, None, max_seconds=60.0, max_passes=10**6),
        collector=Collector(space, targets, 10**6, 0.0, 256),
    )


def _calibrate(ctx: Context, model: bytes, y: float) -> lines.Calibration:
    """Calibrate with the prior rows whose outputs (by onnxruntime) are nearest ``y``, as the pilot would."""
    X = ctx.prior.sample(np.random.default_rng(99), 4096)
    near = X[np.argsort(np.abs(onnx_eval(model, X)[:, 0] - y))[:64]]
    calibration = lines.calibrate(ctx, near)
    assert calibration is not None
    return calibration


def test_calibration_takes_two_points_on_a_monotone_column() -> None:
    calibration = _calibrate(_context(EXAMPLE, EXAMPLE_SCHEMA, 7.0, 1e-3), EXAMPLE, 7.0)
    plan = calibration.plan
    assert calibration.reached and plan is not None
    # the column that moves the output most across the box (onnxruntime, endpoints of each column)
    X = np.random.default_rng(1).random((2000, 10)).astype(np.float32)
    swing = []
    for c in range(10):
        lo, hi = X.copy(), X.copy()
        lo[:, c], hi[:, c] = 0.0, 1.0
        swing.append(np.abs(onnx_eval(EXAMPLE, hi) - onnx_eval(EXAMPLE, lo)).mean())
    assert plan.column == int(np.argmax(swing))
    assert plan.grid == 2  # every calibration line crosses the level at most once
    assert plan.acceptance > 0.25 and plan.cost < 30


def test_calibration_refuses_folded_level_sets() -> None:
    # Closed level curves are tangent to any line direction somewhere, where the weight 1/|df/ds| blows
    # up: the weights are heavy-tailed and the windowed sampler is used instead.
    y = float(np.quantile(onnx_eval(TWO_D, np.random.default_rng(0).uniform(-1, 1, (100_000, 2))), 0.9))
    calibration = _calibrate(_context(TWO_D, SQUARE, y, 1e-3), TWO_D, y)
    assert calibration.reached and calibration.plan is None


def test_calibration_needs_one_output_and_a_free_continuous_column() -> None:
    two = mlp_onnx([4, 8, 2], seed=2)
    space = space_of({"inputs": [{"name": f"x{i}", "min": -1.0, "max": 1.0} for i in range(4)]})
    targets = TargetSet.from_spec((TargetSpec(value=0.0), TargetSpec(value=0.0)), 0.01, 2)
    ctx = Context(
        space,
        targets,
        make_prior(space, None, None),
        np.random.default_rng(0),
        Run(module_of(two), targets, None, 60.0, 10**6),
        Collector(space, targets, 10, 0.0, 256),
    )
    calibration = lines.calibrate(ctx, space.lower.reshape(1, -1).copy())
    assert calibration is not None and calibration.plan is None and not calibration.reached


def _onnx(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> bytes:
    """A two-input, one-output ONNX graph from ``x`` to ``y``."""
    graph = helper.make_graph(
        nodes,
        "lines",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _pair_model(tilt: float = 0.0) -> bytes:
    """``f(x) = (x0 − 0.45 − tilt·x1)²``: small levels cross twice, close together, both sides of the valley."""
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["z"]),  # z = x0 − tilt·x1
        helper.make_node("Sub", ["z", "c"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["y"]),
    ]
    A = numpy_helper.from_array(np.array([[1.0], [-tilt]], dtype=np.float32), "A")
    c = numpy_helper.from_array(np.array([0.45], dtype=np.float32), "c")
    return _onnx(nodes, [A, c])


UNIT_SQUARE = {"inputs": [{"name": "a", "min": 0.0, "max": 1.0}, {"name": "b", "min": 0.0, "max": 1.0}]}


def test_the_extremum_search_finds_two_crossings_inside_one_cell() -> None:
    model = _pair_model()  # the level 4e-4 crosses at 0.43 and 0.47: one cell of a 9-point grid
    ctx = _context(model, UNIT_SQUARE, 4e-4, 1e-4)
    solver = lines._Lines(ctx)
    k = 50
    X, params = ctx.prior.sample_lines(ctx.rng, k, 0)
    t = solver.levels(k)
    blind = solver.solve(X, np.zeros(k, dtype=np.int64), 2, t, [params])
    assert blind is not None and blind.line.size == 0  # the ends are both above the level: no sign change
    roots = solver.solve(X, np.zeros(k, dtype=np.int64), 9, t, [params])
    assert roots is not None
    assert np.bincount(roots.line, minlength=k).tolist() == [2] * k
    s = roots.X[:, 0].astype(np.float64)
    level = t[roots.line]
    np.testing.assert_allclose(np.abs(s - 0.45), np.sqrt(level), rtol=2e-3)  # the exact roots
    np.testing.assert_allclose(onnx_eval(model, roots.X)[:, 0], level, atol=2e-6)
    np.testing.assert_allclose(roots.weight, 1.0 / (2.0 * np.sqrt(level)), rtol=2e-3)  # p(s) = 1, |f'| = 2|s − c|


def test_forward_differences_never_change_a_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    def draws() -> tuple[np.ndarray, float]:
        ctx = _context(EXAMPLE, EXAMPLE_SCHEMA, 7.0, 1e-3, seed=5)
        calibration = _calibrate(ctx, EXAMPLE, 7.0)
        assert calibration.plan is not None and calibration.plan.grid == 2
        sampler = lines.LineSampler(ctx, calibration.plan)
        out = [sampler.draw(4096) for _ in range(3)]
        assert all(o is not None for o in out)
        return np.concatenate([o[0] for o in out if o is not None]), sampler.cap

    X, cap = draws()
    monkeypatch.setattr(lines, "_MARGIN", 1e9)  # every decision settled by the gradient
    X_exact, cap_exact = draws()
    np.testing.assert_array_equal(X, X_exact)
    assert cap == cap_exact


def _reference(model: bytes, draw: Any, y: float, tolerance: float, rows: int) -> np.ndarray:
    P = draw(np.random.default_rng(123), rows)
    return P[np.abs(onnx_eval(model, P)[:, 0].astype(np.float64) - y) <= tolerance]


def _ks(X: np.ndarray, ref: np.ndarray) -> float:
    """Smallest two-sample KS p-value over the columns and two fixed oblique projections, Bonferroni-combined."""
    d = X.shape[1]
    directions = [np.eye(d)[j] for j in range(d)]
    directions += [np.ones(d) / np.sqrt(d), np.linspace(-1.0, 1.0, d) / np.linalg.norm(np.linspace(-1.0, 1.0, d))]
    ps = [stats.ks_2samp(X @ v, ref @ v).pvalue for v in directions]
    return min(1.0, len(ps) * min(ps))


def test_line_draws_match_rejection_sampling(caplog: pytest.LogCaptureFixture) -> None:
    y, tolerance = 7.0, 0.02
    ref = _reference(EXAMPLE, lambda rng, k: rng.random((k, 10)).astype(np.float32), y, tolerance, 2_000_000)
    assert len(ref) > 5000
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        result = run_invert(EXAMPLE, space_of(EXAMPLE_SCHEMA), spec(y, n=2000, tolerance=tolerance, seed=3))
    assert any("line sampler" in r.getMessage() for r in caplog.records)
    assert np.abs(onnx_eval(EXAMPLE, result.X)[:, 0] - y).max() <= tolerance
    assert _ks(result.X, ref) >= 0.01


def test_line_draws_follow_a_correlated_data_prior(caplog: pytest.LogCaptureFixture) -> None:
    # x0 + x1 = 1 with x0, x1 correlated 0.6 under the data prior: along an x0-line the conditional
    # p(x0 | x1) decides where the mass sits, which the marginal alone would get wrong.
    model = linear_onnx(np.array([[1.0, 1.0]]), [0.0])
    statistics = DataStatistics(
        rows=10_000,
        mean=(0.5, 0.5),
        covariance=(0.04, 0.024, 0.024, 0.04),
        quantile_levels=(0.0, 0.25, 0.5, 0.75, 1.0),
        quantiles=(0.0, 0.35, 0.5, 0.62, 1.0, 0.0, 0.38, 0.5, 0.65, 1.0),
    )
    space = space_of(UNIT_SQUARE)
    y, tolerance = 1.0, 0.01
    ref = _reference(model, DataPrior(space, statistics).sample, y, tolerance, 300_000)
    assert len(ref) > 3000
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        result = run_invert(model, space, spec(y, n=2000, tolerance=tolerance, seed=4), statistics=statistics)
    assert result.summary.prior is PriorKind.DATA
    assert any("line sampler" in r.getMessage() for r in caplog.records)
    assert _ks(result.X, ref) >= 0.01
    independent = DataStatistics(
        rows=10_000,
        mean=(0.5, 0.5),
        covariance=(0.04, 0.0, 0.0, 0.04),
        quantile_levels=statistics.quantile_levels,
        quantiles=statistics.quantiles,
    )
    wrong = _reference(model, DataPrior(space, independent).sample, y, tolerance, 300_000)
    assert _ks(result.X, wrong) < 1e-6  # the test sees the correlation


def test_calibration_replays_coarse_grids_and_keeps_the_searches_that_find_hidden_pairs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Every line crosses twice, 0.02 apart (x0 = 0.45 + 0.25·x1 ± 0.01): the 2-point grid finds nothing,
    # and a finer grid needs its searches for the pairs inside one cell. The draws are p|T: the two roots
    # of a line weigh the same, so x1 is uniform, each side of the valley holds half the draws, and where
    # the valley sits within a grid cell does not matter (a scan alone would only see pairs around a point).
    model = _pair_model(tilt=0.25)
    y, tolerance = 1e-4, 3e-5
    calibration = _calibrate(_context(model, UNIT_SQUARE, y, tolerance), model, y)
    plan = calibration.plan
    assert plan is not None and plan.column == 0 and plan.grid >= 9
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        result = run_invert(model, space_of(UNIT_SQUARE), spec(y, n=2000, tolerance=tolerance, seed=6))
    assert any("line sampler" in r.getMessage() for r in caplog.records)
    X = result.X.astype(np.float64)
    assert np.abs(onnx_eval(model, result.X)[:, 0] - y).max() <= tolerance
    valley = 0.45 + 0.25 * X[:, 1]
    assert stats.kstest(X[:, 1], "uniform").pvalue >= 0.01
    assert stats.binomtest(int((X[:, 0] > valley).sum()), len(X)).pvalue >= 0.01
    for grid in {plan.grid, lines.FINE_GRID}:
        phase = (valley * (grid - 1)) % 1.0
        assert stats.kstest(phase, "uniform").pvalue >= 0.01


def test_line_draws_weigh_each_root_by_its_slope(caplog: pytest.LogCaptureFixture) -> None:
    # f = x0 (0.2 + x1) = 0.1 on the unit square: a thin shell around x0 = 0.1 / (0.2 + x1), whose width
    # in x0 is 2 tol / (0.2 + x1); so under p|T, x1 has density ∝ 1 / (0.2 + x1), CDF ln((0.2 + x1) / 0.2) / ln 6.
    nodes = [
        helper.make_node("MatMul", ["x", "e0"], ["x0"]),
        helper.make_node("MatMul", ["x", "e1"], ["x1"]),
        helper.make_node("Add", ["x1", "k"], ["g"]),
        helper.make_node("Mul", ["x0", "g"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([[1.0], [0.0]], dtype=np.float32), "e0"),
        numpy_helper.from_array(np.array([[0.0], [1.0]], dtype=np.float32), "e1"),
        numpy_helper.from_array(np.array([0.2], dtype=np.float32), "k"),
    ]
    model = _onnx(nodes, inits)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        result = run_invert(model, space_of(UNIT_SQUARE), spec(0.1, n=2000, tolerance=1e-3, seed=7))
    assert any("line sampler" in r.getMessage() for r in caplog.records)
    assert np.abs(onnx_eval(model, result.X)[:, 0] - 0.1).max() <= 1e-3
    x1 = result.X[:, 1].astype(np.float64)
    assert stats.kstest(x1, lambda v: np.log((0.2 + v) / 0.2) / np.log(6.0)).pvalue >= 0.01
    assert stats.kstest(x1, "uniform").pvalue < 1e-6  # unweighted roots would look uniform in x1


def test_lines_hand_over_to_the_windowed_sampler(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sample, "_SWITCH", 0.0)  # any cost is too dear
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        result = run_invert(EXAMPLE, space_of(EXAMPLE_SCHEMA), spec(7.0, n=1500, seed=1))
    messages = [r.getMessage() for r in caplog.records]
    assert any("line sampler" in m for m in messages) and any("switching" in m for m in messages)
    assert result.summary.returned == 1500
    assert np.abs(onnx_eval(EXAMPLE, result.X)[:, 0] - 7.0).max() <= 1e-3


def test_the_calibration_is_warm_state_measured_once_per_target(caplog: pytest.LogCaptureFixture) -> None:
    # Like the pilot, the calibration comes from a generator of its own and is kept in the PilotCache:
    # a warm 20-pattern request runs on the line sampler and spends a few hundred rows, not a calibration.
    space = space_of(EXAMPLE_SCHEMA)
    pilots = sample.PilotCache()
    calibration_rows = 2 * lines.CALIBRATION_LINES * lines.FINE_GRID
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        cold = run_invert(EXAMPLE, space, spec(7.0, n=20, seed=1), pilots=pilots)
        warm = run_invert(EXAMPLE, space, spec(7.0, n=20, seed=2), pilots=pilots)
    assert cold.summary.returned == warm.summary.returned == 20
    chosen = [r.getMessage() for r in caplog.records if "sampler" in r.getMessage()]
    assert len(chosen) == 2 and all(m.startswith("sample: line sampler") for m in chosen)
    assert cold.summary.rows_evaluated > calibration_rows
    assert warm.summary.rows_evaluated < calibration_rows // 10
    assert np.abs(onnx_eval(EXAMPLE, warm.X)[:, 0] - 7.0).max() <= 1e-3
    (pilot,) = [p for p in pilots._spaces[space].values()]
    assert pilot.calibration is not None and pilot.calibration.plan is not None


def test_line_draws_take_the_in_distribution_tilt(caplog: pytest.LogCaptureFixture) -> None:
    # Kept with probability exp(−λ M(x)), like every sample-mode draw: the tilted patterns' mean penalty is
    # what reweighting the plain ones by exp(−λ M) predicts.
    space = space_of(EXAMPLE_SCHEMA)
    penalty = InDistributionPenalty.build(space, None)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        plain = run_invert(EXAMPLE, space, spec(7.0, n=3000, seed=8))
        tilted = run_invert(EXAMPLE, space, spec(7.0, n=3000, seed=9, in_distribution_weight=4.0))
    assert sum("line sampler" in r.getMessage() for r in caplog.records) == 2
    assert np.abs(onnx_eval(EXAMPLE, tilted.X)[:, 0] - 7.0).max() <= 1e-3
    M, M_tilted = penalty.value(plain.X), penalty.value(tilted.X)
    weight = np.exp(-4.0 * M)
    predicted = float((M * weight).sum() / weight.sum())
    assert M_tilted.mean() < M.mean() - 0.02
    assert abs(M_tilted.mean() - predicted) < 0.01
