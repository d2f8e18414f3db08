"""The component's Install step: one virtualenv per requirements digest, made once, reused offline.

Run by the nucleus with the device's own ``python3 -I`` before any virtualenv exists, so this file uses
the standard library only and imports nothing from the project::

    python3 -I install.py --work WORK --requirements REQUIREMENTS.txt

The nucleus runs Install at every launch, offline included: when ``WORK/venv-<digest>`` is complete (its
marker holds the digest) this exits 0 at once, without pip and without the network. Otherwise the
virtualenv is built in a temporary folder next to it and renamed into place only after pip succeeded and
the marker was written, so an install that fails or is killed (the nucleus's Install timeout) never
leaves anything a later launch would take for a good virtualenv. Older ``venv-*`` folders are removed
only once the new one is in place.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess  # nosec B404: runs this interpreter's venv and pip, never a shell
import sys
import tempfile
from pathlib import Path

VENV_PREFIX = "venv-"
DIGEST_CHARS = 12
MARKER_FILE = ".modelship-install-complete"
_TEMPORARY_PREFIX = ".building-"


def requirements_digest(requirements_bytes: bytes) -> str:
    return hashlib.sha256(requirements_bytes).hexdigest()


def venv_dir_name(requirements_bytes: bytes) -> str:
    """The virtualenv's folder name under the component's work folder (the recipe's Run names it)."""
    return f"{VENV_PREFIX}{requirements_digest(requirements_bytes)[:DIGEST_CHARS]}"


def is_complete(venv: Path, digest: str) -> bool:
    try:
        recorded = (venv / MARKER_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return recorded == digest and (venv / "bin" / "python").exists()


def say(message: str) -> None:
    print(f"modelship install: {message}", flush=True)


def install(work: Path, requirements: Path) -> int:
    requirements_bytes = requirements.read_bytes()
    digest = requirements_digest(requirements_bytes)
    name = venv_dir_name(requirements_bytes)
    target = work / name
    if is_complete(target, digest):
        say(f"{target} is complete; nothing to install")
        return 0
    work.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(work)
    say(f"building {target} for {requirements} (sha256 {digest})")
    building = Path(tempfile.mkdtemp(dir=work, prefix=f"{_TEMPORARY_PREFIX}{name}-"))
    try:
        status = _build(building, requirements)
        if status != 0:
            return status
        (building / MARKER_FILE).write_text(digest + "\n", encoding="ascii")
        if target.exists() or target.is_symlink():
            # Only an incomplete one can be there (the complete case returned above).
            say(f"removing the incomplete {target}")
            _remove(target)
        # The interpreter finds its prefix from the pyvenv.cfg beside it, so a renamed virtualenv still
        # works when run as <venv>/bin/python, which is how the Run step starts the door.
        building.rename(target)
    finally:
        if building.exists():
            _remove(building)
    say(f"{target} is ready")
    for old in sorted(work.glob(f"{VENV_PREFIX}*")):
        if old.name != name and old.is_dir() and not old.is_symlink():
            say(f"removing the previous virtualenv {old}")
            _remove(old)
    return 0


def _build(venv: Path, requirements: Path) -> int:
    say("creating the virtualenv")
    # nosec B603: argv is this interpreter, its venv module and a folder under {work:path}.
    created = subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False)  # nosec B603
    if created.returncode != 0:
        say(
            f"error: '{sys.executable} -m venv' failed with exit code {created.returncode} "
            "(on Debian or Ubuntu, install the python3-venv package)"
        )
        return 1
    say("installing the requirements with pip (a first install downloads them)")
    command = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
        "-r",
        str(requirements),
    ]
    # nosec B603: argv is the new venv's python, pip and the component's own requirements file.
    installed = subprocess.run(command, check=False)  # nosec B603
    if installed.returncode != 0:
        say(f"error: pip failed with exit code {installed.returncode}; nothing was installed")
        return 1
    return 0


def _remove_leftovers(work: Path) -> None:
    # A build the nucleus killed (Install timeout, reboot) leaves its temporary folder behind.
    for leftover in work.glob(f"{_TEMPORARY_PREFIX}{VENV_PREFIX}*"):
        say(f"removing the unfinished build {leftover}")
        _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="install.py",
        description="Make the edge door's virtualenv (WORK/venv-<digest>) once per requirements file.",
    )
    parser.add_argument("--work", required=True, type=Path, help="the component's work folder ({work:path})")
    parser.add_argument(
        "--requirements", required=True, type=Path, help="the pinned requirements file to install"
    )
    args = parser.parse_args(argv)
    try:
        return install(args.work.absolute(), args.requirements)
    except OSError as error:
        say(f"error: {error.strerror or error} ({error.filename or 'no file'})")
        return 1


if __name__ == "__main__":
    sys.exit(main())
