"""The layer builder: deterministic zips, budgets, ELF checks, its cache, and a smoke test of the real layer.

The smoke test runs a real python3.13 for the host architecture with *only* the built layers on
``sys.path`` (``-I -S``: no site-packages, no user site, no environment), imports onnxruntime from the
layer and runs a small model written beforehand with the dev environment's ``onnx``.

The tests of the real layers are ``slow`` and ``network``: on a cache miss they install wheels from PyPI
(minutes). With the cache in ``layers/build/`` up to date they only read it, and reach no registry.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from modelship.core.default_model import softmax_classifier

from layers import build_layer
from layers.build_layer import (
    LAYER_SPECS,
    LayerArtifact,
    LayerBuildError,
    LayerSpec,
    elf_needed_libraries,
    find_python313,
    write_deterministic_zip,
)
from layers.elf import ELF_MACHINES, architecture_name, elf_machine

pytestmark = pytest.mark.infra

HOST_ARCH = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]


# --- builder units -------------------------------------------------------------------------------------


def make_stage(root: Path, mode: int) -> Path:
    stage = root / "stage"
    (stage / "python" / "pkg").mkdir(parents=True)
    for name, text in {"pkg/__init__.py": "X = 1\n", "pkg/b.py": "Y = 2\n", "a.py": "Z = 3\n"}.items():
        path = stage / "python" / name
        path.write_text(text)
        path.chmod(mode)
    return stage


def test_zip_is_identical_whatever_the_file_times_and_modes(tmp_path: Path) -> None:
    first = make_stage(tmp_path / "one", 0o600)
    second = make_stage(tmp_path / "two", 0o777)
    for path in second.rglob("*"):
        if path.is_file():
            path.touch()  # newer mtime
    write_deterministic_zip(first, tmp_path / "one.zip")
    write_deterministic_zip(second, tmp_path / "two.zip")
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "one.zip") as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == ["python/a.py", "python/pkg/__init__.py", "python/pkg/b.py"]
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {info.external_attr >> 16 for info in infos} == {0o100644}


def test_elf_parser_agrees_with_readelf() -> None:
    if shutil.which("readelf") is None:
        pytest.skip("binutils' readelf is not installed")
    extension = Path(np.__file__).parent / "_core"
    shared_object = next(extension.glob("_multiarray_umath*.so"))
    listing = subprocess.run(
        ["readelf", "-d", str(shared_object)], capture_output=True, text=True, check=True
    )
    expected = [
        line.split("[", 1)[1].rstrip("]") for line in listing.stdout.splitlines() if "(NEEDED)" in line
    ]
    assert expected
    assert elf_needed_libraries(shared_object) == expected


def test_one_elf_map_for_the_builder_and_the_cdk_app() -> None:
    for arch, machine in ELF_MACHINES.items():
        header = b"\x7fELF\x02\x01\x01" + b"\0" * 11 + machine.to_bytes(2, "little")
        assert (elf_machine(header), architecture_name(machine)) == (machine, arch)
    assert elf_machine(b"#!/bin/sh\n" + b"\0" * 30) is None
    assert elf_machine(b"\x7fELF") is None
    assert architecture_name(3) == "e_machine 3"
    shared_object = next((Path(np.__file__).parent / "_core").glob("_multiarray_umath*.so"))
    assert build_layer.file_elf_machine(shared_object) == ELF_MACHINES[HOST_ARCH]


def test_over_budget_fails_with_the_figures() -> None:
    artifact = LayerArtifact(
        name="onnx", arch="x86_64", zip_path=Path("x.zip"), sha256="0" * 64, zipped_bytes=40 * 1024 * 1024,
        unzipped_bytes=80 * 1024 * 1024, file_count=1, input_hash="h", max_zipped_bytes=30 * 1024 * 1024,
        max_unzipped_bytes=90 * 1024 * 1024, build_seconds=0.0, cached=False,
    )  # fmt: skip
    with pytest.raises(LayerBuildError) as raised:
        build_layer._check_budget(artifact)
    message = str(raised.value)
    assert "zipped 41,943,040 bytes (40.0 MiB) > budget 31,457,280 bytes (30.0 MiB)" in message
    assert "unzipped" not in message


def test_input_hash_follows_requirements_and_architecture(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy==2.4.6\n")
    spec = LayerSpec(name="t", requirements=requirements, max_zipped_bytes=1, max_unzipped_bytes=1)
    base = build_layer.input_hash(spec, "x86_64", "3.13.0 cpython-313")
    assert base == build_layer.input_hash(spec, "x86_64", "3.13.0 cpython-313")
    assert base != build_layer.input_hash(spec, "arm64", "3.13.0 cpython-313")
    assert base != build_layer.input_hash(spec, "x86_64", "3.13.1 cpython-313")
    requirements.write_text("numpy==2.4.5\n")
    assert base != build_layer.input_hash(spec, "x86_64", "3.13.0 cpython-313")


def test_unchanged_inputs_reuse_the_cached_zip_without_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python313: Path
) -> None:
    """The cache is keyed by the hash of the inputs: unchanged, no pip (no network); changed, a rebuild."""
    monkeypatch.setattr(build_layer, "BUILD_ROOT", tmp_path / "build")
    monkeypatch.setattr(build_layer, "REPO_ROOT", tmp_path)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tiny==1.0\n")
    spec = LayerSpec(
        name="tiny", requirements=requirements, max_zipped_bytes=1 << 20, max_unzipped_bytes=1 << 20
    )
    installs: list[str] = []

    def fake_pip_install(spec: LayerSpec, arch: str, target: Path, log: object) -> None:
        installs.append(spec.requirements.read_text())
        (target / "tiny.py").write_text("VALUE = 1\n")

    monkeypatch.setattr(build_layer, "pip_install", fake_pip_install)

    def build() -> LayerArtifact:
        return build_layer.build_layer(spec, HOST_ARCH, python313=python313, log=lambda _: None)

    first, second = build(), build()
    assert (first.cached, second.cached) == (False, True)
    assert second.sha256 == first.sha256
    assert installs == ["tiny==1.0\n"]
    requirements.write_text("tiny==1.1\n")
    assert not build().cached
    assert len(installs) == 2


# --- the real layers (host architecture) --------------------------------------------------------------


@pytest.fixture(scope="module")
def python313() -> Path:
    try:
        return find_python313()
    except LayerBuildError as error:
        pytest.fail(f"the layer tests need a real python3.13: {error}")


@pytest.fixture(scope="module")
def host_layers(python313: Path) -> dict[str, LayerArtifact]:
    """The host-architecture layers, from the build cache (built on a cache miss)."""
    return build_layer.build_layers(HOST_ARCH)


@pytest.mark.slow
@pytest.mark.network
def test_layers_fit_their_budgets(host_layers: dict[str, LayerArtifact]) -> None:
    onnx_layer = host_layers["onnx"]
    assert onnx_layer.zipped_bytes <= 25_000_000
    assert onnx_layer.unzipped_bytes <= 80 * 1024 * 1024
    assert onnx_layer.zip_path == build_layer.layer_zip_path(HOST_ARCH, "onnx")
    # Both layers and the function stay far below Lambda's 250 MB unzipped limit.
    assert sum(layer.unzipped_bytes for layer in host_layers.values()) < 120 * 1024 * 1024
    manifest = json.loads((build_layer.BUILD_ROOT / HOST_ARCH / "layers.json").read_text())
    assert manifest["layers"]["onnx"]["sha256"] == onnx_layer.sha256


@pytest.mark.slow
@pytest.mark.network
def test_onnx_layer_is_stripped_but_keeps_python313_bytecode(host_layers: dict[str, LayerArtifact]) -> None:
    with zipfile.ZipFile(host_layers["onnx"].zip_path) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        init_pyc = archive.read("python/numpy/__pycache__/__init__.cpython-313.pyc")
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert all(name.startswith("python/") for name in names)
    forbidden = (
        "/tests/",
        "onnxruntime/tools/",
        "onnxruntime/transformers/",
        "onnxruntime/quantization/",
        "onnxruntime/backend/",
        "/bin/",
        "numpy/random/",
        "numpy/fft/",
        "numpy/polynomial/",
        "numpy/ma/",
        "numpy/testing/",
        "numpy/typing/",
        "numpy/f2py/",
        "numpy/_core/_simd.",
        "_tests.cpython-313",
        "python/google/",
        "python/flatbuffers/",
        "python/packaging/",
    )
    # Licences stay, under the dist-info folders, whatever the folders they name.
    shipped = [name for name in names if ".dist-info/" not in name]
    assert [name for name in shipped if any(part in f"/{name}" for part in forbidden)] == []
    assert [name for name in names if name.endswith((".pyi", ".h", ".a"))] == []
    assert [name for name in names if "libonnxruntime.so" in name] == []
    assert any(name.startswith("python/onnxruntime/capi/onnxruntime_pybind11_state") for name in names)
    sources = {name for name in names if name.endswith(".py")}
    compiled = {name for name in names if name.endswith(".pyc")}
    assert all(name.endswith(".cpython-313.pyc") for name in compiled)

    def pyc_of(source: str) -> str:
        directory, file_name = source.rsplit("/", 1)
        return f"{directory}/__pycache__/{file_name.removesuffix('.py')}.cpython-313.pyc"

    missing = [source for source in sources if pyc_of(source) not in compiled]
    assert missing == []
    # Tracebacks name the path Lambda mounts the layer at, not the build machine's directory.
    assert b"/opt/python/numpy/__init__.py" in init_pyc


@pytest.mark.slow
@pytest.mark.network
def test_deps_layer_rebuilds_to_the_same_bytes(
    host_layers: dict[str, LayerArtifact], python313: Path
) -> None:
    """Determinism, end to end: a forced rebuild (pip, pruning, compileall, zip) gives the same sha256."""
    before = host_layers["deps"]
    with build_layer._build_lock(HOST_ARCH):
        rebuilt = build_layer.build_layer(LAYER_SPECS["deps"], HOST_ARCH, python313=python313, force=True)
    assert not rebuilt.cached
    assert rebuilt.sha256 == before.sha256


def tiny_classifier(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 4-feature, 3-class linear model (iris-shaped), built as the bundled model is."""
    weights = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    bias = np.array([0.5, -0.5, 0.0], dtype=np.float32)
    path.write_bytes(softmax_classifier(weights, bias, name="tiny_classifier"))
    return weights, bias


SMOKE_SCRIPT = r"""
import json, sys, time
layer_dirs = sys.argv[1:3]
sys.path[:0] = layer_dirs
started = time.perf_counter()
import numpy as np
import onnxruntime as ort
import_seconds = time.perf_counter() - started
session = ort.InferenceSession(sys.argv[3], providers=["CPUExecutionProvider"])
batch = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
probabilities, label = session.run(None, {"input": batch})
import orjson, pybase64
from aws_lambda_powertools import Logger, Metrics
import cryptography
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
signer = ec.generate_private_key(ec.SECP256R1())
ecdsa = ec.ECDSA(hashes.SHA256())
signer.public_key().verify(signer.sign(b"manifest", ecdsa), b"manifest", ecdsa)
try:
    import aws_xray_sdk.core
    xray = "imported"
except ModuleNotFoundError as error:
    xray = error.name
print(json.dumps({
    "import_seconds": import_seconds,
    "onnxruntime": ort.__file__, "numpy": np.__file__, "orjson": orjson.__file__,
    "powertools": sys.modules["aws_lambda_powertools"].__file__,
    "cryptography": cryptography.__file__, "cffi_backend": sys.modules["_cffi_backend"].__file__,
    "version": ort.__version__, "providers": ort.get_available_providers(),
    "probabilities": probabilities.tolist(), "label": label.tolist(),
    "b64": pybase64.b64encode(b"modelship").decode(), "xray_missing": xray,
    "site_loaded": "site" in sys.modules, "path": sys.path,
}))
"""


@pytest.mark.slow
@pytest.mark.network
def test_smoke_only_the_layers_run_a_model(
    host_layers: dict[str, LayerArtifact], python313: Path, tmp_path: Path
) -> None:
    layer_dirs = []
    for name in ("onnx", "deps"):
        target = tmp_path / name
        with zipfile.ZipFile(host_layers[name].zip_path) as archive:
            archive.extractall(target)
        layer_dirs.append(str(target / "python"))
    model_path = tmp_path / "tiny.onnx"
    weights, bias = tiny_classifier(model_path)

    started = time.perf_counter()
    result = subprocess.run(
        [str(python313), "-I", "-S", "-c", SMOKE_SCRIPT, *layer_dirs, str(model_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},  # nothing of the dev environment leaks in
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert report["site_loaded"] is False
    for module in ("onnxruntime", "numpy"):
        assert report[module].startswith(layer_dirs[0]), report[module]
    # cryptography (signed manifests) and the cffi backend it imports ride in the deps layer.
    for module in ("orjson", "powertools", "cryptography", "cffi_backend"):
        assert report[module].startswith(layer_dirs[1]), report[module]
    assert not any("site-packages" in entry for entry in report["path"])
    assert report["version"] == "1.31.1"
    assert "CPUExecutionProvider" in report["providers"]
    # botocore is not shipped: the Lambda runtime provides it (requirements-deps.txt).
    assert report["xray_missing"] == "botocore"
    assert report["b64"] == "bW9kZWxzaGlw"

    batch = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    logits = batch @ weights + bias
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.array(report["probabilities"]), expected, rtol=1e-5, atol=1e-6)
    assert report["label"] == logits.argmax(axis=1).tolist()
    print(f"\nsmoke test: import {report['import_seconds'] * 1000:.0f} ms, whole run {elapsed:.2f} s")


CORE_SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
sys.path[:0] = sys.argv[1:4]
from modelship.core import isolation
from modelship.core.repository import ModelRepository
from modelship.core.service import InferenceService
from modelship.core.settings import Settings
store = Path(tempfile.mkdtemp())
repository = ModelRepository.open(str(store))
repository.push(Path(sys.argv[4]), "tiny")
service = InferenceService.from_settings(Settings(store_uri=str(store), isolate_loads=True))
forked = isolation.fork_is_safe()
body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                               "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
response = service.handle("POST", "/v2/models/tiny/infer", {}, body)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
import hashlib
from modelship.core import signing
from modelship.core.repository import manifest_key
manifest = (store / manifest_key("tiny", 1)).read_bytes()
signer = ec.generate_private_key(ec.SECP256R1())
public = signer.public_key()
document = signing.SignatureDocument(
    signing.ECDSA_SHA_256, "local", signing.public_key_fingerprint(public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)),
    hashlib.sha256(manifest).hexdigest(),
    signer.sign(signing.signed_statement(manifest), ec.ECDSA(hashes.SHA256())))
trusted = signing.TrustedKeys.from_pem(public.public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
verified = signing.verify(manifest, document.dumps(), trusted).fingerprint == document.public_key_sha256
print(json.dumps({"status": response.status, "body": json.loads(response.body), "forked": forked,
                  "numpy_random": "numpy.random" in sys.modules, "signature_verified": verified}))
"""


@pytest.mark.slow
@pytest.mark.network
def test_smoke_the_core_serves_from_the_pruned_layers(
    host_layers: dict[str, LayerArtifact], python313: Path, tmp_path: Path
) -> None:
    """What the pruning removed, the core does not need: it pushes, loads (isolated, in a forked child),
    answers an inference and checks a manifest's signature with only the layers and its own source on
    python3.13."""
    layer_dirs = []
    for name in ("onnx", "deps"):
        target = tmp_path / name
        with zipfile.ZipFile(host_layers[name].zip_path) as archive:
            archive.extractall(target)
        layer_dirs.append(str(target / "python"))
    model_path = tmp_path / "tiny.onnx"
    tiny_classifier(model_path)
    functions = Path(build_layer.REPO_ROOT) / "functions"
    result = subprocess.run(
        [str(python313), "-I", "-S", "-c", CORE_SCRIPT, *layer_dirs, str(functions), str(model_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == 200, report
    assert report["body"]["model_name"] == "tiny"
    assert report["forked"] is True
    assert report["numpy_random"] is False
    # The core checks a signed manifest with the layers' cryptography on python3.13.
    assert report["signature_verified"] is True


def test_stripping_keeps_what_a_shared_object_links(tmp_path: Path) -> None:
    if build_layer.find_strip(HOST_ARCH) is None:
        pytest.skip("no llvm-strip or binutils strip installed")
    source = next((Path(np.__file__).parent / "_core").glob("_multiarray_umath*.so"))
    python_dir = tmp_path / "python"
    python_dir.mkdir()
    copy = python_dir / source.name
    shutil.copy2(source, copy)
    messages: list[str] = []
    build_layer.strip_shared_objects(python_dir, HOST_ARCH, messages.append)
    assert copy.stat().st_size <= source.stat().st_size
    assert elf_needed_libraries(copy) == elf_needed_libraries(source)
    assert build_layer.file_elf_machine(copy) == ELF_MACHINES[HOST_ARCH]
    assert [path.name for path in python_dir.iterdir()] == [source.name]
    assert messages and messages[0].startswith("  stripped ")
