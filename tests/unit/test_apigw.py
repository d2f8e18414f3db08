from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from modelship.apigw import handle_event
from modelship.service import InferenceService

from tests.support.oip import binary_request, read_response

EVENTS = Path(__file__).resolve().parents[1] / "events"


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


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


def test_oversized_base64_refused_before_decoding(service: InferenceService) -> None:
    event = load_event("infer_json.json")
    event["body"] = "A" * (service.settings.max_request_bytes // 3 * 4 + 8)
    event["isBase64Encoded"] = True
    assert handle_event(service, event)["statusCode"] == 413


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
