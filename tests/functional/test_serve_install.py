"""`make serve` installs only the `serve` extra: `modelship serve` of the bundled default model, from the
first run's training to an answered request, must import nothing from outside that extra's dependencies.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support.processes import REPO_ROOT, running_server

pytestmark = pytest.mark.functional

# Written into a folder put first on PYTHONPATH: `site` imports it before the command runs.
_RECORD_IMPORTS = """\
import atexit, json, os, sys

def _record() -> None:
    with open(os.environ["MODELSHIP_TEST_IMPORTS_FILE"], "w") as out:
        json.dump(sorted({name.partition(".")[0] for name in sys.modules}), out)

atexit.register(_record)
"""


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str], extras_of_project: dict[str, list[str]]) -> set[str]:
    """The distributions that ``requirements`` install, following installed metadata (markers honoured)."""
    seen: set[str] = set()
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        name = _normalized(requirement.name)
        if name == "modelship":
            for extra in requirement.extras:
                pending.extend(Requirement(text) for text in extras_of_project[extra])
            continue
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                pending.append(dependency)
    return seen


def test_serving_the_default_model_imports_only_the_serve_extra(tmp_path: Path) -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert "serve" in (REPO_ROOT / "Makefile").read_text().split(".serve-installed: pyproject.toml", 1)[1]
    allowed = _closure(extras["serve"], extras) | {"modelship"}

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_RECORD_IMPORTS)
    imports_file = tmp_path / "imports.json"
    environment = {
        "HOME": str(tmp_path / "home"),  # a first run: the default store is empty, so the model is trained
        "PYTHONPATH": f"{hook}:{REPO_ROOT / 'functions'}",
        "MODELSHIP_TEST_IMPORTS_FILE": str(imports_file),
    }
    request = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
    }
    with running_server([], tmp_path, environment) as server:
        answer = urllib.request.urlopen(
            urllib.request.Request(f"{server.url}/v2/models/iris/infer", data=json.dumps(request).encode()),
            timeout=30,
        )
        assert json.loads(answer.read())["outputs"][1]["data"] == [0]
    imported = json.loads(imports_file.read_text())

    owners = metadata.packages_distributions()
    outside = {
        module: sorted(owners.get(module, ["?"]))
        for module in imported
        if module not in sys.stdlib_module_names
        and module not in {"sitecustomize", "__main__", "inference", "_distutils_hack"}
        and not module.startswith("__editable__")  # pip's editable-install finder and setuptools'
        and not {_normalized(owner) for owner in owners.get(module, ["?"])} & allowed
    }
    assert outside == {}, f"modelship serve imported modules from outside the serve extra: {outside}"
