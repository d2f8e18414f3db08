"""The edge door's Greengrass IPC: the pub/sub bridge and in-place configuration, against a stand-in
client (tests/support/greengrass_ipc.py) whose signatures are the installed SDK's."""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from modelship.core.service import InferenceService
from modelship.doors.apigw import proxy_handler

from edge_greengrass.door import DoorOptions, EdgeDoor
from edge_greengrass.ipc import IPC_OFF_MESSAGE, IpcBridge, nucleus_available
from edge_greengrass.settings import EdgeSettings
from edge_greengrass.store_view import ModelSource
from tests.support.greengrass_ipc import FakeGreengrassIPC
from tests.support.processes import REPO_ROOT

IRIS_REQUEST = {
    "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
}
NUCLEUS_ENV = {
    "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": "/nucleus/ipc.socket",
    "SVCUID": "token",
}
STAND_IN_METHODS = [
    "publish_to_topic",
    "subscribe_to_topic",
    "get_configuration",
    "subscribe_to_configuration_update",
    "update_state",
    "close",
]


def keyword_only(function: Any) -> list[str]:
    return [
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]


@pytest.mark.parametrize("method", STAND_IN_METHODS)
def test_the_stand_in_has_the_real_clients_signatures(method: str) -> None:
    real = inspect.signature(getattr(GreengrassCoreIPCClientV2, method))
    fake = inspect.signature(getattr(FakeGreengrassIPC, method))
    assert keyword_only(getattr(FakeGreengrassIPC, method)) == keyword_only(
        getattr(GreengrassCoreIPCClientV2, method)
    )
    assert [p.kind for p in fake.parameters.values()] == [p.kind for p in real.parameters.values()]
    assert [p.default for p in fake.parameters.values()] == [p.default for p in real.parameters.values()]


@pytest.fixture
def client() -> FakeGreengrassIPC:
    return FakeGreengrassIPC()


@pytest.fixture
def door(service: InferenceService, tmp_path: Path) -> EdgeDoor:
    """A door that has not started: its apply_settings reaches the service (no server in unit tests)."""
    door = EdgeDoor(DoorOptions(tmp_path, (), EdgeSettings()), environ={})
    door.service = service
    return door


@pytest.fixture
def bridge(client: FakeGreengrassIPC, service: InferenceService, door: EdgeDoor) -> Iterator[IpcBridge]:
    bridge = IpcBridge(client, proxy_handler(service), EdgeSettings(), door.apply_settings)
    bridge.start()
    yield bridge
    bridge.stop_taking()
    bridge.finish(5)


def ask(
    client: FakeGreengrassIPC,
    model: str,
    request: Any = IRIS_REQUEST,
    reply_topic: str = "modelship/reply/client-1",
    **extra: Any,
) -> dict[str, Any]:
    message = {"correlation_id": "c-1", "reply_topic": reply_topic, "request": request, **extra}
    assert client.deliver(f"modelship/infer/{model}", message) == 1
    (reply,) = client.wait_for_reply(reply_topic)
    return reply


def test_it_subscribes_to_the_request_topic_and_watches_the_configuration(
    client: FakeGreengrassIPC, bridge: IpcBridge
) -> None:
    assert client.open_topic_filters() == ["modelship/infer/+"]
    assert [call for call in client.calls if call[0] == "subscribe_to_configuration_update"] == [
        ("subscribe_to_configuration_update", {"component_name": None, "key_path": []})
    ]


def test_a_request_is_answered_on_its_reply_topic(client: FakeGreengrassIPC, bridge: IpcBridge) -> None:
    reply = ask(client, "iris")
    assert reply["correlation_id"] == "c-1"
    assert reply["status"] == 200
    assert reply["response"]["model_name"] == "iris"
    assert reply["response"]["outputs"][1]["data"] == [0]


def test_a_version_is_served_when_asked_for(client: FakeGreengrassIPC, bridge: IpcBridge) -> None:
    assert ask(client, "iris", model_version="1")["response"]["model_version"] == "1"
    assert ask(client, "iris", model_version=1, reply_topic="modelship/reply/2")["status"] == 200
    bad = ask(client, "iris", model_version="01", reply_topic="modelship/reply/3")
    assert bad["status"] == 400 and "invalid model version" in bad["error"]
    absent = ask(client, "iris", model_version="9", reply_topic="modelship/reply/4")
    assert absent["status"] == 404


def test_a_binary_message_holding_json_is_served(client: FakeGreengrassIPC, bridge: IpcBridge) -> None:
    message = {"correlation_id": "b-1", "reply_topic": "modelship/reply/bin", "request": IRIS_REQUEST}
    client.deliver("modelship/infer/iris", json.dumps(message).encode())
    (reply,) = client.wait_for_reply("modelship/reply/bin")
    assert reply["status"] == 200 and reply["correlation_id"] == "b-1"


@pytest.mark.parametrize(
    ("model", "request_body", "status", "error"),
    [
        ("nosuchmodel", IRIS_REQUEST, 404, "nosuchmodel"),
        (".hidden", IRIS_REQUEST, 400, "invalid model name"),
        ("iris", "not an object", 400, "request must be an Open Inference Protocol inference request"),
        ("iris", {"inputs": "nope"}, 400, ""),
        ("iris", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1]}]}, 400, ""),
        ("broken", IRIS_REQUEST, 503, "does not match"),
    ],
)
def test_errors_are_answered_with_a_status_and_a_message(
    client: FakeGreengrassIPC, bridge: IpcBridge, model: str, request_body: Any, status: int, error: str
) -> None:
    reply = ask(client, model, request_body)
    assert reply["status"] == status
    assert reply["correlation_id"] == "c-1"
    assert error in reply["error"]
    assert "response" not in reply
    assert "Traceback" not in reply["error"] and "/" not in reply["error"].replace("/v2", "")


def test_a_request_without_a_correlation_id_is_answered_400(
    client: FakeGreengrassIPC, bridge: IpcBridge
) -> None:
    client.deliver("modelship/infer/iris", {"reply_topic": "modelship/reply/x", "request": IRIS_REQUEST})
    (reply,) = client.wait_for_reply("modelship/reply/x")
    assert reply == {"correlation_id": None, "status": 400, "error": reply["error"]}
    assert "correlation_id" in reply["error"]


@pytest.mark.parametrize(
    "reply_topic",
    [
        "elsewhere/reply",
        "modelship/reply",
        "modelship/reply/",
        "modelship/reply/+",
        "modelship/reply/#",
        42,
        None,
    ],
)
def test_a_bad_reply_topic_is_dropped_and_logged(
    client: FakeGreengrassIPC, bridge: IpcBridge, caplog: pytest.LogCaptureFixture, reply_topic: Any
) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_greengrass.ipc"):
        client.deliver(
            "modelship/infer/iris", {"correlation_id": "c", "reply_topic": reply_topic, "request": {}}
        )
        ask(client, "iris")  # a later request is still served: the first one was dropped, not queued
    assert [topic for topic, _ in client.published] == ["modelship/reply/client-1"]
    assert "reply_topic must be a topic under modelship/reply/" in caplog.text


def test_a_message_that_is_not_json_is_dropped_and_logged(
    client: FakeGreengrassIPC, bridge: IpcBridge, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_greengrass.ipc"):
        client.deliver("modelship/infer/iris", b"{not json")
        client.deliver("modelship/infer/iris", b"[1, 2]")
    assert client.published == []
    assert "is not JSON text" in caplog.text
    assert "is not a JSON object" in caplog.text


def test_an_oversized_request_is_answered_413_after_a_configuration_update(
    client: FakeGreengrassIPC, bridge: IpcBridge, service: InferenceService
) -> None:
    client.change_configuration({"maxRequestBytes": "60"})
    assert bridge.settings.max_request_bytes == 60
    assert service.settings.max_request_bytes == 60
    reply = ask(client, "iris")
    assert reply["status"] == 413
    assert "60" in reply["error"]


def test_a_full_pool_answers_503_at_once(client: FakeGreengrassIPC, service: InferenceService) -> None:
    entered = threading.Event()
    release = threading.Event()
    served = proxy_handler(service)

    def slow_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        entered.set()
        release.wait(30)
        return served(event, context)

    bridge = IpcBridge(client, slow_handler, EdgeSettings(worker_threads=1))
    bridge.start()
    try:
        first = {"correlation_id": "1", "reply_topic": "modelship/reply/1", "request": IRIS_REQUEST}
        client.deliver("modelship/infer/iris", first)
        assert entered.wait(30)
        second = {"correlation_id": "2", "reply_topic": "modelship/reply/2", "request": IRIS_REQUEST}
        client.deliver("modelship/infer/iris", second)
        (refused,) = client.wait_for_reply("modelship/reply/2")
        assert refused["status"] == 503
        assert "1 requests at once" in refused["error"]
        release.set()
        (answered,) = client.wait_for_reply("modelship/reply/1")
        assert answered["status"] == 200
    finally:
        release.set()
        bridge.stop_taking()
        bridge.finish(5)


def test_a_configuration_update_is_applied_in_place(
    client: FakeGreengrassIPC, bridge: IpcBridge, door: EdgeDoor
) -> None:
    client.change_configuration(
        {"workerThreads": "3", "requestTopicPrefix": "site/infer", "replyTopicPrefix": "site/reply"}
    )
    assert bridge.settings.worker_threads == 3
    assert door.settings.worker_threads == 3
    # The new topic is subscribed before the old one is closed.
    assert client.open_topic_filters() == ["site/infer/+"]
    assert [call[1]["topic"] for call in client.calls if call[0] == "subscribe_to_topic"] == [
        "modelship/infer/+",
        "site/infer/+",
    ]
    assert client.deliver("modelship/infer/iris", {"correlation_id": "old"}) == 0
    client.deliver(
        "site/infer/iris", {"correlation_id": "n", "reply_topic": "site/reply/n", "request": IRIS_REQUEST}
    )
    (reply,) = client.wait_for_reply("site/reply/n")
    assert reply["status"] == 200


def test_a_bad_configuration_update_is_ignored_and_logged(
    client: FakeGreengrassIPC, bridge: IpcBridge, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="edge_greengrass.ipc"):
        client.change_configuration({"workerThreads": "many"})
    assert bridge.settings == EdgeSettings()
    assert "ignoring a configuration update: workerThreads must be a whole number" in caplog.text
    assert ask(client, "iris")["status"] == 200


def test_after_stop_the_subscriptions_are_closed(client: FakeGreengrassIPC, bridge: IpcBridge) -> None:
    bridge.stop_taking()
    assert client.open_topic_filters() == []
    assert all(operation.closed for operation in client.configuration_subscriptions)


def test_a_door_that_cannot_serve_reports_errored(client: FakeGreengrassIPC, tmp_path: Path) -> None:
    options = DoorOptions(tmp_path / "work", (ModelSource("iris", tmp_path / "absent"),), EdgeSettings())
    door = EdgeDoor(options, environ=dict(NUCLEUS_ENV), ipc_factory=lambda: client)
    assert door.start() == 1
    assert client.states == ["ERRORED"]
    assert client.closed
    assert ("get_configuration", {"component_name": None, "key_path": []}) in client.calls


def test_the_door_reads_its_configuration_over_ipc_at_start(
    client: FakeGreengrassIPC, tmp_path: Path
) -> None:
    client.configuration = {"workerThreads": "5", "maxRequestBytes": "4096", "host": "0.0.0.0"}
    options = DoorOptions(tmp_path / "work", (), EdgeSettings(host="127.0.0.1", port=8123))
    door = EdgeDoor(options, environ=dict(NUCLEUS_ENV), ipc_factory=lambda: client)
    assert door.start() == 1  # no model: it stops before listening
    assert door.settings == EdgeSettings(
        host="127.0.0.1", port=8123, worker_threads=5, max_request_bytes=4096
    )


def test_ipc_is_on_only_with_both_nucleus_variables() -> None:
    assert nucleus_available(NUCLEUS_ENV)
    assert not nucleus_available({"SVCUID": "token"})
    assert not nucleus_available({"AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": "/s"})
    assert not nucleus_available({**NUCLEUS_ENV, "SVCUID": ""})


def test_without_a_nucleus_awsiot_is_never_imported(tmp_path: Path) -> None:
    script = (
        "import logging, sys\n"
        "from edge_greengrass.door import DoorOptions, EdgeDoor\n"
        "from edge_greengrass.settings import EdgeSettings\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from pathlib import Path\n"
        f"options = DoorOptions(Path({str(tmp_path)!r}), (), EdgeSettings())\n"
        "door = EdgeDoor(options, environ={})\n"
        "assert door.start() == 1\n"
        "print('awsiot' in sys.modules, 'awscrt' in sys.modules)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={"PYTHONPATH": f"{REPO_ROOT / 'functions'}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "False False"
    assert IPC_OFF_MESSAGE in completed.stderr


def test_host_and_port_are_not_applied_in_place(client: FakeGreengrassIPC, bridge: IpcBridge) -> None:
    # The recipe interpolates them into the Run command: the nucleus restarts the door when they change.
    client.change_configuration({"host": "0.0.0.0", "port": "9999"})
    assert bridge.settings == EdgeSettings()
    assert client.open_topic_filters() == ["modelship/infer/+"]
