"""The peers' virtualenvs: ``build/bench/venvs/<name>``, made on demand with pinned versions.

A virtualenv is reused when its marker (written last, after pip succeeded) holds the same requirements and
the same base interpreter; otherwise it is removed and made again. onnxruntime and numpy are pinned to
the versions the project itself runs, so every server of the comparison runs the same onnxruntime.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_ROOT = REPO / "build" / "bench" / "venvs"
MARKER = ".bench-venv.json"
PIP = "pip==25.3"  # as the Makefile's
PEER_PACKAGES = {"kserve": "kserve==0.21.0", "mlserver": "mlserver==1.7.1"}
# Used only when the project's own versions cannot be read.
FALLBACK_PINS = {"onnxruntime": "1.31.1", "numpy": "2.4.6"}
PIP_TIMEOUT_SECONDS = 1200


class VenvError(Exception):
    """The virtualenv could not be made (no network, a resolution conflict, ...): the reason."""


def pinned(package: str) -> str:
    try:
        return f"{package}=={metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return f"{package}=={FALLBACK_PINS[package]}"


def requirements(peer: str) -> list[str]:
    return [PEER_PACKAGES[peer], pinned("onnxruntime"), pinned("numpy")]


def marker_for(peer: str) -> dict[str, object]:
    return {
        "requirements": requirements(peer),
        "pip": PIP,
        "base_python": str(Path(sys.base_prefix).resolve()),
        "python_version": sys.version.split()[0],
    }


def venv_python(peer: str, root: Path = VENV_ROOT) -> Path:
    return root / peer / "bin" / "python"


def is_current(peer: str, root: Path = VENV_ROOT) -> bool:
    marker = root / peer / MARKER
    try:
        return bool(json.loads(marker.read_text()) == marker_for(peer) and venv_python(peer, root).exists())
    except (OSError, ValueError):
        return False


def ensure_venv(
    peer: str, root: Path = VENV_ROOT, progress: Callable[[str], None] | None = None
) -> tuple[Path, float, bool]:
    """The virtualenv's python, the seconds it took, and whether it was made now (False: reused).
    Raises ``VenvError`` with the reason when it cannot be made."""
    say = progress or (lambda line: None)
    started = time.monotonic()
    folder = root / peer
    if is_current(peer, root):
        say(f"{peer} venv: reusing {folder} ({', '.join(requirements(peer))})")
        return venv_python(peer, root), time.monotonic() - started, False
    say(f"{peer} venv: creating {folder} with {', '.join(requirements(peer))} (a few minutes when cold)")
    if folder.exists():
        shutil.rmtree(folder)
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / f"{peer}.pip.log"
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    creator = str(base) if base.exists() else sys.executable
    steps = [
        [creator, "-m", "venv", str(folder)],
        [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--timeout", "30", "--retries", "2", PIP],
        [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--timeout", "30", "--retries", "2", *requirements(peer)],
    ]  # fmt: skip
    with log_path.open("w") as log:
        for step in steps:
            say(f"{peer} venv: {' '.join(step[2:]) if 'pip' in step else 'python -m venv'}")
            log.write(f"$ {' '.join(step)}\n")
            log.flush()
            try:
                result = subprocess.run(
                    step, stdout=log, stderr=subprocess.STDOUT, timeout=PIP_TIMEOUT_SECONDS, check=False
                )
            except subprocess.TimeoutExpired:
                raise VenvError(f"{' '.join(step[2:])} took over {PIP_TIMEOUT_SECONDS} s") from None
            if result.returncode != 0:
                log.flush()
                tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
                shutil.rmtree(folder, ignore_errors=True)
                raise VenvError(
                    f"could not make the {peer} virtualenv (exit {result.returncode}; "
                    f"no network to PyPI?): {tail[-400:]} (full log: {log_path})"
                )
    (folder / MARKER).write_text(json.dumps(marker_for(peer), indent=2) + "\n")
    took = time.monotonic() - started
    say(f"{peer} venv: ready in {took:.0f} s")
    return venv_python(peer, root), took, True


def main() -> int:
    """``python bench/peers/venvs.py [PEER ...]``: make (or check) the peers' virtualenvs."""
    peers = sys.argv[1:] or list(PEER_PACKAGES)
    status = 0
    for peer in peers:
        try:
            python, took, made = ensure_venv(peer, progress=lambda line: print(line, file=sys.stderr))
        except VenvError as error:
            print(f"{peer}: {error}", file=sys.stderr)
            status = 1
            continue
        print(f"{peer}: {python} ({'made' if made else 'reused'} in {took:.1f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
