"""Lambda semantics of our LocalStack runtime executor (tests/localstack_executor), on a tiny function.

The CDK app's tests show the executor serving the real function; these pin down what a Lambda
runtime must do that the real function rarely exercises: warm reuse, layers on the path, boto3 from
the runtime, unhandled errors, the timeout, a crashed environment, init errors, and the host
architecture check.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import platform
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.support import aws_client

pytestmark = [pytest.mark.localstack, pytest.mark.timeout(300)]

ROLE = "arn:aws:iam::000000000000:role/process-executor-test"
TIMEOUT_SECONDS = 2

HANDLER_SOURCE = """
import os
import sys
import time

import boto3
import layer_helper

INIT_PID = os.getpid()
print("init ran", flush=True)
invocations = 0


def handler(event, context):
    global invocations
    invocations += 1
    action = event.get("action")
    print(f"handling {action}", flush=True)
    if action == "boom":
        raise ValueError("boom from the handler")
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "exit":
        os._exit(3)
    if action == "stubborn_sleep":
        # Ignores Lambda's shutdown signal and would answer late: only a hard kill stops it.
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(event["seconds"])
        return {"stale": True}
    if action == "sleep_echo":
        time.sleep(event["seconds"])
        return {"echo": event["value"]}
    if action == "spawn_exit":
        import subprocess
        child = subprocess.Popen(["sleep", "300"])
        with open(event["pid_file"], "w") as file:
            file.write(str(child.pid))
        os._exit(3)
    return {
        "pid": INIT_PID,
        "invocations": invocations,
        "layer": layer_helper.VALUE,
        "buckets": [bucket["Name"] for bucket in boto3.client("s3").list_buckets()["Buckets"]],
        "path": sys.path[:2],
        "task_root": os.environ["LAMBDA_TASK_ROOT"],
        "endpoint": os.environ.get("AWS_ENDPOINT_URL"),
        "function_name": context.function_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
"""


def zip_of(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def create_function(name: str, files: dict[str, str], **options: Any) -> None:
    lambda_client = aws_client("lambda")
    lambda_client.create_function(
        FunctionName=name,
        Runtime="python3.13",
        Role=ROLE,
        Handler="app.handler",
        Code={"ZipFile": zip_of(files)},
        **options,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = lambda_client.get_function_configuration(FunctionName=name)["State"]
        if state != "Pending":
            return
        time.sleep(0.3)


def invoke(name: str, event: dict[str, Any]) -> tuple[dict[str, Any], str | None, str, float]:
    """Payload, FunctionError, the tail of the invocation's logs, and seconds taken."""
    started = time.perf_counter()
    response = aws_client("lambda").invoke(
        FunctionName=name, Payload=json.dumps(event).encode(), LogType="Tail"
    )
    seconds = time.perf_counter() - started
    logs = base64.b64decode(response.get("LogResult", "")).decode(errors="replace")
    return json.loads(response["Payload"].read()), response.get("FunctionError"), logs, seconds


@pytest.fixture(scope="module")
def function_name(localstack: str) -> Iterator[str]:
    name = f"process-executor-{uuid.uuid4().hex[:8]}"
    bucket = f"{name}-bucket"
    aws_client("s3").create_bucket(Bucket=bucket)
    layer = aws_client("lambda").publish_layer_version(
        LayerName=f"{name}-layer",
        Content={"ZipFile": zip_of({"python/layer_helper.py": "VALUE = 'from the layer'\n"})},
        CompatibleRuntimes=["python3.13"],
    )
    create_function(
        name, {"app.py": HANDLER_SOURCE}, Layers=[layer["LayerVersionArn"]], Timeout=TIMEOUT_SECONDS
    )
    yield name
    aws_client("lambda").delete_function(FunctionName=name)
    aws_client("s3").delete_bucket(Bucket=bucket)


def test_init_once_warm_reuse_layers_and_boto3(function_name: str) -> None:
    first, error, logs, _ = invoke(function_name, {"action": "info"})
    assert error is None, first
    assert first["invocations"] == 1
    assert first["layer"] == "from the layer"
    assert f"{function_name}-bucket" in first["buckets"]  # the runtime's boto3, talking to LocalStack
    assert first["endpoint"] == "http://127.0.0.1:4566"
    assert first["function_name"] == function_name
    assert 0 < first["remaining_ms"] <= TIMEOUT_SECONDS * 1000
    # Lambda's order: the task root, then the layers' /opt/python.
    assert first["path"][0] == first["task_root"]
    assert first["path"][1].endswith("/python/lib/python3.13/site-packages")
    # The cold invocation's logs carry the init output and Lambda's runtime lines.
    assert "init ran" in logs and "handling info" in logs
    assert "START RequestId:" in logs and "END RequestId:" in logs and "Init Duration:" in logs

    second, error, logs, _ = invoke(function_name, {"action": "info"})
    assert error is None
    assert (second["pid"], second["invocations"]) == (first["pid"], 2)  # same process, init not rerun
    assert "init ran" not in logs and "Init Duration" not in logs


def test_unhandled_exception_is_an_invocation_error(function_name: str) -> None:
    before, _, _, _ = invoke(function_name, {"action": "info"})
    payload, error, logs, _ = invoke(function_name, {"action": "boom"})
    assert error == "Unhandled"
    assert payload["errorType"] == "ValueError"
    assert payload["errorMessage"] == "boom from the handler"
    assert any("app.py" in frame for frame in payload["stackTrace"])
    assert not any("bootstrap.py" in frame for frame in payload["stackTrace"])
    assert "[ERROR] ValueError: boom from the handler" in logs
    after, error, _, _ = invoke(function_name, {"action": "info"})
    assert error is None and after["pid"] == before["pid"]  # the environment survives it


def test_timeout_is_enforced_and_the_environment_reinitialised(function_name: str) -> None:
    before, _, _, _ = invoke(function_name, {"action": "info"})
    payload, error, _, seconds = invoke(function_name, {"action": "sleep", "seconds": TIMEOUT_SECONDS + 5})
    assert error == "Unhandled"
    assert payload["errorType"] == "Sandbox.Timedout"
    assert f"Task timed out after {TIMEOUT_SECONDS}.00 seconds" in payload["errorMessage"]
    assert seconds < TIMEOUT_SECONDS + 2.5
    after, error, logs, _ = invoke(function_name, {"action": "info"})
    assert error is None
    assert after["pid"] != before["pid"] and after["invocations"] == 1
    assert "Init Duration:" in logs


def test_a_timed_out_handler_cannot_answer_a_later_invocation(function_name: str) -> None:
    payload, error, _, _ = invoke(function_name, {"action": "stubborn_sleep", "seconds": TIMEOUT_SECONDS + 1})
    assert error == "Unhandled" and payload["errorType"] == "Sandbox.Timedout"
    # Had the timed-out process survived, its late {"stale": true} would land during this invocation.
    payload, error, _, _ = invoke(function_name, {"action": "sleep_echo", "seconds": 1.5, "value": "second"})
    assert error is None and payload == {"echo": "second"}
    payload, error, _, _ = invoke(function_name, {"action": "sleep_echo", "seconds": 0, "value": "third"})
    assert error is None and payload == {"echo": "third"}


def test_a_crash_leaves_no_processes_behind(function_name: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    payload, error, _, _ = invoke(function_name, {"action": "spawn_exit", "pid_file": str(pid_file)})
    assert error == "Unhandled" and payload["errorType"] == "Runtime.ExitError"
    child_pid = int(pid_file.read_text())
    _, error, _, _ = invoke(function_name, {"action": "info"})
    assert error is None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and process_exists(child_pid):
        time.sleep(0.1)
    assert not process_exists(child_pid), "the crashed handler's child outlived its environment"


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0) until its parent reaps it; a zombie is dead for our purpose.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_crashed_environment_fails_the_invocation_and_restarts(function_name: str) -> None:
    before, _, _, _ = invoke(function_name, {"action": "info"})
    payload, error, _, _ = invoke(function_name, {"action": "exit"})
    assert error == "Unhandled"
    assert payload["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in payload["errorMessage"]
    after, error, _, _ = invoke(function_name, {"action": "info"})
    assert error is None and after["pid"] != before["pid"]


@pytest.mark.parametrize(
    ("source", "error_type"),
    [
        ("import module_that_does_not_exist\n", "Runtime.ImportModuleError"),
        ("raise RuntimeError('init failed')\n", "RuntimeError"),
        ("def other(event, context):\n    return 1\n", "Runtime.HandlerNotFound"),
    ],
    ids=["import-error", "init-raises", "no-handler"],
)
def test_init_errors_fail_the_invocation(localstack: str, source: str, error_type: str) -> None:
    name = f"process-executor-init-{uuid.uuid4().hex[:8]}"
    create_function(name, {"app.py": source}, Timeout=TIMEOUT_SECONDS)
    try:
        payload, error, _, _ = invoke(name, {})
        assert error == "Unhandled", payload
        assert payload["errorType"] == error_type
    finally:
        aws_client("lambda").delete_function(FunctionName=name)


def test_foreign_architecture_is_refused_at_creation(localstack: str) -> None:
    foreign = "x86_64" if platform.machine() in {"aarch64", "arm64"} else "arm64"
    name = f"process-executor-arch-{uuid.uuid4().hex[:8]}"
    create_function(name, {"app.py": HANDLER_SOURCE}, Architectures=[foreign])
    try:
        configuration = aws_client("lambda").get_function_configuration(FunctionName=name)
        assert configuration["State"] == "Failed"
        assert "runs code natively" in configuration.get("StateReason", "")
    finally:
        # LocalStack cannot delete a function whose creation failed ("Unable to find version
        # manager"); it goes with LocalStack itself, which keeps no state.
        with contextlib.suppress(ClientError):
            aws_client("lambda").delete_function(FunctionName=name)
