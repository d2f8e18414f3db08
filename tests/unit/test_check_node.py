"""scripts/check-node.sh, with a fake ``node`` on PATH: the Node floor of the CDK tools, stated once.

The floor is package.json's engines.node; a too-old Node stops `make node`, `make synth` and
`make deploy-local` with one line before they do anything.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "check-node.sh"


def engines_minimum() -> int:
    engines = json.loads((ROOT / "package.json").read_text())["engines"]["node"]
    match = re.fullmatch(r">=\s*(\d+)", engines)
    assert match, f"package.json engines.node is {engines!r}, not '>=N'"
    return int(match.group(1))


def fake_node(directory: Path, script: str) -> dict[str, str]:
    """An environment whose PATH finds a ``node`` running ``script`` before any real one."""
    directory.mkdir(exist_ok=True)
    node = directory / "node"
    node.write_text(f"#!/bin/sh\n{script}\n")
    node.chmod(0o755)
    return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_floor_is_the_engines_of_aws_cdk_lib() -> None:
    """aws-cdk-lib 2.275.0 (run through jsii by the CDK app) declares node >= 20.0.0."""
    assert engines_minimum() == 20


@pytest.mark.parametrize("version", ["v18.20.4", "v16.0.0", "v19.9.9"])
def test_an_older_node_fails_with_one_clear_line(tmp_path: Path, version: str) -> None:
    completed = run(["bash", str(CHECK)], fake_node(tmp_path / "bin", f"echo {version}"))
    assert completed.returncode == 1
    assert completed.stdout == ""
    message = completed.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"modelship's CDK tools need Node >= {engines_minimum()} (found {version}):")


@pytest.mark.parametrize(
    ("script", "found"),
    [("exit 127", "no 'node' on PATH"), ("echo not-a-version", "'node --version' printed 'not-a-version'")],
)
def test_a_missing_or_unreadable_node_fails(tmp_path: Path, script: str, found: str) -> None:
    completed = run(["bash", str(CHECK)], fake_node(tmp_path / "bin", script))
    assert completed.returncode == 1
    assert f"need Node >= {engines_minimum()} (found {found})" in completed.stderr


def test_node_20_passes_with_a_one_line_note_that_quiet_leaves_out(tmp_path: Path) -> None:
    env = fake_node(tmp_path / "bin", "echo v20.20.2")
    completed = run(["bash", str(CHECK)], env)
    assert completed.returncode == 0
    assert completed.stderr.splitlines() == [
        "note: Node v20.20.2 works, but jsii and the AWS SDK ask for Node >= 22; their warnings are silenced."
    ]
    quiet = run(["bash", str(CHECK), "--quiet"], env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


@pytest.mark.parametrize("version", ["v22.0.0", "v24.11.1"])
def test_a_recommended_node_passes_silently(tmp_path: Path, version: str) -> None:
    completed = run(["bash", str(CHECK)], fake_node(tmp_path / "bin", f"echo {version}"))
    assert (completed.returncode, completed.stdout, completed.stderr) == (0, "", "")


@pytest.mark.parametrize("script", ["synth.sh", "deploy-local.sh"])
def test_synth_and_deploy_local_stop_before_doing_anything(tmp_path: Path, script: str) -> None:
    """Nothing written: no log, no state folder, no cloud assembly."""
    env = fake_node(tmp_path / "bin", "echo v18.20.4")
    work = tmp_path / "work"
    env |= {
        "SYNTH_LOG": str(work / "synth.log"),
        "SYNTH_OUTDIR": str(work / "cdk.out"),
        "LOCALSTACK_STATE_DIR": str(work / "localstack"),
    }
    completed = run(["bash", str(ROOT / "scripts" / script)], env)
    assert completed.returncode == 1
    assert "modelship's CDK tools need Node >= 20 (found v18.20.4)" in completed.stderr
    assert not work.exists()


@pytest.mark.parametrize("target", ["node", "synth", "deploy-local"])
def test_make_targets_check_node_first(tmp_path: Path, target: str) -> None:
    """Before npm install and before the virtualenv's install: the Node check comes first."""
    env = fake_node(tmp_path / "bin", "echo v18.20.4")
    completed = run(["make", "--no-print-directory", target], env)
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0
    assert "modelship's CDK tools need Node >= 20 (found v18.20.4)" in output
    assert "npm install" not in output
    assert "installing" not in output
