"""The cloud fallback's pure parts: its configuration, routes, the served-by marks, the breaker, SigV4."""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import orjson
import pybase64
import pytest
from modelship.core.errors import BadRequest

from edge_greengrass.cloud_fallback import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    AwsCredentials,
    CircuitBreaker,
    CloudForwarder,
    HybridHandler,
    ModelRoute,
    add_served_by,
    mark_served_by,
    model_route,
    region_from_host,
    sigv4_headers,
)
from edge_greengrass.recipe_schema import recipe_problems
from edge_greengrass.recipes import TOKEN_EXCHANGE_SERVICE, ModelSource, inference_recipe
from edge_greengrass.settings import (
    CLOUD_ENVIRONMENT,
    CLOUD_KEYS,
    CloudSettings,
    EdgeConfigurationError,
    parse_cloud_configuration,
)
from tests.support.clock import FakeClock
from tests.support.cloud_stub import Recorded, expected_sigv4
from tests.support.oip import read_response

ENDPOINT = "https://abc123.execute-api.eu-west-1.amazonaws.com/prod"
DIGEST = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="


# --- configuration -----------------------------------------------------------------------------------


def test_the_fallback_is_off_unless_an_endpoint_is_set() -> None:
    assert parse_cloud_configuration({}) is None
    assert parse_cloud_configuration({"cloudEndpoint": "  ", "cloudAuth": "sigv4"}) is None


def test_a_full_configuration_parses_from_the_strings_the_nucleus_interpolates() -> None:
    settings = parse_cloud_configuration(
        {
            "cloudEndpoint": ENDPOINT + "/",
            "cloudAuth": "APIKEY",
            "cloudApiKey": "k3y-of-twenty-chars-x",
            "cloudOnlyModels": '["resnet","bert"]',
            "cloudConnectTimeoutMs": "500",
            "cloudReadTimeoutMs": 2500,
            "cloudMaxResponseBytes": "1024",
            "cloudBreakerFailures": "5",
            "cloudBreakerOpenMs": "10000",
            "workerThreads": "ignored here",
        }
    )
    assert settings == CloudSettings(
        endpoint=ENDPOINT,
        auth="apiKey",
        api_key="k3y-of-twenty-chars-x",
        cloud_only_models=frozenset({"resnet", "bert"}),
        connect_timeout_seconds=0.5,
        read_timeout_seconds=2.5,
        max_response_bytes=1024,
        breaker_failures=5,
        breaker_open_seconds=10.0,
    )
    assert "k3y-of-twenty-chars-x" not in repr(settings), "the key never reaches a log line"
    listed = parse_cloud_configuration({"cloudEndpoint": ENDPOINT, "cloudOnlyModels": " a, b.c ,"})
    assert listed is not None and listed.cloud_only_models == frozenset({"a", "b.c"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cloudEndpoint": "http://models.example.com"}, "must use https://"),
        ({"cloudEndpoint": "ftp://models.example.com"}, "must be an https:// URL"),
        ({"cloudEndpoint": "https://user:pw@models.example.com"}, "no user, password"),
        ({"cloudEndpoint": "https://models.example.com/prod?x=1"}, "no user, password, query"),
        ({"cloudEndpoint": "https://models.example.com:99999"}, "is not a URL"),
        ({"cloudEndpoint": 7}, "must be a URL string"),
        ({"cloudAuth": "oauth"}, "cloudAuth must be one of none, sigv4, apiKey"),
        ({"cloudAuth": "apiKey"}, "cloudApiKey must be set"),
        ({"cloudRegion": "Europe"}, "must be an AWS region"),
        ({"cloudOnlyModels": "../etc"}, "not a valid model name"),
        ({"cloudOnlyModels": "[1, 2]"}, "must be a list of model names"),
        ({"cloudOnlyModels": "[unclosed"}, "not a JSON array"),
        ({"cloudConnectTimeoutMs": "0"}, "cloudConnectTimeoutMs must be a whole number from 1 to 60000"),
        ({"cloudReadTimeoutMs": "1e3"}, "cloudReadTimeoutMs must be a whole number"),
        ({"cloudBreakerFailures": "-1"}, "cloudBreakerFailures must be a whole number"),
    ],
)
def test_a_bad_value_is_refused_with_its_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(EdgeConfigurationError) as raised:
        parse_cloud_configuration({"cloudEndpoint": ENDPOINT, **changes})
    assert message in str(raised.value)


def test_a_bad_api_key_is_refused_without_showing_it() -> None:
    with pytest.raises(EdgeConfigurationError) as raised:
        parse_cloud_configuration(
            {"cloudEndpoint": ENDPOINT, "cloudAuth": "apiKey", "cloudApiKey": "sec ret"}
        )
    assert "cloudApiKey" in str(raised.value) and "sec ret" not in str(raised.value)


def test_plain_http_is_accepted_for_a_loopback_endpoint_only() -> None:
    for endpoint in ("http://127.0.0.1:8080", "http://localhost:9000/base", "http://[::1]:80"):
        settings = parse_cloud_configuration({"cloudEndpoint": endpoint})
        assert settings is not None and settings.endpoint == endpoint


def test_every_cloud_key_has_its_environment_variable() -> None:
    assert set(CLOUD_ENVIRONMENT) == set(CLOUD_KEYS)
    assert CLOUD_ENVIRONMENT["cloudEndpoint"] == "MODELSHIP_EDGE_CLOUD_ENDPOINT"
    assert CLOUD_ENVIRONMENT["cloudBreakerOpenMs"] == "MODELSHIP_EDGE_CLOUD_BREAKER_OPEN_MS"


# --- the recipe -----------------------------------------------------------------------------------------


def _recipe(configuration: dict[str, str]) -> dict[str, Any]:
    source = ModelSource("iris", 3, "s3://b/p/models/iris/3/model.onnx", DIGEST, "s3://b/p/m.json", DIGEST)
    return inference_recipe(
        component_name="com.modelship.Inference",
        component_version="1.0.0",
        models=[source],
        zip_uri="s3://b/p/components/com.modelship.Inference/1.0.0/modelship-edge.zip",
        zip_digest=DIGEST,
        venv_dir="venv-0123456789ab",
        configuration=configuration,
    )


def test_the_token_exchange_service_is_a_dependency_only_with_sigv4() -> None:
    signed = _recipe({"cloudEndpoint": ENDPOINT, "cloudAuth": "sigv4"})
    assert signed["ComponentDependencies"][TOKEN_EXCHANGE_SERVICE] == {
        "VersionRequirement": "^2.0.0",
        "DependencyType": "HARD",
    }
    assert recipe_problems(signed) == []
    for configuration in ({}, {"cloudEndpoint": ENDPOINT, "cloudAuth": "none"}):
        assert TOKEN_EXCHANGE_SERVICE not in _recipe(configuration)["ComponentDependencies"]


def test_the_run_step_gets_every_cloud_key_through_setenv_not_the_command_line() -> None:
    recipe = _recipe({})
    run = recipe["Manifests"][0]["Lifecycle"]["Run"]
    cloud = {name: f"{{configuration:/{key}}}" for key, name in CLOUD_ENVIRONMENT.items()}
    # Besides the cloud keys, only the trusted keys of signed models come through Setenv.
    assert run["Setenv"] == {**cloud, "MODELSHIP_TRUSTED_KEYS": "{configuration:/trustedKeys}"}
    assert "cloud" not in run["Script"]
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert all(isinstance(defaults[key], str) for key in CLOUD_KEYS), "every interpolated key exists"
    assert defaults["cloudEndpoint"] == "" and defaults["cloudAuth"] == "none"


def test_an_api_key_or_a_bad_cloud_value_is_refused_in_a_recipe() -> None:
    with pytest.raises(BadRequest, match="deployment's configuration merge"):
        _recipe({"cloudEndpoint": ENDPOINT, "cloudAuth": "apiKey", "cloudApiKey": "k3y-of-twenty-chars-x"})
    with pytest.raises(BadRequest, match="must use https://"):
        _recipe({"cloudEndpoint": "http://models.example.com"})
    # The key itself comes with the deployment: an apiKey recipe without it is fine.
    assert recipe_problems(_recipe({"cloudEndpoint": ENDPOINT, "cloudAuth": "apiKey"})) == []


# --- routes and served-by --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v2/models/iris/infer", ModelRoute("iris", None, "infer")),
        ("/v2/models/iris/versions/3/infer/", ModelRoute("iris", 3, "infer")),
        ("/v2/models/iris", ModelRoute("iris", None, "metadata")),
        ("/v2/models/iris/versions/2/ready", ModelRoute("iris", 2, "ready")),
        ("/v2/models/iris/versions/03/infer", None),
        ("/v2/models/../infer", None),
        ("/v2/models/iris/explain", None),
        ("/v2/health/ready", None),
        ("/v2", None),
    ],
)
def test_model_routes_are_read_as_the_core_routes_them(path: str, route: ModelRoute | None) -> None:
    assert model_route(path) == route


def test_the_served_by_parameter_joins_existing_parameters_in_a_json_response() -> None:
    body = orjson.dumps({"model_name": "m", "parameters": {"labels": ["a"]}, "outputs": []})
    marked, length = add_served_by(body, None, "cloud")
    assert length is None
    assert orjson.loads(marked)["parameters"] == {"labels": ["a"], "served_by": "cloud"}


def test_the_served_by_parameter_in_a_binary_response_fixes_the_header_length() -> None:
    tensor = np.arange(6, dtype=np.float32)
    header = orjson.dumps(
        {
            "model_name": "m",
            "outputs": [
                {"name": "y", "datatype": "FP32", "shape": [6], "parameters": {"binary_data_size": 24}}
            ],
        }
    )
    result = {
        "statusCode": 200,
        "headers": {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
        "body": pybase64.b64encode_as_string(header + tensor.tobytes()),
        "isBase64Encoded": True,
    }
    marked = mark_served_by(result, "edge", ModelRoute("m", None, "infer"))
    assert marked["headers"]["x-modelship-served-by"] == "edge"
    length = marked["headers"]["Inference-Header-Content-Length"]
    assert int(length) > len(header)
    document, arrays = read_response(pybase64.b64decode(marked["body"]), length)
    assert document["parameters"] == {"served_by": "edge"}
    assert arrays["y"].tolist() == tensor.tolist()


def test_an_inference_answer_that_is_not_a_response_document_is_a_502() -> None:
    result = {"statusCode": 200, "headers": {}, "body": "not json", "isBase64Encoded": False}
    marked = mark_served_by(result, "cloud", ModelRoute("m", None, "infer"))
    assert marked["statusCode"] == 502 and "error" in orjson.loads(marked["body"])
    assert marked["headers"]["x-modelship-served-by"] == "cloud"
    error = {"statusCode": 404, "headers": {}, "body": '{"error":"no model"}', "isBase64Encoded": False}
    assert mark_served_by(error, "edge", ModelRoute("m", None, "infer"))["body"] == '{"error":"no model"}'


def test_what_goes_to_the_cloud() -> None:
    settings = CloudSettings(endpoint=ENDPOINT, cloud_only_models=frozenset({"bert"}))
    handler = HybridHandler(
        lambda event, context: {},
        {"iris": frozenset({2}), "bert": frozenset({1})},
        CloudForwarder(settings, {}),
    )
    assert not handler.goes_to_cloud(ModelRoute("iris", None, "infer"))
    assert not handler.goes_to_cloud(ModelRoute("iris", 2, "infer"))
    assert handler.goes_to_cloud(ModelRoute("iris", 3, "infer")), "a version the device does not hold"
    assert handler.goes_to_cloud(ModelRoute("resnet", None, "metadata")), "a model the device does not hold"
    assert handler.goes_to_cloud(ModelRoute("bert", None, "infer")), "held, but cloud-only"


def test_the_region_comes_from_an_execute_api_host() -> None:
    assert region_from_host("abc123.execute-api.eu-west-1.amazonaws.com") == "eu-west-1"
    assert region_from_host("models.example.com") == ""
    forwarder = CloudForwarder(
        CloudSettings(endpoint="https://models.example.com", auth="sigv4"), {"AWS_REGION": "ap-south-1"}
    )
    assert forwarder.region == "ap-south-1"
    assert any("AWS_CONTAINER_CREDENTIALS_FULL_URI" in problem for problem in forwarder.problems())


# --- the breaker --------------------------------------------------------------------------------------


def test_the_breaker_opens_after_failures_in_a_row_probes_once_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, open_seconds=10.0, clock=clock)
    breaker.failed()
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    breaker.failed()
    assert breaker.state == CLOSED and breaker.acquire() is None, "a success resets the count"
    breaker.failed()
    assert breaker.state == OPEN
    clock.advance(4)
    assert breaker.acquire() == pytest.approx(6.0)
    clock.advance(6)
    assert breaker.acquire() is None and breaker.state == HALF_OPEN, "the probe goes"
    assert breaker.acquire() == 0.0, "no second request while the probe runs"
    breaker.failed()
    assert breaker.state == OPEN and breaker.acquire() == pytest.approx(10.0), "a failed probe reopens it"
    clock.advance(10)
    assert breaker.acquire() is None
    breaker.abandoned()
    assert breaker.state == OPEN and breaker.acquire() is None, "a probe that proved nothing passes the turn"
    breaker.succeeded()
    assert breaker.state == CLOSED and breaker.acquire() is None


# --- SigV4 -----------------------------------------------------------------------------------------------


def test_awscrt_signs_as_botocore_does() -> None:
    body = b'{"inputs":[]}'
    headers = {
        "host": "abc123.execute-api.eu-west-1.amazonaws.com",
        "content-type": "application/json",
        "content-length": str(len(body)),
        "inference-header-content-length": "13",
    }
    credentials = AwsCredentials("ASIAEXAMPLE", "example-secret", "example-session-token")
    when = datetime.datetime(2026, 7, 1, 12, 30, 5, tzinfo=datetime.UTC)
    signed = sigv4_headers(
        "POST", "/prod/v2/models/iris/infer", headers, body, credentials, "eu-west-1", when
    )
    assert signed["X-Amz-Date"] == "20260701T123005Z"
    assert signed["X-Amz-Security-Token"] == "example-session-token"
    recorded = Recorded(
        "POST",
        "/prod/v2/models/iris/infer",
        {**headers, **{name.lower(): value for name, value in signed.items()}},
        body,
    )
    expected = expected_sigv4(
        recorded,
        "https://abc123.execute-api.eu-west-1.amazonaws.com",
        {"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "example-secret", "Token": "example-session-token"},
        "eu-west-1",
    )
    assert signed["Authorization"] == expected
    assert "SignedHeaders=content-length;content-type;host;inference-header-content-length;" in expected
    other = sigv4_headers(
        "POST", "/prod/v2/models/iris/infer", headers, body + b" ", credentials, "eu-west-1", when
    )
    assert other["Authorization"] != signed["Authorization"], "the body is signed"
