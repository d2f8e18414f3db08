"""The inference function's code asset: ``functions/`` (the core and the Lambda entry) with 3.13 bytecode.

Lambda's ``/var/task`` is read-only, so a module that ships without a valid ``.pyc`` is compiled again at
every cold start: about 136 ms of modelship's own imports on a 2-vCPU machine (docs/benchmarks.md). The
asset therefore ships ``.pyc`` files compiled by a real CPython 3.13 (the function's runtime) in
``unchecked-hash`` mode, with source paths recorded as ``/var/task/...``: they are used whatever the file
times in the zip, and their bytes are the same on every build, so the asset's digest is stable.

The CDK app stages the asset through this module (``infra/constructs/inference_function.py``), and
``bench/cold_start.py`` runs the same staged code. Without python3.13 the asset holds sources only,
which work, with the slower cold start, and the app says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from layers.build_layer import LayerBuildError, compile_tree, find_python313

# Where Lambda extracts the function's code.
LAMBDA_TASK_ROOT = "/var/task"
# The asset is functions/ (core + entry) and nothing a build or a test run leaves behind. These are also
# the asset's fingerprint excludes, so leftovers never change its hash.
ASSET_EXCLUDES = (
    "**/__pycache__",
    "**/*.pyc",
    "**/*.egg-info",
    "**/tests",
    "**/.pytest_cache",
    "**/.mypy_cache",
    "**/.ruff_cache",
    "**/.DS_Store",
    # CodeDeploy's pre-traffic hook: an asset of its own (infra/constructs/release.py), never the function's.
    "pretraffic",
)
_IGNORED = shutil.ignore_patterns(*(pattern.removeprefix("**/") for pattern in ASSET_EXCLUDES))


def python313_or_reason() -> tuple[Path | None, str]:
    """The interpreter that compiles the asset, or why there is none."""
    try:
        return find_python313(), ""
    except LayerBuildError as error:
        return None, str(error)


def stage_function_code(source: Path, target: Path, python313: Path | None) -> int:
    """Copy ``source`` (functions/) into ``target`` without leftovers, then compile it for 3.13 when
    ``python313`` is given. Returns the number of ``.pyc`` files written."""
    shutil.copytree(source, target, ignore=_IGNORED, dirs_exist_ok=True)
    if python313 is None:
        return 0
    return compile_tree(python313, target, strip=target, prefix=LAMBDA_TASK_ROOT)
