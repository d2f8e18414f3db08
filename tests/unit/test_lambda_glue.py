"""The Lambda door's own per-invocation glue (functions/inference/app.py): what Powertools' decorators did,
kept: the log keys and correlation id on every line a request logs, the EMF document flushed before each
invocation returns (the same document Powertools would print), the ColdStart metric once."""

from __future__ import annotations

import importlib
import io
import logging
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from aws_lambda_powertools.metrics.provider.cold_start import reset_cold_start_flag
from modelship.doors.local_http import LocalLambdaContext

from tests.support.events import load_event


def _reset_cold_start() -> None:
    # Powertools' own helper is untyped.
    reset_cold_start_flag()  # type: ignore[no-untyped-call]


@pytest.fixture
def app(populated_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("MODELSHIP_STORE", str(populated_store))
    monkeypatch.setenv("MODELSHIP_PRELOAD", "iris")
    monkeypatch.setenv("MODELSHIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSHIP_ISOLATE_LOADS", "false")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", f"modelship-glue-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ModelshipGlue")
    # Powertools keeps its ColdStart flag per process: each test is a fresh execution environment.
    _reset_cold_start()
    sys.modules.pop("inference.app", None)
    module = importlib.import_module("inference.app")
    yield module
    module.metrics.metric_set.clear()
    sys.modules.pop("inference.app", None)
    _reset_cold_start()


def _event(path: str, request_id: str) -> dict[str, Any]:
    event = load_event("infer_json.json")
    event["path"] = path
    event["requestContext"]["requestId"] = request_id
    return event


def _emf(out: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.splitlines() if '"_aws"' in line]


def _metric_names(document: dict[str, Any]) -> list[str]:
    return [metric["Name"] for metric in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]]


def test_every_line_a_request_logs_carries_its_correlation_id(app: ModuleType) -> None:
    core_logger = logging.getLogger("modelship")
    stream = io.StringIO()
    probe = logging.StreamHandler(stream)
    probe.setFormatter(core_logger.handlers[0].formatter)
    core_logger.addHandler(probe)
    app.logger.addHandler(probe)
    contexts = [LocalLambdaContext() for _ in range(3)]
    try:
        for number, (path, context) in enumerate(
            zip(
                ("/v2/models/iris/infer", "/v2/models/broken/infer", "/v2/models/add_sub/infer"),
                contexts,
                strict=True,
            )
        ):
            app.handler(_event(path, f"request-{number}"), context)
            app.logger.info("handler returned")
    finally:
        core_logger.removeHandler(probe)
        app.logger.removeHandler(probe)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    by_request = {
        number: [line for line in lines if line["correlation_id"] == f"request-{number}"]
        for number in range(3)
    }
    assert all("correlation_id" in line for line in lines)
    # The core's own lines (the broken model's refusal, add_sub's load) and the handler's.
    assert any(
        line["level"] == "ERROR" and line["name"] == "modelship.core.lifecycle" for line in by_request[1]
    )
    assert any("loaded add_sub" in line["message"] for line in by_request[2])
    for number, context in enumerate(contexts):
        assert by_request[number], f"request {number} logged nothing"
        for line in by_request[number]:
            assert line["function_request_id"] == context.aws_request_id
            assert line["function_name"] == context.function_name
            assert line["function_arn"] == context.invoked_function_arn
            assert line["function_memory_size"] == context.memory_limit_in_mb
            assert line["cold_start"] is (number == 0)


def test_a_request_without_a_request_id_logs_no_stale_correlation_id(app: ModuleType) -> None:
    app.handler(_event("/v2/models/iris/infer", "first"), LocalLambdaContext())
    event = _event("/v2/models/iris/infer", "unused")
    del event["requestContext"]
    app.handler(event, LocalLambdaContext())
    assert app.logger.get_correlation_id() is None


def test_emf_is_flushed_on_every_invocation_as_powertools_prints_it(
    app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    first = app.handler(_event("/v2/models/iris/infer", "one"), LocalLambdaContext())
    cold = _emf(capsys.readouterr().out)
    second = app.handler(_event("/v2/models/iris/infer", "two"), LocalLambdaContext())
    warm = _emf(capsys.readouterr().out)
    assert first["statusCode"] == second["statusCode"] == 200
    # The first invocation: ColdStart on its own, then the preload's load time with the latency.
    assert [_metric_names(document) for document in cold] == [
        ["ColdStart"],
        ["ModelLoadTime", "InferenceLatency"],
    ]
    assert cold[0]["function_name"] == "modelship-local"
    assert [_metric_names(document) for document in warm] == [["InferenceLatency"]]
    document = warm[0]
    service = app.metrics.provider.service
    assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ModelshipGlue"
    # The service-only series as before, and the same values per model: a second dimension set.
    assert document["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"], ["service", "model"]]
    assert document["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "InferenceLatency", "Unit": "Milliseconds"}
    ]
    assert document["service"] == service
    assert document["model"] == "iris"
    assert cold[1]["model"] == "iris"
    assert len(document["InferenceLatency"]) == 1 and document["InferenceLatency"][0] > 0
    assert not app.metrics.metric_set, "the flush clears the metric set"

    # Exactly what Powertools serializes for the same metric set and dimension sets, timestamp aside.
    app.metrics.add_metric(
        name="InferenceLatency", unit="Milliseconds", value=document["InferenceLatency"][0]
    )
    app.metrics.add_dimensions(service=service, model="iris")
    expected = app.metrics.serialize_metric_set()
    app.metrics.provider.clear_metrics()
    expected["_aws"]["Timestamp"] = document["_aws"]["Timestamp"]
    assert document == expected


def test_metric_state_beyond_the_doors_own_goes_through_powertools(
    app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    app.handler(_event("/v2/models/iris/infer", "warm-up"), LocalLambdaContext())
    capsys.readouterr()
    app.metrics.add_metadata(key="request", value="extra")
    app.metrics.add_dimension(name="stage", value="test")
    app.handler(_event("/v2/models/iris/infer", "with-extras"), LocalLambdaContext())
    (document,) = _emf(capsys.readouterr().out)
    assert document["request"] == "extra"
    assert document["stage"] == "test"
    assert document["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        ["stage", "service"],
        ["service", "model"],
    ]
    assert document["model"] == "iris"
    assert _metric_names(document) == ["InferenceLatency"]


def test_an_invocation_without_metrics_prints_no_emf(
    app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    app.handler(_event("/v2/models/iris/infer", "warm-up"), LocalLambdaContext())
    capsys.readouterr()
    event = _event("/v2/health/live", "health")
    event["httpMethod"] = "GET"
    with warnings.catch_warnings():
        # Powertools would warn "No application metrics to publish"; the door publishes nothing, quietly.
        warnings.simplefilter("error")
        assert app.handler(event, LocalLambdaContext())["statusCode"] == 200
    assert _emf(capsys.readouterr().out) == []


def test_a_second_value_in_one_invocation_takes_powertools_path(
    app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    app.handler(_event("/v2/models/iris/infer", "warm-up"), LocalLambdaContext())
    capsys.readouterr()
    app.PowertoolsObserver().inference_done(app.service.lifecycle.get("iris", None), 0.5)
    app.handler(_event("/v2/models/iris/infer", "second"), LocalLambdaContext())
    (document,) = _emf(capsys.readouterr().out)
    assert document["InferenceLatency"][0] == 500.0
    assert len(document["InferenceLatency"]) == 2


def test_metrics_of_another_model_go_in_a_document_of_their_own(
    app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """One document names one model: a second model's metrics (a preload of several at init) flush the
    first's before they are recorded, so no value is published under the wrong model."""
    app.handler(_event("/v2/models/iris/infer", "warm-up"), LocalLambdaContext())
    capsys.readouterr()
    iris = app.service.lifecycle.get("iris", None)
    app.PowertoolsObserver().inference_done(iris, 0.25)
    add_sub = app.service.lifecycle.get("add_sub", None)  # loads it: its ModelLoadTime, under add_sub
    app.PowertoolsObserver().inference_done(add_sub, 0.5)
    app.flush_metrics()
    documents = _emf(capsys.readouterr().out)
    assert [(document["model"], _metric_names(document)) for document in documents] == [
        ("iris", ["InferenceLatency"]),
        ("add_sub", ["ModelLoadTime", "InferenceLatency"]),
    ]
    assert documents[0]["InferenceLatency"] == [250.0]
    assert documents[1]["InferenceLatency"] == [500.0]


def test_metrics_disabled_prints_no_emf_as_before(
    populated_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("MODELSHIP_STORE", str(populated_store))
    monkeypatch.setenv("MODELSHIP_PRELOAD", "")
    monkeypatch.setenv("MODELSHIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSHIP_ISOLATE_LOADS", "false")
    _reset_cold_start()
    sys.modules.pop("inference.app", None)
    app = importlib.import_module("inference.app")
    try:
        capsys.readouterr()
        for number in range(3):
            assert (
                app.handler(_event("/v2/models/iris/infer", f"r{number}"), LocalLambdaContext())["statusCode"]
                == 200
            )
        assert _emf(capsys.readouterr().out) == []
    finally:
        app.metrics.metric_set.clear()
        sys.modules.pop("inference.app", None)
        _reset_cold_start()
