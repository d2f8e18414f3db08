"""``make bench``: every series of issue 13 in one run, then ``docs/benchmarks.md`` and its plots.

Series, each a ratio to the one below it: 1-3 and 7 in process (``inprocess.py``), 4-6 over HTTP
(``http_load.py``: ``modelship serve``, the edge door, KServe and MLServer under wrk), 8 cold start
(``cold_start.py``), 9 size and memory (``footprint.py``), 10 cost (``cost.py``). Each series' figures
go to ``build/bench/*.json``; a series that fails is reported as such and the others still run. The
report (``report.py``) says which targets are met, with their figures. Progress goes to stderr.

    python bench/run.py [--quick] [--only inprocess,cold_start,footprint,http] [--build-layers]
    python bench/run.py --report-only     # rewrite the report from build/bench/*.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT / "functions"), str(BENCH)]

import cost  # noqa: E402
import report  # noqa: E402
from models import write_models  # noqa: E402

STEPS = ("inprocess", "compression", "cold_start", "footprint", "http", "cost", "int8")
HTTP_MODELS = ("tiny", "cnn")
# Each subprocess series is bounded, so a wedged run cannot hold `make bench` for ever.
STEP_TIMEOUT_SECONDS = 900


def progress(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    memory_kb = next(
        (line.split()[1] for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal:")), ""
    )
    memory = f"{int(memory_kb) / 2**20:.1f} GiB" if memory_kb.isdigit() else "?"
    try:
        import numpy
        import onnxruntime

        versions = {"onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
    except ImportError as error:
        versions = {"onnxruntime": f"not importable: {error}", "numpy": "?"}
    try:
        git = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = "unknown"
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "affinity": ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0))),
        "memory": memory,
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "git": git,
        "loadavg_start": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        **versions,
    }


def run_script(script: str, out: Path, extra: list[str]) -> None:
    command = [sys.executable, str(BENCH / script), "--out", str(out), *extra]
    progress("$ " + shlex.join(command))
    completed = subprocess.run(command, timeout=STEP_TIMEOUT_SECONDS, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{script} exited with {completed.returncode}")


def build_missing_layers() -> None:
    """``layers/build_layer.py`` for this machine's architecture, only when a layer zip is missing (and
    only because ``--build-layers`` asked for it): the cold start and footprint series use them."""
    from footprint import ARCH, LAYER_NAMES

    directory = ROOT / "layers" / "build" / ARCH
    if all((directory / f"{name}-layer.zip").exists() for name in LAYER_NAMES):
        progress(f"layers for {ARCH} already built")
        return
    command = [sys.executable, str(ROOT / "layers" / "build_layer.py"), "--arch", ARCH]
    progress("$ " + shlex.join(command))
    if subprocess.run(command, timeout=STEP_TIMEOUT_SECONDS, check=False).returncode != 0:
        raise RuntimeError(f"layers/build_layer.py --arch {ARCH} failed")


def http_step(data: Path, quick: bool) -> None:
    out = data / "http.json"
    try:
        import http_load
    except Exception as error:  # the HTTP series is another module: its absence must not stop the rest
        out.write_text(json.dumps({"error": f"bench/http_load.py cannot be imported: {error}"}))
        raise
    models = write_models(data / "models", HTTP_MODELS)
    result = http_load.run_http_series(
        {name: models[name] for name in HTTP_MODELS},
        data,
        quick=quick,
        progress=lambda line: progress(line),
    )
    out.write_text(json.dumps(result, indent=1))


def cost_step(data: Path) -> None:
    document = cost.estimate(json.loads((data / "inprocess.json").read_text()))
    (data / "cost.json").write_text(json.dumps(document, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (a few minutes)")
    parser.add_argument("--only", help=f"comma-separated steps among {', '.join(STEPS)}")
    parser.add_argument("--build-layers", action="store_true", help="build missing Lambda layers first")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report")
    parser.add_argument("--data", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    data: Path = args.data
    data.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        progress(f"wrote {report.write_report(data, args.docs)}")
        return 0
    steps = tuple(args.only.split(",")) if args.only else STEPS
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps: {', '.join(sorted(unknown))}")

    command = os.environ.get("BENCH_COMMAND") or shlex.join([Path(sys.executable).name, *sys.argv])
    started = time.monotonic()
    record: dict[str, Any] = {
        "command": command,
        "quick": args.quick,
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "steps": {},
    }
    (data / "machine.json").write_text(json.dumps(machine(), indent=1))
    quick = ["--quick"] if args.quick else []
    actions: dict[str, Callable[[], None]] = {
        "inprocess": lambda: run_script("inprocess.py", data / "inprocess.json", quick),
        "compression": lambda: run_script("compression.py", data / "compression.json", quick),
        "cold_start": lambda: run_script("cold_start.py", data / "cold_start.json", quick),
        "footprint": lambda: run_script(
            "footprint.py", data / "footprint.json", quick + (["--build-layers"] if args.build_layers else [])
        ),
        "http": lambda: http_step(data, args.quick),
        "cost": lambda: cost_step(data),
        "int8": lambda: run_script("int8.py", data / "int8.json", quick),
    }
    if args.build_layers:
        progress("== layers")
        try:
            build_missing_layers()
        except Exception as error:
            record["steps"]["layers"] = {"error": str(error)[:500]}
            progress(f"building the layers failed: {error}")
    for step in STEPS:
        if step not in steps:
            continue
        target = data / report.SERIES_FILES[step]
        target.unlink(missing_ok=True)  # never report a previous run's figures as this run's
        progress(f"== {step}")
        step_started = time.monotonic()
        try:
            actions[step]()
            record["steps"][step] = {"seconds": time.monotonic() - step_started}
        except Exception as error:
            traceback.print_exc()
            record["steps"][step] = {"seconds": time.monotonic() - step_started, "error": str(error)[:500]}
            progress(f"{step} failed: {error}")
        progress(f"{step} took {time.monotonic() - step_started:.0f} s")
    record["seconds"] = time.monotonic() - started
    record["loadavg_end"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    (data / "run.json").write_text(json.dumps(record, indent=1))
    written = report.write_report(data, args.docs)
    progress(f"wrote {written.relative_to(ROOT) if written.is_relative_to(ROOT) else written} "
             f"in {record['seconds'] / 60:.1f} min")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
