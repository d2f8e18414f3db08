"""README, "An image classifier": the snippet run word for word, as a new user runs it from a fresh
clone, in a working directory of its own (with the repository's .venv)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

from tests.support.processes import REPO_ROOT, free_port, stop

# The README's two blocks, word for word. The first runs in one terminal (its last line serves), the
# second in another. Two changes only when the test runs them: `make venv` is not run (this test runs
# in that venv; it checks the line is there), and the server gets a free port instead of 8080, which
# the second block's URL follows.
BUILD_PUSH_OPTIMIZE_SERVE = """\
make venv   # or, after make serve's lean install: .venv/bin/pip install -e '.[examples]'
.venv/bin/modelship example digits --out ./digits   # trains in seconds: model, labels, preprocessing, PNGs
.venv/bin/modelship push ./digits/digits.onnx --name digits --store ./store \\
  --labels ./digits/digits.labels.json --preprocessing ./digits/digits.preprocessing.json
.venv/bin/modelship optimize digits --int8 --store ./store --calibration ./digits/digits.calibration.npz
.venv/bin/modelship serve --store ./store --preload digits
"""
INFER_IMAGE = """\
.venv/bin/modelship infer --url http://127.0.0.1:8080 --model digits --image digits/digit-3.png \\
  --model-version 1
.venv/bin/modelship infer --url http://127.0.0.1:8080 --model digits --image digits/digit-7.png  # INT8
"""
MAKE_LINE = "make venv   # or, after make serve's lean install: .venv/bin/pip install -e '.[examples]'"
README_MARKER = "modelship example digits"


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, f"{command}\n{completed.stderr}"
    assert "Traceback" not in completed.stderr
    return completed


def test_the_readme_keeps_the_snippet_word_for_word() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    if README_MARKER in readme:  # once the section is in the README, it is this test's snippet
        assert BUILD_PUSH_OPTIMIZE_SERVE in readme
        assert INFER_IMAGE in readme


def test_the_image_example_snippet_runs_as_written(tmp_path: Path) -> None:
    # The venv these tests run in: the repository's .venv, as `make venv` made it.
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    first = commands(BUILD_PUSH_OPTIMIZE_SERVE)
    assert first[0] == MAKE_LINE
    *setup, serve = first[1:]
    outputs = [run(command, tmp_path) for command in setup]
    assert "test accuracy 0.9" in outputs[0].stdout
    assert orjson.loads(outputs[1].stdout)["preprocessing"]["size"] == [8, 8]
    assert (
        "top-1 agreement" in outputs[2].stdout and "pushed digits version 2 (int8-static" in outputs[2].stderr
    )

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # bash runs a single command by exec: the process is modelship serve itself, stopped with Ctrl-C.
    server = subprocess.Popen(
        ["bash", "-c", f"{serve} --port {port}"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environment,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v2/health/ready", timeout=2
                ) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        url = shlex.quote(f"http://127.0.0.1:{port}")
        answers = [
            run(command.replace("http://127.0.0.1:8080", url), tmp_path) for command in commands(INFER_IMAGE)
        ]
    finally:
        stop(server, timeout=15)
        log.close()
    for answer, version, digit in zip(answers, (1, 2), ("3", "7"), strict=True):
        lines = answer.stdout.strip().splitlines()
        assert lines[0].startswith(f"digits version {version}: digit-{digit}.png (32x32, resized to 8x8)")
        assert lines[1].split() == ["CLASS", "SCORE"]
        assert lines[2].split()[0] == digit
