"""Series 9: size and memory.

- **Layers**: each built Lambda layer zip under ``layers/build/ARCH/`` (``make layer``), zipped and
  unzipped. They are built here only with ``--build-layers`` (``layers/build_layer.py``); otherwise a
  missing layer is reported as "not built".
- **Memory**: in a fresh process per model and configuration, the resident set after the imports
  (baseline) and its peak (``VmHWM``) after loading the model and answering 20 batch-1 requests; divided
  by the model file's size. Configurations: a bare onnxruntime session (one intra-op thread) with the
  CPU memory arena on (onnxruntime's default) and off, and modelship's core (``InferenceService`` on a
  local store, as configured by default, binary requests through ``handle``).

    python bench/footprint.py --out build/bench/footprint.json [--build-layers]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT / "functions"), str(BENCH)]

from models import write_models  # noqa: E402

ARCH = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
LAYER_NAMES = ("onnx", "deps")
REQUESTS = 20

# argv: config, model file, model name, store (modelship only)
MEMORY_CHILD = r"""
import json, sys
def status(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0
config, model_path, model_name = sys.argv[1:4]
import numpy as np
import onnxruntime as ort
if config == "modelship":
    from modelship.core.service import InferenceService
    from modelship.core.settings import Settings
    from modelship.tools.client import encode_request
baseline = status("VmRSS")
if config == "modelship":
    service = InferenceService.from_settings(Settings.from_env())
    model = service.lifecycle.get(model_name, None)
    spec = model.manifest.inputs[0]
    shape = [1 if dim < 0 else dim for dim in spec.shape]
    body, headers = encode_request({spec.name: np.ones(shape, np.float32)}, {spec.name: "FP32"},
                                   binary=True, outputs=None)
    headers = {key.lower(): value for key, value in headers.items()}
    for _ in range(REQUESTS):
        response = service.handle("POST", f"/v2/models/{model_name}/infer", headers, body)
        assert response.status == 200, response
else:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = config == "arena-on"
    session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    feeds = {spec.name: np.ones([dim if isinstance(dim, int) else 1 for dim in spec.shape], np.float32)}
    for _ in range(REQUESTS):
        session.run(None, feeds)
print("BENCH " + json.dumps({"baseline": baseline, "peak": status("VmHWM"), "final": status("VmRSS")}))
""".replace("REQUESTS", str(REQUESTS))

MEMORY_CONFIGS = ("arena-on", "arena-off", "modelship")


def log(message: str) -> None:
    print(f"[bench footprint] {message}", file=sys.stderr, flush=True)


def layer_sizes(build: bool) -> dict[str, Any]:
    directory = ROOT / "layers" / "build" / ARCH
    missing = [name for name in LAYER_NAMES if not (directory / f"{name}-layer.zip").exists()]
    if missing and build:
        log(f"building the layers for {ARCH} (layers/build_layer.py)")
        completed = subprocess.run(
            [sys.executable, str(ROOT / "layers" / "build_layer.py"), "--arch", ARCH], check=False
        )
        if completed.returncode != 0:
            return {"arch": ARCH, "not_built": f"layers/build_layer.py --arch {ARCH} failed"}
        missing = [name for name in LAYER_NAMES if not (directory / f"{name}-layer.zip").exists()]
    layers: dict[str, Any] = {}
    for name in LAYER_NAMES:
        path = directory / f"{name}-layer.zip"
        if not path.exists():
            continue
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
        layers[name] = {
            "zip": str(path.relative_to(ROOT)),
            "zipped_bytes": path.stat().st_size,
            "unzipped_bytes": sum(info.file_size for info in infos),
            "files": len(infos),
        }
    result: dict[str, Any] = {"arch": ARCH, "layers": layers}
    if missing:
        result["not_built"] = (
            f"not built: {', '.join(name + '-layer.zip' for name in missing)} missing under "
            f"layers/build/{ARCH} (make layer, or make bench BENCH_ARGS=--build-layers)"
        )
    return result


def memory(quick: bool) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="modelship-footprint-"))
    paths = write_models(scratch / "models")
    from modelship.core.repository import ModelRepository

    store = scratch / "store"
    repository = ModelRepository.open(str(store))
    for name, path in paths.items():
        repository.push(path, name)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "functions"),
        "MODELSHIP_STORE": str(store),
        "MODELSHIP_CACHE_DIR": str(scratch / "cache"),
        "MODELSHIP_INTRA_OP_THREADS": "1",
    }
    results: dict[str, Any] = {}
    for model, path in paths.items():
        entry: dict[str, Any] = {"model_bytes": path.stat().st_size}
        for config in MEMORY_CONFIGS:
            completed = subprocess.run(
                [sys.executable, "-c", MEMORY_CHILD, config, str(path), model],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            line = next((x for x in completed.stdout.splitlines() if x.startswith("BENCH ")), None)
            if completed.returncode != 0 or line is None:
                entry[config] = {"error": completed.stderr.strip().splitlines()[-1:]}
                continue
            figures = json.loads(line[len("BENCH ") :])
            figures["added"] = figures["peak"] - figures["baseline"]
            figures["peak_per_model_byte"] = figures["peak"] / entry["model_bytes"]
            figures["added_per_model_byte"] = figures["added"] / entry["model_bytes"]
            entry[config] = figures
            log(
                f"{model:<5} {config:<10} baseline {figures['baseline'] / 2**20:6.1f} MiB, peak "
                f"{figures['peak'] / 2**20:6.1f} MiB, added {figures['added'] / 2**20:6.1f} MiB "
                f"({figures['added_per_model_byte']:.2f}x the model)"
            )
        results[model] = entry
    return {"requests": REQUESTS, "models": results}


def run(out: Path, *, quick: bool, build_layers: bool) -> dict[str, Any]:
    document = {"layers": layer_sizes(build_layers), "memory": memory(quick), "quick": quick}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1))
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "footprint.json")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--build-layers", action="store_true", help="build missing layers first")
    args = parser.parse_args()
    run(args.out, quick=args.quick, build_layers=args.build_layers)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
