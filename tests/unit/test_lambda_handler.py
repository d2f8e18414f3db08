"""The real Lambda entry (functions/inference/app.py) with Powertools, fed API Gateway events."""

from __future__ import annotations

import gzip
import importlib
import io
import logging
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import orjson
import pybase64
import pytest
from modelship.doors.local_http import LocalLambdaContext

from tests.support.events import load_event


@pytest.fixture
def app(populated_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("MODELSHIP_STORE", str(populated_store))
    monkeypatch.setenv("MODELSHIP_PRELOAD", "iris")
    monkeypatch.setenv("MODELSHIP_CACHE_DIR", str(tmp_path / "cache"))
    # A fresh service name per test: Powertools configures a named logger once per process and would
    # keep writing to the previous test's captured stream.
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", f"modelship-test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ModelshipTest")
    sys.modules.pop("inference.app", None)
    module = importlib.import_module("inference.app")
    yield module
    sys.modules.pop("inference.app", None)


def test_handler_serves_and_emits_emf(capsys: pytest.CaptureFixture[str], app: ModuleType) -> None:
    assert app.service.lifecycle.cache.get("iris", 1) is not None, "MODELSHIP_PRELOAD loads during init"
    result = app.handler(load_event("infer_json.json"), LocalLambdaContext())
    assert result["statusCode"] == 200
    assert orjson.loads(result["body"])["id"] == "from-apigw"
    emf = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    names = {metric["Name"] for blob in emf for metric in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"InferenceLatency", "ModelLoadTime", "ColdStart"} <= names


def test_handler_answers_errors_as_json(app: ModuleType) -> None:
    event = load_event("infer_json.json")
    event["body"] = "{broken"
    result = app.handler(event, LocalLambdaContext())
    assert result["statusCode"] == 400
    assert "not valid JSON" in orjson.loads(result["body"])["error"]


def test_core_logs_carry_the_correlation_id(app: ModuleType) -> None:
    core_logger = logging.getLogger("modelship")
    assert core_logger.handlers, "app.py gives the core's loggers Powertools' handler"
    stream = io.StringIO()
    probe = logging.StreamHandler(stream)
    probe.setFormatter(core_logger.handlers[0].formatter)
    core_logger.addHandler(probe)
    try:
        event = load_event("infer_json.json")
        event["path"] = "/v2/models/broken/infer"
        assert app.handler(event, LocalLambdaContext())["statusCode"] == 503
    finally:
        core_logger.removeHandler(probe)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert errors and errors[0]["correlation_id"] == event["requestContext"]["requestId"]
    assert errors[0]["name"] == "modelship.core.lifecycle"


def test_handler_inflates_gzip_requests_and_gzips_large_answers(app: ModuleType) -> None:
    """The Lambda entry, as API Gateway calls it: a gzip body base64-encoded (binaryMediaTypes "*/*"),
    and a gzip answer returned base64 with isBase64Encoded, which API Gateway sends as raw bytes and does
    not compress again (the answer carries Content-Encoding)."""
    rows = [[5.1, 3.5, 1.4, 0.2]] * 100
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [100, 4], "datatype": "FP32", "data": rows}]})
    event = load_event("infer_json.json")
    event["headers"] = {**event["headers"], "Content-Encoding": "gzip", "Accept-Encoding": "gzip, deflate"}
    event["body"] = pybase64.b64encode_as_string(gzip.compress(body))
    event["isBase64Encoded"] = True
    result = app.handler(event, LocalLambdaContext())
    assert result["statusCode"] == 200
    assert result["isBase64Encoded"] is True
    assert result["headers"]["Content-Encoding"] == "gzip"
    assert result["headers"]["Vary"] == "Accept-Encoding"
    document = orjson.loads(gzip.decompress(pybase64.b64decode(result["body"])))
    assert document["outputs"][0]["shape"] == [100, 3]
    assert app.handler.service is app.service, "a local door running this handler finds its service"
