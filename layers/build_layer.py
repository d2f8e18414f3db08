#!/usr/bin/env python3
"""Build modelship's Lambda layers for one architecture, reproducibly and within a size budget.

Two layers are built from pinned requirements, both for CPython 3.13 on Amazon Linux 2023:

* ``onnx``: onnxruntime + numpy (and their pinned dependencies), stripped of what is never
  imported at run time;
* ``deps``: the other packages the function needs (orjson, pybase64, Powertools, X-Ray SDK, and
  cryptography with cffi's backend, for signed manifests).

Each build:

1. installs wheels for the *target* platform with ``pip install --platform manylinux_2_28_<arch>
   --platform manylinux_2_17_<arch> --only-binary=:all: --python-version 3.13`` (never the host's wheels),
   then checks every shared object is an ELF for the target machine;
2. prunes tests, headers, type stubs, console scripts, unused onnxruntime parts and the numpy
   subpackages inference never imports (random, fft, polynomial, ma, testing, typing); the unused
   ``libonnxruntime.so`` is removed only after the ELF dynamic section of every onnxruntime extension
   proves nothing links it; then strips the shared objects' symbol tables (``--strip-unneeded``, which
   keeps what the dynamic linker uses) with ``llvm-strip`` (any architecture) or binutils' ``strip``
   for the target, checking each stripped file still links the same libraries; without such a tool the
   layer is built unstripped, with a message;
3. compiles ``.pyc`` with a real python3.13 (pip cannot, for a foreign interpreter version), with
   ``--invalidation-mode unchecked-hash`` and source paths rewritten to ``/opt/python/...`` (where Lambda
   mounts layers), so the bytes do not depend on the build directory or on file times;
4. writes a deterministic zip: sorted entries, a fixed 1980-01-01 timestamp and fixed permissions;
5. fails, with the figures, if the layer is over budget.

Builds are cached: a layer is rebuilt only when the hash of its inputs changes (requirements file,
architecture, platform tags, Python version of the compiler, pip version, the strip tool's version and
the builder's source: this file and ``elf.py``). A cached build needs no network: synth and the tests
reach PyPI only on a change.

Outputs, stable paths: ``layers/build/<arch>/<name>-layer.zip`` and ``layers/build/<arch>/layers.json``
(sizes, sha256 and input hash of each layer).

Usage: ``python layers/build_layer.py --arch x86_64|arm64 [--layer onnx|deps] [--force]``
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as `python layers/build_layer.py`: make the `layers` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from layers.elf import ELF_MACHINES, HEADER_BYTES, elf_machine

LAYERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = LAYERS_DIR.parent
# The builder's own source is one of its inputs: a change to it invalidates the cached layers.
BUILDER_SOURCES = (LAYERS_DIR / "build_layer.py", LAYERS_DIR / "elf.py")
BUILD_ROOT = LAYERS_DIR / "build"
FIND_PYTHON_SCRIPT = REPO_ROOT / "scripts" / "find-python.sh"

PYTHON_VERSION = "3.13"
# Lambda extracts every layer into /opt, and puts /opt/python on sys.path.
LAMBDA_LAYER_MOUNT = "/opt"
# The earliest timestamp a zip entry can carry; any fixed value makes the archive reproducible.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
ZIP_COMPRESSION_LEVEL = 9
FILE_MODE = 0o644
EXECUTABLE_MODE = 0o755
# AWS counts Lambda limits in MiB (250 MB = 262,144,000 bytes), so do budgets here.
MIB = 1024 * 1024

ONNX_MAX_ZIPPED_BYTES = 25_000_000

ARCHITECTURES = ("x86_64", "arm64")
# manylinux_2_28 covers onnxruntime 1.31; 2_17 (manylinux2014) covers older-tagged wheels such as
# protobuf's. Amazon Linux 2023 (glibc 2.34) runs both.
PLATFORM_TAGS = {
    "x86_64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64"),
    "arm64": ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64"),
}

# Removed from every layer: never imported at run time on Lambda.
PRUNED_DIR_NAMES = frozenset({"tests", "__pycache__"})
PRUNED_SUFFIXES = frozenset({".pyi", ".h", ".hpp", ".c", ".cpp", ".pxd", ".pyx", ".a"})
# pip writes console scripts whose shebang is the *build host's* interpreter: useless on Lambda.
PRUNED_TOP_LEVEL = ("bin",)
# pip's install records hash those scripts (so they depend on the build host's interpreter path) and
# list files pruned here; only `pip uninstall` reads them, and nothing uninstalls from a layer.
PRUNED_FILE_NAMES = frozenset({"RECORD"})


# What strips a shared object's symbol tables: binutils' strip for the target machine (the cross variant
# is named by its triplet; the host's own `strip` for the host), else LLVM's, which handles any machine.
# Either can produce a file the dynamic loader refuses (auditwheel's patchelf leaves segments that a
# strip may move off their page alignment): every stripped file is checked, and kept only if sound.
LLVM_STRIP_NAMES = ("llvm-strip", *(f"llvm-strip-{version}" for version in range(21, 13, -1)))
BINUTILS_STRIP_NAMES = {"x86_64": "x86_64-linux-gnu-strip", "arm64": "aarch64-linux-gnu-strip"}
HOST_MACHINES = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


class LayerBuildError(RuntimeError):
    """The layer could not be built, or was built over budget."""


@dataclass(frozen=True)
class LayerSpec:
    """What goes into one layer and how big it may get."""

    name: str
    requirements: Path
    max_zipped_bytes: int
    max_unzipped_bytes: int
    # Paths (or glob patterns) relative to python/ removed after install, on top of the generic pruning.
    pruned_paths: tuple[str, ...] = ()
    # Shared objects removed only once no extension under their package links them.
    unlinked_libraries: tuple[str, ...] = ()


LAYER_SPECS: dict[str, LayerSpec] = {
    "onnx": LayerSpec(
        name="onnx",
        requirements=LAYERS_DIR / "requirements-onnx.txt",
        # 25 MB (issue 13's target; 28.2 MB before the pruning of numpy and the stripping).
        max_zipped_bytes=ONNX_MAX_ZIPPED_BYTES,
        max_unzipped_bytes=80 * MIB,
        pruned_paths=(
            "numpy/f2py",  # Fortran wrapper generator: build time only
            "numpy/_core/include",  # C headers
            "numpy/_core/lib",  # static npymath and pkg-config files
            # numpy subpackages that `import numpy` does not import (numpy/__init__.py loads them lazily,
            # on first attribute access) and that serving never uses: onnxruntime runs the model.
            "numpy/random",
            "numpy/fft",
            "numpy/polynomial",
            "numpy/ma",
            "numpy/testing",  # and the C test modules below, which only numpy's own tests import
            "numpy/typing",
            "numpy/_pyinstaller",
            "numpy/conftest.py",
            "numpy/_core/_simd.*",
            "numpy/_core/_*_tests.*",
            "numpy/linalg/lapack_lite.*",  # numpy's own fallback LAPACK, for its tests: _umath_linalg is used
            "numpy/lib/recfunctions.py",  # needs numpy.ma
            "onnxruntime/tools",  # model conversion scripts
            "onnxruntime/transformers",  # transformer graph optimisers (offline tooling)
            "onnxruntime/quantization",  # offline quantisation tooling
            "onnxruntime/datasets",  # sample models for tutorials
            "onnxruntime/backend",  # the ONNX backend-test API: imports `onnx`, which is not shipped
        ),
        # The Python binding embeds the runtime; this C API library is for C/C++ callers only.
        unlinked_libraries=("onnxruntime/capi/libonnxruntime.so",),
    ),
    "deps": LayerSpec(
        name="deps",
        requirements=LAYERS_DIR / "requirements-deps.txt",
        # cryptography (signed manifests) is most of it: 7.2 MiB zipped, 20.4 MiB unzipped on x86_64,
        # its Rust extension 11 MiB of that once stripped. Here rather than in the ONNX layer, which is
        # held under 25 MB zipped.
        max_zipped_bytes=9 * MIB,
        max_unzipped_bytes=26 * MIB,
    ),
}


@dataclass(frozen=True)
class LayerArtifact:
    """A built layer zip and its figures."""

    name: str
    arch: str
    zip_path: Path
    sha256: str
    zipped_bytes: int
    unzipped_bytes: int
    file_count: int
    input_hash: str
    max_zipped_bytes: int
    max_unzipped_bytes: int
    build_seconds: float
    cached: bool

    def to_json(self) -> dict[str, object]:
        return {
            "zip": self.zip_path.relative_to(REPO_ROOT).as_posix(),
            "sha256": self.sha256,
            "zipped_bytes": self.zipped_bytes,
            "unzipped_bytes": self.unzipped_bytes,
            "file_count": self.file_count,
            "input_hash": self.input_hash,
            "max_zipped_bytes": self.max_zipped_bytes,
            "max_unzipped_bytes": self.max_unzipped_bytes,
            "build_seconds": round(self.build_seconds, 2),
        }


Logger = Callable[[str], None]


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"


def layer_zip_path(arch: str, name: str) -> Path:
    """Where the zip of layer ``name`` for ``arch`` is written (a stable path)."""
    return BUILD_ROOT / arch / f"{name}-layer.zip"


def find_python313() -> Path:
    """A real CPython 3.13 binary: ``$MODELSHIP_PYTHON313`` or whatever ``scripts/find-python.sh`` finds."""
    override = os.environ.get("MODELSHIP_PYTHON313")
    if override:
        return Path(override)
    try:
        found = subprocess.run(
            ["bash", str(FIND_PYTHON_SCRIPT), PYTHON_VERSION], check=True, capture_output=True, text=True
        )
    except subprocess.CalledProcessError as error:
        raise LayerBuildError(
            f"python{PYTHON_VERSION} is needed to compile the layer's .pyc files and was not found "
            f"({error.stderr.strip()}). Install it, or point MODELSHIP_PYTHON313 at one."
        ) from error
    return Path(found.stdout.strip())


def _python_identity(python: Path) -> str:
    """The exact interpreter version: .pyc bytes can change between patch releases."""
    probe = subprocess.run(
        [str(python), "-c", "import sys; print(sys.version.split()[0], sys.implementation.cache_tag)"],
        check=True,
        capture_output=True,
        text=True,
    )
    identity = probe.stdout.strip()
    if not identity.endswith(f"cpython-{PYTHON_VERSION.replace('.', '')}"):
        raise LayerBuildError(f"{python} is {identity}, not CPython {PYTHON_VERSION}")
    return identity


def _pip_version() -> str:
    from importlib.metadata import version

    return version("pip")


def find_strip(arch: str) -> Path | None:
    """A tool that strips ELF files for ``arch``: binutils' strip for that machine, else llvm-strip."""
    names = [BINUTILS_STRIP_NAMES[arch]]
    if HOST_MACHINES.get(os.uname().machine) == arch:
        names.append("strip")
    names += LLVM_STRIP_NAMES
    for name in names:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def strip_identity(arch: str) -> str:
    """The strip tool and its version (its output is part of the layer's bytes); "none" without one."""
    tool = find_strip(arch)
    if tool is None:
        return "none"
    version = subprocess.run([str(tool), "--version"], capture_output=True, text=True, check=False)
    lines = version.stdout.strip().splitlines()
    return f"{tool.name} {' '.join(line.strip() for line in lines[:2])}"


def input_hash(spec: LayerSpec, arch: str, python_identity: str) -> str:
    """Hash of everything that determines the layer's bytes."""
    digest = hashlib.sha256()
    for part in (
        spec.name,
        arch,
        ",".join(PLATFORM_TAGS[arch]),
        python_identity,
        _pip_version(),
        strip_identity(arch),
        spec.requirements.read_text(encoding="utf-8"),
        *(source.read_text(encoding="utf-8") for source in BUILDER_SOURCES),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _build_lock(arch: str) -> Iterator[None]:
    """Serialise builds of one architecture: synth, tests and `make layer` may run at the same time."""
    lock_dir = BUILD_ROOT / arch
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / ".lock").open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


# --- ELF inspection (64-bit little-endian only: both Lambda architectures) ---------------------------

_SHT_DYNAMIC = 6
_DT_NULL = 0
_DT_NEEDED = 1


def file_elf_machine(path: Path) -> int | None:
    """The ELF ``e_machine`` of ``path``, or None if it is not an ELF file."""
    with path.open("rb") as stream:
        return elf_machine(stream.read(HEADER_BYTES))


def elf_needed_libraries(path: Path) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF shared object (what ``readelf -d`` lists)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise LayerBuildError(f"{path} is not a 64-bit little-endian ELF file")
    (section_offset,) = struct.unpack_from("<Q", data, 0x28)
    section_size, section_count = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, section_offset + index * section_size)
        for index in range(section_count)
    ]
    needed: list[str] = []
    for _, kind, _, _, offset, size, link, _, _, _ in sections:
        if kind != _SHT_DYNAMIC:
            continue
        strings_offset = sections[link][4]
        for entry in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, entry)
            if tag == _DT_NULL:
                break
            if tag == _DT_NEEDED:
                start = strings_offset + value
                needed.append(data[start : data.index(b"\0", start)].decode())
    return needed


# --- build steps ----------------------------------------------------------------------------------------


def pip_install(spec: LayerSpec, arch: str, target: Path, log: Logger) -> None:
    platform_args = [arg for tag in PLATFORM_TAGS[arch] for arg in ("--platform", tag)]
    command = [
        sys.executable, "-m", "pip", "install",
        "--quiet", "--disable-pip-version-check", "--no-input",
        "--no-deps",  # every transitive dependency is pinned in the requirements file
        "--no-compile",  # pip would compile for *its* interpreter (3.11); python3.13 does it below
        "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION,
        *platform_args,
        "--target", str(target),
        "--requirement", str(spec.requirements),
    ]  # fmt: skip
    log(f"  pip install --platform {' --platform '.join(PLATFORM_TAGS[arch])} -r {spec.requirements.name}")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise LayerBuildError(f"pip install failed for layer {spec.name} ({arch}):\n{result.stderr}")


_PT_LOAD = 1


def elf_segments_loadable(path: Path) -> bool:
    """Whether the dynamic loader can map every PT_LOAD segment of a 64-bit little-endian ELF file: its
    file offset congruent with its address modulo its alignment (and the page), and inside the file."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    (header_offset,) = struct.unpack_from("<Q", data, 0x20)
    header_size, header_count = struct.unpack_from("<HH", data, 0x36)
    for index in range(header_count):
        kind, _, offset, address, _, file_size, _, align = struct.unpack_from(
            "<IIQQQQQQ", data, header_offset + index * header_size
        )
        if kind != _PT_LOAD:
            continue
        modulus = max(align, 4096)
        if offset % modulus != address % modulus or offset + file_size > len(data):
            return False
    return True


def check_architecture(python_dir: Path, arch: str) -> int:
    """Every ELF file must be built for the target machine: proof no host wheel slipped in."""
    expected = ELF_MACHINES[arch]
    count = 0
    for path in sorted(python_dir.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        machine = file_elf_machine(path)
        if machine is None:
            continue
        count += 1
        if machine != expected:
            raise LayerBuildError(f"{path} is for ELF machine {machine}, expected {expected} ({arch})")
    return count


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def prune(spec: LayerSpec, python_dir: Path, log: Logger) -> None:
    removed_bytes = 0
    doomed: list[Path] = [python_dir / name for name in PRUNED_TOP_LEVEL]
    doomed += [path for pattern in spec.pruned_paths for path in python_dir.glob(pattern)]
    for path in python_dir.rglob("*"):
        if (path.is_dir() and path.name in PRUNED_DIR_NAMES) or (
            path.is_file()
            and (
                path.suffix in PRUNED_SUFFIXES
                or (path.name in PRUNED_FILE_NAMES and path.parent.name.endswith(".dist-info"))
            )
        ):
            doomed.append(path)
    for library in spec.unlinked_libraries:
        doomed += _unlinked_library_files(python_dir, library)
    for path in sorted(set(doomed), key=lambda item: len(item.parts)):
        if not path.exists():
            continue  # already gone with a parent directory
        removed_bytes += _tree_size(path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    log(f"  pruned {mib(removed_bytes)} (tests, headers, stubs, scripts, unused tooling and libraries)")


def strip_shared_objects(python_dir: Path, arch: str, log: Logger) -> None:
    """Strip symbol tables the dynamic linker does not use; each file must still be an ELF for ``arch``
    linking the same libraries, or the build fails. No strip tool: the layer stays unstripped, said so."""
    tool = find_strip(arch)
    if tool is None:
        log(
            f"  not stripping shared objects: no llvm-strip or {BINUTILS_STRIP_NAMES[arch]} found "
            "(apt-get install llvm); the layer is larger but works"
        )
        return
    saved = 0
    count = 0
    kept: list[str] = []
    for path in sorted(python_dir.rglob("*.so*")):
        if not path.is_file() or path.is_symlink() or file_elf_machine(path) is None:
            continue
        stripped = path.with_name(path.name + ".stripped")
        needed = elf_needed_libraries(path)
        result = subprocess.run(
            [str(tool), "--strip-unneeded", "-o", str(stripped), str(path)], capture_output=True, text=True
        )
        if result.returncode != 0:
            stripped.unlink(missing_ok=True)
            raise LayerBuildError(f"{tool.name} failed on {path.name}: {result.stderr.strip()}")
        if file_elf_machine(stripped) != ELF_MACHINES[arch] or elf_needed_libraries(stripped) != needed:
            stripped.unlink(missing_ok=True)
            raise LayerBuildError(f"{tool.name} changed what {path.name} is or links; not stripping it")
        before, after = path.stat().st_size, stripped.stat().st_size
        if not elf_segments_loadable(stripped):
            stripped.unlink()
            kept.append(path.name)
        elif after < before:
            shutil.copymode(path, stripped)
            stripped.replace(path)
            saved += before - after
            count += 1
        else:
            stripped.unlink()
    log(f"  stripped {count} shared objects with {tool.name}: {mib(saved)} less")
    if kept:
        log(f"  kept unstripped (stripped, they would not load): {', '.join(kept)}")


def _unlinked_library_files(python_dir: Path, library: str) -> list[Path]:
    """The files of ``library`` (any version suffix), after proving no extension in its package links it."""
    library_path = python_dir / library
    candidates = sorted(library_path.parent.glob(library_path.name + "*"))
    if not candidates:
        raise LayerBuildError(f"{library} not found: the pruning rules are out of date for this version")
    package_dir = python_dir / Path(library).parts[0]
    soname_prefix = library_path.name
    for extension in sorted(package_dir.rglob("*.so*")):
        if extension in candidates or not extension.is_file():
            continue
        linked = [name for name in elf_needed_libraries(extension) if name.startswith(soname_prefix)]
        if linked:
            raise LayerBuildError(f"{extension.name} links {linked}: {library} cannot be removed")
    return candidates


def compile_bytecode(python313: Path, stage_dir: Path, log: Logger) -> int:
    """Compile the layer's .pyc for 3.13, recording /opt/python/... as the source path."""
    python_dir = stage_dir / "python"
    compiled = compile_tree(python313, python_dir, strip=stage_dir, prefix=LAMBDA_LAYER_MOUNT)
    log(f"  compiled {compiled} .pyc files with {python313}")
    return compiled


def compile_tree(python313: Path, tree: Path, *, strip: Path, prefix: str) -> int:
    """Compile every module under ``tree`` with ``python313``, recording its path with ``strip`` replaced by
    ``prefix`` (where Lambda will find it). ``unchecked-hash`` .pyc files are used whatever the source's
    file time (zips and Lambda's extraction change it), and their bytes are the same on every build."""
    result = subprocess.run(
        [
            str(python313), "-I", "-m", "compileall", "-q", "-j0",
            "--invalidation-mode", "unchecked-hash",
            "-s", str(strip), "-p", prefix,
            str(tree),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise LayerBuildError(f"compileall failed:\n{result.stdout}{result.stderr}")
    return sum(1 for _ in tree.rglob("*.pyc"))


def write_deterministic_zip(stage_dir: Path, zip_path: Path) -> tuple[int, int]:
    """Zip ``stage_dir`` (which holds ``python/``) reproducibly. Returns (unzipped bytes, file count)."""
    files = sorted(
        (path for path in stage_dir.rglob("*") if path.is_file()),
        key=lambda path: path.relative_to(stage_dir).as_posix(),
    )
    unzipped = 0
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            data = path.read_bytes()
            unzipped += len(data)
            info = zipfile.ZipInfo(path.relative_to(stage_dir).as_posix(), date_time=ZIP_EPOCH)
            info.create_system = 3  # Unix, so external_attr holds POSIX permissions
            executable = bool(path.stat().st_mode & stat.S_IXUSR) and file_elf_machine(path) is not None
            mode = EXECUTABLE_MODE if executable else FILE_MODE
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=ZIP_COMPRESSION_LEVEL)
    return unzipped, len(files)


def _read_record(record_path: Path) -> dict[str, object] | None:
    try:
        loaded = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _artifact_from_record(
    spec: LayerSpec, arch: str, zip_path: Path, record: dict[str, object], *, cached: bool
) -> LayerArtifact:
    def number(key: str) -> int:
        value = record[key]
        assert isinstance(value, int | float)
        return int(value)

    build_seconds = record.get("build_seconds", 0.0)
    return LayerArtifact(
        name=spec.name,
        arch=arch,
        zip_path=zip_path,
        sha256=str(record["sha256"]),
        zipped_bytes=number("zipped_bytes"),
        unzipped_bytes=number("unzipped_bytes"),
        file_count=number("file_count"),
        input_hash=str(record["input_hash"]),
        max_zipped_bytes=spec.max_zipped_bytes,
        max_unzipped_bytes=spec.max_unzipped_bytes,
        build_seconds=float(build_seconds) if isinstance(build_seconds, int | float) else 0.0,
        cached=cached,
    )


def build_layer(
    spec: LayerSpec,
    arch: str,
    *,
    python313: Path,
    force: bool = False,
    keep_stage: bool = False,
    log: Logger = _stderr_log,
) -> LayerArtifact:
    """Build one layer, or reuse the cached zip when its inputs have not changed."""
    if arch not in ARCHITECTURES:
        raise LayerBuildError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    arch_dir = BUILD_ROOT / arch
    zip_path = layer_zip_path(arch, spec.name)
    record_path = arch_dir / f"{spec.name}-layer.json"
    expected_hash = input_hash(spec, arch, _python_identity(python313))

    record = _read_record(record_path)
    if (
        not force
        and record is not None
        and record.get("input_hash") == expected_hash
        and zip_path.is_file()
        and file_sha256(zip_path) == record.get("sha256")
    ):
        artifact = _artifact_from_record(spec, arch, zip_path, record, cached=True)
        log(f"[{spec.name}/{arch}] cached: {_figures(artifact)}")
        return artifact

    log(f"[{spec.name}/{arch}] building (inputs {expected_hash[:12]})")
    started = time.monotonic()
    stage_dir = arch_dir / f"{spec.name}-stage"
    shutil.rmtree(stage_dir, ignore_errors=True)
    python_dir = stage_dir / "python"
    python_dir.mkdir(parents=True)
    try:
        pip_install(spec, arch, python_dir, log)
        log(f"  installed {mib(_tree_size(python_dir))}")
        elf_count = check_architecture(python_dir, arch)
        log(f"  {elf_count} shared objects, all built for {arch}")
        prune(spec, python_dir, log)
        strip_shared_objects(python_dir, arch, log)
        compile_bytecode(python313, stage_dir, log)
        with tempfile.NamedTemporaryFile(dir=arch_dir, suffix=".zip.tmp", delete=False) as handle:
            partial_zip = Path(handle.name)
        try:
            unzipped, file_count = write_deterministic_zip(stage_dir, partial_zip)
            zipped = partial_zip.stat().st_size
            artifact = LayerArtifact(
                name=spec.name,
                arch=arch,
                zip_path=zip_path,
                sha256=file_sha256(partial_zip),
                zipped_bytes=zipped,
                unzipped_bytes=unzipped,
                file_count=file_count,
                input_hash=expected_hash,
                max_zipped_bytes=spec.max_zipped_bytes,
                max_unzipped_bytes=spec.max_unzipped_bytes,
                build_seconds=time.monotonic() - started,
                cached=False,
            )
            _check_budget(artifact)
            # NamedTemporaryFile creates 0600; the zip is an ordinary build output others may read.
            partial_zip.chmod(0o644)
            partial_zip.replace(zip_path)
        finally:
            partial_zip.unlink(missing_ok=True)
    finally:
        if not keep_stage:
            shutil.rmtree(stage_dir, ignore_errors=True)
    record_path.write_text(json.dumps(artifact.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log(f"[{spec.name}/{arch}] built in {artifact.build_seconds:.1f} s: {_figures(artifact)}")
    return artifact


def _figures(artifact: LayerArtifact) -> str:
    return (
        f"zipped {mib(artifact.zipped_bytes)} (budget {mib(artifact.max_zipped_bytes)}), "
        f"unzipped {mib(artifact.unzipped_bytes)} (budget {mib(artifact.max_unzipped_bytes)}), "
        f"{artifact.file_count} files, sha256 {artifact.sha256}"
    )


def _check_budget(artifact: LayerArtifact) -> None:
    over = []
    if artifact.zipped_bytes > artifact.max_zipped_bytes:
        over.append(
            f"zipped {artifact.zipped_bytes:,} bytes ({mib(artifact.zipped_bytes)}) > "
            f"budget {artifact.max_zipped_bytes:,} bytes ({mib(artifact.max_zipped_bytes)})"
        )
    if artifact.unzipped_bytes > artifact.max_unzipped_bytes:
        over.append(
            f"unzipped {artifact.unzipped_bytes:,} bytes ({mib(artifact.unzipped_bytes)}) > "
            f"budget {artifact.max_unzipped_bytes:,} bytes ({mib(artifact.max_unzipped_bytes)})"
        )
    if over:
        raise LayerBuildError(f"layer {artifact.name} ({artifact.arch}) is over budget: " + "; ".join(over))


def build_layers(
    arch: str,
    names: tuple[str, ...] = tuple(LAYER_SPECS),
    *,
    force: bool = False,
    keep_stage: bool = False,
    log: Logger = _stderr_log,
) -> dict[str, LayerArtifact]:
    """Build (or reuse) the named layers for ``arch`` and refresh ``layers/build/<arch>/layers.json``."""
    python313 = find_python313()
    with _build_lock(arch):
        artifacts = {
            name: build_layer(
                LAYER_SPECS[name], arch, python313=python313, force=force, keep_stage=keep_stage, log=log
            )
            for name in names
        }
        _write_manifest(arch)
    return artifacts


def _write_manifest(arch: str) -> None:
    """One JSON with every layer built so far for ``arch``: what CI logs and the docs quote."""
    layers = {}
    for name in LAYER_SPECS:
        record = _read_record(BUILD_ROOT / arch / f"{name}-layer.json")
        if record is not None:
            layers[name] = record
    manifest = {
        "arch": arch,
        "python": PYTHON_VERSION,
        "platforms": list(PLATFORM_TAGS[arch]),
        "layers": layers,
    }
    (BUILD_ROOT / arch / "layers.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--arch", required=True, choices=ARCHITECTURES, help="Lambda architecture")
    parser.add_argument(
        "--layer", action="append", choices=sorted(LAYER_SPECS), help="build only this layer (repeatable)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    parser.add_argument("--keep-stage", action="store_true", help="keep the unzipped staging directory")
    args = parser.parse_args(argv)
    names = tuple(args.layer) if args.layer else tuple(LAYER_SPECS)
    try:
        artifacts = build_layers(args.arch, names, force=args.force, keep_stage=args.keep_stage)
    except LayerBuildError as error:
        print(f"layer build failed: {error}", file=sys.stderr)
        return 1
    for artifact in artifacts.values():
        print(
            f"{artifact.zip_path.relative_to(REPO_ROOT)}: {artifact.zipped_bytes:,} bytes zipped, "
            f"{artifact.unzipped_bytes:,} bytes unzipped, sha256 {artifact.sha256}"
            + (" (cached)" if artifact.cached else "")
        )
    print(f"{(BUILD_ROOT / args.arch / 'layers.json').relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
