"""The import contracts in pyproject.toml hold, and each one fails when the tree breaks it on purpose.

Each case copies the code into a scratch tree, adds one forbidden import, and runs ``lint-imports`` there
with the project's own configuration: a contract that could not fail would prove nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LAYERS = "Doors and tools are built on the core, never the other way round"
CORE_KNOWS_NO_DOOR = (
    "The core imports no door, no Powertools, no CDK, and boto3 only where an S3 store is opened"
)
NO_POWERTOOLS = (
    "Only the Lambda entry uses Powertools: the core, the local door and the CLI run on the runtime extra"
)
INFRA_USES_ONLY_THE_CORE = "The CDK app and the layer builder use the core's rules, never a door"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # The scratch tree must shadow the editable install of the real one.
    environment = {**os.environ, "PYTHONPATH": f"{root / 'functions'}{os.pathsep}{root}"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def scratch_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for folder in ("functions", "infra", "layers"):
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=ignore)
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_contracts_hold_on_the_real_tree() -> None:
    completed = lint_imports(REPO_ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "0 broken" in completed.stdout


@pytest.mark.parametrize(
    ("module", "forbidden_import", "broken_contracts"),
    [
        pytest.param(
            "functions/modelship/core/errors.py",
            "import modelship.doors.apigw",
            # Forbidden contracts follow indirect imports: infra uses the core, so it now reaches a door.
            [LAYERS, CORE_KNOWS_NO_DOOR, INFRA_USES_ONLY_THE_CORE],
            id="core-imports-a-door",
        ),
        pytest.param(
            "functions/modelship/core/service.py",
            "import aws_lambda_powertools",
            [CORE_KNOWS_NO_DOOR, NO_POWERTOOLS],
            id="core-imports-powertools",
        ),
        pytest.param(
            "functions/modelship/tools/cli.py",
            "from inference import app",
            [LAYERS, NO_POWERTOOLS],
            id="cli-imports-the-lambda-entry",
        ),
        pytest.param(
            "functions/modelship/doors/local_http.py",
            "import aws_lambda_powertools",
            [NO_POWERTOOLS],
            id="local-door-imports-powertools",
        ),
        pytest.param(
            "functions/modelship/core/repository.py",
            "import boto3",
            [CORE_KNOWS_NO_DOOR],
            id="core-imports-boto3-at-import-time",
        ),
        pytest.param(
            "functions/modelship/doors/local_http.py",
            "import modelship.tools.cli",
            [LAYERS],
            id="door-imports-the-cli",
        ),
        pytest.param(
            "infra/config.py",
            "import modelship.doors.apigw",
            [INFRA_USES_ONLY_THE_CORE],
            id="infra-imports-a-door",
        ),
    ],
)
def test_a_contract_broken_on_purpose_fails(
    tmp_path: Path, module: str, forbidden_import: str, broken_contracts: list[str]
) -> None:
    root = scratch_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{forbidden_import}  # broken on purpose\n")
    completed = lint_imports(root)
    assert completed.returncode != 0, completed.stdout
    report = " ".join(completed.stdout.split())
    for contract in (LAYERS, CORE_KNOWS_NO_DOOR, NO_POWERTOOLS, INFRA_USES_ONLY_THE_CORE):
        verdict = "BROKEN" if contract in broken_contracts else "KEPT"
        assert f"{contract} {verdict}" in report, report
