"""The real CDK app on LocalStack, called through API Gateway, with Lambda run by our process executor.

Tests run in file order and share one deployment; the last one reconfigures the function.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.integration.support import (
    AWS_ENV,
    STATE_DIR,
    Deployment,
    HttpResponse,
    Timings,
    aws_client,
    http,
)
from tests.support.bad_requests import BadRequestCase, cases_for_deployment
from tests.support.models import random_classifier
from tests.support.oip import binary_request, read_response
from tests.support.processes import run_modelship

pytestmark = [pytest.mark.localstack, pytest.mark.slow, pytest.mark.timeout(1200)]

SAMPLE = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
WARM_INVOKES = 20
JSON_HEADERS = {"Content-Type": "application/json"}
BINARY_CONTENT_TYPE = "application/octet-stream"


def store_key(deployment: Deployment, name: str, version: int, leaf: str) -> str:
    prefix = deployment.store.removeprefix("s3://").partition("/")[2].strip("/")
    key = f"models/{name}/{version}/{leaf}"
    return f"{prefix}/{key}" if prefix else key


def stored_model(deployment: Deployment, name: str, version: int) -> bytes:
    """The model bytes exactly as the function reads them from the store."""
    response = aws_client("s3").get_object(
        Bucket=deployment.bucket, Key=store_key(deployment, name, version, "model.onnx")
    )
    return bytes(response["Body"].read())


def run_onnxruntime(model: bytes, batch: list[list[float]]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    results = session.run(names, {"input": np.asarray(batch, dtype=np.float32)})
    return dict(zip(names, results, strict=True))


def infer_json(
    deployment: Deployment, path: str, batch: list[list[float]], timeout: float = 60
) -> HttpResponse:
    body = {"inputs": [{"name": "input", "shape": [len(batch), 4], "datatype": "FP32", "data": batch}]}
    return http(
        "POST", f"{deployment.base_url}{path}", json.dumps(body).encode(), JSON_HEADERS, timeout=timeout
    )


def outputs_by_name(document: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        output["name"]: np.asarray(output["data"]).reshape(output["shape"]) for output in document["outputs"]
    }


def assert_matches(served: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(served["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(served["label"], expected["label"])


def assert_json_error(response: HttpResponse, status: int) -> None:
    assert response.status == status, (response.status, response.body[:500])
    document = response.json()
    assert isinstance(document.get("error"), str) and document["error"], document


def modelship_cli(*args: str) -> None:
    run_modelship(*args, env=AWS_ENV, check=True)


def test_cold_then_warm_invokes(deployment: Deployment, timings: Timings) -> None:
    """The first call starts an execution environment (init imports onnxruntime and loads the model);
    later calls reuse it."""
    cold = http("GET", f"{deployment.base_url}/v2/health/live", timeout=120)
    assert cold.status == 200, cold.body[:500]
    timings.record("cold_invoke_ms", round(cold.seconds * 1000))
    first_infer = infer_json(deployment, "/v2/models/iris/infer", SAMPLE[:1])
    assert first_infer.status == 200, first_infer.body[:500]
    timings.record("first_infer_after_cold_ms", round(first_infer.seconds * 1000))
    warm = []
    for _ in range(WARM_INVOKES):
        response = infer_json(deployment, "/v2/models/iris/infer", SAMPLE[:1], timeout=30)
        assert response.status == 200, response.body[:500]
        warm.append(response.seconds * 1000)
    timings.record(
        "warm_infer_ms",
        {"n": len(warm), "median": round(statistics.median(warm), 1), "max": round(max(warm), 1)},
    )


def test_json_inference_matches_onnxruntime(deployment: Deployment) -> None:
    response = infer_json(deployment, "/v2/models/iris/infer", SAMPLE)
    assert response.status == 200, response.body[:500]
    document = response.json()
    assert document["model_name"] == "iris"
    assert str(document.get("model_version")) == "1"
    assert_matches(outputs_by_name(document), run_onnxruntime(stored_model(deployment, "iris", 1), SAMPLE))


def test_binary_inference_matches_onnxruntime(deployment: Deployment) -> None:
    """Triton's binary tensor extension: a JSON header, then raw little-endian tensors, both ways."""
    body, headers = binary_request(
        {"input": (np.asarray(SAMPLE, dtype="<f4"), "FP32")},
        outputs=[
            {"name": "probabilities", "parameters": {"binary_data": True}},
            {"name": "label", "parameters": {"binary_data": True}},
        ],
    )
    response = http(
        "POST",
        f"{deployment.base_url}/v2/models/iris/infer",
        body,
        {**headers, "Content-Type": BINARY_CONTENT_TYPE, "Accept": BINARY_CONTENT_TYPE},
    )
    assert response.status == 200, response.body[:500]
    _, served = read_response(response.body, response.headers["inference-header-content-length"])
    assert_matches(served, run_onnxruntime(stored_model(deployment, "iris", 1), SAMPLE))


# A body over 1 MiB would test LocalStack's gateway limits rather than ours: the functional tier covers it.
@pytest.mark.parametrize("case", cases_for_deployment(max_body_bytes=1 << 20), ids=lambda case: case.id)
def test_bad_requests_get_json_errors(deployment: Deployment, case: BadRequestCase) -> None:
    # urllib would refuse a blank in a path; send the table's path otherwise as it is.
    url = f"{deployment.base_url}{case.path.replace(' ', '%20')}"
    response = http(case.method, url, case.body or None, {**JSON_HEADERS, **case.headers}, timeout=30)
    assert_json_error(response, case.status)
    assert case.message in response.json()["error"]
    # ... and the function survives it.
    assert http("GET", f"{deployment.base_url}/v2/health/live", timeout=30).status == 200


def test_new_version_is_served(deployment: Deployment, tmp_path: Path) -> None:
    model_v2 = tmp_path / "iris-v2.onnx"
    model_v2.write_bytes(random_classifier(seed=2))
    labels = STATE_DIR / "default-model" / "iris.labels.json"
    modelship_cli(
        "push",
        str(model_v2),
        "--name",
        "iris",
        "--version",
        "2",
        "--labels",
        str(labels),
        "--store",
        deployment.store,
    )

    response = infer_json(deployment, "/v2/models/iris/versions/2/infer", SAMPLE)
    assert response.status == 200, response.body[:500]
    document = response.json()
    assert str(document.get("model_version")) == "2"
    assert_matches(outputs_by_name(document), run_onnxruntime(model_v2.read_bytes(), SAMPLE))
    # Version 1 is still there, and still itself.
    v1 = infer_json(deployment, "/v2/models/iris/versions/1/infer", SAMPLE)
    assert v1.status == 200, v1.body[:500]
    assert_matches(outputs_by_name(v1.json()), run_onnxruntime(stored_model(deployment, "iris", 1), SAMPLE))


def test_corrupted_store_warm_keeps_serving_cold_fails_closed(
    deployment: Deployment, timings: Timings, tmp_path: Path
) -> None:
    """A warm environment keeps the model it verified at load; a new one refuses the corrupted bytes."""
    s3 = aws_client("s3")
    model = random_classifier(seed=3)
    path = tmp_path / "guarded.onnx"
    path.write_bytes(model)
    modelship_cli("push", str(path), "--name", "guarded", "--version", "1", "--store", deployment.store)
    expected = run_onnxruntime(model, SAMPLE)

    loaded = infer_json(deployment, "/v2/models/guarded/infer", SAMPLE)
    assert loaded.status == 200, loaded.body[:500]
    assert_matches(outputs_by_name(loaded.json()), expected)

    key = store_key(deployment, "guarded", 1, "model.onnx")
    corrupted = bytearray(model)
    corrupted[len(corrupted) // 2] ^= 0xFF
    s3.put_object(Bucket=deployment.bucket, Key=key, Body=bytes(corrupted))

    warm = infer_json(deployment, "/v2/models/guarded/versions/1/infer", SAMPLE)
    assert warm.status == 200, warm.body[:500]
    assert_matches(outputs_by_name(warm.json()), expected)

    # A configuration change, published as a new version behind the alias, means new environments, as
    # in Lambda (the old version's environments are not stopped, only no longer called). The fresh cache
    # folder makes sure the new environment cannot fall back on the verified copy the old one cached:
    # on this host, unlike in Lambda, /tmp is shared between environments.
    force_new_environments(
        deployment, {"MODELSHIP_CACHE_DIR": str(STATE_DIR / f"cache-{uuid.uuid4().hex[:8]}")}
    )
    cold = infer_json(deployment, "/v2/models/guarded/versions/1/infer", SAMPLE, timeout=120)
    timings.record("cold_invoke_after_config_change_ms", round(cold.seconds * 1000))
    assert_json_error(cold, 503)
    # The new environment is healthy otherwise, and serves the intact model.
    intact = infer_json(deployment, "/v2/models/iris/versions/1/infer", SAMPLE)
    assert intact.status == 200, intact.body[:500]

    s3.delete_object(Bucket=deployment.bucket, Key=key)
    missing = infer_json(deployment, "/v2/models/guarded/versions/1/infer", SAMPLE)
    assert_json_error(missing, 503)


def force_new_environments(deployment: Deployment, variables: dict[str, str]) -> None:
    """Change the function's configuration the way a deployment does: new settings, a newly published
    version, and the API's alias moved to it. Lambda (and LocalStack) start new environments for it."""
    lambda_client = aws_client("lambda")
    name = deployment.function_name
    current = lambda_client.get_function_configuration(FunctionName=name)
    merged = {**current.get("Environment", {}).get("Variables", {}), **variables}
    lambda_client.update_function_configuration(FunctionName=name, Environment={"Variables": merged})
    wait_until_active(name, "$LATEST")
    if deployment.alias is not None:
        version = lambda_client.publish_version(FunctionName=name)["Version"]
        wait_until_active(name, version)
        lambda_client.update_alias(FunctionName=name, Name=deployment.alias, FunctionVersion=version)


def wait_until_active(name: str, qualifier: str) -> None:
    lambda_client = aws_client("lambda")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = lambda_client.get_function_configuration(FunctionName=name, Qualifier=qualifier)
        if state.get("LastUpdateStatus", "Successful") == "Successful" and state.get("State") == "Active":
            return
        time.sleep(0.5)
    pytest.fail(f"{name}:{qualifier} did not become active")
