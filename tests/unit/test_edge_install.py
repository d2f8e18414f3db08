"""The component's Install step (edge_greengrass/install.py), run as the nucleus runs it: `python3 -I`.

pip installs nothing here (an empty requirements file) or fails before any download (a malformed line),
so these tests never reach the network; only venv creation costs time.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from edge_greengrass.install import MARKER_FILE, venv_dir_name
from tests.support.processes import REPO_ROOT

INSTALL = REPO_ROOT / "edge_greengrass" / "install.py"


def run_install(work: Path, requirements: Path) -> subprocess.CompletedProcess[str]:
    # -I: no PYTHONPATH, no user site, no current folder: the script must stand alone.
    return subprocess.run(
        [sys.executable, "-I", str(INSTALL), "--work", str(work), "--requirements", str(requirements)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_folder_name_is_the_requirements_digest() -> None:
    data = b"onnxruntime==1.31.1\n"
    assert venv_dir_name(data) == "venv-" + hashlib.sha256(data).hexdigest()[:12]
    assert venv_dir_name(data) != venv_dir_name(data + b"numpy==2.4.6\n")


def test_the_script_imports_only_the_standard_library() -> None:
    import ast

    tree = ast.parse(INSTALL.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {name.split(".")[0] for name in imported} - {"__future__"} <= sys.stdlib_module_names


def test_a_first_install_builds_the_venv_and_a_second_does_nothing(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_bytes(b"")
    work = tmp_path / "work"
    first = run_install(work, requirements)
    assert first.returncode == 0, first.stdout + first.stderr
    venv = work / venv_dir_name(b"")
    assert (venv / "bin" / "python").exists()
    assert (venv / MARKER_FILE).read_text().strip() == hashlib.sha256(b"").hexdigest()
    # Renamed into place after it was built: its interpreter still runs from the final folder.
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(probe.stdout.strip()) == venv
    assert sorted(path.name for path in work.iterdir()) == [venv.name], "no temporary folder is left"
    assert "building" in first.stdout and "is ready" in first.stdout

    marker_time = (venv / MARKER_FILE).stat().st_mtime_ns
    second = run_install(work, requirements)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to install" in second.stdout
    assert "pip" not in second.stdout
    assert (venv / MARKER_FILE).stat().st_mtime_ns == marker_time


def test_a_failed_pip_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    # pip refuses this line while parsing, before any index is asked.
    requirements.write_bytes(b"this is not a requirement!!\n")
    work = tmp_path / "work"
    failed = run_install(work, requirements)
    assert failed.returncode != 0
    assert "pip failed" in failed.stdout
    assert list(work.iterdir()) == [], "neither the venv nor its temporary folder remains"


def test_an_incomplete_venv_is_rebuilt_and_leftovers_are_removed(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_bytes(b"")
    work = tmp_path / "work"
    venv = work / venv_dir_name(b"")
    (venv / "bin").mkdir(parents=True)
    (venv / MARKER_FILE).write_text("another digest\n")
    leftover = work / f".building-{venv.name}-killed"
    leftover.mkdir()
    completed = run_install(work, requirements)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (venv / MARKER_FILE).read_text().strip() == hashlib.sha256(b"").hexdigest()
    assert not leftover.exists()


def test_new_requirements_replace_the_old_venv_only_once_the_new_one_is_in_place(tmp_path: Path) -> None:
    old_requirements = tmp_path / "old.txt"
    old_requirements.write_bytes(b"")
    work = tmp_path / "work"
    assert run_install(work, old_requirements).returncode == 0
    old_venv = work / venv_dir_name(b"")

    broken = tmp_path / "broken.txt"
    broken.write_bytes(b"this is not a requirement!!\n")
    assert run_install(work, broken).returncode != 0
    assert (old_venv / MARKER_FILE).exists(), "a failed install keeps the previous virtualenv"

    new_bytes = b"# the next release\n"
    new_requirements = tmp_path / "new.txt"
    new_requirements.write_bytes(new_bytes)
    completed = run_install(work, new_requirements)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (work / venv_dir_name(new_bytes) / MARKER_FILE).exists()
    assert not old_venv.exists()
    assert completed.stdout.index("is ready") < completed.stdout.index("removing the previous virtualenv")


def test_a_missing_requirements_file_is_a_clear_error(tmp_path: Path) -> None:
    completed = run_install(tmp_path / "work", tmp_path / "absent.txt")
    assert completed.returncode == 1
    assert "error:" in completed.stdout and "absent.txt" in completed.stdout
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("argv", [[], ["--work", "w"]])
def test_the_arguments_are_required(argv: list[str]) -> None:
    completed = subprocess.run(
        [sys.executable, "-I", str(INSTALL), *argv], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 2
    assert "--requirements" in completed.stderr
