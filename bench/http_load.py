"""HTTP series of issue 13 (4 to 6): modelship's two HTTP doors and two peer servers under ``wrk``.

Servers, each serving the same ONNX files through onnxruntime with one intra-op thread, each answering
the same Open Inference Protocol JSON request (checked once against a local ``session.run`` before
measuring):

- ``modelship-serve``: the models pushed into a local store with ``modelship push``, served by
  ``modelship serve`` (``MODELSHIP_INTRA_OP_THREADS=1``);
- ``modelship-edge``: the edge door (``python -m edge_greengrass``) over model-component artifact
  folders (``model.onnx`` and ``manifest.json`` copied from that store), same environment;
- ``kserve``: KServe 0.21.0's Python ``ModelServer`` with a small ``kserve.Model`` running onnxruntime
  (``bench/peers/kserve_server.py``), in ``build/bench/venvs/kserve``; it binds 0.0.0.0 (hard-coded),
  but is only ever called on 127.0.0.1;
- ``mlserver``: MLServer 1.7.1 with a small custom runtime running onnxruntime
  (``bench/peers/mlserver_runtime.py``), in ``build/bench/venvs/mlserver``.

Method (the team's notes, ``benchmarking.md``): every server pinned to CPU 0 (``taskset -c 0``) and
started once, idle servers left running between turns; ``wrk`` pinned to CPU 1
(``taskset -c 1 wrk -t1 -cC -dSs --latency -s post.lua``), keep-alive, concurrency 1, 2 and 4; a warm-up
run before each measurement; rounds with the servers' order rotated, medians of the rounds. wrk 4.1
corrects its latency histogram for coordinated omission: a Lua ``done()`` hook dumps that histogram and
the correction is undone here (``raw_histogram``), so both wrk's p99 and the raw p99 are reported.

The bare limits, pinned to CPU 0 like the servers: a loop of ``session.run`` (calls/s) and a loop of the
core's ``InferenceService.handle`` on the same JSON request (requests/s), for each model.

Alone: ``python bench/http_load.py --quick`` (or without ``--quick`` for the full three rounds) makes a
tiny and a CNN model and prints a table. Compare ratios only, never absolute times across machines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from peers import venvs  # noqa: E402

SERVERS = ("modelship-serve", "modelship-edge", "kserve", "mlserver")
PEERS = ("kserve", "mlserver")
LEVELS = (1, 2, 4)
SERVER_CPU = "0"
WRK_CPU = "1"
WRK = "/usr/bin/wrk"
STARTUP_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class Plan:
    rounds: int
    warmup_seconds: int
    seconds: int
    bare_seconds: float


# Full: 3 rounds x 4 servers x 2 models x 3 levels = 72 points of (1 s warm-up + 4 s): 6 minutes, plus
# wrk's starts, the bare loops, the pushes and the servers' starts: 7.9 minutes in all on a loaded
# 2-core machine (venvs already made). Quick: about 2 to 2.5 minutes.
FULL = Plan(rounds=3, warmup_seconds=1, seconds=4, bare_seconds=3.0)
QUICK = Plan(rounds=1, warmup_seconds=1, seconds=2, bare_seconds=2.0)

ORT_TO_OIP = {
    "tensor(float)": ("FP32", "float32"),
    "tensor(double)": ("FP64", "float64"),
    "tensor(float16)": ("FP16", "float16"),
    "tensor(int64)": ("INT64", "int64"),
    "tensor(int32)": ("INT32", "int32"),
    "tensor(int16)": ("INT16", "int16"),
    "tensor(int8)": ("INT8", "int8"),
    "tensor(uint8)": ("UINT8", "uint8"),
    "tensor(bool)": ("BOOL", "bool"),
}


# ---------------------------------------------------------------------------------------------------
# The request each server gets, and the answer it must give
# ---------------------------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    model: Path
    body: bytes
    body_path: Path
    expected: dict[str, Any]  # output name -> numpy array
    inputs: dict[str, Any] = field(default_factory=dict)  # input name -> numpy array

    @property
    def path(self) -> str:
        return f"/v2/models/{self.name}/infer"


def make_workload(name: str, model: Path, work: Path) -> Workload:
    """One JSON inference request for every input of the model (dynamic dimensions set to 1, values
    rounded to two decimals so that every JSON parser reads the same float32), and its answer from a
    local ``session.run``."""
    import numpy as np
    import onnxruntime as ort

    session = new_session(str(model))
    rng = np.random.default_rng(13)
    inputs: dict[str, Any] = {}
    tensors = []
    for spec in session.get_inputs():
        if spec.type not in ORT_TO_OIP:
            raise ValueError(f"{model}: input {spec.name} has type {spec.type}, not served by this bench")
        datatype, dtype = ORT_TO_OIP[spec.type]
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in spec.shape]
        values: Any
        if dtype.startswith("float"):
            values = np.round(rng.random(shape), 2)
        elif dtype == "bool":
            values = rng.random(shape) > 0.5
        else:
            values = rng.integers(0, 10, shape)
        array = values.astype(dtype)
        inputs[spec.name] = array
        # From the float64 values: "0.37", not float32's "0.3700000047683716". Every server parses them
        # to float64 and casts to float32, as astype() did above.
        data = values.ravel().tolist()
        tensors.append({"name": spec.name, "shape": shape, "datatype": datatype, "data": data})
    body = json.dumps({"inputs": tensors}, separators=(",", ":")).encode()
    names = [output.name for output in session.get_outputs()]
    expected = dict(zip(names, session.run(names, inputs), strict=True))
    body_path = work / f"{name}.request.json"
    body_path.write_bytes(body)
    del ort
    return Workload(name, model, body, body_path, expected, inputs)


def new_session(path: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def check_answer(workload: Workload, status: int, raw: bytes) -> str | None:
    """None when the answer holds every expected output with the expected values; else what is wrong."""
    import numpy as np

    if status != 200:
        return f"HTTP {status}: {raw[:300]!r}"
    try:
        document = json.loads(raw)
        outputs = {output["name"]: output for output in document["outputs"]}
    except (ValueError, KeyError, TypeError) as error:
        return f"not an inference response ({error}): {raw[:300]!r}"
    for name, expected in workload.expected.items():
        if name not in outputs:
            return f"output {name} missing (got {sorted(outputs)})"
        output = outputs[name]
        try:
            got = np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
        except (KeyError, ValueError, TypeError) as error:
            return f"output {name} unreadable: {error}"
        if got.shape != expected.shape:
            return f"output {name}: shape {list(got.shape)}, expected {list(expected.shape)}"
        if not np.allclose(got, expected.astype(np.float64), rtol=1e-4, atol=1e-5):
            return f"output {name}: values differ from a local session.run"
    return None


def post(url: str, body: bytes, timeout: float = 60.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


# ---------------------------------------------------------------------------------------------------
# The servers
# ---------------------------------------------------------------------------------------------------
class ServerError(Exception):
    """A server could not be started or answered wrongly: the reason, with its log's tail."""


@dataclass
class Server:
    kind: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, workloads: list[Workload]) -> None:
        with self.log_path.open("wb") as log:
            # A process group of its own: stop() ends the server and anything it spawned, nothing else.
            self.process = subprocess.Popen(
                ["taskset", "-c", SERVER_CPU, *self.command],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        pending = list(workloads)
        while pending:
            if self.process.poll() is not None:
                raise ServerError(f"exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"not ready after {STARTUP_TIMEOUT_SECONDS:.0f} s: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/v2/models/{pending[0].name}/ready", timeout=5) as r:
                    if r.status == 200:
                        pending.pop(0)
                        continue
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.2)
        for workload in workloads:
            try:
                status, raw = post(self.base + workload.path, workload.body)
            except OSError as error:
                raise ServerError(f"{workload.name}: {error}: {self.log_tail()}") from None
            if (problem := check_answer(workload, status, raw)) is not None:
                raise ServerError(f"wrong answer for {workload.name}: {problem}")

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])[-800:] + f" (log: {self.log_path})"

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
        # Whatever is left of the group (a worker the server spawned), and the server itself if stuck.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def project_env() -> dict[str, str]:
    """The environment of modelship's own processes: no AWS credentials or region, one intra-op thread."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "SVCUID", "MODELSHIP_", "PYTHON"))
    }
    environment.update(
        {
            "PYTHONPATH": os.pathsep.join([str(REPO / "functions"), str(REPO)]),
            "PYTHONUNBUFFERED": "1",
            "MODELSHIP_INTRA_OP_THREADS": "1",
        }
    )
    return environment


def peer_env() -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "PYTHON", "VIRTUAL_ENV", "MODELSHIP_"))
    }
    environment.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    return environment


def modelship_command() -> list[str]:
    script = Path(sys.executable).parent / "modelship"
    return [str(script)] if script.exists() else [sys.executable, "-m", "modelship.tools.cli"]


def push_models(workloads: list[Workload], store: Path) -> dict[str, Path]:
    """``modelship push`` each model into a local store; the folder of each pushed version."""
    folders: dict[str, Path] = {}
    for workload in workloads:
        result = subprocess.run(
            [
                *modelship_command(),
                "push",
                str(workload.model),
                "--name",
                workload.name,
                "--store",
                str(store),
            ],
            capture_output=True,
            text=True,
            env=project_env(),
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(f"modelship push {workload.name} failed: {result.stderr.strip()[-800:]}")
        version = json.loads(result.stdout)["version"]
        folders[workload.name] = store / "models" / workload.name / str(version)
    return folders


def edge_artifacts(pushed: dict[str, Path], root: Path) -> dict[str, Path]:
    """Model-component artifact folders as the nucleus lays them out, copied from the store."""
    folders: dict[str, Path] = {}
    for name, source in pushed.items():
        folder = root / "packages" / "artifacts" / f"com.modelship.model.{name}" / f"{source.name}.0.0"
        folder.mkdir(parents=True, exist_ok=True)
        for filename in ("model.onnx", "manifest.json"):
            shutil.copy(source / filename, folder / filename)
        folders[name] = folder
    return folders


def mlserver_folder(workloads: list[Workload], root: Path, port: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),  # gRPC cannot be turned off
        "metrics_endpoint": None,
        "parallel_workers": 0,  # in-process, as every other server here
        "load_models_at_startup": True,
        "debug": False,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    for workload in workloads:
        folder = root / workload.name
        folder.mkdir(exist_ok=True)
        model_settings = {
            "name": workload.name,
            "implementation": "mlserver_runtime.OnnxRuntime",
            "parameters": {"uri": str(workload.model.resolve())},
        }
        (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return root


def build_server(
    kind: str, workloads: list[Workload], work: Path, pushed: dict[str, Path], pythons: dict[str, Path]
) -> Server:
    port = free_port()
    log_path = work / f"{kind}.log"
    if kind == "modelship-serve":
        store = work / "store"
        names = ",".join(workload.name for workload in workloads)
        command = [*modelship_command(), "serve", "--store", str(store), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--preload", names]
        return Server(kind, command, project_env(), log_path, work, port)
    if kind == "modelship-edge":
        folders = edge_artifacts(pushed, work / "greengrass")
        command = [sys.executable, "-m", "edge_greengrass", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--work", str(work / "edge-work")]
        for name, folder in folders.items():
            command += ["--model", f"{name}={folder}"]
        return Server(kind, command, project_env(), log_path, work, port)
    if kind == "kserve":
        command = [str(pythons[kind]), str(BENCH / "peers" / "kserve_server.py"), "--port", str(port)]
        for workload in workloads:
            command += ["--model", f"{workload.name}={workload.model.resolve()}"]
        return Server(kind, command, peer_env(), log_path, work, port)
    if kind == "mlserver":
        folder = mlserver_folder(workloads, work / "mlserver-models", port)
        command = [str(pythons[kind].parent / "mlserver"), "start", str(folder)]
        environment = {**peer_env(), "PYTHONPATH": str(BENCH / "peers")}
        return Server(kind, command, environment, log_path, work, port)
    raise ValueError(kind)


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[None]:
    """Every server stopped at the end, whatever happened; SIGTERM/SIGINT to this process included."""
    previous = signal.getsignal(signal.SIGTERM)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    in_main = threading_is_main()
    if in_main:
        signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    finally:
        for server in servers:
            server.stop()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------------
LUA = """-- Written by bench/http_load.py: one JSON inference request, and a dump of the latency histogram.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open(%(body)s, "rb"))
wrk.body = file:read("*a")
file:close()

done = function(summary, latency, requests)
  -- latency(i): the i-th distinct value (us) and its count, after wrk's coordinated-omission correction
  local parts = {}
  for i = 1, #latency do
    local value, count = latency(i)
    parts[#parts + 1] = string.format("[%%d,%%d]", value, count)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%%d,"requests":%%d,"p50_us":%%d,"p99_us":%%d,' ..
    '"errors":{"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d},"histogram":[%%s]}\\n',
    summary.duration, summary.requests, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")))
end
"""


def write_lua(workload: Workload, work: Path) -> Path:
    script = work / f"{workload.name}.post.lua"
    script.write_text(LUA % {"body": json.dumps(str(workload.body_path))})
    return script


def percentile(histogram: dict[int, int], p: float) -> float:
    """wrk's own rule (stats_percentile): the first value whose cumulative count reaches the rank."""
    total = sum(histogram.values())
    if not total:
        return float("nan")
    rank = round((p / 100.0) * total + 0.5)
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


def raw_histogram(
    corrected: dict[int, int], duration_us: int, requests: int, connections: int
) -> dict[int, int]:
    """Undo wrk 4.1's coordinated-omission correction (stats_correct). wrk takes
    ``expected = duration_us / (requests / connections)`` (integer divisions) and, for every value
    ``n >= 2 * expected``, adds its count at ``n - k * expected`` for every k >= 1 while that stays above
    ``expected``. Walking down from the largest value, each value's own count is what is left once the
    counts carried down from the values above it are taken off."""
    per_connection = requests // connections if connections else 0
    if per_connection <= 0:
        return dict(corrected)
    expected = duration_us // per_connection
    if expected <= 0:
        return dict(corrected)
    raw: dict[int, int] = {}
    for value in sorted(corrected, reverse=True):
        carried = 0
        if value > expected:
            above = value + expected
            while above <= max(corrected):
                carried += raw.get(above, 0)
                above += expected
        own = corrected[value] - carried
        if own > 0:
            raw[value] = own
    return raw


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    p99_raw_ms: float
    p50_wrk_ms: float
    errors: int
    error_kinds: str
    samples: int
    requests: int
    timeouts: int


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> WrkResult:
    command = ["taskset", "-c", WRK_CPU, WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["--timeout", "30s", "-s", str(script), url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((row for row in result.stdout.splitlines() if row.startswith("WRKJSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    summary = json.loads(line[len("WRKJSON ") :])
    corrected = {int(value): int(count) for value, count in summary["histogram"]}
    raw = raw_histogram(corrected, summary["duration_us"], summary["requests"], connections)
    duration = summary["duration_us"] / 1e6
    return WrkResult(
        rps=summary["requests"] / duration if duration else 0.0,
        p50_ms=percentile(raw, 50) / 1000,
        p99_ms=summary["p99_us"] / 1000,
        p99_raw_ms=percentile(raw, 99) / 1000,
        p50_wrk_ms=summary["p50_us"] / 1000,
        errors=sum(summary["errors"].values()),
        error_kinds=", ".join(f"{kind} {count}" for kind, count in summary["errors"].items() if count),
        samples=sum(raw.values()),
        requests=summary["requests"],
        timeouts=summary["errors"]["timeout"],
    )


# ---------------------------------------------------------------------------------------------------
# The bare limits (run in a child process pinned to CPU 0: ``http_load.py bare KIND ...``)
# ---------------------------------------------------------------------------------------------------
def bare_session_loop(model: Path, inputs_path: Path, seconds: float) -> float:
    import numpy as np

    session = new_session(str(model))
    with np.load(inputs_path) as archive:
        feeds = {name: archive[name] for name in archive.files}
    names = [output.name for output in session.get_outputs()]
    run = session.run
    return timed_loop(lambda: run(names, feeds), seconds)


def bare_core_loop(store: Path, name: str, body: bytes, seconds: float) -> float:
    import dataclasses

    from modelship.core.service import InferenceService
    from modelship.core.settings import Settings

    settings = dataclasses.replace(
        Settings.from_env(os.environ), store_uri=str(store), preload=((name, None),)
    )
    service = InferenceService.from_settings(settings)
    service.preload()
    path = f"/v2/models/{name}/infer"
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    response = service.handle("POST", path, headers, body)
    if response.status != 200:
        raise SystemExit(f"the core answered {response.status}: {response.body[:300]!r}")
    handle = service.handle
    return timed_loop(lambda: handle("POST", path, headers, body), seconds)


def timed_loop(call: Callable[[], Any], seconds: float) -> float:
    """Calls per second over ``seconds``, after a warm-up of 20 calls or one second, whichever comes
    first; the clock is read once per batch of about a millisecond of calls."""
    clock = time.perf_counter
    started = clock()
    warm = 0
    while warm < 20 and clock() - started < 1.0:
        call()
        warm += 1
    batch = max(1, int(0.001 / ((clock() - started) / warm)))
    calls = 0
    started = clock()
    deadline = started + seconds
    while True:
        for _ in range(batch):
            call()
        calls += batch
        now = clock()
        if now >= deadline:
            return calls / (now - started)


def command_bare(args: argparse.Namespace) -> int:
    if args.kind == "session":
        rate = bare_session_loop(Path(args.model), Path(args.inputs), args.seconds)
    else:
        rate = bare_core_loop(Path(args.store), args.name, Path(args.body).read_bytes(), args.seconds)
    print(json.dumps({"per_second": rate}))
    return 0


def run_bare(kind: str, workload: Workload, work: Path, seconds: float) -> float:
    import numpy as np

    command = [sys.executable, __file__, "bare", kind, "--seconds", str(seconds)]
    if kind == "session":
        inputs_path = work / f"{workload.name}.inputs.npz"
        np.savez(inputs_path, **workload.inputs)
        command += ["--model", str(workload.model), "--inputs", str(inputs_path)]
    else:
        command += [
            "--store",
            str(work / "store"),
            "--name",
            workload.name,
            "--body",
            str(workload.body_path),
        ]
    result = subprocess.run(
        ["taskset", "-c", SERVER_CPU, *command],
        capture_output=True,
        text=True,
        env=project_env(),
        timeout=seconds + 120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"bare {kind} loop failed: {result.stderr.strip()[-800:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["per_second"])


# ---------------------------------------------------------------------------------------------------
# The series
# ---------------------------------------------------------------------------------------------------
def missing_tools() -> list[str]:
    missing = []
    if not (Path(WRK).is_file() and os.access(WRK, os.X_OK)):
        missing.append(f"wrk (expected at {WRK}; Debian: apt-get install wrk)")
    if shutil.which("taskset") is None:
        missing.append("taskset (Debian: apt-get install util-linux)")
    return missing


def describe_method(plan: Plan, errors: list[str]) -> str:
    text = (
        f"Each server pinned to CPU {SERVER_CPU} (taskset), started once and left running between turns; "
        f"wrk 4.1 pinned to CPU {WRK_CPU}: `taskset -c {WRK_CPU} wrk -t1 -cC -d{plan.seconds}s --latency "
        f"--timeout 30s -s post.lua` on 127.0.0.1, keep-alive, C = {', '.join(map(str, LEVELS))}; a "
        f"{plan.warmup_seconds} s warm-up run before each {plan.seconds} s measurement; {plan.rounds} "
        f"round(s), the servers' order rotated each round, median of the rounds for each figure. One "
        f"intra-op thread in every onnxruntime session (modelship: MODELSHIP_INTRA_OP_THREADS=1). Every "
        f"server gets the same Open Inference Protocol JSON request (inputs rounded to two decimals), "
        f"and each answer was checked once against a local session.run before measuring. p50_ms and "
        f"p99_raw_ms are from the measured latencies (wrk's coordinated-omission correction undone from "
        f"the histogram its Lua done() hook dumps); p99_ms is wrk's own, corrected, p99. The bare limits "
        f"run pinned to CPU {SERVER_CPU} for {plan.bare_seconds:g} s: a session.run loop (calls/s) and "
        f"an InferenceService.handle loop on the same JSON request (requests/s). Peers: KServe 0.21.0 "
        f"(kserve.Model subclass, ModelServer workers=1, no gRPC; it binds 0.0.0.0, hard-coded, and is "
        f"called on 127.0.0.1 only) and MLServer 1.7.1 (custom runtime, parallel_workers 0, as pip "
        f"installs it: no httptools, so h11), each in its own virtualenv with onnxruntime and numpy "
        f"pinned to the project's versions."
    )
    if errors:
        text += " Errors during measurement: " + "; ".join(errors)
    return text


def run_http_series(
    models: dict[str, Path],
    out_dir: Path,
    *,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Series 4 to 6 of issue 13. ``models`` maps a model name ("tiny", "cnn") to its ONNX file; logs
    and the work files go to ``out_dir/http``. Returns JSON-able figures (see the module's doc)."""
    say = progress or (lambda line: None)
    plan = QUICK if quick else FULL
    result: dict[str, Any] = {
        "servers": {},
        "bare_loop_calls_per_s": {},
        "bare_inprocess_rps": {},
        "skipped": {},
        "method": "",
    }
    skipped: dict[str, str] = result["skipped"]
    errors: list[str] = []
    result["method"] = describe_method(plan, errors)
    missing = missing_tools()
    if missing:
        reason = "missing: " + "; ".join(missing)
        say(f"http: {reason}")
        for kind in SERVERS:
            skipped[kind] = reason
        result["method"] = describe_method(plan, errors) + f" Not run: {reason}."
        return result

    work = out_dir / "http"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    workloads = [make_workload(name, Path(path), work) for name, path in models.items()]
    result["request_bytes"] = {workload.name: len(workload.body) for workload in workloads}
    result["seconds_per_turn"] = plan.seconds
    for workload in workloads:
        say(f"http: {workload.name}: request of {len(workload.body):,} bytes to {workload.path}")

    pythons: dict[str, Path] = {}
    for peer in PEERS:
        try:
            pythons[peer], _, _ = venvs.ensure_venv(peer, progress=lambda line: say(f"http: {line}"))
        except venvs.VenvError as error:
            skipped[peer] = str(error)
            say(f"http: skipping {peer}: {error}")

    pushed: dict[str, Path] = {}
    try:
        pushed = push_models(workloads, work / "store")
    except ServerError as error:
        for kind in ("modelship-serve", "modelship-edge"):
            skipped[kind] = str(error)
        errors.append(f"no bare InferenceService.handle loop: {error}")
        say(f"http: {error}")
    for workload in workloads:
        say(f"http: bare limits for {workload.name} ({plan.bare_seconds:g} s each, CPU {SERVER_CPU})")
        for kind, key in (("session", "bare_loop_calls_per_s"), ("core", "bare_inprocess_rps")):
            if kind == "core" and not pushed:
                continue
            try:
                rate = run_bare(kind, workload, work, plan.bare_seconds)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
                errors.append(f"bare {kind} loop on {workload.name}: {error}")
                say(f"http:   bare {kind} loop failed: {error}")
                continue
            result[key][workload.name] = rate
            say(f"http:   {'session.run' if kind == 'session' else 'InferenceService.handle'}: {rate:,.1f}/s")

    servers: list[Server] = []
    with running(servers):
        for kind in SERVERS:
            if kind in skipped:
                continue
            server = build_server(kind, workloads, work, pushed, pythons)
            servers.append(server)
            say(f"http: starting {kind} on 127.0.0.1:{server.port} (CPU {SERVER_CPU})")
            started = time.monotonic()
            try:
                server.start(workloads)
            except ServerError as error:
                skipped[kind] = f"did not serve: {error}"
                say(f"http: skipping {kind}: {error}")
                server.stop()
                continue
            say(f"http:   {kind} ready and answering correctly in {time.monotonic() - started:.1f} s")
        live = [server for server in servers if server.kind not in skipped]
        scripts = {workload.name: write_lua(workload, work) for workload in workloads}
        samples: dict[str, dict[str, dict[int, list[WrkResult]]]] = {
            server.kind: {workload.name: {level: [] for level in LEVELS} for workload in workloads}
            for server in live
        }
        for round_index in range(plan.rounds):
            shift = round_index % len(live) if live else 0
            order = live[shift:] + live[:shift]
            say(f"http: round {round_index + 1}/{plan.rounds}: {', '.join(server.kind for server in order)}")
            for workload in workloads:
                for server in order:
                    if server.kind in skipped:
                        continue
                    if server.process is not None and server.process.poll() is not None:
                        skipped[server.kind] = f"died during the measurements: {server.log_tail()}"
                        say(f"http: {server.kind} {skipped[server.kind]}")
                        continue
                    url = server.base + workload.path
                    for level in LEVELS:
                        run_wrk(url, scripts[workload.name], level, plan.warmup_seconds)
                        measured = run_wrk(url, scripts[workload.name], level, plan.seconds)
                        samples[server.kind][workload.name][level].append(measured)
                        if measured.samples + measured.timeouts != measured.requests:
                            errors.append(
                                f"{server.kind} {workload.name} c={level} round {round_index + 1}: the raw "
                                f"histogram holds {measured.samples} of {measured.requests} requests"
                            )
                        if measured.errors:
                            errors.append(
                                f"{server.kind} {workload.name} c={level} round {round_index + 1}: "
                                f"wrk counted errors ({measured.error_kinds}; status = non-2xx answers)"
                            )
                        say(
                            f"http:   {workload.name} {server.kind:<15} c={level} {measured.rps:>8,.0f} req/s"
                            f"  p50 {measured.p50_ms:.2f} ms  p99 {measured.p99_ms:.2f} ms"
                            f" (raw {measured.p99_raw_ms:.2f})"
                            + (f"  errors: {measured.error_kinds}" if measured.errors else "")
                        )
    for kind, by_model in samples.items():
        if kind in skipped:
            continue
        result["servers"][kind] = {
            model: {
                "concurrency": {
                    level: {
                        "rps": statistics.median(run.rps for run in runs),
                        "p50_ms": statistics.median(run.p50_ms for run in runs),
                        "p99_ms": statistics.median(run.p99_ms for run in runs),
                        "p99_raw_ms": statistics.median(run.p99_raw_ms for run in runs),
                    }
                    for level, runs in by_level.items()
                }
            }
            for model, by_level in by_model.items()
        }
    result["method"] = describe_method(plan, errors)
    (work / "results.json").write_text(json.dumps(result, indent=2))
    return result


# ---------------------------------------------------------------------------------------------------
# Alone: python bench/http_load.py [--quick]
# ---------------------------------------------------------------------------------------------------
def standalone_models(folder: Path) -> dict[str, Path]:
    """The orchestrator's own models (``bench/models.py``), so that a run alone measures the same bytes."""
    from models import write_models

    written: dict[str, Path] = write_models(folder, ("tiny", "cnn"))
    return written


def format_table(result: dict[str, Any]) -> str:
    lines = []
    models = list(result["bare_loop_calls_per_s"]) or sorted(
        {model for by_model in result["servers"].values() for model in by_model}
    )
    for model in models:
        calls = result["bare_loop_calls_per_s"].get(model)
        core = result["bare_inprocess_rps"].get(model)
        lines.append(f"\n{model}: bare session.run {calls or 0:,.0f} calls/s; "
                     f"bare InferenceService.handle {core or 0:,.0f} req/s")  # fmt: skip
        lines.append("")
        lines.append(
            "| server | c | req/s | p50 ms | p99 ms (wrk) | p99 ms (raw) | vs KServe | vs MLServer | "
            "% of bare loop | x bare core |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for kind, by_model in result["servers"].items():
            if model not in by_model:
                continue
            for level, row in by_model[model]["concurrency"].items():
                cells = [
                    kind,
                    str(level),
                    f"{row['rps']:,.0f}",
                    f"{row['p50_ms']:.2f}",
                    f"{row['p99_ms']:.2f}",
                ]
                cells.append(f"{row['p99_raw_ms']:.2f}")
                for peer in PEERS:
                    other = result["servers"].get(peer, {}).get(model, {}).get("concurrency", {}).get(level)
                    cells.append(f"{row['rps'] / other['rps']:.2f}x" if other and other["rps"] else "-")
                cells.append(f"{100 * row['rps'] / calls:.1f} %" if calls else "-")
                cells.append(f"{row['rps'] / core:.2f}x" if core else "-")
                lines.append("| " + " | ".join(cells) + " |")
    for kind, reason in result["skipped"].items():
        lines.append(f"\nskipped {kind}: {reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command")
    bare = commands.add_parser("bare", help="(internal) one bare loop, printed as JSON")
    bare.add_argument("kind", choices=("session", "core"))
    bare.add_argument("--seconds", type=float, required=True)
    bare.add_argument("--model")
    bare.add_argument("--inputs")
    bare.add_argument("--store")
    bare.add_argument("--name")
    bare.add_argument("--body")
    parser.add_argument("--quick", action="store_true", help="one round, short runs (about 2 minutes)")
    parser.add_argument(
        "--out", type=Path, help="where logs and results.json go (default: a temporary folder)"
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.command == "bare":
        sys.path[:0] = [str(REPO / "functions"), str(REPO)]
        return command_bare(args)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="http-load-")))
        models_dir = out / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        result = run_http_series(standalone_models(models_dir), out, quick=args.quick, progress=progress)
        progress(f"http series took {time.monotonic() - started:.0f} s")
        print(format_table(result))
        print(f"\nMethod: {result['method']}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
