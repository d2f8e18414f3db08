"""Series 8: cold start, a new Python process to the first answer, split into phases, against a floor.

For each model (tiny, cnn, mlp) a fresh interpreter imports ``inference.app`` (which preloads the model
from a local store into an empty model cache) and answers one binary API Gateway event. The time goes
into: interpreter start, imports, store fetch (manifest and model file), sha256, the cache write, the
isolated first-load probe (``modelship.core.isolation``: a child process loads the model first), session
creation, the rest of the load (signature, the warm-up run), and the first request. The phases are
measured by wrapping the core's own functions in the child before ``inference.app`` is imported; a phase
the code no longer has reads 0 and its time shows as "other".

The floor is a bare script in the same interpreter: import onnxruntime, create the session (one
intra-op thread, as modelship is run here), run once.

Two configurations:

- **lambda-layer**: as the Lambda runs it: python3.13 (``scripts/find-python.sh 3.13``) in isolated mode
  (``-I -S``) with only the built layers (``layers/build/ARCH/*.zip``, unzipped) and the function's code
  on ``sys.path``. The function's code is staged as the deployed asset is (``layers/function_asset.py``:
  sources and their 3.13 ``unchecked-hash`` bytecode) and run with ``-B``, as /var/task is read-only.
  Skipped, with the reason, when no layer is built or no python3.13 is found.
- **venv**: this virtualenv's interpreter, with the installed packages.

Runs are interleaved (every model and configuration in each round); medians over ``--runs``.

    python bench/cold_start.py --out build/bench/cold_start.json [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "functions"), str(Path(__file__).resolve().parent), str(ROOT)]

from models import SPECS, write_models  # noqa: E402

from layers.function_asset import python313_or_reason, stage_function_code  # noqa: E402

ARCH = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
LAYER_NAMES = ("onnx", "deps")
DEPLOYED_ENV = {
    "POWERTOOLS_SERVICE_NAME": "modelship",
    "POWERTOOLS_METRICS_NAMESPACE": "Modelship",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "POWERTOOLS_LOGGER_LOG_EVENT": "false",
    "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
    "POWERTOOLS_TRACER_CAPTURE_ERROR": "true",
    "MODELSHIP_INTRA_OP_THREADS": "1",
}

# argv: event file, then the sys.path entries to put first.
MODELSHIP_CHILD = r"""
import time
started_wall = time.time()
import sys
sys.path[:0] = sys.argv[2:]
clock = time.perf_counter
began = clock()
phases = {}
def wrap(owner, attr, key):
    original = getattr(owner, attr, None)
    if original is None:
        return
    phases[key] = 0.0
    def timed(*args, **kwargs):
        start = clock()
        try:
            return original(*args, **kwargs)
        finally:
            phases[key] += clock() - start
    setattr(owner, attr, timed)
import modelship.core.repository as repository
import modelship.core.lifecycle as lifecycle
import modelship.core.sessions as sessions
import modelship.core.service as service
wrap(service.InferenceService, "preload", "preload")
wrap(repository.ModelRepository, "read_manifest", "manifest")
wrap(repository.ModelRepository, "fetch_verified", "fetch_verified")
wrap(repository, "verify_bytes", "sha256")
wrap(repository.ModelRepository, "_write_cache", "cache_write")
wrap(lifecycle, "probe_model", "probe")
wrap(lifecycle, "load_model", "load")
wrap(sessions, "create_session", "session")
wrap(sessions, "warm_up", "warm_up")
from inference import app
imported = clock()
import json
with open(sys.argv[1]) as handle:
    event = json.load(handle)
class Context:
    aws_request_id = "cold"
    function_name, function_version, memory_limit_in_mb = "modelship-inference", "$LATEST", 2048
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:modelship-inference"
    log_group_name, log_stream_name = "/aws/lambda/modelship-inference", "cold"
    def get_remaining_time_in_millis(self):
        return 20000
asked = clock()
result = app.handler(event, Context())
answered = clock()
answered_wall = time.time()
assert result["statusCode"] == 200, str(result)[:500]
print("BENCH " + json.dumps({
    "started_wall": started_wall, "answered_wall": answered_wall, "init": imported - began,
    "first_request": answered - asked, "phases": phases, "python": sys.version.split()[0],
    "onnxruntime": sys.modules["onnxruntime"].__version__,
    "onnxruntime_file": sys.modules["onnxruntime"].__file__,
}))
"""

# argv: model file, then the sys.path entries to put first.
FLOOR_CHILD = r"""
import time
started_wall = time.time()
import sys
sys.path[:0] = sys.argv[2:]
clock = time.perf_counter
began = clock()
import numpy as np
import onnxruntime as ort
imported = clock()
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], sess_options=options, providers=["CPUExecutionProvider"])
created = clock()
spec = session.get_inputs()[0]
feeds = {spec.name: np.zeros([dim if isinstance(dim, int) else 1 for dim in spec.shape], np.float32)}
session.run(None, feeds)
ran = clock()
answered_wall = time.time()
import json
print("BENCH " + json.dumps({
    "started_wall": started_wall, "answered_wall": answered_wall, "imports": imported - began,
    "session": created - imported, "first_run": ran - created, "python": sys.version.split()[0],
    "onnxruntime": ort.__version__, "onnxruntime_file": ort.__file__,
}))
"""


def log(message: str) -> None:
    print(f"[bench cold_start] {message}", file=sys.stderr, flush=True)


def unpack_layers(workdir: Path) -> tuple[list[str] | None, str]:
    """The built layers' ``python`` folders, unzipped under ``workdir`` (reused while the zips match)."""
    layer_dirs = []
    for name in LAYER_NAMES:
        archive = ROOT / "layers" / "build" / ARCH / f"{name}-layer.zip"
        if not archive.exists():
            return None, f"the {name} layer is not built ({archive.relative_to(ROOT)} is missing: make layer)"
        target = workdir / f"layer-{ARCH}" / name
        stamp = f"{archive.stat().st_size} {archive.stat().st_mtime_ns}"
        stamp_file = target / ".bench-stamp"
        if not stamp_file.exists() or stamp_file.read_text() != stamp:
            shutil.rmtree(target, ignore_errors=True)
            try:
                with zipfile.ZipFile(archive) as opened:
                    opened.extractall(target)
            except (zipfile.BadZipFile, OSError) as error:
                return None, f"the {name} layer cannot be unzipped (being rebuilt?): {error}"
            stamp_file.write_text(stamp)
        layer_dirs.append(str(target / "python"))
    return layer_dirs, ""


def stage_task(workdir: Path, python313: Path) -> Path:
    """The function's code as the deployed asset holds it: the same staging, 3.13 bytecode included."""
    task = workdir / "lambda-task"
    shutil.rmtree(task, ignore_errors=True)
    stage_function_code(ROOT / "functions", task, python313)
    return task


def binary_event(model: str) -> dict[str, Any]:
    from inprocess import apigw_event, encode

    spec = SPECS[model]
    body, headers = encode(spec.example(1), binary=True)
    event: dict[str, Any] = apigw_event(model, body, headers, binary=True)
    return event


def spawn(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    spawned_wall = time.time()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{command[:3]} exited {completed.returncode}: {completed.stderr[-2000:]}")
    line = next((line for line in completed.stdout.splitlines() if line.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"no BENCH line from {command[:3]}: {completed.stdout[-1000:]}")
    report = dict(json.loads(line[len("BENCH ") :]))
    report["interpreter"] = report["started_wall"] - spawned_wall
    report["total"] = report["answered_wall"] - spawned_wall
    return report


def split_modelship(report: dict[str, Any]) -> dict[str, float]:
    """Non-overlapping phases, in seconds, that add up to the total."""
    phases = report["phases"]

    def get(key: str) -> float:
        return float(phases.get(key, 0.0))

    preload = get("preload")
    fetch = get("fetch_verified")
    load = get("load")
    known_preload = get("manifest") + fetch + get("probe") + load
    split = {
        "interpreter": report["interpreter"],
        "imports": report["init"] - preload,
        "store_fetch": get("manifest") + fetch - get("sha256") - get("cache_write"),
        "sha256": get("sha256"),
        "cache_write": get("cache_write"),
        "isolated_probe": get("probe"),
        "session": get("session"),
        "load_other": load - get("session") - get("warm_up"),
        "warm_up": get("warm_up"),
        "other_init": preload - known_preload,
        "first_request": report["first_request"],
    }
    split["unaccounted"] = report["total"] - sum(split.values())
    split["total"] = report["total"]
    return split


def split_floor(report: dict[str, Any]) -> dict[str, float]:
    split = {
        "interpreter": report["interpreter"],
        "imports": report["imports"],
        "session": report["session"],
        "first_run": report["first_run"],
    }
    split["unaccounted"] = report["total"] - sum(split.values())
    split["total"] = report["total"]
    return split


def measure_once(
    config: dict[str, Any],
    kind: str,
    model: str,
    paths: dict[str, Path],
    events: dict[str, Path],
    store: Path,
    scratch: Path,
    versions: dict[str, dict[str, str]],
) -> dict[str, float]:
    """One fresh process: modelship's handler to its first answer, or the floor."""
    cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=scratch))
    env = {
        **config["env"],
        **DEPLOYED_ENV,
        "MODELSHIP_STORE": str(store),
        "MODELSHIP_PRELOAD": model,
        "MODELSHIP_CACHE_DIR": str(cache_dir),
    }
    try:
        if kind == "modelship":
            argv = [*config["python"], "-c", MODELSHIP_CHILD, str(events[model]), *config["sys_path"]]
            report = spawn(argv, env)
            split = split_modelship(report)
        else:
            argv = [*config["python"], "-c", FLOOR_CHILD, str(paths[model]), *config["sys_path"]]
            report = spawn(argv, env)
            split = split_floor(report)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    versions[config["name"]] = {
        "python": report["python"],
        "onnxruntime": report["onnxruntime"],
        "onnxruntime_file": report["onnxruntime_file"],
    }
    return split


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}


def run(out: Path, *, runs: int, quick: bool) -> dict[str, Any]:
    workdir = ROOT / "build" / "bench" / "cold"
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="modelship-cold-"))
    paths = write_models(workdir / "models")
    from modelship.core.repository import ModelRepository

    store = scratch / "store"
    repository = ModelRepository.open(str(store))
    events = {}
    for name, path in paths.items():
        repository.push(path, name)
        event_path = scratch / f"{name}-event.json"
        event_path.write_text(json.dumps(binary_event(name)))
        events[name] = event_path

    configs: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    python313, why = python313_or_reason()
    layer_dirs, why_layers = unpack_layers(workdir)
    if python313 is None:
        skipped["lambda-layer"] = why
    elif layer_dirs is None:
        skipped["lambda-layer"] = why_layers
    else:
        task = stage_task(workdir, python313)
        configs["lambda-layer"] = {
            "name": "lambda-layer",
            "python": [str(python313), "-I", "-S", "-B"],
            "sys_path": [str(task), *layer_dirs],
            "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"},
        }
    configs["venv"] = {
        "name": "venv",
        "python": [sys.executable],
        "sys_path": [],
        "env": {**os.environ, "PYTHONPATH": str(ROOT / "functions")},
    }
    for skipped_config, reason in skipped.items():
        log(f"{skipped_config} skipped: {reason}")

    samples: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    versions: dict[str, dict[str, str]] = {}
    log(f"{runs} rounds of {len(paths)} models x {len(configs)} configurations x (modelship, floor)")
    for round_index in range(runs + 1):  # round 0 is a warm-up of the page cache, discarded
        for config_name, config in list(configs.items()):
            try:
                for model in paths:
                    kinds = ("modelship", "floor") if round_index % 2 == 0 else ("floor", "modelship")
                    for kind in kinds:
                        split = measure_once(config, kind, model, paths, events, store, scratch, versions)
                        if round_index > 0:
                            samples.setdefault((config_name, model, kind), []).append(split)
            except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as error:
                # One configuration failing (a layer mid-rebuild, say) must not take the others down.
                skipped[config_name] = f"failed: {str(error)[-600:]}"
                log(f"{config_name} failed, dropped: {str(error)[-600:]}")
                del configs[config_name]
                samples = {key: value for key, value in samples.items() if key[0] != config_name}
        if round_index:
            log(f"round {round_index}/{runs} done")

    results: dict[str, Any] = {}
    for (config_name, model, kind), values in samples.items():
        entry = results.setdefault(config_name, {}).setdefault(model, {})
        entry[kind] = medians(values)
        entry["model_bytes"] = paths[model].stat().st_size
    for config_name, per_model in results.items():
        for model, entry in per_model.items():
            entry["ratio"] = entry["modelship"]["total"] / entry["floor"]["total"]
            log(
                f"{config_name:<13}{model:<6} modelship {entry['modelship']['total'] * 1000:7.1f} ms, floor "
                f"{entry['floor']['total'] * 1000:7.1f} ms, {entry['ratio']:.2f}x"
            )
    document = {
        "runs": runs,
        "quick": quick,
        "arch": ARCH,
        "configs": results,
        "skipped": skipped,
        "versions": versions,
        "request": "one binary (base64) API Gateway event, batch 1",
    }
    shutil.rmtree(scratch, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1))
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "cold_start.json")
    parser.add_argument("--runs", type=int, default=None, help="measured rounds (default 5, quick 2)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = args.runs if args.runs is not None else (2 if args.quick else 5)
    run(args.out, runs=runs, quick=args.quick)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
