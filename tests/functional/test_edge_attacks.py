"""Attacks on the Greengrass edge door and its packaging, as an outsider would make them.

Hostile artifact folders and work folders given to ``python -m edge_greengrass``; hostile messages and
configuration updates through the IPC bridge (the stand-in client of tests/support/greengrass_ipc.py);
tampered packages, odd stores and odd output folders given to ``modelship edge package|publish`` against
moto's S3 server; SIGTERM at awkward moments. Everything runs on 127.0.0.1, bounded in count and time.

The expected behaviour throughout: a clear error (a JSON ``{"error": ...}`` with a 4xx/5xx for requests,
one ``error: ...`` line and a non-zero exit for the CLI, a log line for the door), never a traceback or a
machine path leaked to a client, nothing corrupted, and the door and its other models keep serving.
Each bug these attacks found was fixed; its test now guards the fix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from awsiot.greengrasscoreipc import model as ipc_model
from modelship.core.repository import ModelRepository
from modelship.core.service import InferenceService
from modelship.doors.apigw import proxy_handler
from moto.server import ThreadedMotoServer

from edge_greengrass.ipc import IpcBridge
from edge_greengrass.settings import EdgeSettings
from edge_greengrass.store_view import ModelSource, build_store_view, read_manifest
from tests.support.edge_door import (
    IRIS_REQUEST,
    NUCLEUS_SHUTDOWN_SECONDS,
    STARTUP_TIMEOUT_SECONDS,
    call,
    door_command,
    door_environment,
    run_door,
    running_door,
    sigterm_and_wait,
)
from tests.support.greengrass_ipc import COMPONENT_NAME, FakeGreengrassIPC, FakeOperation
from tests.support.hostile_models import counting_loop
from tests.support.http_client import host_port, read_until_closed
from tests.support.models import write_model
from tests.support.processes import REPO_ROOT, free_port, run_modelship

# ---------------------------------------------------------------------------------------------------------
# Helpers: model folders as the nucleus lays them out, and the door as a real process.


@pytest.fixture(scope="module")
def nucleus(tmp_path_factory: pytest.TempPathFactory, iris_model: tuple[bytes, list[str]]) -> Path:
    """A store holding iris and "twin" (the same bytes under another name), and a copy of each version
    folder as a model component's artifact folder (``<root>/iris``, ``<root>/twin``)."""
    root = tmp_path_factory.mktemp("nucleus")
    store = root / "store"
    repository = ModelRepository.open(str(store))
    data, labels = iris_model
    scratch = tmp_path_factory.mktemp("scratch")
    for name in ("iris", "twin"):
        repository.push(write_model(scratch, name, data), name, labels=labels)
        shutil.copytree(store / "models" / name / "1", root / name)
    return root


# ---------------------------------------------------------------------------------------------------------
# The door: hostile artifact folders and work folders.


def _hostile_folders(root: Path, iris: Path) -> dict[str, str]:
    """name -> what the door must answer for it: "404" (refused at start) or "503" (served, fails
    closed), or "200" (a symlink to the right bytes elsewhere: the sha256 says they are the ones)."""
    good = json.loads((iris / "manifest.json").read_text())
    expected: dict[str, str] = {}

    def folder(name: str, manifest: bytes | dict[str, Any] | None, *, model: bool = True) -> Path:
        path = root / name
        path.mkdir()
        if model:
            shutil.copy(iris / "model.onnx", path / "model.onnx")
        if manifest is not None:
            raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
            (path / "manifest.json").write_bytes(raw)
        return path

    def described(name: str, **changes: Any) -> dict[str, Any]:
        return {**good, "name": name, **changes}

    refused: dict[str, bytes | dict[str, Any]] = {
        "huge": b" " * (2 << 20),
        "notjson": b"{not json",
        "array": b"[1, 2]",
        "vzero": described("vzero", version=0),
        "vneg": described("vneg", version=-1),
        "vbig": described("vbig", version=2**40),
        "vtrue": described("vtrue", version=True),
        "vstr": described("vstr", version="3"),
        "vfloat": described("vfloat", version=1.0),
        "mismatch": described("other"),
        "utf16": json.dumps(described("utf16")).encode("utf-16"),
        "badutf8": b'{"version": 1, "name": "\xff"}',
    }
    for name, manifest in refused.items():
        folder(name, manifest)
        expected[name] = "404"
    fifo = folder("mfifo", None)
    os.mkfifo(fifo / "manifest.json")
    (folder("mdevzero", None) / "manifest.json").symlink_to("/dev/zero")
    (folder("mdir", None) / "manifest.json").mkdir()
    folder("nothing", None, model=False)
    expected.update(dict.fromkeys(("mfifo", "mdevzero", "mdir", "nothing"), "404"))

    folder("nomodel", described("nomodel"), model=False)
    (folder("modeldir", described("modeldir"), model=False) / "model.onnx").mkdir()
    os.mkfifo(folder("fifo", described("fifo"), model=False) / "model.onnx")
    (folder("devzero", described("devzero"), model=False) / "model.onnx").symlink_to("/dev/zero")
    folder("oversize", described("oversize", size=2**50))
    # Valid ONNX, but not the bytes this manifest describes.
    folder("swapped", described("swapped", sha256="0" * 64))
    expected.update(dict.fromkeys(("nomodel", "modeldir", "fifo", "devzero", "oversize", "swapped"), "503"))
    outside = root.parent / "outside.onnx"
    shutil.copy(iris / "model.onnx", outside)
    (folder("linked", described("linked"), model=False) / "model.onnx").symlink_to(outside)
    expected["linked"] = "200"
    return expected


def test_hostile_artifact_folders_are_refused_or_fail_closed_and_iris_keeps_serving(
    nucleus: Path, tmp_path: Path
) -> None:
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    expected = _hostile_folders(hostile, nucleus / "iris")
    models = [f"iris={nucleus / 'iris'}", *(f"{name}={hostile / name}" for name in expected)]
    # The same model named twice: neither --model is taken, the others are served.
    models += [f"dup={nucleus / 'twin'}", f"dup={nucleus / 'iris'}"]
    with running_door(tmp_path, models, wait_for="/v2/models/iris/ready") as door:
        for name, outcome in sorted({**expected, "dup": "404"}.items()):
            status, body = call(door.url, "POST", f"/v2/models/{name}/infer", IRIS_REQUEST)
            assert str(status) == outcome, (name, status, body)
            if outcome != "200":
                assert set(body) == {"error"}, (name, body)
                assert str(tmp_path) not in body["error"] and "Traceback" not in body["error"], body
                # A store key (models/<name>/...) is the store's own name for the object, not a path of the
                # machine; anything else with a slash would be.
                assert "/" not in re.sub(r"models/[^ ]+", "", body["error"]).replace("/v2", ""), (name, body)
            assert call(door.url, "POST", "/v2/models/iris/infer", IRIS_REQUEST)[0] == 200
        assert call(door.url, "GET", "/v2/health/live") == (200, {"live": True})
        sigterm_and_wait(door.process)
        assert door.process.returncode == 0
        log = door.log()
    for name, outcome in expected.items():
        if outcome == "404":
            assert f"not serving {name}:" in log, name
    assert "not serving dup: the model is named by more than one --model" in log
    # The door's own lines (plain text) carry no traceback; the core's JSON lines are its own business.
    assert "Traceback" not in "\n".join(line for line in log.splitlines() if not line.startswith("{"))
    # Nothing the door was given was changed.
    assert (nucleus / "iris" / "model.onnx").read_bytes() == (nucleus / "twin" / "model.onnx").read_bytes()
    assert (hostile / "devzero" / "model.onnx").is_symlink()


def test_a_deeply_nested_manifest_is_refused_and_the_other_models_keep_serving(
    nucleus: Path, tmp_path: Path
) -> None:
    deep = tmp_path / "deep"
    deep.mkdir()
    shutil.copy(nucleus / "iris" / "model.onnx", deep / "model.onnx")
    (deep / "manifest.json").write_bytes(b"[" * 200_000)  # 200 KB, well under the 1 MiB cap
    port = free_port()
    log_path = tmp_path / "door.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            door_command(port, tmp_path / "work", [f"iris={nucleus / 'iris'}", f"deep={deep}"]),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=door_environment(),
            cwd=tmp_path,
            text=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        status = 0
        while process.poll() is None and time.monotonic() < deadline:
            try:
                status = call(f"http://127.0.0.1:{port}", "GET", "/v2/models/iris/ready")[0]
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.05)
        log_text = log_path.read_text()
        assert "Traceback" not in log_text, log_text[-2000:]
        assert status == 200, log_text[-2000:]
        assert "not serving deep:" in log_text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_a_work_folder_that_cannot_be_a_folder_is_a_clear_error(
    nucleus: Path, tmp_path: Path, where: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    work = blocker if where == "a-file" else blocker / "work"
    status, log = run_door(tmp_path, work, [f"iris={nucleus / 'iris'}"])
    assert status == 1, log
    assert blocker.read_text() == "not a folder"
    assert "Traceback" not in log, log[-2000:]
    assert "work" in log.lower()


def test_a_store_left_as_a_real_folder_or_a_link_elsewhere_is_replaced_without_harm(
    nucleus: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    # A real WORK/store with files and a link out of it, and a planted .store-* link to a folder outside.
    (work / "store" / "models").mkdir(parents=True)
    (work / "store" / "models" / "stale.txt").write_text("old")
    (work / "store" / "out").symlink_to(elsewhere)
    (work / ".store-planted").symlink_to(elsewhere)
    (work / "sibling.txt").write_text("mine")
    view = build_store_view(work, [ModelSource("iris", nucleus / "iris")])
    assert [model.name for model in view.models] == ["iris"]
    assert (work / "store").is_symlink()
    assert (work / "store" / "models" / "iris" / "1" / "model.onnx").resolve() == (
        nucleus / "iris" / "model.onnx"
    )
    assert (elsewhere / "precious.txt").read_text() == "keep"
    assert (work / "sibling.txt").read_text() == "mine"

    # Then WORK/store is a symlink to a folder outside, with files: the link is replaced, not followed.
    (work / "store").unlink()
    (work / "store").symlink_to(elsewhere)
    view = build_store_view(work, [ModelSource("iris", nucleus / "iris")])
    assert (work / "store").is_symlink() and (work / "store").resolve() != elsewhere.resolve()
    assert (elsewhere / "precious.txt").read_text() == "keep"
    # And a regular file there.
    (work / "store").unlink()
    (work / "store").write_text("a file")
    view = build_store_view(work, [ModelSource("iris", nucleus / "iris")])
    assert (work / "store" / "models" / "iris" / "1" / "manifest.json").is_symlink()
    assert len(list(work.glob(".store-*"))) == 2  # the current view and the planted link, left alone


def test_a_second_door_on_the_same_work_folder_does_not_hijack_the_first(
    nucleus: Path, tmp_path: Path
) -> None:
    work = tmp_path / "shared-work"
    with running_door(
        tmp_path, [f"iris={nucleus / 'iris'}"], work=work, wait_for="/v2/models/iris/ready"
    ) as first:
        second_port = free_port()
        second_log = tmp_path / "second.log"
        with second_log.open("w") as log:
            second = subprocess.Popen(
                door_command(second_port, work, [f"twin={nucleus / 'twin'}"]),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=door_environment(),
                cwd=tmp_path,
                text=True,
            )
        try:
            # Either the second door refuses the folder and exits, or it comes up: wait for one of the two.
            deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
            while second.poll() is None and time.monotonic() < deadline:
                try:
                    if call(f"http://127.0.0.1:{second_port}", "GET", "/v2/health/live")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            status, body = call(first.url, "POST", "/v2/models/iris/infer", IRIS_REQUEST)
            assert status == 200, body
            assert call(first.url, "POST", "/v2/models/twin/infer", IRIS_REQUEST)[0] == 404
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()


def test_a_manifest_that_is_a_directory_leaks_no_descriptor(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "manifest.json").mkdir(parents=True)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(ValueError, match="cannot read"):
            read_manifest(ModelSource("model", folder))
    assert len(os.listdir("/proc/self/fd")) - before < 5


# ---------------------------------------------------------------------------------------------------------
# The door: SIGTERM at awkward moments.


@pytest.mark.parametrize("signals", [1, 2], ids=["once", "twice"])
def test_sigterm_while_a_request_body_is_still_arriving_exits_0_in_time(
    nucleus: Path, tmp_path: Path, signals: int
) -> None:
    with running_door(tmp_path, [f"iris={nucleus / 'iris'}"], wait_for="/v2/models/iris/ready") as door:
        with socket.create_connection(host_port(door.url), timeout=10) as slow:
            slow.sendall(
                b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100000\r\n\r\n{"inputs": ['
            )
            time.sleep(0.3)
            seconds = sigterm_and_wait(door.process, signals)
            read_until_closed(slow)
        assert door.process.returncode == 0, door.log()
        assert seconds < NUCLEUS_SHUTDOWN_SECONDS
        assert "Traceback" not in door.log()


def test_sigterm_while_the_door_is_still_importing_exits_0(nucleus: Path, tmp_path: Path) -> None:
    process = subprocess.Popen(
        door_command(free_port(), tmp_path / "work", [f"iris={nucleus / 'iris'}"]),
        env=door_environment(),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # As soon as onnxruntime's own files are mapped: the door is importing it, a second on a device.
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if "onnxruntime" in Path(f"/proc/{process.pid}/maps").read_text():
                    break
            except OSError:
                pass
            time.sleep(0.002)
        sigterm_and_wait(process)
        assert process.stderr is not None
        stderr = process.stderr.read()
        assert process.returncode == 0, (process.returncode, stderr[-1000:])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


_IPC_DOOR_SCRIPT = """
import json, os, sys, threading, time, urllib.request
from tests.support.greengrass_ipc import FakeGreengrassIPC
from edge_greengrass.door import main

port, work, model = sys.argv[1], sys.argv[2], sys.argv[3]
os.environ["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"] = "/nucleus/ipc.socket"
os.environ["SVCUID"] = "token"
client = FakeGreengrassIPC()
request = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]},
                      {"name": "n", "shape": [1], "datatype": "INT64", "data": [10**15]}]}

def feed():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/endless/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.05)
    message = {"correlation_id": "stuck", "reply_topic": "modelship/reply/stuck", "request": request}
    client.deliver("modelship/infer/endless", message)
    print("DELIVERED", flush=True)

threading.Thread(target=feed, daemon=True).start()
status = main(["--host", "127.0.0.1", "--port", port, "--work", work, "--model", model],
              ipc_factory=lambda: client)
print("PUBLISHED " + json.dumps(client.published), flush=True)
print("STATES " + json.dumps(client.states), flush=True)
sys.stdout.flush()
os._exit(status)
"""


def test_sigterm_while_an_ipc_request_runs_in_onnxruntime_answers_503_and_exits_0(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ModelRepository.open(str(store)).push(write_model(tmp_path, "endless", counting_loop()), "endless")
    folder = tmp_path / "endless"
    shutil.copytree(store / "models" / "endless" / "1", folder)
    environment = {**door_environment(), "MODELSHIP_INFERENCE_TIMEOUT_SECONDS": "3600"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _IPC_DOOR_SCRIPT,
            str(free_port()),
            str(tmp_path / "work"),
            f"endless={folder}",
        ],
        env=environment,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        # stdout carries the core's JSON log lines too: read up to the feeder's mark.
        seen = []
        while (line := process.stdout.readline()) and line.strip() != "DELIVERED":
            seen.append(line)
        assert line.strip() == "DELIVERED", "".join(seen)[-2000:]
        time.sleep(1.0)  # inside onnxruntime by now
        seconds = sigterm_and_wait(process)
        output = process.stdout.read()
        log = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, log[-2000:]
    assert seconds < NUCLEUS_SHUTDOWN_SECONDS
    assert "PUBLISHED " in output, output[-2000:]
    published = json.loads(output.split("PUBLISHED ", 1)[1].splitlines()[0])
    assert published == [
        [
            "modelship/reply/stuck",
            {"correlation_id": "stuck", "status": 503, "error": published[0][1]["error"]},
        ]
    ]
    assert "STATES []" in output
    assert "Traceback" not in log


# ---------------------------------------------------------------------------------------------------------
# The IPC bridge, in process, through the stand-in client.


@pytest.fixture
def client() -> FakeGreengrassIPC:
    return FakeGreengrassIPC()


@pytest.fixture
def bridge(client: FakeGreengrassIPC, service: InferenceService) -> Iterator[IpcBridge]:
    bridge = IpcBridge(client, proxy_handler(service), EdgeSettings())
    bridge.start()
    yield bridge
    bridge.stop_taking()
    bridge.finish(5)


_counter = iter(range(1, 1_000_000))


def ask(client: FakeGreengrassIPC, topic: str, **message: Any) -> dict[str, Any]:
    reply_topic = f"modelship/reply/r{next(_counter)}"
    document = {"correlation_id": "c", "reply_topic": reply_topic, "request": IRIS_REQUEST, **message}
    assert client.deliver(topic, document) == 1
    (reply,) = client.wait_for_reply(reply_topic, timeout=30)
    return reply


def deliver_event(client: FakeGreengrassIPC, event: ipc_model.SubscriptionResponseMessage) -> None:
    for operation in client.topic_subscriptions:
        if not operation.closed and operation.on_stream_event is not None:
            operation.on_stream_event(event)


def assert_clean_error(reply: dict[str, Any], status: int | tuple[int, ...]) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert reply["status"] in statuses, reply
    assert set(reply) == {"correlation_id", "status", "error"}, reply
    assert isinstance(reply["error"], str) and "Traceback" not in reply["error"]
    assert "/tmp" not in reply["error"] and str(REPO_ROOT) not in reply["error"]


def test_messages_that_are_not_request_objects_are_dropped_and_logged(
    client: FakeGreengrassIPC, bridge: IpcBridge, caplog: pytest.LogCaptureFixture
) -> None:
    context = ipc_model.MessageContext(topic="modelship/infer/iris")
    events = [
        ipc_model.SubscriptionResponseMessage(
            json_message=ipc_model.JsonMessage(message=payload, context=context)
        )
        for payload in ([1, 2], "text", 42, None)
    ]
    events += [
        ipc_model.SubscriptionResponseMessage(
            binary_message=ipc_model.BinaryMessage(message=payload, context=context)
        )
        for payload in (b"\xff\xfe\x00", b"", b"null", b'"a string"', b"1e999999")
    ]
    events.append(ipc_model.SubscriptionResponseMessage())
    no_topic = ipc_model.JsonMessage(message={"correlation_id": "c", "reply_topic": "modelship/reply/x"})
    events.append(ipc_model.SubscriptionResponseMessage(json_message=no_topic))
    with caplog.at_level(logging.WARNING, logger="edge_greengrass.ipc"):
        for event in events:
            deliver_event(client, event)
        assert ask(client, "modelship/infer/iris")["status"] == 200
    assert len(client.published) == 1
    assert caplog.text.count("dropped a request message") == len(events)
    assert "Traceback" not in caplog.text


def test_a_deeply_nested_binary_message_is_dropped_with_a_one_line_log(
    client: FakeGreengrassIPC, bridge: IpcBridge, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_greengrass.ipc"):
        client.deliver("modelship/infer/iris", b"[" * 100_000)
        assert ask(client, "modelship/infer/iris")["status"] == 200
    assert "dropped a request message" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_huge_message_is_answered_413(client: FakeGreengrassIPC, bridge: IpcBridge) -> None:
    data = [0.5] * 1_600_000  # about 7 MB of JSON, over the 6 MiB cap
    request = {"inputs": [{"name": "input", "shape": [400_000, 4], "datatype": "FP32", "data": data}]}
    message = {"correlation_id": "big", "reply_topic": "modelship/reply/big", "request": request}
    client.deliver("modelship/infer/iris", json.dumps(message).encode())
    (reply,) = client.wait_for_reply("modelship/reply/big", timeout=30)
    assert_clean_error(reply, 413)
    assert ask(client, "modelship/infer/iris")["status"] == 200


@pytest.mark.parametrize(
    "correlation_id", [5, 1.5, True, None, "x" * 257, ["a"], {"a": 1}], ids=lambda value: repr(value)[:12]
)
def test_an_odd_correlation_id_is_answered_400_without_echoing_it(
    client: FakeGreengrassIPC, bridge: IpcBridge, correlation_id: Any
) -> None:
    client.deliver(
        "modelship/infer/iris",
        {"correlation_id": correlation_id, "reply_topic": "modelship/reply/odd", "request": IRIS_REQUEST},
    )
    (reply,) = client.wait_for_reply("modelship/reply/odd")
    assert reply["correlation_id"] is None
    assert_clean_error(reply, 400)


@pytest.mark.parametrize(
    "reply_topic",
    [
        "",
        "modelship/replyX/a",
        "modelship/reply//a",
        "modelship/reply/a/",
        "modelship/reply/a/+/b",
        "modelship/reply/a#",
        "modelship/reply/" + "a" * 600,
        "modelship/reply/a\nb",
        "modelship/reply/a\x00",
        "modelship/reply/a\x7f",
        "/modelship/reply/a",
        "modelship/infer/iris",
        ["modelship/reply/a"],
    ],
    ids=lambda value: repr(value)[:24],
)
def test_a_reply_topic_outside_the_prefix_is_never_published_to(
    client: FakeGreengrassIPC, bridge: IpcBridge, caplog: pytest.LogCaptureFixture, reply_topic: Any
) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_greengrass.ipc"):
        client.deliver(
            "modelship/infer/iris",
            {"correlation_id": "c", "reply_topic": reply_topic, "request": IRIS_REQUEST},
        )
        ask(client, "modelship/infer/iris")
    assert len(client.published) == 1 and client.published[0][0].startswith("modelship/reply/r")
    assert "reply_topic must be a topic under modelship/reply/" in caplog.text


def test_a_unicode_reply_topic_under_the_prefix_is_answered(
    client: FakeGreengrassIPC, bridge: IpcBridge
) -> None:
    client.deliver(
        "modelship/infer/iris",
        {"correlation_id": "u", "reply_topic": "modelship/reply/ünï/☃", "request": IRIS_REQUEST},
    )
    (reply,) = client.wait_for_reply("modelship/reply/ünï/☃")
    assert reply["status"] == 200


@pytest.mark.parametrize(
    ("model", "status"),
    [
        ("..", 400),
        ("", 400),
        (".", 400),
        ("írís", 400),
        ("iris ", 400),
        ("a" * 300, 400),
        ("%2e%2e", 400),
        ("iris\x00", 400),
        ("..%2f..%2fetc", 400),
        ("IRIS", 404),
        ("nosuch", 404),
    ],
    ids=lambda value: repr(value)[:16],
)
def test_a_model_name_with_path_tricks_in_the_topic_is_refused(
    client: FakeGreengrassIPC, bridge: IpcBridge, model: str, status: int
) -> None:
    reply = ask(client, f"modelship/infer/{model}")
    assert_clean_error(reply, status)
    assert len(reply["error"]) < 400


@pytest.mark.parametrize(
    "version",
    [
        0,
        -1,
        "0",
        "-1",
        2**40,
        10**30,
        "1.0",
        1.5,
        True,
        False,
        [],
        {},
        "\uff11",  # a fullwidth digit one
        " 1",
        "1 ",
        "+1",
        "1_0",
        "٣",
        "",
    ],
    ids=lambda value: repr(value)[:16],
)
def test_an_odd_model_version_is_a_400(client: FakeGreengrassIPC, bridge: IpcBridge, version: Any) -> None:
    reply = ask(client, "modelship/infer/iris", model_version=version)
    assert_clean_error(reply, (400, 404))


def test_a_flood_beyond_worker_threads_gets_one_answer_each_and_leaves_the_bridge_idle(
    client: FakeGreengrassIPC, service: InferenceService
) -> None:
    release = threading.Event()
    served = proxy_handler(service)

    def slow(event: dict[str, Any], context: Any) -> dict[str, Any]:
        release.wait(30)
        return served(event, context)

    bridge = IpcBridge(client, slow, EdgeSettings(worker_threads=2))
    bridge.start()
    count = 60
    try:

        def send(index: int) -> None:
            message = {
                "correlation_id": f"{index}",
                "reply_topic": f"modelship/reply/{index}",
                "request": IRIS_REQUEST,
            }
            client.deliver("modelship/infer/iris", message)

        with ThreadPoolExecutor(8) as senders:
            list(senders.map(send, range(count)))
        time.sleep(0.2)
        release.set()
        assert bridge.wait_idle(30)
        replies = {index: client.wait_for_reply(f"modelship/reply/{index}")[0] for index in range(count)}
    finally:
        release.set()
        bridge.stop_taking()
        bridge.finish(5)
    statuses = [reply["status"] for reply in replies.values()]
    assert statuses.count(200) == 2 and statuses.count(503) == count - 2, statuses
    assert all(reply["correlation_id"] == str(index) for index, reply in replies.items())
    assert len(client.published) == count


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("workerThreads", "0"),
        ("workerThreads", "1025"),
        ("workerThreads", "-1"),
        ("workerThreads", "1e3"),
        ("workerThreads", 1e308),
        ("workerThreads", float("nan")),
        ("workerThreads", "9" * 25),
        ("workerThreads", "٣"),
        ("workerThreads", True),
        ("workerThreads", ["4"]),
        ("maxRequestBytes", "0"),
        ("maxRequestBytes", 2**63),
        ("maxRequestBytes", "x" * 10_000),
        ("requestTopicPrefix", "a/+"),
        ("requestTopicPrefix", "#"),
        ("requestTopicPrefix", ""),
        ("requestTopicPrefix", "/x"),
        ("requestTopicPrefix", "x/"),
        ("requestTopicPrefix", "a//b"),
        ("requestTopicPrefix", "a" * 201),
        ("requestTopicPrefix", "a\nb"),
        ("requestTopicPrefix", {"a": "b"}),
        ("replyTopicPrefix", "modelship/#"),
        ("replyTopicPrefix", None),
    ],
    ids=lambda value: repr(value)[:16],
)
def test_a_bad_configuration_update_is_ignored_and_requests_are_still_served(
    client: FakeGreengrassIPC,
    bridge: IpcBridge,
    caplog: pytest.LogCaptureFixture,
    key: str,
    value: Any,
) -> None:
    with caplog.at_level(logging.ERROR, logger="edge_greengrass.ipc"):
        client.change_configuration({key: value})
    assert bridge.settings == EdgeSettings()
    assert client.open_topic_filters() == ["modelship/infer/+"]
    assert "ignoring a configuration update" in caplog.text and len(caplog.text) < 2000
    assert ask(client, "modelship/infer/iris")["status"] == 200


class ConcurrentCallbacksIPC(FakeGreengrassIPC):
    """As the real GreengrassCoreIPCClientV2 does: stream callbacks run on an executor's threads, so
    configuration events for several keys are handled at the same time; IPC calls take a moment."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.executor = ThreadPoolExecutor(8)

    def get_configuration(
        self, *, component_name: str | None = None, key_path: list[str] | None = None
    ) -> ipc_model.GetConfigurationResponse:
        time.sleep(0.01)
        return super().get_configuration(component_name=component_name, key_path=key_path)

    def subscribe_to_topic(
        self, **arguments: Any
    ) -> tuple[ipc_model.SubscribeToTopicResponse, FakeOperation]:
        time.sleep(0.02)
        return super().subscribe_to_topic(**arguments)

    def change_configuration_concurrently(self, changes: dict[str, Any]) -> None:
        self.configuration.update(changes)
        futures = []
        for key in changes:
            event = ipc_model.ConfigurationUpdateEvents(
                configuration_update_event=ipc_model.ConfigurationUpdateEvent(
                    component_name=COMPONENT_NAME, key_path=[key]
                )
            )
            for operation in list(self.configuration_subscriptions):
                callback: Callable[[Any], None] | None = operation.on_stream_event
                if not operation.closed and callback is not None:
                    futures.append(self.executor.submit(callback, event))
        for future in futures:
            future.result()


def test_configuration_updates_racing_with_requests_leave_one_subscription_and_one_reply_each(
    client: FakeGreengrassIPC, service: InferenceService
) -> None:
    bridge = IpcBridge(client, proxy_handler(service), EdgeSettings())
    bridge.start()
    delivered: list[str] = []
    stop = threading.Event()

    def flood() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            correlation = f"{threading.get_ident()}-{index}"
            for prefix in ("modelship/infer", "site/infer"):
                reply_topic = f"modelship/reply/{correlation}-{prefix.split('/')[0]}"
                message = {"correlation_id": correlation, "reply_topic": reply_topic, "request": IRIS_REQUEST}
                if client.deliver(f"{prefix}/iris", message):
                    delivered.append(reply_topic)
            time.sleep(0.002)

    floods = [threading.Thread(target=flood) for _ in range(3)]
    try:
        for thread in floods:
            thread.start()
        for round_number in range(6):
            client.change_configuration(
                {
                    "workerThreads": str(3 + round_number),
                    "requestTopicPrefix": "site/infer" if round_number % 2 == 0 else "modelship/infer",
                    "maxRequestBytes": str(6_000_000 + round_number),
                }
            )
            time.sleep(0.02)
        stop.set()
        for thread in floods:
            thread.join(10)
        assert bridge.wait_idle(30)
        filters = client.open_topic_filters()
        replies = [client.wait_for_reply(topic)[0] for topic in delivered]
    finally:
        stop.set()
        bridge.stop_taking()
        bridge.finish(5)
    assert filters == ["modelship/infer/+"], filters
    assert bridge.settings.worker_threads == 8
    assert len(client.published) == len(delivered) > 0
    assert {reply["status"] for reply in replies} <= {200, 404, 503}


class SlowSubscribeIPC(FakeGreengrassIPC):
    """As the real GreengrassCoreIPCClientV2 does, stream callbacks may run at the same time (on its
    executor's threads), and a subscription is a round trip to the nucleus: once armed, the next
    subscribe_to_topic waits until released."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.armed = False
        self.inside = threading.Event()
        self.release = threading.Event()

    def subscribe_to_topic(
        self, **arguments: Any
    ) -> tuple[ipc_model.SubscribeToTopicResponse, FakeOperation]:
        if self.armed:
            self.armed = False
            self.inside.set()
            self.release.wait(30)
        return super().subscribe_to_topic(**arguments)

    def configuration_event(self, changes: dict[str, Any]) -> threading.Thread:
        """Change the configuration and handle its event on a thread of its own, as the SDK would."""
        self.configuration.update(changes)
        event = ipc_model.ConfigurationUpdateEvents(
            configuration_update_event=ipc_model.ConfigurationUpdateEvent(
                component_name=COMPONENT_NAME, key_path=[next(iter(changes))]
            )
        )
        (operation,) = self.configuration_subscriptions
        assert operation.on_stream_event is not None
        thread = threading.Thread(target=operation.on_stream_event, args=(event,))
        thread.start()
        return thread


def test_configuration_updates_handled_at_once_leave_the_door_on_the_configured_topic_only(
    service: InferenceService,
) -> None:
    client = SlowSubscribeIPC()
    bridge = IpcBridge(client, proxy_handler(service), EdgeSettings())
    bridge.start()
    try:
        client.armed = True
        first = client.configuration_event({"requestTopicPrefix": "site/infer"})
        assert client.inside.wait(10)  # the first update is subscribing to site/infer/+
        second = client.configuration_event({"requestTopicPrefix": "edge/infer"})
        # The second update waits for the first: it must not interleave with it.
        second.join(0.5)
        assert second.is_alive()
        client.release.set()
        first.join(10)
        second.join(10)
        assert not first.is_alive() and not second.is_alive()
        assert bridge.settings.request_topic_prefix == "edge/infer"
        assert client.open_topic_filters() == ["edge/infer/+"]
        # A request on the old topic is not taken (and answered 404) by a stale subscription.
        assert (
            client.deliver("site/infer/iris", {"correlation_id": "c", "reply_topic": "modelship/reply/x"})
            == 0
        )
    finally:
        client.release.set()
        bridge.stop_taking()
        bridge.finish(5)


# ---------------------------------------------------------------------------------------------------------
# Packaging and publishing against moto's S3 server.

BUCKET = "edge-attacks"
OTHER_BUCKET = "edge-attacks-other"
STORE = f"s3://{BUCKET}/fleet"


@pytest.fixture(scope="module")
def moto_env() -> Iterator[dict[str, str]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    server.stop()


@pytest.fixture(scope="module")
def s3(moto_env: dict[str, str]) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=moto_env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    client.create_bucket(Bucket=OTHER_BUCKET)
    return client


@pytest.fixture(scope="module")
def packaged(
    s3: Any, moto_env: dict[str, str], nucleus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """iris pushed to the store and packaged once; tests copy the package before changing it."""
    labels = tmp_path_factory.mktemp("labels") / "labels.json"
    labels.write_text(json.dumps(json.loads((nucleus / "iris" / "manifest.json").read_text())["labels"]))
    run_modelship(
        "push", str(nucleus / "iris" / "model.onnx"), "--name", "iris", "--labels", str(labels),
        "--store", STORE, env=moto_env, check=True,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("package") / "pkg"
    completed = run_modelship(
        "edge", "package", "--store", STORE, "--model", "iris:1", "--out", str(out), env=moto_env
    )
    assert completed.returncode == 0, completed.stderr
    return out


def copy_package(packaged: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pkg"
    shutil.copytree(packaged, copy)
    return copy


def package_files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def inference_recipe_path(package: Path) -> Path:
    (path,) = (package / "recipes").glob("com.modelship.Inference-*.yaml")
    return path


def assert_cli_error(completed: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert completed.returncode != 0, completed.stdout
    assert "Traceback" not in completed.stderr, completed.stderr[-2000:]
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, completed.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def publish(
    moto_env: dict[str, str], package: Path, store: str = STORE, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return run_modelship(
        "edge", "publish", "--store", store, "--from", str(package), env=moto_env, timeout=timeout
    )


def digest(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_odd_spellings_of_the_store_give_the_same_package_or_a_clear_error(
    packaged: Path, moto_env: dict[str, str], tmp_path: Path
) -> None:
    for index, store in enumerate((f"s3://{BUCKET}/fleet/", f"s3://{BUCKET}//fleet//")):
        out = tmp_path / f"out{index}"
        completed = run_modelship(
            "edge", "package", "--store", store, "--model", "iris:1", "--out", str(out), env=moto_env
        )
        assert completed.returncode == 0, completed.stderr
        assert package_files(out) == package_files(packaged), store
    for store, message in (
        ("s3://", "names no bucket"),
        ("s3:///fleet", "names no bucket"),
        ("S3://x/y", "s3://"),
    ):
        out = tmp_path / "bad"
        completed = run_modelship(
            "edge", "package", "--store", store, "--model", "iris:1", "--out", str(out), env=moto_env
        )
        assert_cli_error(completed, message)
        assert not out.exists()


def test_publishing_to_an_odd_spelling_of_the_same_store_is_accepted_and_changes_nothing(
    packaged: Path, moto_env: dict[str, str], tmp_path: Path, s3: Any
) -> None:
    package = copy_package(packaged, tmp_path)
    before = package_files(package)
    completed = publish(moto_env, package, store=f"s3://{BUCKET}//fleet/")
    assert completed.returncode == 0, completed.stderr
    assert package_files(package) == before
    other = publish(moto_env, package, store=f"s3://{BUCKET}/fleet2")
    assert_cli_error(other, "was packaged for")


def test_a_model_object_removed_from_the_store_after_packaging_is_refused(
    packaged: Path, moto_env: dict[str, str], tmp_path: Path, s3: Any
) -> None:
    key = "fleet/models/iris/1/model.onnx"
    original = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.delete_object(Bucket=BUCKET, Key=key)
    try:
        assert_cli_error(publish(moto_env, copy_package(packaged, tmp_path)), "missing from the store")
    finally:
        s3.put_object(Bucket=BUCKET, Key=key, Body=original)


def test_an_extra_recipe_naming_another_bucket_is_refused_and_that_bucket_is_untouched(
    packaged: Path, moto_env: dict[str, str], tmp_path: Path, s3: Any
) -> None:
    package = copy_package(packaged, tmp_path)
    model_recipe = yaml.safe_load((package / "recipes" / "com.modelship.model.iris-1.0.0.yaml").read_text())
    model_recipe["ComponentName"] = "com.modelship.model.stolen"
    for manifest in model_recipe["Manifests"]:
        for artifact in manifest["Artifacts"]:
            artifact["Uri"] = artifact["Uri"].replace(f"s3://{BUCKET}/", f"s3://{OTHER_BUCKET}/")
    (package / "recipes" / "com.modelship.model.stolen-1.0.0.yaml").write_text(yaml.safe_dump(model_recipe))
    assert_cli_error(publish(moto_env, package), "is not where modelship puts its artifacts")
    assert s3.list_objects_v2(Bucket=OTHER_BUCKET).get("KeyCount", 0) == 0


def test_a_recipe_with_a_variable_typo_is_refused(
    packaged: Path, moto_env: dict[str, str], tmp_path: Path
) -> None:
    package = copy_package(packaged, tmp_path)
    path = inference_recipe_path(package)
    path.write_text(path.read_text().replace("{work:path}/venv", "{work:pth}/venv"))
    assert_cli_error(publish(moto_env, package), "is not a recipe variable")


def test_a_yaml_alias_bomb_in_a_recipe_is_refused_quickly_and_briefly(
    packaged: Path, moto_env: dict[str, str], tmp_path: Path
) -> None:
    package = copy_package(packaged, tmp_path)
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for level in range(1, 7):
        lines.append(f"a{level}: &a{level} [{','.join([f'*a{level - 1}'] * 9)}]")
    lines += [
        "RecipeFormatVersion: '2020-01-25'",
        "ComponentName: com.modelship.model.bomb",
        "ComponentVersion: 1.0.0",
        "ComponentPublisher: modelship",
        "ComponentDescription: *a6",
        "Manifests: [{}]",
    ]
    (package / "recipes" / "com.modelship.model.bomb-1.0.0.yaml").write_text("\n".join(lines) + "\n")
    completed = publish(moto_env, package, timeout=20)
    assert completed.returncode != 0
    assert len(completed.stderr) < 10_000, f"{len(completed.stderr)} characters on stderr"


def test_a_huge_recipe_is_refused_without_parsing_it(
    packaged: Path, moto_env: dict[str, str], tmp_path: Path
) -> None:
    package = copy_package(packaged, tmp_path)
    huge = package / "recipes" / "com.modelship.model.huge-1.0.0.yaml"
    huge.write_text("ComponentDescription: '" + "a" * (16 << 20) + "'\n")
    try:
        completed = publish(moto_env, package, timeout=6)
    except subprocess.TimeoutExpired:
        pytest.fail("publish was still parsing a 16 MB recipe after 6 s")
    assert_cli_error(completed)


def test_publish_uploads_local_artifacts_only_under_components(
    packaged: Path, moto_env: dict[str, str], tmp_path: Path, s3: Any
) -> None:
    package = copy_package(packaged, tmp_path)
    path = inference_recipe_path(package)
    recipe = yaml.safe_load(path.read_text())
    name, version = recipe["ComponentName"], recipe["ComponentVersion"]
    planted = b"not the store's model"
    (package / "artifacts" / name / version / "model.onnx").write_bytes(planted)
    for manifest in recipe["Manifests"]:
        manifest["Artifacts"].append(
            {
                "Uri": f"s3://{BUCKET}/fleet/models/planted/1/model.onnx",
                "Digest": digest(planted),
                "Algorithm": "SHA-256",
                "Unarchive": "NONE",
                "Permission": {"Read": "OWNER", "Execute": "NONE"},
            }
        )
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    completed = publish(moto_env, package)
    try:
        assert s3.list_objects_v2(Bucket=BUCKET, Prefix="fleet/models/planted/").get("KeyCount", 0) == 0
        assert_cli_error(completed)
    finally:
        s3.delete_object(Bucket=BUCKET, Key="fleet/models/planted/1/model.onnx")


@pytest.mark.parametrize("where", ["a-file", "root", "under-a-file"])
def test_an_out_folder_that_cannot_be_a_package_is_a_clear_error(
    packaged: Path, moto_env: dict[str, str], tmp_path: Path, where: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    out = {"a-file": blocker, "root": Path("/"), "under-a-file": blocker / "pkg"}[where]
    completed = run_modelship(
        "edge", "package", "--store", STORE, "--model", "iris:1", "--out", str(out), env=moto_env
    )
    assert_cli_error(completed)
    assert blocker.read_text() == "mine"
    assert not list(tmp_path.glob(".*"))


def test_an_out_folder_whose_recipes_is_a_link_elsewhere_leaves_that_folder_alone(
    packaged: Path, moto_env: dict[str, str], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "recipes").symlink_to(elsewhere)
    completed = run_modelship(
        "edge", "package", "--store", STORE, "--model", "iris:1", "--out", str(out), env=moto_env
    )
    assert_cli_error(completed)
    assert (elsewhere / "precious.txt").read_text() == "keep"
    assert sorted(path.name for path in elsewhere.iterdir()) == ["precious.txt"]


def test_publishing_the_same_package_concurrently_uploads_once_and_all_succeed(
    packaged: Path, moto_env: dict[str, str], tmp_path: Path, s3: Any
) -> None:
    out = tmp_path / "pkg"
    completed = run_modelship(
        "edge", "package", "--store", STORE, "--model", "iris:1", "--out", str(out),
        "--component-version", "7.7.7", env=moto_env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    with ThreadPoolExecutor(3) as runners:
        results = list(runners.map(lambda _: publish(moto_env, out), range(3)))
    assert [result.returncode for result in results] == [0, 0, 0], [result.stderr for result in results]
    assert sum("1 uploaded" in result.stdout for result in results) == 1
    (zip_path,) = (out / "artifacts").rglob("modelship-edge.zip")
    key = "fleet/components/" + zip_path.relative_to(out / "artifacts").as_posix()
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == zip_path.read_bytes()
