"""Series 1-3 and 7, in process: raw ``session.run``, the core, the full Lambda handler; JSON against binary.

For every case the configurations being compared run interleaved in one process (one call of each in
turn per round, the starting one rotated each round), after a warm-up, so that drift in clock speed or
in neighbours' load lands on all of them alike; p50 and p99 of the per-call times are reported.

- **raw**: ``session.run`` on the very session modelship loaded (same weights, same options);
- **core**: ``InferenceService.handle`` (an Open Inference Protocol request in, a response out) on a
  service without the Powertools observer, sharing the handler's loaded sessions;
- **handler**: ``inference.app.handler`` with an API Gateway REST proxy event, Powertools on as deployed
  (the function's POWERTOOLS_* variables; EMF metrics and logs written to stdout, which is /dev/null
  here). X-Ray tracing stays off: it needs the Lambda environment.

Series 7 compares the JSON and the binary-extension encodings of one 224x224x3 image for the CNN: the
request's bytes (as API Gateway hands it to the function: base64 for binary) and end-to-end handler time.

The whole set runs once unpinned, then once more in a copy of this script re-executed under
``taskset -c 0`` (one CPU, as a Lambda of up to 1,769 MB has). Results go to ``--out`` as JSON; progress
to stderr. Read ratios, not absolute times: they do not carry across machines.

    python bench/inprocess.py --out build/bench/inprocess.json [--quick] [--no-pinned]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "functions"), str(Path(__file__).resolve().parent)]

from models import SPECS, write_models  # noqa: E402

# The deployed function's Powertools settings (infra/constructs/inference_function.py).
DEPLOYED_ENV = {
    "POWERTOOLS_SERVICE_NAME": "modelship",
    "POWERTOOLS_METRICS_NAMESPACE": "Modelship",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "POWERTOOLS_LOGGER_LOG_EVENT": "false",
    "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
    "POWERTOOLS_TRACER_CAPTURE_ERROR": "true",
}


@dataclass(frozen=True, slots=True)
class Case:
    model: str
    mode: str  # "json" or "binary"
    batch: int
    repeats: int
    quick_repeats: int

    @property
    def label(self) -> str:
        return f"{self.model} {self.mode} b{self.batch}"


CASES = (
    Case("tiny", "json", 1, 5000, 400),
    Case("tiny", "binary", 1, 5000, 400),
    Case("mlp", "binary", 1, 400, 30),
    Case("mlp", "binary", 32, 200, 25),
    Case("mlp", "json", 1, 300, 25),
    Case("cnn", "binary", 1, 400, 30),
    Case("cnn", "json", 1, 60, 20),
)
ENCODING_REPEATS = (60, 20)


def log(message: str) -> None:
    print(f"[bench inprocess] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------
def summarize(samples_ns: list[int]) -> dict[str, float]:
    values = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return {
        "p50_us": float(np.percentile(values, 50)),
        "p99_us": float(np.percentile(values, 99)),
        "mean_us": float(values.mean()),
        "min_us": float(values.min()),
        "n": len(samples_ns),
    }


def interleaved(functions: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, Any]:
    """Time each function ``repeats`` times, one call of each per round, rotating the first."""
    names = list(functions)
    calls = [functions[name] for name in names]
    for _ in range(warmup):
        for call in calls:
            call()
    samples: list[list[int]] = [[] for _ in calls]
    clock = time.perf_counter_ns
    count = len(calls)
    for round_index in range(repeats):
        for offset in range(count):
            index = (round_index + offset) % count
            call = calls[index]
            started = clock()
            call()
            samples[index].append(clock() - started)
    return {name: summarize(samples[index]) for index, name in enumerate(names)}


# ---------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------
class BenchContext:
    """The attributes of Lambda's context object that the handler and Powertools read."""

    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    function_name = "modelship-inference"
    function_version = "$LATEST"
    memory_limit_in_mb = 2048
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:modelship-inference"
    log_group_name = "/aws/lambda/modelship-inference"
    log_stream_name = "2025/01/01/[$LATEST]bench"

    def get_remaining_time_in_millis(self) -> int:
        return 20_000


def encode(array: np.ndarray, *, binary: bool) -> tuple[bytes, dict[str, str]]:
    """The request body and headers, as modelship's own client encodes them."""
    from modelship.tools.client import encode_request

    return encode_request({"x": array}, {"x": "FP32"}, binary=binary, outputs=None)


def apigw_event(model: str, body: bytes, headers: dict[str, str], *, binary: bool) -> dict[str, Any]:
    """An API Gateway REST proxy event as the deployed API sends it (tests/events/infer_json.json)."""
    import pybase64

    path = f"/v2/models/{model}/infer"
    all_headers = {
        "Host": "abc123.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "modelship-bench",
        "X-Forwarded-For": "203.0.113.7",
        **headers,
    }
    return {
        "resource": "/v2/{proxy+}",
        "path": path,
        "httpMethod": "POST",
        "headers": all_headers,
        "multiValueHeaders": {key: [value] for key, value in all_headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.removeprefix("/v2/")},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "x1y2z3",
            "resourcePath": "/v2/{proxy+}",
            "httpMethod": "POST",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "path": f"/prod{path}",
            "accountId": "123456789012",
            "stage": "prod",
            "identity": {"sourceIp": "203.0.113.7"},
            "apiId": "abc123",
        },
        "body": pybase64.b64encode(body).decode() if binary else body.decode(),
        "isBase64Encoded": binary,
    }


def minimal_protocol(session: Any, model: str, body: bytes, headers: dict[str, str]) -> Callable[[], bytes]:
    """The least any Open Inference Protocol server does for this request, with nothing checked: parse
    the JSON, take the tensor, run, write the response's JSON (and its binary tensors). No validation,
    no limits, no deadline, no routing: a floor for the core, not a server."""
    import orjson

    header_length = headers.get("inference-header-content-length")
    if header_length is not None:
        start = int(header_length)

        def binary() -> bytes:
            spec = orjson.loads(body[:start])["inputs"][0]
            array = np.frombuffer(body, dtype=np.float32, offset=start).reshape(spec["shape"])
            outputs = session.run(None, {spec["name"]: array})
            header = orjson.dumps(
                {
                    "model_name": model,
                    "model_version": "1",
                    "outputs": [
                        {
                            "name": f"y{index}",
                            "datatype": "FP32",
                            "shape": output.shape,
                            "parameters": {"binary_data_size": output.nbytes},
                        }
                        for index, output in enumerate(outputs)
                    ],
                }
            )
            return b"".join([header, *(output.tobytes() for output in outputs)])

        return binary

    def json_mode() -> bytes:
        spec = orjson.loads(body)["inputs"][0]
        array = np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
        outputs = session.run(None, {spec["name"]: array})
        return orjson.dumps(
            {
                "model_name": model,
                "model_version": "1",
                "outputs": [
                    {"name": f"y{index}", "datatype": "FP32", "shape": output.shape, "data": output.ravel()}
                    for index, output in enumerate(outputs)
                ],
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    return json_mode


def api_gateway_base64(event: dict[str, Any], answer: dict[str, Any]) -> Callable[[], Any] | None:
    """What the REST API's proxy integration alone makes a Lambda do for this exchange: decode a
    base64 request body and encode a base64 response body (None when neither is base64). Part of any
    handler behind it, whatever it serves, so the handler's floor is raw session.run plus this."""
    import pybase64

    request_body = event["body"] if event.get("isBase64Encoded") else None
    response_body = pybase64.b64decode(answer["body"]) if answer.get("isBase64Encoded") else None
    if request_body is None and response_body is None:
        return None

    def both_ways() -> None:
        if request_body is not None:
            pybase64.b64decode(request_body, validate=True)
        if response_body is not None:
            pybase64.b64encode_as_string(response_body)

    return both_ways


# ---------------------------------------------------------------------------------------------------
# One measuring process
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def stdout_to_devnull() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null: Powertools' Logger holds the stdout it found at import, and
    its metrics print to stdout on every invocation, as in Lambda."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def measure(quick: bool, label: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="modelship-bench-inprocess-"))
    try:
        with stdout_to_devnull():
            return _measure(workdir, quick, label)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _measure(workdir: Path, quick: bool, label: str) -> dict[str, Any]:
    store = workdir / "store"
    paths = write_models(workdir / "models")
    os.environ.update(
        {
            **DEPLOYED_ENV,
            "MODELSHIP_STORE": str(store),
            "MODELSHIP_PRELOAD": ",".join(paths),
            "MODELSHIP_CACHE_DIR": str(workdir / "cache"),
        }
    )
    os.environ.setdefault("MODELSHIP_INTRA_OP_THREADS", "1")
    from modelship.core.repository import ModelRepository

    repository = ModelRepository.open(str(store))
    for name, path in paths.items():
        repository.push(path, name)

    started = time.perf_counter()
    from inference import app

    log(
        f"{label}: imported the handler and preloaded {len(paths)} models "
        f"in {time.perf_counter() - started:.2f} s"
    )
    from modelship.core.service import InferenceService
    from modelship.core.settings import Settings

    # The core alone: a service without the Powertools observer. It shares the handler's sessions, so
    # every column runs the same weights (a second copy of a 17 MB model would evict the first from the
    # CPU caches and skew the comparison).
    core = InferenceService.from_settings(Settings.from_env())
    shared = True
    try:
        for name in paths:
            core.lifecycle.cache.put(app.service.lifecycle.get(name, None))
    except Exception as error:  # the internals may change under tuning: load separately then
        shared = False
        log(f"{label}: cannot share the handler's sessions ({error}); the core loads its own")
    # Lambda passes its own context object; this one has the attributes the handler and Powertools read.
    context: Any = BenchContext()

    def raw_session(model: str) -> Any:
        return app.service.lifecycle.get(model, None).session

    def check(result: Any, where: str) -> None:
        status = result.get("statusCode") if isinstance(result, dict) else getattr(result, "status", None)
        if status != 200:
            raise RuntimeError(f"{where} answered {status}: {str(result)[:300]}")

    results: list[dict[str, Any]] = []
    for case in CASES:
        spec = SPECS[case.model]
        array = spec.example(case.batch)
        binary = case.mode == "binary"
        body, headers = encode(array, binary=binary)
        event = apigw_event(case.model, body, headers, binary=binary)
        lower = {key.lower(): value for key, value in headers.items()}
        path = event["path"]
        session = raw_session(case.model)
        feeds = {"x": array}
        check(app.handler(event, context), f"{case.label} handler")
        check(core.handle("POST", path, lower, body), f"{case.label} core")
        repeats = case.quick_repeats if quick else case.repeats
        floor = minimal_protocol(session, case.model, body, lower)
        floor()
        functions = {
            "raw": lambda: session.run(None, feeds),
            "floor": floor,
            "core": lambda: core.handle("POST", path, lower, body),
            "handler": lambda: app.handler(event, context),
        }
        base64_work = api_gateway_base64(event, app.handler(event, context))
        if base64_work is not None:
            functions["base64"] = base64_work
        timed = interleaved(functions, repeats, warmup=max(10, min(200, repeats // 10)))
        results.append(
            {
                "model": case.model,
                "mode": case.mode,
                "batch": case.batch,
                "repeats": repeats,
                "request_bytes": len(body),
                "event_body_bytes": len(event["body"]),
                **timed,
            }
        )
        log(
            f"{label}: {case.label:<16} raw {timed['raw']['p50_us']:9.1f} us  core "
            f"{timed['core']['p50_us'] / timed['raw']['p50_us']:5.2f}x  handler "
            f"{timed['handler']['p50_us'] / timed['raw']['p50_us']:5.2f}x  (p50, {repeats} repeats)"
        )

    # Series 7: the same 224x224x3 image, JSON against the binary extension, interleaved.
    image = SPECS["cnn"].example(1)
    encoded = {}
    for mode in ("json", "binary"):
        body, headers = encode(image, binary=mode == "binary")
        event = apigw_event("cnn", body, headers, binary=mode == "binary")
        check(app.handler(event, context), f"cnn {mode} handler")
        encoded[mode] = (body, event)
    session = raw_session("cnn")
    repeats = ENCODING_REPEATS[1] if quick else ENCODING_REPEATS[0]
    json_event, binary_event = encoded["json"][1], encoded["binary"][1]
    timed = interleaved(
        {
            "raw": lambda: session.run(None, {"x": image}),
            "handler_json": lambda: app.handler(json_event, context),
            "handler_binary": lambda: app.handler(binary_event, context),
        },
        repeats,
        warmup=5,
    )
    encoding = {
        "model": "cnn",
        "shape": list(image.shape),
        "repeats": repeats,
        "request_bytes": {mode: len(encoded[mode][0]) for mode in encoded},
        "event_body_bytes": {mode: len(encoded[mode][1]["body"]) for mode in encoded},
        **timed,
    }
    log(
        f"{label}: encoding 224x224x3: JSON {timed['handler_json']['p50_us']:.0f} us, binary "
        f"{timed['handler_binary']['p50_us']:.0f} us, "
        f"{timed['handler_json']['p50_us'] / timed['handler_binary']['p50_us']:.1f}x"
    )
    profiles = profile_handlers(app, context, quick) if label == "unpinned" else {}
    return {
        "label": label,
        "profiles": profiles,
        "affinity": sorted(os.sched_getaffinity(0)),
        "shared_sessions": shared,
        "intra_op_threads": os.environ.get("MODELSHIP_INTRA_OP_THREADS"),
        "cases": results,
        "encoding": encoding,
    }


def profile_handlers(app: Any, context: Any, quick: bool) -> dict[str, str]:
    """Where the handler's time goes: pyinstrument's call tree over a few seconds of warm calls (tiny
    model and MLP, binary, batch 1). Empty when pyinstrument is not installed."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return {}
    profiles = {}
    for model in ("tiny", "mlp"):
        body, headers = encode(SPECS[model].example(1), binary=True)
        event = apigw_event(model, body, headers, binary=True)
        profiler = Profiler(interval=0.0001)
        deadline = time.perf_counter() + (0.5 if quick else 3.0)
        profiler.start()
        while time.perf_counter() < deadline:
            app.handler(event, context)
        profiler.stop()
        text = profiler.output_text(unicode=True, color=False, show_all=False, short_mode=False)
        lines = text.splitlines()
        # Drop pyinstrument's banner: the tree starts at the first line that begins with a time.
        start = next((index for index, line in enumerate(lines) if line[:1].isdigit()), 0)
        profiles[f"{model} binary b1"] = "\n".join(lines[start : start + 60])
        log(f"profiled the {model} handler")
    return profiles


# ---------------------------------------------------------------------------------------------------
# Orchestration: unpinned here, pinned in a re-executed copy
# ---------------------------------------------------------------------------------------------------
def run(out: Path, *, quick: bool, pinned: bool = True) -> dict[str, Any]:
    document: dict[str, Any] = {"quick": quick, "runs": {}}
    log("unpinned run")
    document["runs"]["unpinned"] = measure(quick, "unpinned")
    if pinned:
        taskset = shutil.which("taskset")
        if taskset is None:
            document["pinned_skipped"] = "taskset is not installed (util-linux)"
            log("no taskset: the pinned run is skipped")
        else:
            log("pinned run: re-executing under taskset -c 0")
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
                child_out = Path(handle.name)
            command = [taskset, "-c", "0", sys.executable, str(Path(__file__).resolve()), "--child"]
            command += ["--out", str(child_out), *(["--quick"] if quick else [])]
            completed = subprocess.run(command, check=False, timeout=1800)
            if completed.returncode == 0:
                document["runs"]["pinned"] = json.loads(child_out.read_text())
            else:
                document["pinned_skipped"] = f"the pinned run exited with {completed.returncode}"
            child_out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1))
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "inprocess.json")
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    parser.add_argument("--no-pinned", action="store_true", help="skip the run under taskset -c 0")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.quick, "pinned")
        args.out.write_text(json.dumps(result))
        return
    run(args.out, quick=args.quick, pinned=not args.no_pinned)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
