"""docs/contracts.md says what the code does: the CLI synopses and the module layout cannot drift."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

from tests.support.processes import REPO_ROOT

CONTRACTS = REPO_ROOT / "docs" / "contracts.md"


def cli_usage_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_usage", REPO_ROOT / "scripts" / "cli_usage.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_synopses_match_the_parsers() -> None:
    script = cli_usage_script()
    text = CONTRACTS.read_text()
    assert script.document_with_block(text, script.usage_block()) == text, (
        "docs/contracts.md is out of date: run `python scripts/cli_usage.py --write`"
    )


def test_every_module_is_in_the_layout() -> None:
    text = CONTRACTS.read_text()
    layout = re.search(r"## Layout\n.*?```text\n(.*?)```", text, re.S)
    assert layout is not None
    listed = {line.split()[0] for line in layout.group(1).splitlines() if line.strip()}
    functions = REPO_ROOT / "functions"
    modules = {
        path.name if path.name != "app.py" else "inference/app.py"
        for path in functions.rglob("*.py")
        if path.name != "__init__.py" or path.parent.name == "modelship"
    }
    modules |= {
        path.name
        for path in (REPO_ROOT / "edge_greengrass").iterdir()
        if path.is_file() and path.name != "__init__.py"
    }
    assert modules - listed == set(), "modules missing from the layout in docs/contracts.md"
