"""One Lambda execution environment, run as a local process by LocalStack's process executor.

Standard library only: it runs under the *function's* interpreter (``python3.13`` -> Python 3.13),
before the function's code, layers and runtime packages are on the path. The flow is the Lambda
runtime's, spoken over LocalStack's executor-endpoint protocol
(``localstack/services/lambda_/invocation/executor_endpoint.py``):

1. capture fd 1 and 2, so each invocation's output can be posted as its logs;
2. build ``sys.path``: task root, layers, standard library, runtime site-packages (boto3);
3. listen on 127.0.0.1 for ``POST /invoke`` (LocalStack's invocations);
4. import the handler module once (module-level init runs once per environment), then post
   ``status/<id>/ready``, or ``status/<id>/error`` if the import failed;
5. run each invocation in the main thread and post its logs, then ``response`` or ``error``.

Invoked as ``python -S -s bootstrap.py '<json config>'``; the config comes from the executor.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import queue
import resource
import signal
import site
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

PROCESS_STARTED = time.perf_counter()
# Keep at most this much unposted output between invocations (a chatty background thread).
MAX_BUFFERED_OUTPUT = 1 << 20
LOG_SYNC_TIMEOUT_SECONDS = 2.0
POST_TIMEOUT_SECONDS = 30.0


class OutputCapture:
    """Sends fd 1 and 2 through a pipe, so that output from Python, C extensions and child
    processes alike is both kept in the environment's log file and collected per invocation."""

    def __init__(self) -> None:
        self.log_fd = os.dup(1)  # the environment's log file, opened by the executor
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.read_fd = read_fd
        self.buffer = bytearray()
        self.condition = threading.Condition()
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        threading.Thread(target=self._pump, name="output-capture", daemon=True).start()

    def _pump(self) -> None:
        while True:
            data = os.read(self.read_fd, 1 << 16)
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(self.log_fd, view) :]
            with self.condition:
                self.buffer += data
                if len(self.buffer) > MAX_BUFFERED_OUTPUT:
                    del self.buffer[: len(self.buffer) - MAX_BUFFERED_OUTPUT]
                self.condition.notify_all()

    def write_line(self, line: str) -> None:
        """Write a runtime line (START/END/REPORT) in one write() after whatever Python buffered,
        so that it lands after the handler's output and in one piece."""
        sys.stdout.flush()
        sys.stderr.flush()
        data = (line + "\n").encode()
        while data:
            data = data[os.write(1, data) :]

    def take_through(self, last_line: str) -> str:
        """Everything captured up to and including ``last_line``, which was written with write_line."""
        marker = (last_line + "\n").encode()
        with self.condition:
            self.condition.wait_for(lambda: marker in self.buffer, timeout=LOG_SYNC_TIMEOUT_SECONDS)
            end = self.buffer.find(marker)
            end = len(self.buffer) if end < 0 else end + len(marker)
            taken = bytes(self.buffer[:end])
            del self.buffer[:end]
        return taken.decode(errors="replace")


class RuntimeEndpoint:
    """LocalStack's executor endpoint, ``$LOCALSTACK_RUNTIME_ENDPOINT`` (``.../_localstack_lambda/<id>``)."""

    def __init__(self, base_url: str, runtime_id: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.runtime_id = runtime_id
        # No proxies: LocalStack is on loopback, whatever the host's proxy settings say.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(self, path: str, body: bytes) -> None:
        request = urllib.request.Request(
            self.base_url + path, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with self.opener.open(request, timeout=POST_TIMEOUT_SECONDS) as response:
            response.read()

    def ready(self) -> None:
        self.post(f"/status/{self.runtime_id}/ready", b"{}")

    def init_error(self, error: dict[str, Any]) -> None:
        self.post(f"/status/{self.runtime_id}/error", json.dumps(error).encode())

    def logs(self, request_id: str, logs: str) -> None:
        self.post(f"/invocations/{request_id}/logs", json.dumps({"logs": logs}).encode())

    def response(self, request_id: str, body: bytes) -> None:
        self.post(f"/invocations/{request_id}/response", body)

    def error(self, request_id: str, error: dict[str, Any]) -> None:
        self.post(f"/invocations/{request_id}/error", json.dumps(error).encode())


def serve_invocations(invocations: queue.Queue[dict[str, Any]]) -> int:
    """Accept LocalStack's ``POST /invoke`` in a background thread; the main thread runs them."""

    class InvokeHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/invoke":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            invocations.put(json.loads(body))
            # LocalStack waits for the result on its endpoint, not on this answer.
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the function's logs free of our access log

    server = HTTPServer(("127.0.0.1", 0), InvokeHandler)
    threading.Thread(target=server.serve_forever, name="invoke-server", daemon=True).start()
    return int(server.server_address[1])


def exit_with_parent(parent_pid: int) -> None:
    """If LocalStack dies without stopping us (SIGKILL), do not linger as an orphan."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def set_search_path(search_path: list[str], runtime_site_packages: str | None) -> None:
    """Lambda's order: task root, /opt/python (layers), the standard library, then /var/runtime."""
    bootstrap_dir = os.path.dirname(os.path.abspath(__file__))
    standard_library = [entry for entry in sys.path if entry and os.path.abspath(entry) != bootstrap_dir]
    sys.path[:] = [*search_path, *standard_library]
    if runtime_site_packages:
        site.addsitedir(runtime_site_packages)  # appends, and honours its .pth files


IMPORTLIB_DIR = os.path.dirname(importlib.__file__)


def is_runtime_frame(filename: str) -> bool:
    """Frames of this bootstrap and of the import machinery, which Lambda's traces leave out."""
    return filename == __file__ or filename.startswith(("<frozen", IMPORTLIB_DIR + os.sep))


def error_body(
    error: BaseException, error_type: str | None = None, message: str | None = None
) -> dict[str, Any]:
    """Lambda's error shape: errorMessage, errorType, stackTrace (the function's frames, not ours)."""
    frames = [
        frame for frame in traceback.extract_tb(error.__traceback__) if not is_runtime_frame(frame.filename)
    ]
    return {
        "errorMessage": message if message is not None else str(error),
        "errorType": error_type or type(error).__name__,
        "stackTrace": traceback.format_list(frames),
    }


def max_memory_used_mb() -> int:
    """Peak RSS of this process. VmHWM, because ru_maxrss also counts the LocalStack process we were
    forked from (Linux carries the high-water mark across exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def load_handler(handler_name: str) -> Callable[[Any, Any], Any]:
    """Import ``module.path.function`` the way the Lambda Python runtime does, with its error types."""
    module_name, _, function_name = handler_name.rpartition(".")
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InitError(
            error, "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {error}"
        ) from error
    except SyntaxError as error:
        raise InitError(
            error, "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {error}"
        ) from error
    handler = getattr(module, function_name, None)
    if not callable(handler):
        lookup_error = AttributeError(function_name)
        raise InitError(
            lookup_error,
            "Runtime.HandlerNotFound",
            f"Handler '{function_name}' missing on module '{module_name}'",
        )
    return handler  # type: ignore[no-any-return]


class InitError(Exception):
    def __init__(self, cause: BaseException, error_type: str, message: str) -> None:
        super().__init__(message)
        self.body = error_body(cause, error_type, message)


class LambdaContext:
    """The ``context`` argument, with the attributes and method the Python runtime provides."""

    def __init__(self, request_id: str, invoked_function_arn: str, timeout_seconds: float) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def run_invocation(
    handler: Callable[[Any, Any], Any],
    invocation: dict[str, Any],
    capture: OutputCapture,
    endpoint: RuntimeEndpoint,
    init_duration_ms: float | None,
) -> None:
    request_id = invocation["invoke-id"]
    os.environ["_X_AMZN_TRACE_ID"] = invocation.get("trace-id") or ""
    timeout_seconds = float(os.environ.get("AWS_LAMBDA_FUNCTION_TIMEOUT", "3"))
    context = LambdaContext(request_id, invocation.get("invoked-function-arn", ""), timeout_seconds)
    version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    capture.write_line(f"START RequestId: {request_id} Version: {version}")
    started = time.perf_counter()
    result_body: bytes | None = None
    failure: dict[str, Any] | None = None
    try:
        event = json.loads(invocation.get("payload") or "null")
    except ValueError as error:
        failure = error_body(error, "Runtime.UnmarshalError", f"Unable to unmarshal input: {error}")
    else:
        try:
            result = handler(event, context)
        except Exception as error:
            failure = error_body(error)
            failure["requestId"] = request_id
            # The Python runtime logs unhandled exceptions like this before returning them.
            print(f"[ERROR] {failure['errorType']}: {failure['errorMessage']}", file=sys.stderr)
            traceback.print_exc()
        else:
            try:
                result_body = json.dumps(result).encode()
            except (TypeError, ValueError) as error:
                failure = error_body(error, "Runtime.MarshalError", f"Unable to marshal response: {error}")
    duration_ms = (time.perf_counter() - started) * 1000
    max_memory_mb = max_memory_used_mb()
    report = (
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
        f"Billed Duration: {math.ceil(duration_ms)} ms\tMemory Size: {context.memory_limit_in_mb} MB\t"
        f"Max Memory Used: {max_memory_mb} MB"
    )
    if init_duration_ms is not None:
        report += f"\tInit Duration: {init_duration_ms:.2f} ms"
    capture.write_line(f"END RequestId: {request_id}")
    capture.write_line(report)
    # LocalStack attaches the logs it last received to the result, so they must go first. A post that
    # fails (LocalStack busy, or the invocation already answered by a timeout) loses that answer, not the
    # environment: report it and keep serving, as Lambda's runtime client does.
    try:
        endpoint.logs(request_id, capture.take_through(report))
        if failure is not None:
            endpoint.error(request_id, failure)
        else:
            endpoint.response(request_id, result_body or b"null")
    except OSError as error:  # urllib's HTTPError and URLError are OSErrors
        print(f"[WARN] could not report invocation {request_id} to LocalStack: {error}", file=sys.__stderr__)


def main() -> int:
    config = json.loads(sys.argv[1])
    capture = OutputCapture()
    set_search_path(config["search_path"], config.get("runtime_site_packages"))
    exit_with_parent(int(config["parent_pid"]))
    # SIGTERM at shutdown: unwind (finally blocks, atexit) instead of dying mid-write.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    endpoint = RuntimeEndpoint(os.environ["LOCALSTACK_RUNTIME_ENDPOINT"], os.environ["LOCALSTACK_RUNTIME_ID"])
    invocations: queue.Queue[dict[str, Any]] = queue.Queue()
    port = serve_invocations(invocations)

    handler_name = os.environ.get("_HANDLER", "")
    capture.write_line(
        f"INIT_START Runtime Version: python:{sys.version_info[0]}.{sys.version_info[1]} (process)"
    )
    try:
        handler = load_handler(handler_name)
    except InitError as error:
        print(f"[ERROR] {error.body['errorType']}: {error.body['errorMessage']}", file=sys.stderr)
        traceback.print_exc()
        endpoint.init_error(error.body)
        return 1
    except Exception as error:  # module-level code raised
        body = error_body(error)
        print(f"[ERROR] {body['errorType']}: {body['errorMessage']}", file=sys.stderr)
        traceback.print_exc()
        endpoint.init_error(body)
        return 1
    init_duration_ms: float | None = (time.perf_counter() - PROCESS_STARTED) * 1000

    # The executor reads the port once we are ready; rename so it never sees a partial file.
    port_file = config["port_file"]
    with open(port_file + ".tmp", "w") as file:
        file.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    endpoint.ready()

    while True:
        invocation = invocations.get()
        run_invocation(handler, invocation, capture, endpoint, init_duration_ms)
        init_duration_ms = None  # reported on the first (cold) invocation only, as Lambda does


if __name__ == "__main__":
    sys.exit(main())
