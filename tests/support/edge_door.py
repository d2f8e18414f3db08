"""The edge door (``python -m edge_greengrass``) as a device runs it: a real subprocess on 127.0.0.1,
over model folders laid out as the nucleus lays them out, with no AWS credentials and no nucleus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.support.processes import REPO_ROOT, free_port

IRIS_REQUEST: dict[str, Any] = {
    "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
}
# The nucleus sends SIGKILL 5 s after SIGTERM.
NUCLEUS_SHUTDOWN_SECONDS = 5.0
STARTUP_TIMEOUT_SECONDS = 60.0


def component_folder(root: Path, name: str, version: int) -> Path:
    """Where the nucleus puts a model component's artifacts."""
    return root / "packages" / "artifacts" / f"com.modelship.model.{name}" / f"{version}.0.0"


def door_environment() -> dict[str, str]:
    # No AWS credentials, no region, no nucleus: the door must not need any of them.
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "SVCUID"))}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "functions"), str(REPO_ROOT)])
    environment["PYTHONUNBUFFERED"] = "1"
    environment.pop("MODELSHIP_STORE", None)
    return environment


def door_command(port: int, work: Path, models: list[str], *extra: str) -> list[str]:
    command = [sys.executable, "-m", "edge_greengrass", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--work", str(work)]
    for model in models:
        command += ["--model", model]
    return [*command, *extra]


@dataclass
class DoorProcess:
    url: str
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


def call(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One JSON request: (status, the decoded JSON answer), error statuses included."""
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


@contextmanager
def running_door(
    tmp_path: Path,
    models: list[str],
    *,
    work: Path | None = None,
    wait_for: str = "/v2/health/live",
    env: dict[str, str] | None = None,
) -> Iterator[DoorProcess]:
    """The door, once ``wait_for`` answers 200; killed at the end if a test left it running."""
    port = free_port()
    log_path = tmp_path / f"door-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            door_command(port, work or tmp_path / "work", models),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**door_environment(), **(env or {})},
            cwd=tmp_path,
            text=True,
        )
    door = DoorProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the door exited with {process.returncode}:\n{door.log()}")
            try:
                if call(door.url, "GET", wait_for)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the door did not answer {wait_for}:\n{door.log()}")
            time.sleep(0.05)
        yield door
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_door(tmp_path: Path, work: Path, models: list[str]) -> tuple[int, str]:
    """A door expected to stop on its own (it cannot serve): its exit code and its log."""
    completed = subprocess.run(
        door_command(free_port(), work, models),
        env=door_environment(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_SECONDS,
        check=False,
    )
    return completed.returncode, completed.stdout + completed.stderr


def sigterm_and_wait(process: subprocess.Popen[str], signals: int = 1) -> float:
    """SIGTERM (``signals`` times, 50 ms apart), then the seconds until the door exited; an error if it
    outlived the nucleus's 5 s."""
    started = time.monotonic()
    for _ in range(signals):
        process.send_signal(signal.SIGTERM)
        if signals > 1:
            time.sleep(0.05)
    try:
        process.wait(timeout=NUCLEUS_SHUTDOWN_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError("the door outlived the nucleus's 5 s between SIGTERM and SIGKILL") from None
    return time.monotonic() - started
