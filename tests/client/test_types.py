"""Client-side pieces without a server: schemas, tables, conversions, deadlines, backoff."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from preimage.client import DeadlineExceededError, FeatureKind, FeatureSchema, InvalidArgumentError, RetryPolicy
from preimage.client._channel import ChannelConfig, Deadline
from preimage.client._requests import invert_request, predict_slices
from preimage.client.convert import matrix_from_proto, matrix_to_proto, schema_from_proto, schema_to_proto
from preimage.client.table import csv_table, mapping_table
from preimage.v1 import inference_pb2
from tests.models import ISSUE_SCHEMA

SCHEMA = {"inputs": [*ISSUE_SCHEMA["inputs"], {"name": "free"}], "outputs": ISSUE_SCHEMA["outputs"]}


def test_schema_round_trips_through_dict_and_proto() -> None:
    schema = FeatureSchema.from_dict(SCHEMA)
    assert schema.input_width == 7 and schema.output_names == ["difficulty"]
    assert schema.inputs[4].kind is FeatureKind.CONTINUOUS and schema.inputs[4].min is None
    assert schema_from_proto(schema_to_proto(schema)) == schema
    assert FeatureSchema.from_dict(schema.to_dict()) == schema


def test_encode_and_decode_rows() -> None:
    schema = FeatureSchema.from_dict(SCHEMA)
    X = schema.encode_rows([{"speed": 0.5, "walls": 4, "has_boss": True, "theme": "forest", "free": -3}])
    np.testing.assert_array_equal(X, [[0.5, 4, 1, 0, 0, 1, -3]])
    assert schema.decode_row(X[0]) == {"speed": 0.5, "walls": 4, "has_boss": 1, "theme": "forest", "free": -3.0}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"inputs": "speed"}, "'inputs' list"),
        ({"inputs": [{"name": "a", "kind": "fuzzy"}]}, "kind 'fuzzy'"),
        ({"inputs": [{"name": "a", "min": "low"}]}, "must be a number"),
    ],
)
def test_schema_errors(data: dict, needle: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        FeatureSchema.from_dict(data)
    assert needle in caught.value.message


def test_schema_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        FeatureSchema.from_file(path)


def test_matrix_round_trip_and_shape_errors() -> None:
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(matrix_from_proto(matrix_to_proto(X)), X)
    with pytest.raises(InvalidArgumentError, match="2-D"):
        matrix_to_proto(np.zeros(3))


def test_predict_slices_keep_messages_small() -> None:
    X = np.zeros((300_000, 10), np.float32)
    parts = list(predict_slices(X))
    assert len(parts) > 1 and sum(len(p) for p in parts) == len(X)
    assert all(p.nbytes <= 2 * 2**20 for p in parts)


def test_invert_request_fields() -> None:
    request = invert_request(
        "m@prod",
        target=None,
        target_range=[(1.0, 2.0), (3.0, 4.0)],
        n=7,
        tolerance=0.01,
        seed=3,
        bounds={"": (0.0, 1.0), "speed": (0.2, 0.3)},
        fixed={"theme": "lava", "walls": 3},
        mode="optimize",
        prior="data",
        min_distance=0.1,
        in_distribution_weight=0.5,
        max_seconds=2.0,
        max_passes=100,
        batch_size=32,
    )
    assert [t.range.upper for t in request.targets] == [2.0, 4.0]
    assert (request.count, request.tolerance, request.seed) == (7, 0.01, 3)
    assert [(b.feature, b.lower) for b in request.bounds] == [("", 0.0), ("speed", 0.2)]
    assert request.fixed_features[0].level == "lava" and request.fixed_features[1].number == 3.0
    assert request.mode == inference_pb2.INVERT_MODE_OPTIMIZE and request.prior == inference_pb2.PRIOR_DATA
    assert (request.budget.max_seconds, request.budget.max_passes, request.batch_size) == (2.0, 100, 32)
    with pytest.raises(InvalidArgumentError, match="exactly one of target or target_range"):
        invert_request("m", **{**_NO_OPTIONS, "target": 1.0, "target_range": (0.0, 1.0)})
    with pytest.raises(InvalidArgumentError, match="mode must be one of"):
        invert_request("m", **{**_NO_OPTIONS, "target": 1.0, "mode": "fast"})


_NO_OPTIONS: dict = dict(
    target=None,
    target_range=None,
    n=1,
    tolerance=None,
    seed=None,
    bounds=None,
    fixed=None,
    mode=None,
    prior=None,
    min_distance=0.0,
    in_distribution_weight=0.0,
    max_seconds=None,
    max_passes=None,
    batch_size=0,
)


def test_a_million_rows_by_twenty_columns_stream_in_small_chunks() -> None:
    rng = np.random.default_rng(0)
    table = mapping_table({f"c{i}": rng.random(1_000_000) for i in range(20)})
    rows = 0
    for chunk in table.chunks():
        assert chunk.ByteSize() < 2 * 2**20  # far below gRPC's 4 MiB default
        lengths = {len(c.numbers) for c in chunk.columns}
        assert len(lengths) == 1 and all(not c.strings for c in chunk.columns)
        rows += lengths.pop()
    assert rows == 1_000_000 and table.rows == 1_000_000


def test_csv_columns_numbers_and_strings(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,code,theme\n1.5,7,ice\n2,x9,lava\n")
    table = csv_table(path)
    assert (table.columns, table.rows) == (("a", "code", "theme"), 2)
    (chunk,) = list(table.chunks(categorical=["theme"]))
    a, code, theme = chunk.columns
    assert list(a.numbers) == [1.5, 2.0]
    assert list(code.strings) == ["7", "x9"]  # a cell that is not a number: sent as text, the server names it
    assert list(theme.strings) == ["ice", "lava"]
    numeric_levels = mapping_table({"level": [1, 2, 1]})
    (chunk,) = list(numeric_levels.chunks(categorical=["level"]))
    assert list(chunk.columns[0].strings) == ["1", "2", "1"]  # categorical: always level strings


def test_table_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3\n")
    with pytest.raises(InvalidArgumentError, match="line 3: 1 cells, the header has 2"):
        csv_table(bad)
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        csv_table(tmp_path / "missing.csv")
    with pytest.raises(InvalidArgumentError, match="differ in length"):
        mapping_table({"a": [1, 2], "b": [1]})


def test_deadline_never_reaches_grpc_as_zero() -> None:
    deadline = Deadline(0.001)
    time.sleep(0.01)
    remaining = deadline.remaining()
    assert remaining is not None and 0 < remaining < 1e-3
    assert not deadline.allows(0.0)
    with pytest.raises(DeadlineExceededError, match=r"deadline of 0\.001 s passed"):
        deadline.check("rid")
    Deadline(60).check()
    assert Deadline(None).remaining() is None and Deadline(None).allows(1e9)


def test_backoff_grows_and_is_capped() -> None:
    delays = list(RetryPolicy(max_attempts=6, initial_backoff=0.1, max_backoff=0.5, jitter=0.0).delays())
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert list(RetryPolicy(max_attempts=1).delays()) == []
    jittered = list(RetryPolicy(max_attempts=50, jitter=0.5).delays())
    assert all(0.05 <= d <= 2.0 for d in jittered)


def test_channel_config_metadata_and_tls() -> None:
    config = ChannelConfig(token="t", metadata=[("k", "v")])
    assert config.call_metadata("rid") == (("x-request-id", "rid"), ("authorization", "Bearer t"), ("k", "v"))
    assert not config.secure and ChannelConfig(root_certificates=b"pem").secure
    assert not ChannelConfig(root_certificates=b"pem", tls=False).secure
