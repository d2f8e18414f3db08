"""The Greengrass component end to end, as an operator and a device see it.

The operator pushes the bundled iris model (and an identity model) to an S3 store (a moto server on
127.0.0.1), packages and publishes the components with the ``modelship edge`` command line, registers the
recipes in the (simulated) Greengrass cloud and deploys the inference component to a device: the
simulated nucleus of tests/edge/nucleus.py. The device runs the real Install step (a real pip install
from PyPI into ``{work:path}``, paid once per session) and the real Run step (``python -m
edge_greengrass``), and the component answers over HTTP on the device.

The tests run in file order on one device, as one story: first deployment, parity with the local server
and the Lambda handler, a new model version, an offline restart, a corrupted model, the final stop.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from tests.edge.conftest import REGION, s3_client, start_moto
from tests.edge.nucleus import FINISHED, RUNNING, STOPPING, Nucleus
from tests.support.events import load_event
from tests.support.models import identity_model, write_model
from tests.support.oip import binary_request, json_request, read_response
from tests.support.processes import REPO_ROOT, free_port, run_modelship, running_server

pytestmark = [pytest.mark.network, pytest.mark.timeout(1800)]

BUCKET = "edge-fleet-store"
STORE = f"s3://{BUCKET}/fleet"
INFERENCE = "com.modelship.Inference"
IRIS_COMPONENT = "com.modelship.model.iris"
INSTALL_TIMEOUT = 1500.0
SAMPLES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Device:
    nucleus: Nucleus
    server: ThreadedMotoServer
    endpoint: str
    env: dict[str, str]
    port: int
    workdir: Path
    inference_version: str = ""
    server_stopped: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def note(self, key: str, seconds: float) -> None:
        self.timings[key] = round(seconds, 1)
        self.nucleus.log(f"timing {key}: {seconds:.1f} s")
        print(f"\n[edge timing] {key}: {seconds:.1f} s", file=sys.stderr)


def request(
    url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Response:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        answer = connection.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        connection.close()


def wait_for_http(url: str, path: str, timeout: float, nucleus: Nucleus | None = None) -> Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            answer = request(url, "GET", path)
            if answer.status == 200:
                return answer
            last = answer
        except OSError as error:
            last = error
        time.sleep(0.2)
    log = nucleus.logs(INFERENCE)[-6000:] if nucleus is not None else ""
    raise AssertionError(f"{url}{path} did not answer 200 within {timeout} s: {last}\n{log}")


def modelship(device: Device, *args: str) -> subprocess.CompletedProcess[str]:
    completed = run_modelship(*args, env=device.env, timeout=600)
    assert completed.returncode == 0, f"modelship {' '.join(args)}:\n{completed.stdout}\n{completed.stderr}"
    return completed


def package_and_publish(device: Device, out: Path, models: list[str]) -> str:
    """``modelship edge package`` and ``edge publish`` as an operator runs them; the recipes go to the
    cloud registry. Returns the inference component's version."""
    from edge_greengrass.packaging import read_package

    arguments = ["edge", "package", "--store", STORE, "--out", str(out)]
    for model in models:
        arguments += ["--model", model]
    modelship(device, *arguments)
    modelship(device, "edge", "publish", "--store", STORE, "--from", str(out))
    package = read_package(out)
    for component in package.components:
        device.nucleus.register(component.recipe)
    assert device.nucleus.cloud.digest_overrides == [], "the cloud computes the digests the recipes carry"
    return package.inference.version


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    """The first deployment to a fresh device: Install (a real pip install) then Run. Paid once."""
    workdir = tmp_path_factory.mktemp("edge-e2e")
    server, endpoint = start_moto()
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "operator-testing",
        "AWS_SECRET_ACCESS_KEY": "operator-testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    env.pop("AWS_PROFILE", None)
    env.pop("MODELSHIP_STORE", None)
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    nucleus = Nucleus(
        workdir / "greengrass" / "v2",
        endpoint,
        region=REGION,
        access_key="device-testing",
        secret_key="device-testing",
    )
    device = Device(nucleus, server, endpoint, env, free_port(), workdir)
    try:
        modelship(device, "export-default", str(workdir / "default"))
        modelship(
            device,
            "push",
            str(workdir / "default" / "iris.onnx"),
            "--name",
            "iris",
            "--labels",
            str(workdir / "default" / "iris.labels.json"),
            "--store",
            STORE,
        )
        identity = write_model(workdir, "identity", identity_model("FP32"))
        modelship(device, "push", str(identity), "--name", "identity", "--store", STORE)
        device.inference_version = package_and_publish(device, workdir / "package-1", ["iris", "identity"])

        started = time.monotonic()
        result = nucleus.deploy(
            {INFERENCE: device.inference_version},
            configuration={INFERENCE: {"merge": {"port": str(device.port)}}},
            timeout=INSTALL_TIMEOUT,
        )
        assert result.status == "SUCCEEDED", (result, nucleus.logs(INFERENCE)[-6000:])
        wait_for_http(device.url, "/v2/health/ready", 120, nucleus)
        device.note("first deployment to ready (cold Install + Run)", time.monotonic() - started)
        install = [end for end in nucleus.process_ends(INFERENCE) if end.step == "Install"]
        device.note("cold Install step", install[-1].duration)
        yield device
    finally:
        nucleus.stop_all()
        if not device.server_stopped:
            server.stop()


# --- the first deployment ------------------------------------------------------------------------------


def test_first_deployment_installs_and_serves(device: Device) -> None:
    nucleus = device.nucleus
    assert nucleus.state(INFERENCE) == RUNNING
    assert nucleus.state(IRIS_COMPONENT) == FINISHED, "a model component has no lifecycle"
    assert nucleus.state("com.modelship.model.identity") == FINISHED
    install = [end for end in nucleus.process_ends(INFERENCE) if end.step == "Install"]
    assert [end.exit_code for end in install] == [0]
    venvs = list(nucleus.work_path(INFERENCE).glob("venv-*"))
    assert len(venvs) == 1 and (venvs[0] / "bin" / "python").exists(), "the virtualenv is in {work:path}"

    artifacts = nucleus.root / "packages" / "artifacts" / IRIS_COMPONENT / "1.0.0"
    assert sorted(path.name for path in artifacts.iterdir()) == ["manifest.json", "model.onnx"]
    unpacked = nucleus.root / "packages/artifacts-unarchived" / INFERENCE / device.inference_version
    assert (unpacked / "modelship-edge" / "edge_greengrass" / "install.py").is_file()
    assert "GetBucketLocation" in nucleus.s3_calls

    metadata = request(device.url, "GET", "/v2/models/iris").json()
    assert metadata["versions"] == ["1"]
    answer = request(device.url, "POST", "/v2/models/iris/infer", json_request({"input": (SAMPLES, "FP32")}))
    assert answer.status == 200, answer.body
    document, arrays = read_response(answer.body, answer.headers.get("inference-header-content-length"))
    assert arrays["label"].tolist() == [0, 2]
    assert document["model_version"] == "1"
    assert "IPC is off" in nucleus.logs(INFERENCE), "no IPC variables: the door serves HTTP only"


# --- parity with the local server and the Lambda handler ------------------------------------------------


def _parity_requests() -> list[tuple[str, bytes, dict[str, str]]]:
    json_body = json_request({"input": (SAMPLES, "FP32")}, id="parity-json")
    binary_body, binary_headers = binary_request(
        {"input": (SAMPLES, "FP32")}, id="parity-binary", parameters={"binary_data_output": True}
    )
    wrong_body = json_request({"not_an_input": (SAMPLES, "FP32")}, id="parity-error")
    return [
        ("/v2/models/iris/infer", json_body, {"Content-Type": "application/json"}),
        (
            "/v2/models/iris/infer",
            binary_body,
            {"Content-Type": "application/octet-stream", **binary_headers},
        ),
        ("/v2/models/iris/infer", wrong_body, {"Content-Type": "application/json"}),
        ("/v2/models/identity/infer", json_request({"x": (SAMPLES[:, :3], "FP32")}), {}),
    ]


def _local_store_copy(device: Device, destination: Path) -> Path:
    """A local store holding the very same objects (model and manifest bytes) as the S3 store."""
    client = s3_client(device.endpoint)
    for item in client.list_objects_v2(Bucket=BUCKET, Prefix="fleet/models/")["Contents"]:
        key = item["Key"]
        target = destination / key.removeprefix("fleet/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return destination


def _lambda_responses(
    device: Device, store: Path, requests: list[tuple[str, bytes, dict[str, str]]]
) -> list[Response]:
    """The Lambda handler module, fed API Gateway REST proxy events as API Gateway builds them (binary
    bodies base64-encoded), in a process of its own."""
    events = []
    for path, body, headers in requests:
        event = load_event("infer_json.json")
        binary = headers.get("Content-Type") == "application/octet-stream"
        event["path"] = path
        event["pathParameters"] = {"proxy": path.removeprefix("/v2/")}
        event["requestContext"]["path"] = f"/prod{path}"
        event["headers"] = {**event["headers"], **headers}
        event["multiValueHeaders"] = {key: [value] for key, value in event["headers"].items()}
        event["body"] = base64.b64encode(body).decode() if binary else body.decode()
        event["isBase64Encoded"] = binary
        events.append(event)
    events_path = device.workdir / "lambda-events.json"
    results_path = device.workdir / "lambda-results.json"
    events_path.write_text(json.dumps(events))
    environment = {
        **device.env,
        "MODELSHIP_STORE": str(store),
        "MODELSHIP_CACHE_DIR": str(device.workdir / "lambda-cache"),
        "POWERTOOLS_SERVICE_NAME": "modelship-edge-parity",
        "POWERTOOLS_METRICS_NAMESPACE": "ModelshipEdgeParity",
        "PYTHONPATH": f"{REPO_ROOT / 'functions'}:{REPO_ROOT}",
    }
    completed = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("lambda_invoke.py")),
            str(events_path),
            str(results_path),
        ],
        env=environment,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    responses = []
    for result in json.loads(results_path.read_text()):
        raw = result.get("body") or ""
        body = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()
        headers = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
        responses.append(Response(result["statusCode"], headers, body))
    return responses


def test_parity_local_server_lambda_and_edge(device: Device) -> None:
    requests = _parity_requests()
    store = _local_store_copy(device, device.workdir / "local-store")
    with running_server(["--store", str(store)], device.workdir) as local:
        served = [request(local.url, "POST", path, body, headers) for path, body, headers in requests]
    lambda_responses = _lambda_responses(device, store, requests)
    edge = [request(device.url, "POST", path, body, headers) for path, body, headers in requests]

    for index, (path, _, _) in enumerate(requests):
        statuses = (served[index].status, lambda_responses[index].status, edge[index].status)
        assert statuses[0] == statuses[1] == statuses[2], (path, statuses)
        assert served[index].body == lambda_responses[index].body == edge[index].body, (
            path,
            served[index].body[:300],
            lambda_responses[index].body[:300],
            edge[index].body[:300],
        )
    json_answer, binary_answer, error_answer, identity_answer = edge
    assert json_answer.status == 200 and json_answer.json()["id"] == "parity-json"
    assert binary_answer.status == 200
    header_length = binary_answer.headers["inference-header-content-length"]
    assert lambda_responses[1].headers["inference-header-content-length"] == header_length
    _, arrays = read_response(binary_answer.body, header_length)
    assert arrays["label"].tolist() == [0, 2]
    assert error_answer.status == 400 and "error" in error_answer.json()
    assert identity_answer.status == 200


# --- a new model version ---------------------------------------------------------------------------------


def test_new_model_version_is_deployed_and_served(device: Device) -> None:
    nucleus = device.nucleus
    modelship(
        device,
        "push",
        str(device.workdir / "default" / "iris.onnx"),
        "--name",
        "iris",
        "--labels",
        str(device.workdir / "default" / "iris.labels.json"),
        "--store",
        STORE,
        "--force",  # the same bytes again: a new version all the same
    )
    previous = device.inference_version
    version = package_and_publish(device, device.workdir / "package-2", ["iris", "identity"])
    assert version != previous, "another model version gives another inference component version"
    runs_before = len([end for end in nucleus.process_ends(INFERENCE) if end.step == "Run"])

    started = time.monotonic()
    result = nucleus.deploy({INFERENCE: version}, timeout=INSTALL_TIMEOUT)
    assert result.status == "SUCCEEDED"
    assert result.components[IRIS_COMPONENT] == "2.0.0"
    device.inference_version = version
    wait_for_http(device.url, "/v2/health/ready", 120, nucleus)
    device.note("new version deployed to ready (warm Install + Run)", time.monotonic() - started)
    install = [end for end in nucleus.process_ends(INFERENCE) if end.step == "Install"]
    device.note("warm Install step", install[-1].duration)

    runs = [end for end in nucleus.process_ends(INFERENCE) if end.step == "Run"]
    assert len(runs) == runs_before + 1 and (runs[-1].how, runs[-1].exit_code) == ("SIGTERM", 0), (
        "the old Run stopped on SIGTERM and exited 0"
    )
    assert STOPPING in nucleus.history(INFERENCE)
    assert len(install) == 2 and install[-1].exit_code == 0, "a new version reinstalls"
    assert nucleus.configuration(INFERENCE)["port"] == str(device.port), "the device's config persists"
    metadata = request(device.url, "GET", "/v2/models/iris").json()
    assert metadata["versions"] == ["2"]
    answer = request(device.url, "POST", "/v2/models/iris/infer", json_request({"input": (SAMPLES, "FP32")}))
    assert answer.status == 200 and answer.json()["model_version"] == "2"


# --- offline --------------------------------------------------------------------------------------------


def test_offline_restart_serves_from_verified_artifacts(device: Device) -> None:
    nucleus = device.nucleus
    device.server.stop()
    device.server_stopped = True
    nucleus.s3_calls.clear()

    started = time.monotonic()
    states = nucleus.restart_nucleus(timeout=INSTALL_TIMEOUT)
    assert states[INFERENCE] == RUNNING, nucleus.logs(INFERENCE)[-4000:]
    wait_for_http(device.url, "/v2/health/ready", 120, nucleus)
    device.note("offline nucleus restart to ready (Install + Run)", time.monotonic() - started)
    install = [end for end in nucleus.process_ends(INFERENCE) if end.step == "Install"]
    device.note("offline Install step", install[-1].duration)
    assert install[-1].exit_code == 0
    assert nucleus.s3_calls == []
    answer = request(device.url, "POST", "/v2/models/iris/infer", json_request({"input": (SAMPLES, "FP32")}))
    assert answer.status == 200 and answer.json()["model_version"] == "2"


def test_corrupted_model_answers_503_and_the_door_stays_live(device: Device) -> None:
    nucleus = device.nucleus
    model = nucleus.root / "packages" / "artifacts" / IRIS_COMPONENT / "2.0.0" / "model.onnx"
    original = model.read_bytes()
    corrupted = bytes(byte ^ 0xFF for byte in original[:64]) + original[64:]
    model.chmod(0o644)
    model.write_bytes(corrupted)
    assert model.stat().st_size == len(original)
    try:
        assert nucleus.restart_component(INFERENCE) == RUNNING
        wait_for_http(device.url, "/v2/health/live", 60, nucleus)
        body = json_request({"input": (SAMPLES, "FP32")})
        answer = request(device.url, "POST", "/v2/models/iris/infer", body)
        assert answer.status == 503, answer.body
        assert answer.headers["content-type"].startswith("application/json")
        assert "sha256" in answer.json()["error"]
        identity_body = json_request({"x": (SAMPLES[:, :3], "FP32")})
        other = request(device.url, "POST", "/v2/models/identity/infer", identity_body)
        assert other.status == 200, "every other model stays up"
        time.sleep(2)
        assert request(device.url, "GET", "/v2/health/live").status == 200
        assert nucleus.state(INFERENCE) == RUNNING, "the door stays up"
    finally:
        model.write_bytes(original)


def test_stop_exits_on_sigterm_within_5_seconds(device: Device) -> None:
    nucleus = device.nucleus
    assert nucleus.state(INFERENCE) == RUNNING
    nucleus.stop_all()
    end = [end for end in nucleus.process_ends(INFERENCE) if end.step == "Run"][-1]
    assert end.how == "SIGTERM", end
    assert end.exit_code == 0, end
    assert end.seconds_after_signal is not None and end.seconds_after_signal < 5, end
    assert nucleus.state(INFERENCE) == FINISHED
    shutil.rmtree(device.workdir / "lambda-cache", ignore_errors=True)
