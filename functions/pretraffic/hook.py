"""CodeDeploy's BeforeAllowTraffic hook: one smoke inference on the new version before it takes traffic.

CodeDeploy calls this function with a ``DeploymentId`` and a ``LifecycleEventHookExecutionId`` once the
new version is published and before the ``live`` alias sends it any request. The hook invokes that
version (its ARN is ``MODELSHIP_TARGET_VERSION_ARN``, set by the CDK app on every release) with the API
Gateway REST proxy event of one inference on the smoke model, the bundled iris classifier pushed under
``MODELSHIP_SMOKE_MODEL``, and checks the answer: status 200 and the first iris row classified as
setosa. It then reports Succeeded or Failed to CodeDeploy; Failed stops the release and rolls it back.

Every path reports: an error in the check, the invoke or the answer is a Failed verdict, never an
exception that leaves CodeDeploy waiting for its hour-long timeout. Only boto3 and the standard library
(what the Lambda runtime ships), so the function's asset is this folder alone.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Final, Literal

import boto3
from botocore.config import Config

TARGET_VERSION_ENV: Final = "MODELSHIP_TARGET_VERSION_ARN"
SMOKE_MODEL_ENV: Final = "MODELSHIP_SMOKE_MODEL"
# The first row of Fisher's iris data (sepal and petal length and width, cm): class 0, setosa.
SMOKE_INPUT: Final = (5.1, 3.5, 1.4, 0.2)
EXPECTED_CLASS: Final = 0
EXPECTED_LABEL: Final = "setosa"
# Above the inference function's longest timeout (28 s), so the function's own answer arrives first; one
# attempt, since a retried invoke would only hide a flaky version.
INVOKE_CONFIG: Final = Config(connect_timeout=5, read_timeout=40, retries={"total_max_attempts": 1})

Status = Literal["Succeeded", "Failed"]

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)


class SmokeTestFailed(Exception):
    """The new version did not give the expected answer; the message says what it gave."""


def smoke_event(model: str) -> dict[str, Any]:
    """The API Gateway REST proxy event of one inference on ``model`` (``name`` or ``name:version``), as
    API Gateway sends it with ``binaryMediaTypes */*``: the JSON body base64-encoded."""
    name, _, version = model.partition(":")
    path = f"/v2/models/{name}/versions/{version}/infer" if version else f"/v2/models/{name}/infer"
    request = {
        "id": "pretraffic-smoke-test",
        "inputs": [
            {"name": "input", "shape": [1, len(SMOKE_INPUT)], "datatype": "FP32", "data": SMOKE_INPUT}
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
    }
    return {
        "resource": "/v2/{proxy+}",
        "path": path,
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json", "Accept": "application/json"},
        "queryStringParameters": None,
        "pathParameters": {"proxy": path.removeprefix("/v2/")},
        "requestContext": {"requestId": "pretraffic-smoke-test", "path": f"/live{path}", "stage": "live"},
        "body": base64.b64encode(json.dumps(request).encode()).decode(),
        "isBase64Encoded": True,
    }


def check_answer(result: Any) -> str:
    """The top class the proxy result names, if it is the expected one; SmokeTestFailed otherwise."""
    if not isinstance(result, dict):
        raise SmokeTestFailed(f"the function returned {type(result).__name__}, not a proxy result")
    body = result.get("body")
    if result.get("statusCode") != 200:
        raise SmokeTestFailed(f"status {result.get('statusCode')!r}: {str(body)[:500]}")
    try:
        text = base64.b64decode(str(body)) if result.get("isBase64Encoded") else str(body).encode()
        outputs = {output["name"]: output for output in json.loads(text)["outputs"]}
        top = str(outputs["probabilities"]["data"][0])
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise SmokeTestFailed(f"not an inference response ({error!r}): {str(body)[:500]}") from None
    # Classification data is "score:index" or, with labels pushed, "score:index:label".
    index_and_label = top.split(":", 2)[1:]
    if index_and_label not in ([str(EXPECTED_CLASS)], [str(EXPECTED_CLASS), EXPECTED_LABEL]):
        raise SmokeTestFailed(f"classified {SMOKE_INPUT} as {top!r}, expected class {EXPECTED_CLASS}")
    return top


def smoke_test(lambda_client: Any, version_arn: str, model: str) -> str:
    """Invoke the new version with the smoke event; its top class, or SmokeTestFailed."""
    response = lambda_client.invoke(
        FunctionName=version_arn, InvocationType="RequestResponse", Payload=json.dumps(smoke_event(model))
    )
    payload = response["Payload"].read()
    if response.get("FunctionError"):
        raise SmokeTestFailed(f"the function failed ({response['FunctionError']}): {payload[:500]!r}")
    try:
        result = json.loads(payload)
    except ValueError:
        raise SmokeTestFailed(f"the function returned no JSON: {payload[:500]!r}") from None
    return check_answer(result)


def verdict(lambda_client: Any, environ: Mapping[str, str]) -> tuple[Status, str]:
    """Succeeded or Failed, and why. Never raises: anything unexpected is a failed smoke test."""
    version_arn, model = environ.get(TARGET_VERSION_ENV), environ.get(SMOKE_MODEL_ENV)
    if not version_arn or not model:
        return "Failed", f"{TARGET_VERSION_ENV} and {SMOKE_MODEL_ENV} must both be set"
    try:
        top = smoke_test(lambda_client, version_arn, model)
    except SmokeTestFailed as error:
        return "Failed", f"{version_arn}: {error}"
    except Exception as error:  # an AWS error, a timeout, a payload we could not read
        return "Failed", f"{version_arn}: invoking it failed: {error!r}"
    return "Succeeded", f"{version_arn} classified {SMOKE_INPUT} as {top}"


def run(
    event: Mapping[str, Any], lambda_client: Any, codedeploy_client: Any, environ: Mapping[str, str]
) -> Status:
    """Judge the new version and report the verdict to CodeDeploy. Raises only if reporting fails (then
    CodeDeploy times the hook out and the release fails, which is the safe outcome)."""
    deployment_id = event.get("DeploymentId")
    execution_id = event.get("LifecycleEventHookExecutionId")
    if not deployment_id or not execution_id:
        raise ValueError("not a CodeDeploy lifecycle event: DeploymentId and LifecycleEventHookExecutionId")
    status, reason = verdict(lambda_client, environ)
    (logger.info if status == "Succeeded" else logger.error)("smoke test %s: %s", status, reason)
    codedeploy_client.put_lifecycle_event_hook_execution_status(
        deploymentId=deployment_id, lifecycleEventHookExecutionId=execution_id, status=status
    )
    return status


def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    status = run(
        event,
        boto3.client("lambda", config=INVOKE_CONFIG),
        boto3.client("codedeploy"),
        os.environ,
    )
    return {"status": status}
