from __future__ import annotations

import base64
import copy
from typing import Any

import numpy as np
import orjson
import pytest
from modelship.core.service import InferenceService
from modelship.doors.apigw import handle_event
from modelship.doors.local_http import build_proxy_event

from tests.support.bad_requests import BAD_REQUESTS, BadRequestCase
from tests.support.events import load_event
from tests.support.oip import binary_request, read_response


def test_json_event(service: InferenceService) -> None:
    result = handle_event(service, load_event("infer_json.json"))
    assert result["statusCode"] == 200
    assert result["isBase64Encoded"] is False
    assert result["headers"]["Content-Type"] == "application/json"
    document = orjson.loads(result["body"])
    assert document["id"] == "from-apigw"
    assert document["outputs"][0]["data"][0].endswith(":0:setosa")


def test_base64_json_event(service: InferenceService) -> None:
    event = load_event("infer_json.json")
    event["body"] = base64.b64encode(event["body"].encode()).decode()
    event["isBase64Encoded"] = True
    assert handle_event(service, event)["statusCode"] == 200


def test_binary_event_gives_base64_binary_result(service: InferenceService) -> None:
    samples = np.array([[6.7, 3.0, 5.2, 2.3]], np.float32)
    body, headers = binary_request({"input": (samples, "FP32")}, parameters={"binary_data_output": True})
    event = copy.deepcopy(load_event("infer_json.json"))
    event["headers"] = {"Inference-Header-Content-Length": headers["inference-header-content-length"],
                        "Content-Type": "application/octet-stream"}  # fmt: skip
    event["body"] = base64.b64encode(body).decode()
    event["isBase64Encoded"] = True
    result = handle_event(service, event)
    assert result["statusCode"] == 200
    assert result["isBase64Encoded"] is True
    raw = base64.b64decode(result["body"])
    _, outputs = read_response(raw, result["headers"]["Inference-Header-Content-Length"])
    assert outputs["label"].tolist() == [2]


def test_invalid_base64_is_400(service: InferenceService) -> None:
    event = load_event("infer_json.json")
    event["body"] = "!!!not base64!!!"
    event["isBase64Encoded"] = True
    result = handle_event(service, event)
    assert result["statusCode"] == 400
    assert "base64" in orjson.loads(result["body"])["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v2/models/iris/infer"), ("GET", "/v2/models/iris/infer"), ("POST", "/v2/repository/index")],
)
def test_oversized_base64_body_gets_the_cores_413(service: InferenceService, method: str, path: str) -> None:
    """The size rule comes before routing, on every route, as in the local door."""
    event = load_event("infer_json.json")
    event["httpMethod"], event["path"] = method, path
    event["body"] = "A" * (service.settings.max_request_bytes // 3 * 4 + 8)
    event["isBase64Encoded"] = True
    result = handle_event(service, event)
    assert result["statusCode"] == 413
    limit = service.settings.max_request_bytes
    assert orjson.loads(result["body"])["error"] == (
        f"request body of {limit + 6} bytes exceeds the {limit}-byte limit"
    )


@pytest.mark.parametrize(
    "event",
    [{}, {"path": "/v2"}, {"httpMethod": "GET"}, {"httpMethod": "GET", "path": "/v2", "headers": None}],
)
def test_missing_fields(service: InferenceService, event: dict[str, Any]) -> None:
    result = handle_event(service, event)
    if "path" in event and "httpMethod" in event:
        assert result["statusCode"] == 200
    else:
        assert result["statusCode"] == 400
        assert "API Gateway" in orjson.loads(result["body"])["error"]


def test_header_names_are_case_insensitive(service: InferenceService) -> None:
    samples = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    body, headers = binary_request({"input": (samples, "FP32")})
    event = load_event("infer_json.json")
    event["headers"] = {"INFERENCE-HEADER-CONTENT-LENGTH": headers["inference-header-content-length"]}
    event["body"] = base64.b64encode(body).decode()
    event["isBase64Encoded"] = True
    assert handle_event(service, event)["statusCode"] == 200


def test_a_text_body_with_a_lone_surrogate_is_a_400(service: InferenceService) -> None:
    """JSON can spell a lone surrogate ("\\ud800") inside an event; UTF-8 cannot encode it."""
    event = load_event("infer_json.json")
    event["body"] = '{"inputs": "\ud800"}'
    result = handle_event(service, event)
    assert result["statusCode"] == 400
    assert orjson.loads(result["body"])["error"] == "request body is not valid UTF-8 text"


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.id)
def test_bad_request_through_api_gateway_events(service: InferenceService, case: BadRequestCase) -> None:
    """The shared table through the Lambda door's translation, with events built as the local door
    builds them (and as API Gateway sends them: a binary body base64-encoded)."""
    path = case.path.replace(" ", "%20")
    event = build_proxy_event(case.method, path, list(case.headers.items()), case.body, "bad-request")
    result = handle_event(service, event)
    assert result["statusCode"] == case.status, result["body"][:300]
    assert result["headers"]["Content-Type"] == "application/json"
    error = orjson.loads(result["body"])["error"]
    assert case.message in error and "Traceback" not in error
    live = handle_event(service, {"httpMethod": "GET", "path": "/v2/health/live", "headers": {}})
    assert live["statusCode"] == 200
