from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from modelship.core import protocol
from modelship.core.default_model import build_iris_model
from modelship.core.service import InferenceService
from modelship.core.settings import Settings

from tests.support.models import SAMPLE_BY_DATATYPE, add_sub_model
from tests.support.oip import binary_request, json_request, read_response

DATATYPES = sorted(SAMPLE_BY_DATATYPE)


def infer(service: InferenceService, model: str, body: bytes, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    response = service.handle("POST", f"/v2/models/{model}/infer", headers or {}, body)
    assert response.status == 200, response.body
    return response, *read_response(response.body, response.header_length)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips_in_json(service: InferenceService, datatype: str) -> None:
    sample = SAMPLE_BY_DATATYPE[datatype]
    _, document, outputs = infer(
        service, f"identity_{datatype.lower()}", json_request({"x": (sample, datatype)})
    )
    assert document["outputs"][0]["datatype"] == datatype
    assert document["outputs"][0]["shape"] == [2, 3]
    np.testing.assert_array_equal(outputs["y"], sample)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips_in_binary(service: InferenceService, datatype: str) -> None:
    sample = SAMPLE_BY_DATATYPE[datatype]
    body, headers = binary_request({"x": (sample, datatype)}, parameters={"binary_data_output": True})
    response, document, outputs = infer(service, f"identity_{datatype.lower()}", body, headers)
    assert response.is_binary
    assert response.headers()["Content-Type"] == "application/octet-stream"
    assert "data" not in document["outputs"][0]
    np.testing.assert_array_equal(outputs["y"], sample)


def test_binary_input_json_output(service: InferenceService) -> None:
    sample = SAMPLE_BY_DATATYPE["FP32"]
    body, headers = binary_request({"x": (sample, "FP32")})
    response, document, _outputs = infer(service, "identity_fp32", body, headers)
    assert not response.is_binary
    np.testing.assert_array_equal(np.array(document["outputs"][0]["data"], np.float32), sample.ravel())


def test_matches_onnxruntime_exactly(service: InferenceService) -> None:
    rng = np.random.default_rng(7)
    a = rng.standard_normal((5, 4)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    expected = ort.InferenceSession(add_sub_model()).run(["sum", "diff"], {"a": a, "b": b})
    for body, headers in (
        (json_request({"a": (a, "FP32"), "b": (b, "FP32")}), {}),
        binary_request({"a": (a, "FP32"), "b": (b, "FP32")}, parameters={"binary_data_output": True}),
    ):
        _, _, outputs = infer(service, "add_sub", body, headers)
        np.testing.assert_array_equal(outputs["sum"], expected[0])
        np.testing.assert_array_equal(outputs["diff"], expected[1])


def test_output_subset_order_and_mixed_modes(service: InferenceService) -> None:
    a = np.ones((1, 4), np.float32)
    body, headers = binary_request(
        {"a": (a, "FP32"), "b": (a * 2, "FP32")},
        outputs=[{"name": "diff", "parameters": {"binary_data": True}}, {"name": "sum"}],
    )
    _response, document, outputs = infer(service, "add_sub", body, headers)
    assert [output["name"] for output in document["outputs"]] == ["diff", "sum"]
    assert document["outputs"][1]["data"] == [3.0] * 4
    assert "binary_data_size" in document["outputs"][0]["parameters"]
    np.testing.assert_array_equal(outputs["diff"], -a)


def test_id_is_echoed_and_version_reported(service: InferenceService) -> None:
    body = json_request({"x": (SAMPLE_BY_DATATYPE["INT32"], "INT32")}, id="req-42")
    _, document, _ = infer(service, "identity_int32", body)
    assert document["id"] == "req-42"
    assert document["model_name"] == "identity_int32"
    assert document["model_version"] == "1"


def test_classification_extension_uses_labels(service: InferenceService) -> None:
    samples = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    body = json_request(
        {"input": (samples, "FP32")},
        outputs=[{"name": "probabilities", "parameters": {"classification": 2}}, {"name": "label"}],
    )
    _, document, outputs = infer(service, "iris", body)
    assert document["outputs"][0]["datatype"] == "BYTES"
    assert document["outputs"][0]["shape"] == [2, 2]
    top = outputs["probabilities"][:, 0]
    assert top[0].endswith(":0:setosa") and top[1].endswith(":2:virginica")
    assert float(top[0].split(":")[0]) > 0.9
    assert outputs["label"].tolist() == [0, 2]


def test_iris_model_predicts_held_in_examples() -> None:
    data, labels, accuracy = build_iris_model()
    assert labels == ["setosa", "versicolor", "virginica"]
    assert accuracy >= 0.95
    session = ort.InferenceSession(data)
    probabilities, label = session.run(None, {"input": np.array([[5.9, 3.0, 4.2, 1.5]], np.float32)})
    assert label.tolist() == [1]
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_json_numbers_are_accepted_for_float_inputs(service: InferenceService) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]})
    _, _, outputs = infer(service, "identity_fp64", body)
    assert outputs["y"].tolist() == [[1.0, 2.0, 3.0]]


@pytest.mark.parametrize(
    ("datatype", "values"),
    [("FP32", [3.0e38, -3.0e38, 1.0]), ("FP16", [60000.0, -300.0, 1.0])],
)
def test_large_finite_json_values_are_accepted(
    service: InferenceService, datatype: str, values: list[float]
) -> None:
    """Values near the type's limit are in range even where a sum of their squares would not be."""
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": datatype, "data": values}]})
    _, _, outputs = infer(service, f"identity_{datatype.lower()}", body)
    np.testing.assert_array_equal(outputs["y"], np.array([values], dtype=outputs["y"].dtype))


def test_nested_json_data_is_accepted(service: InferenceService) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT16", "data": [[1, 2, 3], [4, 5, 6]]}]}
    )
    _, _, outputs = infer(service, "identity_int16", body)
    assert outputs["y"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_zero_batch(service: InferenceService) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [0, 3], "datatype": "FP32", "data": []}]})
    _, document, _ = infer(service, "identity_fp32", body)
    assert document["outputs"][0]["shape"] == [0, 3]


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_zero_batch_with_binary_outputs(service: InferenceService, datatype: str) -> None:
    """A zero-size batch asks for empty binary tensors: a 200, not a 500."""
    empty = np.empty((0, 3), dtype=object if datatype == "BYTES" else np.float32)
    body, headers = binary_request({"x": (empty, datatype)}, parameters={"binary_data_output": True})
    _, document, arrays = infer(service, f"identity_{datatype.lower()}", body, headers)
    assert document["outputs"][0]["parameters"]["binary_data_size"] == 0
    assert arrays["y"].shape == (0, 3)


def test_error_messages_name_no_path_of_the_machine(
    service: InferenceService, populated_store: Path, tmp_path: Path
) -> None:
    """onnxruntime's kernel errors carry its source paths; a store's errors could carry its root."""
    mismatched = orjson.dumps(
        {
            "inputs": [
                {"name": "a", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 8},
                {"name": "b", "shape": [3, 4], "datatype": "FP32", "data": [1.0] * 12},
            ]
        }
    )
    rejected = service.handle("POST", "/v2/models/add_sub/infer", {}, mismatched)
    assert rejected.status == 400
    error = orjson.loads(rejected.body)["error"]
    assert "onnxruntime rejected the input" in error and "<path>" in error
    assert "onnxruntime_src" not in error

    import shutil

    store = tmp_path / "store"
    shutil.copytree(populated_store, store)
    model_file = store / "models" / "iris" / "1" / "model.onnx"
    model_file.unlink()
    model_file.mkdir()
    broken = InferenceService.from_settings(Settings(store_uri=str(store)))
    response = broken.handle("GET", "/v2/models/iris", {}, b"")
    assert response.status == 503
    index = broken.handle("POST", "/v2/repository/index", {}, b"")
    for body in (response.body, index.body):
        assert str(tmp_path).encode() not in body and b"model.onnx" not in body, body


def test_manifest_records_the_producer(iris_model: tuple[bytes, list[str]], tmp_path: Path) -> None:
    from modelship.core.repository import ModelRepository

    path = tmp_path / "iris.onnx"
    path.write_bytes(iris_model[0])
    manifest = ModelRepository.open(str(tmp_path / "store")).push(path, "iris")
    assert manifest.producer == {"name": "modelship", "version": "1"}


@pytest.mark.parametrize(
    "values,expected_top",
    [
        (np.array([[0, 7, 255]], np.uint8), "255:2"),
        (np.array([[-(2**63), 0, 5]], np.int64), "5:2"),
        (np.array([[2**64 - 1, 1, 0]], np.uint64), "18446744073709551615:0"),
        (np.array([[False, True, False]]), "1:1"),
        (np.array([[0.25, -3.5, 0.5]], np.float16), "0.5:2"),
        (np.array([[123456789, 5, 6]], np.int32), "123456789:0"),
    ],
)
def test_classification_ranks_in_the_outputs_own_datatype(values: np.ndarray, expected_top: str) -> None:
    from modelship.core.protocol import classify

    assert classify(values, 1, None)[0, 0] == expected_top


def test_classification_needs_a_non_empty_last_axis() -> None:
    from modelship.core.errors import BadRequest
    from modelship.core.protocol import classify

    with pytest.raises(BadRequest, match="last dimension"):
        classify(np.zeros((1, 0), np.float32), 1, None)
    with pytest.raises(BadRequest, match="last dimension"):
        classify(np.array(1.0, np.float32), 1, None)


def _large_document(data: Sequence[object], *, prefix: str = "") -> bytes:
    return orjson.dumps({"id": prefix, "inputs": [{"name": "x", "shape": [1, len(data)], "data": data}]})


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (b'{"data": [true]}', True),
        (b'{"data": [1.5]}', False),
        (_large_document([0.5] * 2000), False),
        (_large_document([0.5] * 2000 + [True]), True),
        (_large_document([False] + [0.5] * 2000), True),
        # More first letters than it looks at one by one: the substring search decides.
        (_large_document([0.5] * 2000 + [True], prefix="t" * 40), True),
        (_large_document([0.5] * 2000, prefix="t f " * 40), False),
    ],
)
def test_the_boolean_literal_search_finds_them_anywhere(document: bytes, expected: bool) -> None:
    assert protocol._may_hold_booleans(document) is expected


def test_a_boolean_in_a_large_float_tensor_is_refused(service: InferenceService) -> None:
    data: list[object] = [0.5] * 3000
    data[2500] = True
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1000, 3], "datatype": "FP32", "data": data}]})
    assert len(body) > protocol._SMALL_JSON_BYTES
    response = service.handle("POST", "/v2/models/identity_fp32/infer", {}, body)
    assert response.status == 400
    assert "true and false are not FP32 values" in orjson.loads(response.body)["error"]
