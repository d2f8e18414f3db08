"""The pre-traffic hook (functions/pretraffic/hook.py) with botocore's Stubber: every verdict is reported.

The Lambda and CodeDeploy clients are real boto3 clients whose calls the Stubber answers, so the request
parameters are checked against the services' models and nothing reaches the network. The smoke event
itself goes through the real door (doors.apigw) and the iris model, so the hook asks what the function
answers.
"""

from __future__ import annotations

import ast
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError
from botocore.response import StreamingBody
from botocore.stub import Stubber
from modelship.core.service import InferenceService
from modelship.doors.apigw import handle_event
from pretraffic import hook

VERSION_ARN = "arn:aws:lambda:eu-west-1:123456789012:function:modelship-prod-inference:7"
ENVIRON = {hook.TARGET_VERSION_ENV: VERSION_ARN, hook.SMOKE_MODEL_ENV: "iris"}
EVENT = {"DeploymentId": "d-ABCDEF123", "LifecycleEventHookExecutionId": "execution-1"}


def client(service: str) -> Any:
    return boto3.client(
        service,
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@dataclass
class Stubs:
    """Real Lambda and CodeDeploy clients, answered by Stubbers: requests are checked against the models."""

    lambda_client: Any
    lambdas: Stubber
    codedeploy_client: Any
    codedeploy: Stubber

    def expect_invoke(self, payload: object, **response: object) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.lambdas.add_response(
            "invoke",
            {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(data), len(data)), **response},
            {
                "FunctionName": VERSION_ARN,
                "InvocationType": "RequestResponse",
                "Payload": json.dumps(hook.smoke_event("iris")),
            },
        )

    def expect_report(self, status: str) -> None:
        self.codedeploy.add_response(
            "put_lifecycle_event_hook_execution_status",
            {"lifecycleEventHookExecutionId": "execution-1"},
            {"deploymentId": "d-ABCDEF123", "lifecycleEventHookExecutionId": "execution-1", "status": status},
        )

    def run(self, environ: dict[str, str] = ENVIRON, lambda_client: Any = None) -> str:
        return hook.run(EVENT, lambda_client or self.lambda_client, self.codedeploy_client, environ)


@pytest.fixture
def stubs() -> Iterator[Stubs]:
    lambda_client, codedeploy_client = client("lambda"), client("codedeploy")
    with Stubber(lambda_client) as lambdas, Stubber(codedeploy_client) as codedeploy:
        yield Stubs(lambda_client, lambdas, codedeploy_client, codedeploy)
        lambdas.assert_no_pending_responses()
        codedeploy.assert_no_pending_responses()


def answer(top: str, status: int = 200) -> dict[str, Any]:
    document = {"model_name": "iris", "outputs": [{"name": "probabilities", "data": [top]}]}
    return {"statusCode": status, "headers": {}, "body": json.dumps(document), "isBase64Encoded": False}


def test_the_smoke_event_gets_the_expected_answer_from_the_real_door(service: InferenceService) -> None:
    result = handle_event(service, hook.smoke_event("iris"))
    assert result["statusCode"] == 200, result
    assert hook.check_answer(result).endswith(":0:setosa")
    versioned = handle_event(service, hook.smoke_event("iris:1"))
    assert hook.check_answer(versioned).endswith(":0:setosa")


@pytest.mark.parametrize(
    ("payload", "response", "verdict"),
    [
        (answer("0.97:0:setosa"), {}, "Succeeded"),
        (answer("0.97:0"), {}, "Succeeded"),  # pushed without labels: judged by its class index
        (answer("0.81:2:virginica"), {}, "Failed"),  # the wrong class
        (answer("0.97:0:versicolor"), {}, "Failed"),  # the right index under another label: not iris
        (answer("0.97"), {}, "Failed"),  # not a classification
        (answer("0.97:0:setosa", status=503), {}, "Failed"),  # the model could not be loaded
        ({"statusCode": 200, "body": "not json"}, {}, "Failed"),
        ({"statusCode": 200, "body": json.dumps({"outputs": []})}, {}, "Failed"),
        (["not", "a", "proxy", "result"], {}, "Failed"),
        (b"\xff not json at all", {}, "Failed"),
        ({"errorMessage": "Task timed out"}, {"FunctionError": "Unhandled"}, "Failed"),
    ],
)
def test_the_answer_decides_the_verdict(
    stubs: Stubs, payload: object, response: dict[str, object], verdict: str
) -> None:
    stubs.expect_invoke(payload, **response)
    stubs.expect_report(verdict)
    assert stubs.run() == verdict


@pytest.mark.parametrize(
    "code", ["ResourceNotFoundException", "AccessDeniedException", "TooManyRequestsException"]
)
def test_an_invoke_error_fails(stubs: Stubs, code: str) -> None:
    stubs.lambdas.add_client_error("invoke", service_error_code=code, http_status_code=403)
    stubs.expect_report("Failed")
    assert stubs.run() == "Failed"


def test_a_timeout_fails(stubs: Stubs) -> None:
    class TimingOut:
        def invoke(self, **kwargs: object) -> None:
            raise ReadTimeoutError(endpoint_url="https://lambda.eu-west-1.amazonaws.com")

    stubs.expect_report("Failed")
    assert stubs.run(lambda_client=TimingOut()) == "Failed"


@pytest.mark.parametrize("missing", [hook.TARGET_VERSION_ENV, hook.SMOKE_MODEL_ENV])
def test_missing_configuration_fails_without_invoking(stubs: Stubs, missing: str) -> None:
    stubs.expect_report("Failed")
    assert stubs.run({key: value for key, value in ENVIRON.items() if key != missing}) == "Failed"


def test_a_failed_report_is_raised_not_swallowed(stubs: Stubs) -> None:
    """Nothing left to report to: raise, so the hook's error is logged and CodeDeploy times it out."""
    stubs.expect_invoke(answer("0.97:0:setosa"))
    stubs.codedeploy.add_client_error("put_lifecycle_event_hook_execution_status", "AccessDeniedException")
    with pytest.raises(Exception, match="AccessDenied"):
        stubs.run()


def test_an_event_that_is_not_codedeploys_is_refused(stubs: Stubs) -> None:
    with pytest.raises(ValueError, match="not a CodeDeploy lifecycle event"):
        hook.run({}, stubs.lambda_client, stubs.codedeploy_client, ENVIRON)


def test_the_versioned_smoke_event_names_the_version() -> None:
    assert hook.smoke_event("iris:3")["path"] == "/v2/models/iris/versions/3/infer"
    assert hook.smoke_event("iris")["path"] == "/v2/models/iris/infer"


def test_the_hook_imports_only_the_standard_library_and_boto3() -> None:
    """Its asset is its own folder, on a runtime that ships boto3: anything else would fail to import."""
    tree = ast.parse(Path(hook.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    top_level = {name.split(".")[0] for name in imported}
    assert top_level - sys.stdlib_module_names == {"boto3", "botocore"}
