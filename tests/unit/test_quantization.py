"""``core.quantization``: calibration data checked against the model's inputs, generated samples that
are the same every time, and ``optimize_int8`` publishing through the repository or refusing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from modelship.core.errors import InvalidModel
from modelship.core.manifest import TensorSpec
from modelship.core.quantization import generated_samples, load_calibration, optimize_int8
from modelship.core.repository import ModelRepository
from modelship.tools.examples import build_digits_model

from tests.support.quantization_models import tied_classifier

IMAGE = (TensorSpec("image", "FP32", (-1, 1, 8, 8)),)


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("quantization")
    built = build_digits_model()
    path = root / "digits.onnx"
    path.write_bytes(built.data)
    ModelRepository.open(str(root / "store")).push(
        path, "digits", labels=[str(digit) for digit in range(10)], preprocessing=built.preprocessing
    )
    return root / "store", built.calibration


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "calibration.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"x": np.zeros((4, 1, 8, 8), np.float32)},
            "no array for input(s) 'image'; arrays for no input: 'x'",
        ),
        (
            {"image": np.zeros((4, 8, 8), np.float32)},
            "takes samples of shape [N, 1, 8, 8], but its array has",
        ),
        ({"image": np.zeros((4, 1, 8, 9), np.float32)}, "its array has shape [4, 1, 8, 9]"),
        ({"image": np.full((4, 1, 8, 8), np.nan, np.float32)}, "holds NaN or infinite values"),
        ({"image": np.full((4, 1, 8, 8), "a")}, "input 'image' is FP32, but its array holds <U1 values"),
        ({"image": np.zeros((0, 1, 8, 8), np.float32)}, "0 samples; give from 1 to 10000"),
    ],
)
def test_calibration_data_is_checked_against_the_inputs(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(InvalidModel) as caught:
        load_calibration(_npz(tmp_path, **arrays), IMAGE)
    assert message in caught.value.message
    assert caught.value.message.startswith("calibration data calibration.npz")


def test_calibration_data_that_is_no_npz_or_holds_objects_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "calibration.npz"
    text.write_text("image,1,2,3")
    with pytest.raises(InvalidModel, match=r"is not an \.npz file"):
        load_calibration(text, IMAGE)
    with pytest.raises(InvalidModel, match="no such file"):
        load_calibration(tmp_path / "absent.npz", IMAGE)
    objects = np.empty((2, 1, 8, 8), dtype=object)
    with pytest.raises(InvalidModel, match="cannot be read as numeric arrays"):
        load_calibration(_npz(tmp_path, image=objects), IMAGE)
    two_inputs = (TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "FP32", (-1, 4)))
    uneven = _npz(tmp_path, a=np.zeros((3, 4), np.float32), b=np.zeros((2, 4), np.float32))
    with pytest.raises(InvalidModel, match="different numbers of samples"):
        load_calibration(uneven, two_inputs)


def test_calibration_samples_become_one_feed_per_batch(tmp_path: Path) -> None:
    data = np.arange(3 * 64, dtype=np.float32).reshape(3, 1, 8, 8)
    samples = load_calibration(_npz(tmp_path, image=data), IMAGE)
    assert samples.rows == 3 and len(samples.feeds) == 3
    np.testing.assert_array_equal(samples.feeds[2]["image"], data[2:3])


def test_generated_samples_are_the_same_every_time() -> None:
    first, second = generated_samples(IMAGE), generated_samples(IMAGE)
    assert first.rows == 64 and first.description == "64 generated samples (seed 0)"
    for one, other in zip(first.feeds, second.feeds, strict=True):
        np.testing.assert_array_equal(one["image"], other["image"])
    assert not np.array_equal(first.feeds[0]["image"], generated_samples(IMAGE, seed=1).feeds[0]["image"])
    with pytest.raises(InvalidModel, match="holds strings"):
        generated_samples((TensorSpec("text", "BYTES", (-1,)),))


def test_optimize_publishes_an_int8_version_with_its_lineage(
    digits_store: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    store, calibration = digits_store
    repository = ModelRepository.open(str(store))
    path = _npz(tmp_path, image=calibration)
    result = optimize_int8(repository, "digits", None, calibration=path, repeats=20)
    assert result.refusal is None and result.published is not None
    lineage = result.published.optimization
    assert lineage is not None
    assert (lineage.source_name, lineage.source_version, lineage.method) == ("digits", 1, "int8-static")
    assert lineage.source_sha256 == result.source.sha256
    assert lineage.top1_agreement == result.report.agreement.top1 >= 0.99
    assert result.published.preprocessing == result.source.preprocessing
    assert repository.read_manifest("digits", result.published.version) == result.published
    assert result.report.int8_bytes == result.published.size < result.source.size
    table = result.report.table()
    assert "size (bytes)" in table and "p50 latency (ms, 20 interleaved runs)" in table
    # An INT8 version is not quantised again.
    with pytest.raises(InvalidModel, match="is already int8-static"):
        optimize_int8(repository, "digits", result.published.version)
    with pytest.raises(InvalidModel, match="at least 20 timed repeats"):
        optimize_int8(repository, "digits", 1, repeats=19)


def test_optimize_below_the_threshold_publishes_nothing(tmp_path: Path) -> None:
    repository = ModelRepository.open(str(tmp_path / "store"))
    model = tmp_path / "tied.onnx"
    model.write_bytes(tied_classifier())
    repository.push(model, "tied")
    result = optimize_int8(repository, "tied", 1, repeats=20)
    assert result.published is None and result.refusal is not None
    shortfall = 0.99 - result.report.agreement.top1
    assert shortfall > 0
    assert f"below the minimum 0.9900 by {shortfall:.4f}" in result.refusal
    assert repository.versions("tied") == [1]
