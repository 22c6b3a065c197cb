"""References, versions, aliases, listing and deletion."""

from __future__ import annotations

from datetime import timezone

import numpy as np
import pytest
import torch

from preimage.errors import InvalidArgumentError, NotFoundError
from preimage.registry import (
    InvalidAliasError,
    InvalidModelRefError,
    ModelNotFoundError,
    ModelRef,
    ModelSource,
    Registry,
)
from tests.models import onnx_eval
from tests.registry.builders import gemm


def _data(seed: int, d: int = 3, m: int = 1) -> bytes:
    return gemm(d=d, m=m, seed=seed).SerializeToString()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("m", ModelRef("m")),
        ("m.v2_x-y", ModelRef("m.v2_x-y")),
        ("m:3", ModelRef("m", version=3)),
        ("m@prod", ModelRef("m", alias="prod")),
        ("m@a-1_b", ModelRef("m", alias="a-1_b")),
    ],
)
def test_refs_parse_and_print(text: str, expected: ModelRef) -> None:
    assert ModelRef.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("m:", "version ''"),
        ("m:0", "version '0'"),
        ("m:-1", "version '-1'"),
        ("m:1.5", "version '1.5'"),
        ("m:x", "version 'x'"),
        ("m@", "alias ''"),
        ("m@3", "alias '3'"),
        ("m@Prod", "alias 'Prod'"),
        ("m:1@prod", "both a version and an alias"),
        ("M", "name 'M'"),
        (":3", "name ''"),
        ("m:1:2", "version '1:2'"),
    ],
)
def test_malformed_refs(text: str, reason: str) -> None:
    with pytest.raises(InvalidModelRefError) as caught:
        ModelRef.parse(text)
    assert reason in str(caught.value)
    assert "expected NAME, NAME:VERSION or NAME@ALIAS" in str(caught.value)
    assert caught.value.field == "model_ref"


def test_versions_count_per_name_and_latest_resolves(registry: Registry) -> None:
    first = registry.register_bytes("a", _data(0))
    second = registry.register_bytes("a", _data(1))
    other = registry.register_bytes("b", _data(2))
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert registry.get("a").version == 2 and registry.get("a").latest
    assert not registry.get("a:1").latest
    assert registry.get("a:1").sha256 == first.sha256
    assert [r.ref for r in registry.list()] == ["a:2", "b:1"]
    assert [r.ref for r in registry.list(all_versions=True)] == ["a:1", "a:2", "b:1"]
    assert [r.ref for r in registry.list("a", all_versions=True)] == ["a:1", "a:2"]
    assert registry.list("nobody") == []


def test_record_fields(registry: Registry) -> None:
    data = _data(0, d=4, m=2)
    record = registry.register_bytes("fields", data, source=ModelSource.TRAIN)
    assert record.size_bytes == len(data)
    assert len(record.sha256) == 64 and record.sha256 == record.sha256.lower()
    assert record.created_at.tzinfo is not None and record.created_at.utcoffset() == timezone.utc.utcoffset(None)
    assert (record.input_width, record.output_width) == (4, 2)
    assert record.source is ModelSource.TRAIN
    assert record.aliases == () and record.latest and record.statistics is None
    assert registry.get("fields:1") == record


def test_not_found_names_what_is_missing(registry: Registry) -> None:
    registry.register_bytes("a", _data(0))
    cases = [
        ("nobody", "no model named 'nobody'"),
        ("a:7", "model 'a' has no version 7"),
        ("a@prod", "model 'a' has no alias 'prod'"),
        ("nobody:1", "no model named 'nobody'"),
    ]
    for ref, message in cases:
        with pytest.raises(ModelNotFoundError) as caught:
            registry.get(ref)
        assert isinstance(caught.value, NotFoundError)
        assert str(caught.value) == message
    with pytest.raises(ModelNotFoundError) as caught:
        registry.get("a:7")
    assert (caught.value.name, caught.value.version, caught.value.alias) == ("a", 7, None)


def test_aliases_point_move_and_go(registry: Registry) -> None:
    registry.register_bytes("a", _data(0))
    registry.register_bytes("a", _data(1))
    assert registry.set_alias("a", "prod", 1).aliases == ("prod",)
    registry.set_alias("a", "canary", 1)
    assert registry.get("a@prod").version == 1
    assert registry.get("a:1").aliases == ("canary", "prod")
    moved = registry.set_alias("a", "prod", 2)  # an alias moves; it never points at two versions
    assert moved.version == 2 and moved.aliases == ("prod",)
    assert registry.get("a:1").aliases == ("canary",)
    registry.delete_alias("a", "canary")
    assert registry.get("a:1").aliases == ()
    with pytest.raises(ModelNotFoundError, match="model 'a' has no alias 'canary'"):
        registry.delete_alias("a", "canary")
    with pytest.raises(ModelNotFoundError, match="no model named 'zz'"):
        registry.delete_alias("zz", "prod")
    with pytest.raises(ModelNotFoundError, match="model 'a' has no version 9"):
        registry.set_alias("a", "prod", 9)


@pytest.mark.parametrize("alias", ["3", "12", "Prod", "-x", "", "x" * 33, "a.b"])
def test_bad_aliases(registry: Registry, alias: str) -> None:
    registry.register_bytes("a", _data(0))
    with pytest.raises(InvalidAliasError, match="must match"):
        registry.set_alias("a", alias, 1)


def test_numeric_alias_message_explains(registry: Registry) -> None:
    registry.register_bytes("a", _data(0))
    with pytest.raises(InvalidAliasError, match="cannot be a number"):
        registry.set_alias("a", "3", 1)


def test_delete_one_version_by_version_or_alias(registry: Registry) -> None:
    for seed in range(3):
        registry.register_bytes("a", _data(seed))
    registry.set_alias("a", "prod", 2)
    deleted = registry.delete("a@prod")
    assert [r.ref for r in deleted] == ["a:2"] and deleted[0].aliases == ("prod",)
    with pytest.raises(ModelNotFoundError, match="no alias 'prod'"):
        registry.get("a@prod")  # the alias went with its version
    assert [r.ref for r in registry.delete("a:3")] == ["a:3"]
    assert registry.get("a").version == 1 and registry.get("a").latest
    # Version numbers are never reused, so a:3 keeps meaning the deleted bytes or nothing.
    assert registry.register_bytes("a", _data(9)).version == 4


def test_delete_bare_name_needs_all_versions(registry: Registry) -> None:
    registry.register_bytes("a", _data(0))
    registry.register_bytes("a", _data(1))
    with pytest.raises(InvalidArgumentError) as caught:
        registry.delete("a")
    message = str(caught.value)
    assert "a:VERSION or a@ALIAS" in message and "all_versions" in message
    with pytest.raises(InvalidArgumentError, match="give the bare name 'a'"):
        registry.delete("a:1", all_versions=True)
    assert [r.ref for r in registry.delete("a", all_versions=True)] == ["a:1", "a:2"]
    assert registry.list(all_versions=True) == []
    with pytest.raises(ModelNotFoundError, match="no model named 'a'"):
        registry.delete("a", all_versions=True)
    with pytest.raises(ModelNotFoundError):
        registry.delete("a:1")


def test_a_loaded_module_outlives_its_deletion(registry: Registry) -> None:
    data = _data(0, d=3, m=2)
    registry.register_bytes("a", data)
    loaded = registry.load("a:1")
    registry.delete("a:1")
    assert list((registry.root / "blobs").iterdir()) == []
    assert registry.cached() == []
    X = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.module(torch.from_numpy(X)).numpy(), onnx_eval(data, X), atol=1e-5)
    with pytest.raises(ModelNotFoundError, match="no model named 'a'"):
        registry.load(loaded.record)  # neither cached nor stored any more
