"""cfn-lint over every synthesized template: the default, the alternate and the operations configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from aws_cdk import App

pytestmark = pytest.mark.infra

# W3005 "dependency already enforced by a GetAtt": CDK adds DependsOn on the function's execution role
# (and its policy) next to the Role GetAtt. Redundant and harmless; CDK offers no way to drop only it.
IGNORED_CHECKS = ("W3005",)


def synthesized_templates(app: App) -> list[Path]:
    assembly = app.synth()
    templates = sorted(Path(assembly.directory).glob("*.template.json"))
    assert templates, "nothing was synthesized"
    return templates


@pytest.mark.parametrize("app_fixture", ["default_app", "alternate_app", "operations_app"])
def test_cfn_lint_passes(app_fixture: str, request: pytest.FixtureRequest) -> None:
    app: App = request.getfixturevalue(app_fixture)
    templates = synthesized_templates(app)
    assert {path.name.split("-")[-1] for path in templates} == {"api.template.json", "store.template.json"}
    result = subprocess.run(
        [
            sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())",
            "--format", "parseable", "--ignore-checks", *IGNORED_CHECKS, "--", *map(str, templates),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, f"cfn-lint found problems:\n{result.stdout}{result.stderr}"


def test_cfn_lint_is_really_checking(tmp_path: Path) -> None:
    """Guard against a lint step that passes vacuously: a broken template must fail."""
    broken = tmp_path / "broken.template.json"
    broken.write_text(
        '{"Resources": {"Fn": {"Type": "AWS::Lambda::Function", "Properties": {"Runtime": 42}}}}'
    )
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "E" in result.stdout
