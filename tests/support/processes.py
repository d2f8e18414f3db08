"""Running ``modelship serve`` as a real subprocess on 127.0.0.1, the way a user runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def modelship_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelship.tools.cli", *args]


def run_modelship(
    *args: str, env: dict[str, str] | None = None, check: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The ``modelship`` command as a user runs it, with ``env`` on top of this process's environment."""
    return subprocess.run(
        modelship_command(*args),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def running_server(
    args: list[str], log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[RunningServer]:
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            modelship_command("serve", "--host", "127.0.0.1", "--port", str(port), *args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=REPO_ROOT,
            text=True,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(f"modelship serve exited with {process.returncode}:\n{server.log()}")
            try:
                with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"modelship serve did not become ready:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        stop(process, timeout=15)


def stop(process: subprocess.Popen[Any], timeout: float) -> None:
    """Ctrl-C, as a user stops ``modelship serve``; killed if it has not ended within ``timeout``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
