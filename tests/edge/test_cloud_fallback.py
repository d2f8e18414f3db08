"""Hybrid serving on a device: the component, deployed by the simulated nucleus, falls back to the cloud.

The device holds iris; a second real modelship server on 127.0.0.1 plays the cloud endpoint and holds
add_sub (and iris). The component is packaged with ``cloudAuth: sigv4``, so its recipe depends on the
token exchange service: the nucleus runs TES first, and the door signs each forwarded request with the
credentials TES vends (checked here against botocore's own signer). The deployment points
``cloudEndpoint`` at the cloud server, with short timeouts and a breaker that opens after 2 failures.

The Install step is the real one; its virtualenv is made beforehand from this test run's packages (a
complete ``venv-<digest>`` with its marker), so it exits at once without the network, as it does on a
device at every launch after the first. The tests run in file order, as one story: served on the device,
forwarded as JSON and as binary, a cloud that hangs (504), a cloud that is gone (503, the breaker opens),
the breaker refusing at once, then a probe that closes it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import subprocess
import sys
import sysconfig
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelship.core.repository import ModelRepository

from edge_greengrass.install import MARKER_FILE
from edge_greengrass.packaging import build_components
from edge_greengrass.recipe_schema import check_recipe
from edge_greengrass.recipes import TOKEN_EXCHANGE_SERVICE, ModelSource
from tests.edge.conftest import REGION, s3_client
from tests.edge.nucleus import FINISHED, RUNNING, Nucleus, running_nucleus
from tests.support.cloud_stub import RecordingCloud, SilentServer, expected_sigv4
from tests.support.models import add_sub_model, write_model
from tests.support.oip import binary_request, json_request, read_response
from tests.support.processes import free_port

pytestmark = pytest.mark.timeout(600)

INFERENCE = "com.modelship.Inference"
STORE_PREFIX = "fleet"
BREAKER_OPEN_SECONDS = 1.5
READ_TIMEOUT_SECONDS = 1.5
IRIS = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
A = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
B = np.array([[0.5, 0.5, 0.5, 0.5], [1, 1, 1, 1]], np.float32)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HybridDevice:
    nucleus: Nucleus
    port: int
    cloud: RecordingCloud
    cloud_store: Path
    cache: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restart_cloud(self) -> RecordingCloud:
        self.cloud = RecordingCloud(self.cloud_store, self.cache, self.cloud.port)
        return self.cloud


def ask(url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def seed_virtualenv(work: Path, venv_name: str, requirements: bytes) -> None:
    """A complete ``{work}/venv-<digest>`` whose packages are this test run's (install.py's marker says so),
    so the real Install step finds it done, as on a device's later launches."""
    venv = work / venv_name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_paths()["purelib"])
    (site_packages,) = (venv / "lib").glob("python3*/site-packages")
    (site_packages / "modelship-test-packages.pth").write_text(
        f"import site; site.addsitedir({str(purelib)!r})\n"
    )
    (venv / MARKER_FILE).write_text(hashlib.sha256(requirements).hexdigest() + "\n", encoding="ascii")


@pytest.fixture(scope="module")
def device(
    tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str, iris_model: tuple[bytes, list[str]]
) -> Iterator[HybridDevice]:
    root = tmp_path_factory.mktemp("hybrid")
    scratch = root / "scratch"
    scratch.mkdir()
    data, labels = iris_model
    # The device's model: iris, in an S3 store, as `modelship push` leaves it.
    device_store = ModelRepository.open(str(root / "device-store"))
    manifest = device_store.push(write_model(scratch, "iris", data), "iris", labels=labels)
    model_folder = root / "device-store" / "models" / "iris" / str(manifest.version)
    bucket = f"hybrid-{uuid.uuid4().hex[:12]}"
    s3 = s3_client(moto_endpoint)
    s3.create_bucket(Bucket=bucket)
    manifest_bytes = (model_folder / "manifest.json").read_bytes()
    model_bytes = (model_folder / "model.onnx").read_bytes()
    for name, body in (("model.onnx", model_bytes), ("manifest.json", manifest_bytes)):
        s3.put_object(Bucket=bucket, Key=f"{STORE_PREFIX}/models/iris/{manifest.version}/{name}", Body=body)
    source = ModelSource.from_store(
        bucket,
        STORE_PREFIX,
        "iris",
        manifest.version,
        hashlib.sha256(model_bytes).hexdigest(),
        manifest_bytes,
    )
    # The cloud's store: add_sub, which the device does not hold, and iris.
    cloud_store = root / "cloud-store"
    cloud_repository = ModelRepository.open(str(cloud_store))
    cloud_repository.push(write_model(scratch, "add_sub", add_sub_model()), "add_sub")
    cloud_repository.push(write_model(scratch, "iris", data), "iris", labels=labels)
    cache = root / "cloud-cache"
    cloud = RecordingCloud(cloud_store, cache)

    model_recipes, inference, zip_bytes = build_components(
        f"s3://{bucket}/{STORE_PREFIX}", [source], configuration={"cloudAuth": "sigv4"}
    )
    zip_uri = inference["Manifests"][0]["Artifacts"][0]["Uri"]
    s3.put_object(Bucket=bucket, Key=zip_uri.removeprefix(f"s3://{bucket}/"), Body=zip_bytes)
    port = free_port()
    with running_nucleus(root / "greengrass" / "v2", moto_endpoint, region=REGION) as nucleus:
        hybrid = HybridDevice(nucleus, port, cloud, cloud_store, cache)
        try:
            for recipe in (*model_recipes, inference):
                check_recipe(recipe)
                nucleus.register(recipe)
            venv_name = re.search(r"venv-[0-9a-f]+", inference["Manifests"][0]["Lifecycle"]["Run"]["Script"])
            assert venv_name is not None
            requirements = zipfile.ZipFile(BytesIO(zip_bytes)).read("requirements.txt")
            seed_virtualenv(nucleus.work_path(INFERENCE), venv_name.group(0), requirements)
            configuration = {
                "port": str(port),
                "cloudEndpoint": cloud.url,
                "cloudConnectTimeoutMs": "1000",
                "cloudReadTimeoutMs": str(int(READ_TIMEOUT_SECONDS * 1000)),
                "cloudBreakerFailures": "2",
                "cloudBreakerOpenMs": str(int(BREAKER_OPEN_SECONDS * 1000)),
            }
            result = nucleus.deploy(
                {INFERENCE: inference["ComponentVersion"]},
                configuration={INFERENCE: {"merge": configuration}},
                timeout=180,
            )
            assert result.status == "SUCCEEDED", nucleus.logs(INFERENCE)[-4000:]
            deadline = time.monotonic() + 120
            while True:
                try:
                    if ask(hybrid.url, "GET", "/v2/health/ready").status == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, nucleus.logs(INFERENCE)[-4000:]
                time.sleep(0.2)
            yield hybrid
        finally:
            nucleus.stop_all()
            hybrid.cloud.stop()


def test_tes_runs_first_and_the_door_serves_what_it_holds_on_the_device(device: HybridDevice) -> None:
    nucleus = device.nucleus
    assert nucleus.state(TOKEN_EXCHANGE_SERVICE) == RUNNING, "the recipe depends on TES (cloudAuth sigv4)"
    assert nucleus.state(INFERENCE) == RUNNING and nucleus.state("com.modelship.model.iris") == FINISHED
    answer = ask(device.url, "POST", "/v2/models/iris/infer", json_request({"input": (IRIS, "FP32")}))
    assert answer.status == 200, answer.body
    assert answer.headers["x-modelship-served-by"] == "edge"
    assert answer.json()["parameters"]["served_by"] == "edge"
    assert device.cloud.requests == [], "a model the device holds never leaves it"


def test_a_model_the_device_does_not_hold_is_forwarded_as_json_and_signed_with_tes_credentials(
    device: HybridDevice,
) -> None:
    body = json_request({"a": (A, "FP32"), "b": (B, "FP32")}, id="hybrid-json")
    answer = ask(
        device.url,
        "POST",
        "/v2/models/add_sub/infer",
        body,
        {"Content-Type": "application/json", "Authorization": "Bearer local-caller", "x-api-key": "caller"},
    )
    assert answer.status == 200, answer.body
    assert answer.headers["x-modelship-served-by"] == "cloud"
    document = answer.json()
    assert document["parameters"]["served_by"] == "cloud" and document["id"] == "hybrid-json"
    outputs = {output["name"]: output["data"] for output in document["outputs"]}
    assert outputs["sum"] == (A + B).ravel().tolist() and outputs["diff"] == (A - B).ravel().tolist()

    (recorded,) = device.cloud.requests
    assert recorded.path == "/v2/models/add_sub/infer" and recorded.body == body
    credentials = device.nucleus.tes_credentials
    assert recorded.headers["x-amz-security-token"] == credentials["Token"]
    assert recorded.headers["authorization"] == expected_sigv4(
        recorded, device.cloud.url, credentials, REGION
    )
    assert "x-api-key" not in recorded.headers, "the caller's own key stays on the device"
    assert "local-caller" not in json.dumps(recorded.headers)
    assert device.nucleus.tes_requests == [INFERENCE], "credentials came from TES with the component's token"
    log = device.nucleus.logs(INFERENCE)
    assert credentials["SecretAccessKey"] not in log and credentials["Token"] not in log


def test_metrics_on_the_device_show_the_load_time_behind_the_fallback_and_count_forwarded_requests(
    device: HybridDevice,
) -> None:
    """GET /metrics on the component as the device runs it (the handler wrapped by the fallback). The
    IPC publication of the same figures cannot run here (the harness has no IPC server: the door logs
    that IPC is off); the recipe's configuration and policy for it reach the device."""
    held = ask(device.url, "POST", "/v2/models/iris/infer", json_request({"input": (IRIS, "FP32")}))
    forwarded = ask(
        device.url, "POST", "/v2/models/add_sub/infer", json_request({"a": (A, "FP32"), "b": (B, "FP32")})
    )
    assert (held.status, forwarded.status) == (200, 200)
    answer = ask(device.url, "GET", "/metrics")
    assert answer.status == 200, answer.body
    samples = {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in answer.body.decode().splitlines())
        if not name.startswith("#")
    }
    assert samples['modelship_model_load_seconds{model="iris",version="1"}'] > 0
    assert samples["modelship_models_loaded"] == 1
    assert samples['modelship_http_requests_total{endpoint="infer",model="iris",status="200"}'] >= 1
    assert samples['modelship_http_requests_total{endpoint="infer",model="add_sub",status="200"}'] >= 1
    configuration = device.nucleus.configuration(INFERENCE)
    assert configuration["metricsTopic"] == "modelship/metrics"
    assert configuration["metricsIntervalSeconds"] == "60"
    policy = configuration["accessControl"]["aws.greengrass.ipc.pubsub"][f"{INFERENCE}:metrics:1"]
    assert policy["operations"] == ["aws.greengrass#PublishToTopic"]
    assert policy["resources"] == ["modelship/metrics"]
    assert "IPC is off" in device.nucleus.logs(INFERENCE)


def test_a_binary_request_is_forwarded_in_binary_and_the_served_by_parameter_fits_its_header(
    device: HybridDevice,
) -> None:
    body, headers = binary_request(
        {"a": (A, "FP32"), "b": (B, "FP32")}, id="hybrid-binary", parameters={"binary_data_output": True}
    )
    answer = ask(
        device.url,
        "POST",
        "/v2/models/add_sub/infer",
        body,
        {"Content-Type": "application/octet-stream", **headers},
    )
    assert answer.status == 200, answer.body
    assert answer.headers["x-modelship-served-by"] == "cloud"
    document, arrays = read_response(answer.body, answer.headers["inference-header-content-length"])
    assert document["parameters"]["served_by"] == "cloud" and document["id"] == "hybrid-binary"
    assert arrays["sum"].tolist() == (A + B).tolist() and arrays["diff"].tolist() == (A - B).tolist()
    recorded = device.cloud.requests[-1]
    assert recorded.body == body
    assert recorded.headers["inference-header-content-length"] == headers["inference-header-content-length"]


def test_a_cloud_that_hangs_answers_504_within_the_read_timeout(device: HybridDevice) -> None:
    device.cloud.stop()
    silent = SilentServer(device.cloud.port)
    try:
        answer = ask(device.url, "POST", "/v2/models/add_sub/infer", json_request({"a": (A, "FP32")}))
    finally:
        silent.stop()
    assert answer.status == 504, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert f"did not answer within {READ_TIMEOUT_SECONDS:g} s" in answer.json()["error"]
    assert answer.headers["x-modelship-served-by"] == "cloud"
    assert silent.accepted == 1


def test_a_cloud_that_is_gone_answers_503_and_opens_the_breaker(device: HybridDevice) -> None:
    answer = ask(device.url, "POST", "/v2/models/add_sub/infer", json_request({"a": (A, "FP32")}))
    assert answer.status == 503, answer.body
    assert "unreachable" in answer.json()["error"]
    # The second failure in a row opened the breaker: a cloud that is back is not even tried.
    cloud = device.restart_cloud()
    refused = ask(device.url, "POST", "/v2/models/add_sub/infer", json_request({"a": (A, "FP32")}))
    assert refused.status == 503 and "circuit open" in refused.json()["error"], refused.body
    assert int(refused.headers["retry-after"]) >= 1
    assert cloud.requests == []
    # The device's own models are not affected.
    local = ask(device.url, "POST", "/v2/models/iris/infer", json_request({"input": (IRIS, "FP32")}))
    assert local.status == 200 and local.headers["x-modelship-served-by"] == "edge"


def test_after_the_open_period_a_probe_succeeds_and_closes_the_breaker(device: HybridDevice) -> None:
    body = json_request({"a": (A, "FP32"), "b": (B, "FP32")})
    deadline = time.monotonic() + 30 * BREAKER_OPEN_SECONDS
    while True:
        answer = ask(device.url, "POST", "/v2/models/add_sub/infer", body)
        if answer.status != 503:
            break
        assert "circuit open" in answer.json()["error"]
        assert time.monotonic() < deadline, "the breaker never let a probe through"
        time.sleep(0.2)
    assert answer.status == 200 and answer.headers["x-modelship-served-by"] == "cloud", answer.body
    assert len(device.cloud.requests) == 1, "the probe was the first request to reach the cloud again"
    again = ask(device.url, "POST", "/v2/models/add_sub/infer", body)
    assert again.status == 200 and len(device.cloud.requests) == 2, "closed: every request goes again"
    assert "cloud circuit closed" in device.nucleus.logs(INFERENCE)
