"""The local door's HTTP server against maintained alternatives, side by side in one run.

Candidates, each serving the same ``InferenceService`` through the same API Gateway proxy events:

- ``modelship``: the door as it is (``modelship.doors.local_http``);
- ``stdlib-old``: the door before the hardening (``http.server.ThreadingHTTPServer``), read from git;
- ``waitress``: a thin WSGI adapter on waitress (threads=4), its limits set as far as it has them;
- ``uvicorn``: a thin ASGI adapter on uvicorn with httptools (and uvloop when installed), the handler
  run in the default thread pool, its limits set as far as it has them.

Throughput: each server pinned to CPU 0, wrk pinned to CPU 1, JSON inference on the bundled iris model
with one intra-op thread; every round runs every server at every concurrency, the order rotated per
round; medians over rounds. Compare ratios only, never absolute times across machines.

Hostile cases (the security probe's items 8-12), raw sockets to 127.0.0.1, each bounded in time:
smuggling through malformed header lines and two Transfer-Encoding headers, a Content-Length of 5000
digits, a 70 KB header line, 40 connections sending 5.4 MB of headers each (peak RSS), slow heads and
bodies (one byte a second), 200 idle connections then one request (a cap), 100 connections opened
back to back (the backlog), connection resets (tracebacks logged), SIGTERM during an onnxruntime run.

waitress, uvicorn, httptools (and uvloop) are not project dependencies: install them somewhere apart,
e.g. ``pip install --target /tmp/httpbench-site waitress uvicorn httptools uvloop``, and pass
``--site /tmp/httpbench-site``. ``wrk`` must be on PATH (Debian: ``apt-get install wrk``).

    python bench/http_servers.py --site /tmp/httpbench-site [--rounds 3 --seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "functions"), str(REPO)]

SERVERS = ("modelship", "stdlib-old", "waitress", "uvicorn")
IRIS_BODY = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
# For tests/support/hostile_models.counting_loop: y = x + n, one addition at a time.
ENDLESS_BODY = (
    b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[0.0]},'
    b'{"name":"n","shape":[1],"datatype":"INT64","data":[1000000000000000]}]}'
)
STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3}) [^\r\n]*\r\n")
LENGTH = re.compile(rb"\r\ncontent-length: *([0-9]+)", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------
# The servers (run in a child process: ``http_servers.py serve KIND``)
# ---------------------------------------------------------------------------------------------------
def build_service(store: str) -> Any:
    from modelship.core.service import InferenceService
    from modelship.core.settings import Settings

    settings = Settings.from_env(os.environ)
    import dataclasses

    settings = dataclasses.replace(settings, store_uri=store, preload=(("iris", None), ("endless", None)))
    service = InferenceService.from_settings(settings)
    service.preload()
    return service


def proxy_result_to_http(result: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    import pybase64

    payload = result.get("body") or ""
    raw = pybase64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode("utf-8")
    return int(result["statusCode"]), dict(result.get("headers") or {}), raw


def serve_modelship(service: Any, port: int) -> None:
    from modelship.doors.apigw import proxy_handler
    from modelship.doors.local_http import LocalServer, serve_forever

    server = LocalServer(("127.0.0.1", port), proxy_handler(service), service.settings.max_request_bytes)
    if serve_forever(server, on_shutdown=getattr(service, "cancel_runs", None)):
        os._exit(0)


def serve_stdlib_old(service: Any, port: int, old_door: str) -> None:
    import importlib.util

    from modelship.doors.apigw import proxy_handler

    spec = importlib.util.spec_from_file_location("old_local_http", old_door)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old  # dataclasses look their module up
    spec.loader.exec_module(old)
    server = old.LocalServer(("127.0.0.1", port), proxy_handler(service), service.settings.max_request_bytes)
    old.serve_forever(server)


def serve_waitress(service: Any, port: int) -> None:
    from http import HTTPStatus
    from urllib.parse import quote

    import orjson
    import waitress
    from modelship.core.errors import PayloadTooLarge
    from modelship.core.messages import check_request_size
    from modelship.doors.apigw import proxy_handler
    from modelship.doors.local_http import LocalLambdaContext, build_proxy_event

    handler = proxy_handler(service)
    limit = service.settings.max_request_bytes

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        def answer(status: int, headers: dict[str, str], body: bytes) -> list[bytes]:
            start_response(
                f"{status} {HTTPStatus(status).phrase}",
                [*headers.items(), ("Content-Length", str(len(body)))],
            )
            return [body]

        length_text = environ.get("CONTENT_LENGTH") or "0"
        if not (length_text.isascii() and length_text.isdigit()):
            return answer(400, {"Content-Type": "application/json"}, b'{"error":"invalid Content-Length"}')
        length = int(length_text)
        try:
            check_request_size(length, limit)
        except PayloadTooLarge as error:
            return answer(413, {"Content-Type": "application/json"}, orjson.dumps({"error": error.message}))
        body = environ["wsgi.input"].read(length) if length else b""
        headers = [
            (key[5:].replace("_", "-").title(), value) for key, value in environ.items() if key[:5] == "HTTP_"
        ]
        if environ.get("CONTENT_TYPE"):
            headers.append(("Content-Type", environ["CONTENT_TYPE"]))
        headers.append(("Content-Length", length_text))
        target = quote(environ["PATH_INFO"].encode("latin-1"))
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
        context = LocalLambdaContext()
        event = build_proxy_event(environ["REQUEST_METHOD"], target, headers, body, context.aws_request_id)
        return answer(*proxy_result_to_http(handler(event, context)))

    server = waitress.create_server(
        app,
        host="127.0.0.1",
        port=port,
        threads=4,
        connection_limit=128,
        backlog=1024,
        max_request_header_size=16384,
        max_request_body_size=limit,
        channel_timeout=60,
        expose_tracebacks=False,
        ident=None,
    )

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    # waitress has no graceful shutdown of its own: the closest equivalent of the door's.
    server.close()
    if not server.task_dispatcher.shutdown(cancel_pending=True, timeout=5):
        service.cancel_runs()
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)


def serve_uvicorn(service: Any, port: int) -> None:
    import asyncio
    import importlib.util

    import orjson
    import uvicorn
    from modelship.core.errors import PayloadTooLarge
    from modelship.core.messages import check_request_size
    from modelship.doors.apigw import proxy_handler
    from modelship.doors.local_http import LocalLambdaContext, build_proxy_event

    handler = proxy_handler(service)
    limit = service.settings.max_request_bytes

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    # Reached after uvicorn's graceful-shutdown timeout: stop the runs still going.
                    service.cancel_runs()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

        async def answer(status: int, headers: dict[str, str], body: bytes) -> None:
            raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            raw_headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": raw_headers})
            await send({"type": "http.response.body", "body": body})

        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        lengths = [value for key, value in headers if key.lower() == "content-length"]
        length = int(lengths[0]) if lengths and lengths[0].isdigit() else 0
        try:
            check_request_size(length, limit)
        except PayloadTooLarge as error:
            await answer(413, {"Content-Type": "application/json"}, orjson.dumps({"error": error.message}))
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        context = LocalLambdaContext()
        event = build_proxy_event(scope["method"], target, headers, b"".join(chunks), context.aws_request_id)
        result = await asyncio.get_running_loop().run_in_executor(None, handler, event, context)
        await answer(*proxy_result_to_http(result))

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        lifespan="on",
        limit_concurrency=128,
        backlog=1024,
        timeout_keep_alive=60,
        timeout_graceful_shutdown=5,
        access_log=False,
        server_header=False,
        date_header=False,
        log_level="warning",
    )
    uvicorn.Server(config).run()


def command_serve(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = build_service(args.store)
    if args.kind == "modelship":
        serve_modelship(service, args.port)
    elif args.kind == "stdlib-old":
        serve_stdlib_old(service, args.port, args.old_door)
    elif args.kind == "waitress":
        serve_waitress(service, args.port)
    else:
        serve_uvicorn(service, args.port)
    return 0


# ---------------------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------------------
class Server:
    def __init__(self, kind: str, store: Path, work: Path, site: str | None, old_door: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.log_path = work / f"{kind}.log"
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "functions"), site])),
            "MODELSHIP_INTRA_OP_THREADS": "1",
            "MODELSHIP_INFERENCE_TIMEOUT_SECONDS": "3600",
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, __file__, "serve", kind, "--port", str(self.port), "--store", str(store)]
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                ["taskset", "-c", "0", *command, "--old-door", str(old_door)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{kind} did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_store(root: Path) -> Path:
    from modelship.core.default_model import build_iris_model
    from modelship.core.repository import ModelRepository

    from tests.support.hostile_models import counting_loop

    repository = ModelRepository.open(str(root / "store"))
    iris, labels, _ = build_iris_model()
    for name, data in (("iris", iris), ("endless", counting_loop())):
        path = root / f"{name}.onnx"
        path.write_bytes(data)
        repository.push(path, name, labels=labels if name == "iris" else None)
    return root / "store"


def wrk(url: str, connections: int, seconds: int, script: Path) -> dict[str, float]:
    completed = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    out = completed.stdout

    def milliseconds(percentile: str) -> float:
        match = re.search(rf"^\s+{percentile}%\s+([0-9.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if match is None:
            return float("nan")
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+([0-9]+)", out)
    return {
        "rps": float(rate.group(1)) if rate else 0.0,
        "p50": milliseconds("50"),
        "p99": milliseconds("99"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
    }


def throughput(
    servers: list[Server], rounds: int, seconds: int, warmup: int, levels: list[int], script: Path
) -> dict[str, dict[int, dict[str, float]]]:
    samples: dict[str, dict[int, list[dict[str, float]]]] = {s.kind: {c: [] for c in levels} for s in servers}
    for round_index in range(rounds):
        order = servers[round_index % len(servers) :] + servers[: round_index % len(servers)]
        for server in order:
            for level in levels:
                wrk(f"{server.url}/v2/models/iris/infer", level, warmup, script)
                result = wrk(f"{server.url}/v2/models/iris/infer", level, seconds, script)
                samples[server.kind][level].append(result)
                print(
                    f"  round {round_index + 1} {server.kind:<11} c={level:<3} {result['rps']:>9.0f} req/s "
                    f"p50 {result['p50']:.2f} ms p99 {result['p99']:.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    return {
        kind: {
            level: {key: statistics.median(sample[key] for sample in runs) for key in runs[0]}
            for level, runs in by_level.items()
        }
        for kind, by_level in samples.items()
    }


# ------------------------------------------------------------------------------------ hostile probes
def exchange(address: tuple[str, int], request: bytes, timeout: float = 5.0) -> bytes:
    try:
        with socket.create_connection(address, timeout=timeout) as connection:
            with contextlib.suppress(OSError):
                connection.sendall(request)
            return read_all(connection)
    except OSError:
        return b""


def read_all(connection: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def statuses(reply: bytes) -> list[int]:
    found: list[int] = []
    position = 0
    while (status := STATUS.match(reply, position)) is not None:
        end = reply.find(b"\r\n\r\n", status.start())
        if end < 0:
            break
        length = LENGTH.search(reply, status.end() - 2, end)
        found.append(int(status.group(1)))
        position = end + 4 + (int(length.group(1)) if length else 0)
    return found


def describe(reply: bytes) -> str:
    found = statuses(reply)
    if not found:
        return "dropped, no answer" if not reply else "garbage"
    return " + ".join(str(status) for status in found)


SMUGGLED = b"GET /v2/health/live?smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def smuggle(line: bytes) -> bytes:
    return (
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\n"
        + line
        + b"\r\nContent-Length: "
        + str(len(SMUGGLED)).encode()
        + b"\r\n\r\n"
        + SMUGGLED
    )


QUICK_PROBES: dict[str, bytes] = {
    "8 no colon": smuggle(b"X-Broken header line"),
    "8 space before colon": smuggle(b"X-Broken : 1"),
    "8 non-UTF-8 name": smuggle(b"X-\xff\xfe: 1"),
    "8 two Transfer-Encoding": b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "10 Content-Length 5000 digits": b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
    + b"9" * 5000
    + b"\r\n\r\n{}",
    "9 one 70 KB header line": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 70_000
    + b"\r\n\r\n",
}


def probe_header_memory(
    server: Server, connections: int = 40, lines: int = 90, line_bytes: int = 60_000
) -> str:
    """The probe's attack: many connections each sending megabytes of headers. Peak RSS growth."""
    baseline = server.rss_bytes()
    peak = baseline
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
    line = b"X-Fill-%d: " + b"a" * line_bytes + b"\r\n"
    answers: list[str] = []

    def attack() -> None:
        try:
            with socket.create_connection(server.address, timeout=20) as connection:
                try:
                    connection.sendall(head)
                    for index in range(lines):
                        connection.sendall(line % index)
                    connection.sendall(b"\r\n")
                except OSError:
                    pass
                answers.append(describe(read_all(connection)))
        except OSError as error:
            answers.append(type(error).__name__)

    threads = [threading.Thread(target=attack) for _ in range(connections)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, server.rss_bytes())
        time.sleep(0.02)
    common = max(set(answers), key=answers.count) if answers else "-"
    return f"+{(peak - baseline) / 2**20:.0f} MB, {common}"


def probe_trickle(server: Server, start: bytes, give_up: float) -> str:
    """One byte a second after ``start``: when does the server cut the connection off?"""
    started = time.monotonic()
    try:
        with socket.create_connection(server.address, timeout=10) as connection:
            connection.sendall(start)
            while time.monotonic() - started < give_up:
                readable, _, _ = select.select([connection], [], [], 1.0)
                if readable:
                    connection.settimeout(5)
                    reply = read_all(connection)
                    return f"cut at {time.monotonic() - started:.0f} s ({describe(reply)})"
                try:
                    connection.sendall(b"a")
                except OSError:
                    return f"cut at {time.monotonic() - started:.0f} s (reset)"
    except OSError as error:
        return type(error).__name__
    return f"still open at {give_up:.0f} s"


def probe_cap(server: Server, idle: int = 200) -> str:
    held: list[socket.socket] = []
    stalled = 0
    try:
        for _ in range(idle):
            try:
                held.append(socket.create_connection(server.address, timeout=2))
            except OSError:
                stalled += 1
        reply = exchange(server.address, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        extra = f", {stalled} connects timed out" if stalled else ""
        return f"request #{idle + 1}: {describe(reply) if reply else 'no answer in 5 s'}{extra}"
    finally:
        for connection in held:
            connection.close()


def probe_backlog(server: Server, count: int = 100) -> str:
    held: list[socket.socket] = []
    slow = 0
    worst = 0.0
    try:
        for _ in range(count):
            started = time.monotonic()
            try:
                held.append(socket.create_connection(server.address, timeout=5))
            except OSError:
                slow += 1
                continue
            took = time.monotonic() - started
            worst = max(worst, took)
            slow += took > 0.5
    finally:
        for connection in held:
            connection.close()
    return f"{slow} of {count} stalled, slowest {worst * 1000:.0f} ms"


def probe_resets(server: Server, count: int = 20) -> str:
    before = server.log().count("Traceback")
    for _ in range(count):
        try:
            connection = socket.create_connection(server.address, timeout=5)
            connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
            time.sleep(0.05)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()
        except OSError:
            pass
    time.sleep(1)
    return f"{server.log().count('Traceback') - before} tracebacks for {count} resets"


def probe_sigterm(server: Server) -> str:
    request = b"POST /v2/models/endless/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(ENDLESS_BODY),
        ENDLESS_BODY,
    )
    with socket.create_connection(server.address, timeout=60) as connection:
        connection.sendall(request)
        time.sleep(1.5)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        reply = read_all(connection)
        try:
            code = server.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
            return "still running 40 s after SIGTERM (killed)"
    return f"exit {code} after {time.monotonic() - started:.1f} s, client got {describe(reply)}"


def hostile(servers: list[Server]) -> dict[str, dict[str, str]]:
    results: dict[str, dict[str, str]] = {server.kind: {} for server in servers}
    for server in servers:
        print(f"  probing {server.kind}", file=sys.stderr, flush=True)
        row = results[server.kind]
        for name, request in QUICK_PROBES.items():
            row[name] = describe(exchange(server.address, request))
        row["9 40 x 5.4 MB of headers: peak RSS"] = probe_header_memory(server)
        row["9 200 idle connections, then a request"] = probe_cap(server)
        time.sleep(2)
        row["9 100 connects back to back"] = probe_backlog(server)
        row["12 connection resets"] = probe_resets(server)
    slow: dict[str, Callable[[Server], str]] = {
        "9 head, one byte a second": lambda s: probe_trickle(
            s, b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ", 45
        ),
        "9 body, one byte a second": lambda s: probe_trickle(
            s, b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", 45
        ),
    }
    print("  trickling (about 45 s)", file=sys.stderr, flush=True)
    run_in_parallel(servers, slow, results)
    print("  SIGTERM during a run", file=sys.stderr, flush=True)
    run_in_parallel(servers, {"11 SIGTERM during an onnxruntime run": probe_sigterm}, results)
    return results


def run_in_parallel(
    servers: list[Server], probes: dict[str, Callable[[Server], str]], results: dict[str, dict[str, str]]
) -> None:
    def run(server: Server, name: str, probe: Callable[[Server], str]) -> None:
        results[server.kind][name] = probe(server)

    threads = [
        threading.Thread(target=run, args=(server, name, probe))
        for server in servers
        for name, probe in probes.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


# ------------------------------------------------------------------------------------------- report
def report(
    figures: dict[str, dict[int, dict[str, float]]], probes: dict[str, dict[str, str]], levels: list[int]
) -> None:
    kinds = list(figures or probes)
    if figures:
        reference = figures[kinds[0]]
        print(
            f"\nThroughput (median of rounds; ratio to {kinds[0]}; p50 / p99 in ms, wrk's p99 CO-corrected)\n"
        )
        print("| server | " + " | ".join(f"c={c} req/s (ratio) · p50 · p99" for c in levels) + " |")
        print("|---|" + "---|" * len(levels))
        for kind in kinds:
            cells = []
            for level in levels:
                row = figures[kind][level]
                ratio = row["rps"] / reference[level]["rps"] if reference[level]["rps"] else float("nan")
                errors = f", {row['non2xx']:.0f} non-2xx" if row["non2xx"] else ""
                cells.append(f"{row['rps']:,.0f} ({ratio:.2f}) · {row['p50']:.2f} · {row['p99']:.2f}{errors}")
            print(f"| {kind} | " + " | ".join(cells) + " |")
    if probes:
        names = list(next(iter(probes.values())))
        print("\nHostile cases (item of the issue, case: what the server did)\n")
        print("| case | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        for name in names:
            print(f"| {name} | " + " | ".join(probes[kind].get(name, "-") for kind in kinds) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="(internal) run one server")
    serve.add_argument("kind", choices=SERVERS)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--store", required=True)
    serve.add_argument("--old-door", required=True)
    parser.add_argument("--site", help="where waitress, uvicorn, httptools (and uvloop) are installed")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--no-probes", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--old-commit", default="ce1514a", help="the commit holding the stdlib door before the hardening"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return command_serve(args)

    levels = [int(level) for level in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="http-servers-") as scratch:
        work = Path(scratch)
        old_door = work / "old_local_http.py"
        old_door.write_text(
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(REPO),
                    "show",
                    f"{args.old_commit}:functions/modelship/doors/local_http.py",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        store = make_store(work)
        servers: list[Server] = []
        try:
            for kind in args.servers.split(","):
                servers.append(Server(kind, store, work, args.site, old_door))
            figures = (
                {}
                if args.no_throughput
                else throughput(servers, args.rounds, args.seconds, args.warmup, levels, write_script(work))
            )
            probes = {} if args.no_probes else hostile(servers)
        finally:
            for server in servers:
                server.stop()
        report(figures, probes, levels)
        if args.json:
            args.json.write_text(json.dumps({"throughput": figures, "hostile": probes}, indent=2))
    return 0


def write_script(work: Path) -> Path:
    script = work / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{IRIS_BODY.decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return script


if __name__ == "__main__":
    sys.exit(main())
