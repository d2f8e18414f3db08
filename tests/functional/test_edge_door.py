"""The edge door (`python -m edge_greengrass`) as the nucleus runs it: a real process on 127.0.0.1, fed
model components' artifact folders, without AWS credentials; and in-process with a stand-in IPC client
for what needs a nucleus (configuration applied in place to the HTTP side)."""

from __future__ import annotations

import copy
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import orjson
import pytest
from modelship.core.repository import ModelRepository
from modelship.core.service import InferenceService
from modelship.core.settings import STORE_ENV, Settings
from modelship.doors.apigw import proxy_handler
from modelship.doors.local_http import LambdaHandler, LocalServer

from edge_greengrass.cloud_fallback import HybridHandler
from edge_greengrass.door import DoorOptions, EdgeDoor
from edge_greengrass.ipc import IPC_OFF_MESSAGE
from edge_greengrass.packaging import build_components
from edge_greengrass.recipes import ModelSource as RecipeModel
from edge_greengrass.settings import EdgeSettings
from edge_greengrass.store_view import ModelSource
from tests.support.cloud_stub import RecordingCloud
from tests.support.edge_door import (
    IRIS_REQUEST,
    NUCLEUS_SHUTDOWN_SECONDS,
    call,
    component_folder,
    door_environment,
    running_door,
    sigterm_and_wait,
)
from tests.support.greengrass_ipc import FakeGreengrassIPC
from tests.support.hostile_models import counting_loop
from tests.support.http_client import host_port, read_until_closed, statuses
from tests.support.models import write_model
from tests.support.processes import free_port


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, iris_model: tuple[bytes, list[str]]) -> Path:
    """A nucleus root with iris, a corrupted copy of it ("damaged") and a manifest of iris sold as
    "impostor"; the bytes come from a store, as packaging publishes them."""
    root = tmp_path_factory.mktemp("greengrass")
    store = root / "store"
    repository = ModelRepository.open(str(store))
    data, labels = iris_model
    scratch = tmp_path_factory.mktemp("models")
    for name in ("iris", "damaged"):
        manifest = repository.push(write_model(scratch, name, data), name, labels=labels)
        folder = component_folder(root, name, manifest.version)
        folder.mkdir(parents=True)
        for filename in ("model.onnx", "manifest.json"):
            shutil.copy(store / "models" / name / str(manifest.version) / filename, folder / filename)
    damaged = component_folder(root, "damaged", 1) / "model.onnx"
    corrupted = bytearray(damaged.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    damaged.write_bytes(bytes(corrupted))
    impostor = component_folder(root, "impostor", 1)
    shutil.copytree(component_folder(root, "iris", 1), impostor)
    return root


def test_the_door_serves_the_model_components_and_stops_within_the_nucleus_limit(
    artifacts: Path, tmp_path: Path
) -> None:
    models = [
        f"iris={component_folder(artifacts, 'iris', 1)}",
        f"damaged={component_folder(artifacts, 'damaged', 1)}",
        f"impostor={component_folder(artifacts, 'impostor', 1)}",
    ]
    with running_door(tmp_path, models, wait_for="/v2/models/iris/ready") as door:
        status, body = call(door.url, "POST", "/v2/models/iris/infer", IRIS_REQUEST)
        assert status == 200, body
        assert body["model_name"] == "iris" and body["outputs"][1]["data"] == [0]

        # Corrupted on disk: the sha256 check refuses it before onnxruntime, through the symlink.
        status, body = call(door.url, "POST", "/v2/models/damaged/infer", IRIS_REQUEST)
        assert status == 503
        assert "does not match the manifest" in body["error"]
        assert str(artifacts) not in body["error"] and "Traceback" not in body["error"]
        assert call(door.url, "POST", "/v2/models/iris/infer", IRIS_REQUEST)[0] == 200
        assert call(door.url, "GET", "/v2/health/live") == (200, {"live": True})

        # A manifest that describes another model is refused at start; the others are served.
        status, body = call(door.url, "POST", "/v2/models/impostor/infer", IRIS_REQUEST)
        assert status == 404 and "impostor" in body["error"]

        view = tmp_path / "work" / "store" / "models" / "iris" / "1" / "model.onnx"
        assert view.is_symlink() and view.resolve() == (component_folder(artifacts, "iris", 1) / "model.onnx")

        seconds = sigterm_and_wait(door.process)
        assert door.process.returncode == 0, door.log()
        log = door.log()
        print(f"SIGTERM to exit: {seconds:.2f} s")
    assert IPC_OFF_MESSAGE in log
    assert "not serving impostor" in log and "refusing a mismatched artifact" in log
    assert "Traceback" not in log


def test_sigterm_during_an_onnxruntime_run_cancels_it_and_exits_within_the_nucleus_limit(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    ModelRepository.open(str(store)).push(write_model(tmp_path, "endless", counting_loop()), "endless")
    folder = component_folder(tmp_path, "endless", 1)
    shutil.copytree(store / "models" / "endless" / "1", folder)
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]},
                {"name": "n", "shape": [1], "datatype": "INT64", "data": [10**15]},
            ]
        }
    )
    request = b"POST /v2/models/endless/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    # The core's own run deadline must not end the run first.
    environment = {"MODELSHIP_INFERENCE_TIMEOUT_SECONDS": "3600"}
    with (
        running_door(
            tmp_path, [f"endless={folder}"], wait_for="/v2/models/endless/ready", env=environment
        ) as door,
        socket.create_connection(host_port(door.url), timeout=30) as connection,
    ):
        connection.sendall(request)
        time.sleep(1.5)  # long enough for the request to be inside onnxruntime
        seconds = sigterm_and_wait(door.process)
        reply = read_until_closed(connection)
        assert door.process.returncode == 0, door.log()
        log = door.log()
    print(f"SIGTERM to exit with a run inside onnxruntime: {seconds:.2f} s")
    assert statuses(reply) == [503], reply[:500]
    assert "cancelled 1 inference runs" in log
    assert "Traceback" not in log and "terminate called" not in log


def test_the_store_view_is_rebuilt_at_each_start(artifacts: Path, tmp_path: Path) -> None:
    iris = f"iris={component_folder(artifacts, 'iris', 1)}"
    with running_door(tmp_path, [iris, f"damaged={component_folder(artifacts, 'damaged', 1)}"]) as door:
        sigterm_and_wait(door.process)
    with running_door(tmp_path, [iris]) as door:
        models = tmp_path / "work" / "store" / "models"
        assert sorted(path.name for path in models.iterdir()) == ["iris"]
        assert len(list((tmp_path / "work").glob(".store-*"))) == 1, "the previous view is removed"
        assert call(door.url, "POST", "/v2/models/damaged/infer", IRIS_REQUEST)[0] == 404
        sigterm_and_wait(door.process)


def test_a_door_whose_only_model_is_corrupted_stays_live_and_answers_503(
    artifacts: Path, tmp_path: Path
) -> None:
    # A device with one model, corrupted on disk: the door must not exit (the nucleus would only loop it
    # into BROKEN); it says why with a JSON 503 and keeps answering health checks.
    damaged = f"damaged={component_folder(artifacts, 'damaged', 1)}"
    with running_door(tmp_path, [damaged]) as door:
        deadline = time.monotonic() + 60
        while "no model could be loaded" not in door.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "no model could be loaded" in door.log()
        status, body = call(door.url, "POST", "/v2/models/damaged/infer", IRIS_REQUEST)
        assert status == 503
        assert "does not match the manifest" in body["error"]
        assert call(door.url, "GET", "/v2/health/live")[0] == 200
        assert door.process.poll() is None
        sigterm_and_wait(door.process)


def test_the_help_documents_the_arguments() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "edge_greengrass", "--help"],
        env=door_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for flag in (
        "--host",
        "--port",
        "--work",
        "--model NAME=ARTIFACT_DIR",
        "--worker-threads",
        "--max-request-bytes",
    ):
        assert flag in completed.stdout


def test_a_bad_argument_is_a_usage_error(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "edge_greengrass", "--work", str(tmp_path), "--model", "../x=/tmp"],
        env=door_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert "invalid model name" in completed.stderr


@contextmanager
def door_in_process(
    artifacts: Path, tmp_path: Path, client: FakeGreengrassIPC, extra_environ: dict[str, str] | None = None
) -> Iterator[EdgeDoor]:
    environ: dict[str, str] = {
        "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": "/nucleus/ipc.socket",
        "SVCUID": "token",
        **(extra_environ or {}),
    }

    def load_handler() -> tuple[LambdaHandler, InferenceService]:
        settings = Settings(store_uri=environ[STORE_ENV], cache_dir=tmp_path / "cache", isolate_loads=False)
        service = InferenceService.from_settings(settings)
        return proxy_handler(service), service

    options = DoorOptions(
        tmp_path / "work",
        (ModelSource("iris", component_folder(artifacts, "iris", 1)),),
        EdgeSettings(host="127.0.0.1", port=free_port()),
    )
    door = EdgeDoor(options, environ=environ, ipc_factory=lambda: client, load_handler=load_handler)
    assert door.start() == 0
    status: list[int] = []
    server = threading.Thread(target=lambda: status.append(door.serve()), daemon=True)
    server.start()
    try:
        yield door
    finally:
        door.shutdown()
        server.join(NUCLEUS_SHUTDOWN_SECONDS)
        assert status == [0]
        assert client.closed


def test_the_configuration_read_over_ipc_and_its_updates_reach_the_http_side(
    artifacts: Path, tmp_path: Path
) -> None:
    client = FakeGreengrassIPC(configuration={"workerThreads": "4", "maxRequestBytes": "100000"})
    with door_in_process(artifacts, tmp_path, client) as door:
        assert door.server is not None and door.service is not None
        url = f"http://127.0.0.1:{door.server.server_address[1]}"
        assert door.server.max_connections == 4
        assert door.server.max_request_bytes == 100000
        assert call(url, "POST", "/v2/models/iris/infer", IRIS_REQUEST)[0] == 200

        client.change_configuration({"workerThreads": "2", "maxRequestBytes": "60"})
        assert door.server.max_connections == 2
        # Past the new cap, a connection is refused with the new count. The earlier call's connection
        # must have left first, or it would take one of the two places.
        wait_until_no_connections_open(door.server)
        with ExitStack() as held:
            for _ in range(2):
                held.enter_context(socket.create_connection(host_port(url), timeout=10))
            with socket.create_connection(host_port(url), timeout=10) as third:
                third.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                refused = read_until_closed(third)
            assert statuses(refused) == [503] and b"has 2 connections open already" in refused
        assert door.service.settings.max_request_bytes == 60
        # Once the server has seen the held connections close, it serves again.
        deadline = time.monotonic() + 30
        while (answer := call(url, "POST", "/v2/models/iris/infer", IRIS_REQUEST))[0] == 503:
            assert time.monotonic() < deadline, "the server did not recover after the connections closed"
            time.sleep(0.05)
        status, body = answer
        assert status == 413 and "60" in body["error"]
        message = {"correlation_id": "big", "reply_topic": "modelship/reply/big", "request": IRIS_REQUEST}
        client.deliver("modelship/infer/iris", message)
        (reply,) = client.wait_for_reply("modelship/reply/big")
        assert reply["status"] == 413

        client.change_configuration({"maxRequestBytes": "6291456", "requestTopicPrefix": "edge/infer"})
        assert client.open_topic_filters() == ["edge/infer/+"]
        message = {"correlation_id": "ok", "reply_topic": "modelship/reply/ok", "request": IRIS_REQUEST}
        client.deliver("edge/infer/iris", message)
        (reply,) = client.wait_for_reply("modelship/reply/ok")
        assert reply["status"] == 200 and reply["response"]["model_name"] == "iris"
        # The held connections and the 413's count until their threads see them close; with two places, an
        # HTTP call made before then is refused 503 by design (seen on a loaded CI machine).
        wait_until_no_connections_open(door.server)
        assert call(url, "POST", "/v2/models/iris/infer", IRIS_REQUEST)[0] == 200
    assert client.states == []


def wait_until_no_connections_open(server: LocalServer) -> None:
    deadline = time.monotonic() + 30
    while server.open_connections:
        assert time.monotonic() < deadline, "an earlier connection was never seen to close"
        time.sleep(0.01)


def wait_until_ready(url: str, model: str) -> None:
    deadline = time.monotonic() + 60
    while call(url, "GET", f"/v2/models/{model}/ready")[0] != 200:
        assert time.monotonic() < deadline, f"{model} never became ready"
        time.sleep(0.02)


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        assert response.status == 200
        text: str = response.read().decode()
    return text


def test_metrics_behind_the_cloud_fallback_show_the_held_models_load_time(
    artifacts: Path, populated_store: Path, tmp_path: Path
) -> None:
    cloud = RecordingCloud(populated_store, tmp_path / "cloud-cache")
    client = FakeGreengrassIPC()
    try:
        with door_in_process(
            artifacts, tmp_path, client, {"MODELSHIP_EDGE_CLOUD_ENDPOINT": cloud.url}
        ) as door:
            assert door.server is not None
            # The handler is wrapped: the service behind it is out of LocalServer's sight.
            assert isinstance(door.server.lambda_handler, HybridHandler)
            url = f"http://127.0.0.1:{door.server.server_address[1]}"
            wait_until_ready(url, "iris")
            assert call(url, "POST", "/v2/models/iris/infer", IRIS_REQUEST)[0] == 200
            add_sub = {
                "inputs": [
                    {"name": name, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                    for name in ("a", "b")
                ]
            }
            status, answer = call(url, "POST", "/v2/models/add_sub/infer", add_sub)
            assert status == 200 and answer["parameters"]["served_by"] == "cloud"
            text = scrape(url)
            (load_line,) = [
                line for line in text.splitlines() if line.startswith("modelship_model_load_seconds{")
            ]
            assert 'model="iris"' in load_line and 'version="1"' in load_line
            assert float(load_line.rsplit(" ", 1)[1]) > 0
            assert "modelship_models_loaded 1.0" in text
            # The forwarded request is counted too, with the cloud's status.
            assert 'modelship_http_requests_total{endpoint="infer",model="add_sub",status="200"} 1.0' in text
            snapshot = door.server.metrics.snapshot()
            assert [(model["name"], model["version"]) for model in snapshot["models"]] == [("iris", 1)]
    finally:
        cloud.stop()


def test_the_figures_are_published_on_the_recipes_authorized_topic_and_follow_configuration(
    artifacts: Path, tmp_path: Path
) -> None:
    """The door under the nucleus's authorization, configured as the packaged recipe's defaults: the
    bridge subscribes and the figures go out on the metrics topic; a new topic is taken in place, and
    refused by the nucleus (logged, the door serves on) until the deployment authorizes it."""
    iris = RecipeModel.from_store("bucket", "prefix", "iris", 1, "00" * 32, b"{}")
    recipe = build_components("s3://bucket/prefix", [iris])[1]
    configuration = copy.deepcopy(recipe["ComponentConfiguration"]["DefaultConfiguration"])
    client = FakeGreengrassIPC(configuration=configuration, enforce_access_control=True)
    with door_in_process(artifacts, tmp_path, client, {"AWS_IOT_THING_NAME": "device-7"}) as door:
        assert door.server is not None and door.metrics_publisher is not None
        url = f"http://127.0.0.1:{door.server.server_address[1]}"
        wait_until_ready(url, "iris")
        assert call(url, "POST", "/v2/models/iris/infer", IRIS_REQUEST)[0] == 200
        assert door.metrics_publisher.settings.metrics_interval_seconds == 60
        assert door.metrics_publisher.publish_once()
        (published,) = client.wait_for_reply("modelship/metrics")
        assert published["thing"] == "device-7"
        assert [(model["name"], model["version"]) for model in published["models"]] == [("iris", 1)]
        counted = {
            (row["model"], row["endpoint"], row["status"]): row["count"] for row in published["requests"]
        }
        assert counted[("iris", "infer", 200)] == 1

        client.change_configuration({"metricsTopic": "site/7/metrics", "metricsIntervalSeconds": "0"})
        assert door.metrics_publisher.settings.metrics_topic == "site/7/metrics"
        assert door.metrics_publisher.settings.metrics_interval_seconds == 0
        assert door.metrics_publisher.publish_once() is False
        assert call(url, "GET", "/v2/health/live")[0] == 200

        access = copy.deepcopy(configuration["accessControl"])
        access["aws.greengrass.ipc.pubsub"]["com.modelship.Inference:metrics:1"]["resources"] = [
            "site/7/metrics"
        ]
        client.change_configuration({"accessControl": access})
        assert door.metrics_publisher.publish_once()
        assert client.wait_for_reply("site/7/metrics")[0]["thing"] == "device-7"
