"""`make synth` (scripts/synth.sh) says what it did in a few lines and keeps the CDK's output in a log.

It runs the real CDK CLI on the real app, with two tiny stand-in layer zips so that no layer is built.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYNTH = ROOT / "scripts" / "synth.sh"
CDK = ROOT / "node_modules" / ".bin" / "cdk"
MAX_LINES = 6

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CDK.exists(), reason="no node_modules/.bin/cdk: run `make node`"),
]


def layer_context(directory: Path) -> list[str]:
    arguments = []
    for name in ("onnx", "deps"):
        path = directory / f"{name}-layer.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"python/fake_{name}_layer.py", "# stand-in layer\n")
        arguments += ["-c", f"{name}_layer_zip={path}"]
    return arguments


def synth(tmp_path: Path, *context: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    log = tmp_path / "synth.log"
    completed = subprocess.run(
        ["bash", str(SYNTH), *layer_context(tmp_path), "-c", "edge_package=off", *context],
        cwd=ROOT,
        env={
            **os.environ,
            "SYNTH_LOG": str(log),
            "SYNTH_OUTDIR": str(tmp_path / "cdk.out"),
        },
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return completed, log


def assert_quiet(output: str) -> None:
    assert len(output.splitlines()) <= MAX_LINES, output
    for noise in ("b'", "Unknown option", "!!", "NodeVersionSupportWarning", "npm warn"):
        assert noise not in output, f"{noise!r} in:\n{output}"


def test_synth_prints_a_summary_and_keeps_the_log(tmp_path: Path) -> None:
    completed, log = synth(tmp_path)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert_quiet(output)
    assert f"full log: {log}" in completed.stdout
    assert "modelship-prod-store, modelship-prod-api synthesized into" in completed.stdout
    assert (tmp_path / "cdk.out" / "modelship-prod-api.template.json").exists()
    assert "Successfully synthesized" in log.read_text()


def test_a_failed_synth_shows_the_log_tail_and_exits_non_zero(tmp_path: Path) -> None:
    completed, log = synth(tmp_path, "-c", "architecture=sparc")
    assert completed.returncode != 0
    assert completed.stdout == ""
    assert f"the last 30 lines of {log}:" in completed.stderr
    assert "architecture='sparc': must be one of arm64, x86_64" in completed.stderr
    assert completed.stderr.rstrip().splitlines()[-1].endswith(f"full log: {log}")
    assert "b'" not in completed.stderr
