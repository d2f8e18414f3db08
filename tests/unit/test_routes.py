from __future__ import annotations

import orjson
import pytest
from modelship.core.service import InferenceService
from modelship.core.settings import Settings

from tests.support.bad_requests import BAD_REQUESTS, GOOD_INPUT, MAX_REQUEST_BYTES, BadRequestCase


def get(service: InferenceService, path: str) -> tuple[int, object]:
    response = service.handle("GET", path, {}, b"")
    return response.status, orjson.loads(response.body)


def test_server_metadata_lists_extensions(service: InferenceService) -> None:
    status, document = get(service, "/v2")
    assert status == 200
    assert document == {
        "name": "modelship",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "model_repository", "classification"],
    }


def test_health(service: InferenceService) -> None:
    assert get(service, "/v2/health/live") == (200, {"live": True})
    assert get(service, "/v2/health/ready") == (200, {"ready": True})


def test_ready_is_503_when_a_preloaded_model_failed(populated_store: object, tmp_path: object) -> None:
    settings = Settings(store_uri=str(populated_store), preload=(("iris", None), ("broken", None)))
    service = InferenceService.from_settings(settings)
    service.preload()
    status, document = get(service, "/v2/health/ready")
    assert status == 503
    assert "broken" in document["error"]  # type: ignore[index]
    assert get(service, "/v2/health/live")[0] == 200


@pytest.mark.parametrize("path", ["/v2/models/iris", "/v2/models/iris/versions/1"])
def test_model_metadata(service: InferenceService, path: str) -> None:
    status, document = get(service, path)
    assert status == 200
    assert document == {
        "name": "iris",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
        "parameters": {"labels": ["setosa", "versicolor", "virginica"]},
    }


@pytest.mark.parametrize("path", ["/v2/models/iris/ready", "/v2/models/iris/versions/1/ready"])
def test_model_ready(service: InferenceService, path: str) -> None:
    assert get(service, path) == (200, {"name": "iris", "version": "1", "ready": True})


def test_model_ready_unknown_and_broken(service: InferenceService) -> None:
    assert get(service, "/v2/models/nope/ready")[0] == 404
    assert get(service, "/v2/models/broken/ready")[0] == 503


def test_versioned_infer(service: InferenceService) -> None:
    body = orjson.dumps({"inputs": [GOOD_INPUT]})
    response = service.handle("POST", "/v2/models/iris/versions/1/infer", {}, body)
    assert response.status == 200
    assert orjson.loads(response.body)["model_version"] == "1"


def test_repository_index(service: InferenceService) -> None:
    service.handle("POST", "/v2/models/broken/infer", {}, orjson.dumps({"inputs": [GOOD_INPUT]}))
    response = service.handle("POST", "/v2/repository/index", {}, b"")
    assert response.status == 200
    entries = {entry["name"]: entry for entry in orjson.loads(response.body)}
    assert entries["iris"] == {"name": "iris", "version": "1", "state": "READY", "reason": ""}
    assert entries["add_sub"]["state"] == "UNAVAILABLE" and entries["add_sub"]["reason"] == "not loaded"
    assert entries["broken"]["state"] == "UNAVAILABLE" and "sha256" in entries["broken"]["reason"]
    ready = orjson.loads(service.handle("POST", "/v2/repository/index", {}, b'{"ready": true}').body)
    assert [entry["name"] for entry in ready] == ["iris"]


def test_method_not_allowed_names_the_allowed_method(service: InferenceService) -> None:
    response = service.handle("GET", "/v2/repository/index", {}, b"")
    assert response.status == 405
    assert response.headers()["Allow"] == "POST"


def test_body_just_under_the_cap_is_served(service: InferenceService) -> None:
    body = orjson.dumps({"inputs": [GOOD_INPUT]})
    padded = body + b" " * (MAX_REQUEST_BYTES - len(body))
    assert len(padded) == MAX_REQUEST_BYTES
    assert service.handle("POST", "/v2/models/iris/infer", {}, padded).status == 200


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.id)
def test_bad_request_gets_json_error_and_server_survives(
    service: InferenceService, case: BadRequestCase
) -> None:
    headers = {key.lower(): value for key, value in case.headers.items()}
    response = service.handle(case.method, case.path, headers, case.body)
    assert response.status == case.status, response.body
    assert response.content_type == "application/json"
    error = orjson.loads(response.body)["error"]
    assert isinstance(error, str) and error
    assert case.message in error
    assert "Traceback" not in error
    assert get(service, "/v2/health/live") == (200, {"live": True})


def test_table_is_large_enough() -> None:
    assert len(BAD_REQUESTS) >= 15
