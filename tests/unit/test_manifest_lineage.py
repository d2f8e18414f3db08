"""The manifest's optional image-model fields: ``preprocessing`` and ``optimization`` (the lineage of an
INT8 version). Typed, written only when present, validated on load; manifests without them still load."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from modelship.core.errors import InvalidModel, ModelUnavailable
from modelship.core.manifest import Manifest, Optimization, Preprocessing, TensorSpec
from modelship.core.repository import ModelRepository

from tests.support.models import add_sub_model, write_model

PREPROCESSING = Preprocessing(
    input="image", size=(8, 8), channels=1, layout="NCHW", scale=1 / 255, mean=(0.3,), std=(0.37,)
)
OPTIMIZATION = Optimization(
    source_name="digits",
    source_version=1,
    source_sha256="a" * 64,
    method="int8-static",
    tool="onnxruntime 1.31.1",
    settings={"quant_format": "QDQ"},
    compared_on="200 samples of calibration data digits.calibration.npz",
    samples=200,
    top1_agreement=1.0,
    max_abs_error=0.08,
)


def manifest(**fields: Any) -> Manifest:
    return Manifest(
        name="digits",
        version=2,
        sha256="b" * 64,
        size=100,
        inputs=(TensorSpec("image", "FP32", (-1, 1, 8, 8)),),
        outputs=(TensorSpec("probabilities", "FP32", (-1, 10)),),
        created="2026-01-01T00:00:00+00:00",
        **fields,
    )


def load(document: dict[str, Any]) -> Manifest:
    return Manifest.loads(orjson.dumps(document), expected_name="digits", expected_version=2)


def test_both_fields_round_trip_and_are_absent_when_unset() -> None:
    full = manifest(preprocessing=PREPROCESSING, optimization=OPTIMIZATION)
    assert load(full.to_json()) == full
    assert full.to_json()["optimization"]["source"] == {"name": "digits", "version": 1, "sha256": "a" * 64}
    plain = manifest()
    assert "preprocessing" not in plain.to_json() and "optimization" not in plain.to_json()
    assert load(plain.to_json()) == plain


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"channels": 2}, "channels must be 1 (grayscale) or 3 (RGB)"),
        ({"std": [0.0]}, "std must be positive finite numbers"),
        ({"mean": [0.1, 0.2]}, "one mean and one std per channel"),
        ({"size": [0, 8]}, "size must be two sides from 1 to 4096"),
        ({"size": [8]}, "'size' must be [height, width] in pixels"),
        ({"layout": "CHW"}, "layout must be one of NCHW, NHWC"),
        ({"scale": "1/255"}, "'scale' must be a number"),
        ({"resize": "bicubic"}, "unknown fields: resize"),
    ],
)
def test_a_bad_preprocessing_block_fails_the_manifest_closed(change: dict[str, Any], message: str) -> None:
    document = manifest(preprocessing=PREPROCESSING).to_json()
    document["preprocessing"] |= change
    with pytest.raises(ModelUnavailable, match="malformed") as caught:
        load(document)
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("source", "sha256"), "nothex", "invalid source sha256"),
        (("source", "name"), "../x", "invalid source name"),
        (("source", "version"), 0, "invalid source version"),
        (("method",), "int4", "method must be one of int8-dynamic, int8-static"),
        (("agreement", "top1"), 1.5, "agreement is out of range"),
        (("settings",), {"per_channel": False}, "settings must map names to strings"),
    ],
)
def test_a_bad_lineage_fails_the_manifest_closed(path: tuple[str, ...], value: Any, message: str) -> None:
    document = manifest(optimization=OPTIMIZATION).to_json()
    target = document["optimization"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ModelUnavailable, match="malformed") as caught:
        load(document)
    assert message in caught.value.message


def test_push_records_a_fitting_preprocessing_block_and_refuses_one_that_does_not_fit(tmp_path: Path) -> None:
    repository = ModelRepository.open(str(tmp_path / "store"))
    path = write_model(tmp_path, "m", add_sub_model())  # inputs a and b, FP32 [-1, 4]
    with pytest.raises(InvalidModel, match="names input 'image', but the model's inputs are a, b"):
        repository.push(path, "add_sub", preprocessing=PREPROCESSING)
    misfit = Preprocessing(input="a", size=(2, 2), channels=1, layout="NHWC", scale=1.0, mean=(0,), std=(1,))
    with pytest.raises(InvalidModel, match=r"NHWC tensors of shape \[1, 2, 2, 1\], which input 'a'"):
        repository.push(path, "add_sub", preprocessing=misfit)
    assert repository.versions("add_sub") == []
    pushed = repository.push(path, "add_sub", optimization=OPTIMIZATION)
    assert repository.read_manifest("add_sub", pushed.version).optimization == OPTIMIZATION
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert repository.latest_holding("add_sub", digest) == pushed
    assert repository.latest_holding("add_sub", digest, preprocessing=PREPROCESSING) is None
