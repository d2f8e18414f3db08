"""LocalStack Lambda runtime executor that runs each execution environment as a local process.

LocalStack's own executor runs every execution environment in a Docker container with a Go init
binary downloaded from GitHub. On a host with no Docker engine and no internet, this executor runs
the environment as a child process of LocalStack instead:

* the interpreter is the real CPython binary matching the function's runtime (``python3.13`` ->
  a Python 3.13), taken from a per-runtime virtualenv under ``LAMBDA_PROCESS_RUNTIMES_DIR`` whose
  site-packages stand in for the Lambda runtime's own boto3/botocore (``/var/runtime``);
* ``sys.path`` is the function's unzipped code, then its layers' ``python/`` folders (resolved from
  LocalStack's Lambda store), then the runtime site-packages, as Lambda orders them;
* the process speaks LocalStack's executor-endpoint protocol (ready, response, error, logs) through
  :mod:`localstack_process_executor.bootstrap`, a stdlib-only script;
* the function timeout is enforced here, from outside the process, so that a handler stuck in
  native code still times out; a timed-out or crashed environment is re-initialised on its next
  invocation, as Lambda does.

Every environment runs in its own process group, recorded in ``<work dir>/pids/`` so that
``scripts/localstack.sh down`` can stop what a killed LocalStack left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from functools import cache
from pathlib import Path
from typing import Any

from localstack import config
from localstack.services.lambda_.invocation.executor_endpoint import (
    ExecutorEndpoint,
    StatusErrorException,
)
from localstack.services.lambda_.invocation.lambda_models import FunctionVersion, InvocationResult
from localstack.services.lambda_.invocation.runtime_executor import (
    LambdaRuntimeException,
    RuntimeExecutor,
)

LOG = logging.getLogger(__name__)

BOOTSTRAP_SCRIPT = Path(__file__).with_name("bootstrap.py")
# LocalStack (and so this executor) and the environments it starts share the loopback interface.
LOOPBACK = "127.0.0.1"
# Lambda gives the runtime a short grace period after SIGTERM before it kills the sandbox.
STOP_GRACE_SECONDS = 2.0
# How long a restarted (re-initialised) environment may take to report ready.
RESTART_READY_TIMEOUT_SECONDS = float(config.LAMBDA_RUNTIME_ENVIRONMENT_TIMEOUT)
LOG_TAIL_BYTES = 4096

HOST_ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def work_dir() -> Path:
    """Where environments keep their logs, private TMPDIR and pid files."""
    configured = os.environ.get("LAMBDA_PROCESS_WORK_DIR")
    base = Path(configured) if configured else Path(config.dirs.tmp) / "lambda-process-executor"
    return base.resolve()


def pid_dir() -> Path:
    return work_dir() / "pids"


@cache
def runtime_interpreter(runtime: str) -> tuple[str, str | None]:
    """The real interpreter for a ``pythonX.Y`` runtime, and the site-packages standing in for /var/runtime.

    Preferred: ``$LAMBDA_PROCESS_RUNTIMES_DIR/<runtime>/``, a virtualenv with boto3 and botocore.
    We run its *base* interpreter (named in ``pyvenv.cfg``) rather than a pyenv shim, which fails
    when spawned from LocalStack's environment, and append the venv's site-packages ourselves.
    Fallback: ``pythonX.Y`` on PATH, resolved to its real binary, with no boto3.
    """
    version = runtime.removeprefix("python")
    runtimes_dir = os.environ.get("LAMBDA_PROCESS_RUNTIMES_DIR")
    if runtimes_dir:
        venv = Path(runtimes_dir) / runtime
        pyvenv_cfg = venv / "pyvenv.cfg"
        if pyvenv_cfg.is_file():
            lines = pyvenv_cfg.read_text().splitlines()
            settings = {
                key.strip(): value.strip() for key, _, value in (line.partition("=") for line in lines)
            }
            interpreter = settings.get("executable") or str(Path(settings["home"]) / f"python{version}")
            site_packages = venv / "lib" / f"python{version}" / "site-packages"
            if Path(interpreter).is_file() and site_packages.is_dir():
                return interpreter, str(site_packages)
            LOG.warning("Runtime virtualenv %s is incomplete; falling back to PATH", venv)
    candidate = shutil.which(f"python{version}")
    if candidate is None:
        raise LambdaRuntimeException(
            f"No interpreter for runtime {runtime}: create {runtimes_dir or '$LAMBDA_PROCESS_RUNTIMES_DIR'}"
            f"/{runtime} as a virtualenv, or put python{version} on PATH"
        )
    # Resolve shims (pyenv) to the real binary once, here, where our own environment still selects it.
    real = subprocess.run(
        [candidate, "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    LOG.warning("Runtime %s uses %s without a runtime virtualenv: boto3 is not available", runtime, real)
    return real, None


def layer_code_dirs(function_version: FunctionVersion) -> list[Path]:
    """The unzipped contents of the function's layer versions, in the function's layer order."""
    locations = []
    for layer in function_version.config.layers:
        if layer.code is None:
            raise LambdaRuntimeException(f"Layer {layer.layer_version_arn} has no code in LocalStack's store")
        layer.code.prepare_for_execution()
        locations.append(Path(layer.code.get_unzipped_code_location()))
    return locations


def python_search_path(function_version: FunctionVersion, code_dir: Path) -> list[str]:
    """``sys.path`` entries before the standard library: the task root, then the layers' ``/opt/python``.

    Lambda unzips every layer into the same ``/opt``, later layers overwriting earlier ones, so
    where two layers ship the same file the later one wins: we list later layers first to match.
    """
    version = (function_version.config.runtime or "").removeprefix("python")
    entries = [str(code_dir)]
    for layer_dir in reversed(layer_code_dirs(function_version)):
        entries += [str(layer_dir / "python" / "lib" / f"python{version}" / "site-packages")]
        entries += [str(layer_dir / "python")]
    return entries


def layer_subdirs(function_version: FunctionVersion, name: str) -> list[str]:
    """Each layer's ``name`` folder (``bin``, ``lib``), later layers first, as ``/opt/<name>`` merges them."""
    return [
        str(layer_dir / name)
        for layer_dir in reversed(layer_code_dirs(function_version))
        if (layer_dir / name).is_dir()
    ]


def error_payload(error_type: str, message: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type}).encode()


def signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class ProcessRuntimeExecutor(RuntimeExecutor):  # type: ignore[misc]
    """One execution environment = one local process group running ``bootstrap.py``."""

    def __init__(self, id: str, function_version: FunctionVersion) -> None:
        super().__init__(id=id, function_version=function_version)
        # The port is learned from the process once it is listening (see _wait_until_ready).
        self.executor_endpoint = ExecutorEndpoint(self.id, container_address=LOOPBACK, container_port=None)
        self.environment_dir: Path = work_dir() / "environments" / str(id)
        self.log_path: Path = self.environment_dir / "environment.log"
        self.port_file: Path = self.environment_dir / "port"
        self.pid_file: Path = pid_dir() / f"{id}.pid"
        self.process: subprocess.Popen[bytes] | None = None
        self.env_vars: dict[str, str] = {}
        self.lifecycle_lock = threading.RLock()
        # One invocation at a time per environment, as in Lambda.
        self.invoke_lock = threading.Lock()
        self.current_request_id: str | None = None
        self.stopping = False

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, env_vars: dict[str, str]) -> None:
        self.env_vars = {key: str(value) for key, value in env_vars.items()}
        self.executor_endpoint.start()
        started = time.perf_counter()
        self._spawn()
        self._wait_until_ready(timeout=None)
        LOG.info(
            "Lambda environment %s for %s ready in %.0f ms (process %s)",
            self.id,
            self.function_version.qualified_arn,
            (time.perf_counter() - started) * 1000,
            self.process.pid if self.process else "?",
        )

    def _spawn(self) -> None:
        code_dir = Path(self.function_version.config.code.get_unzipped_code_location())
        interpreter, runtime_site_packages = runtime_interpreter(self.function_version.config.runtime)
        tmp_dir = self.environment_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        pid_dir().mkdir(parents=True, exist_ok=True)

        env = dict(self.env_vars)
        # The task root is wherever LocalStack unzipped the code, not /var/task.
        env["LAMBDA_TASK_ROOT"] = str(code_dir)
        if runtime_site_packages:
            env["LAMBDA_RUNTIME_DIR"] = runtime_site_packages
        # The function's boto3 talks to LocalStack; cdklocal and boto3 want the S3 endpoint set
        # explicitly as well, since no DNS resolves LocalStack's virtual-host names here.
        env.setdefault("AWS_ENDPOINT_URL", f"http://{LOOPBACK}:{config.GATEWAY_LISTEN[0].port}")
        env.setdefault("AWS_ENDPOINT_URL_S3", env["AWS_ENDPOINT_URL"])
        env.setdefault("PATH", os.pathsep.join([*layer_subdirs(self.function_version, "bin"), os.defpath]))
        library_path = layer_subdirs(self.function_version, "lib")
        if library_path and "LD_LIBRARY_PATH" not in env:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
        env.setdefault("LANG", "C.UTF-8")
        # Lambda gives each environment its own /tmp; the closest a plain process gets is TMPDIR.
        env["TMPDIR"] = str(tmp_dir)

        bootstrap_config = {
            "search_path": python_search_path(self.function_version, code_dir),
            "runtime_site_packages": runtime_site_packages,
            "port_file": str(self.port_file),
            "parent_pid": os.getpid(),
        }
        # -S: no site-packages of the host interpreter (a Lambda runtime has only its own);
        # -s: no user site. The bootstrap adds the runtime site-packages itself, last.
        command = [interpreter, "-S", "-s", str(BOOTSTRAP_SCRIPT), json.dumps(bootstrap_config)]
        with self.lifecycle_lock:
            if self.stopping:
                raise LambdaRuntimeException(f"Environment {self.id} is stopping")
            with self.log_path.open("ab") as log_file:
                # Its own session, so stop() can end the whole process tree with one killpg.
                self.process = subprocess.Popen(
                    command,
                    cwd=code_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.pid_file.write_text(f"{self.process.pid}\n")
        threading.Thread(
            target=self._watch_process, args=(self.process,), name=f"lambda-process-{self.id}", daemon=True
        ).start()

    def _wait_until_ready(self, timeout: float | None) -> None:
        """Block until the bootstrap posted ready; raises StatusErrorException if its init failed."""
        if timeout is None:
            # LocalStack's own startup timer bounds the first start, and stop() cancels the future.
            self.executor_endpoint.wait_for_startup()
        else:
            self.executor_endpoint.startup_future.result(timeout=timeout)
        self.executor_endpoint.container_port = int(self.port_file.read_text())

    def _watch_process(self, process: subprocess.Popen[bytes]) -> None:
        """Turn an unexpected exit into the error LocalStack is waiting for, as Lambda's init would."""
        exit_code = process.wait()
        with self.lifecycle_lock:
            if self.stopping or process is not self.process:
                return
            self.pid_file.unlink(missing_ok=True)
        # Whatever the crashed handler started must not outlive its environment (the re-initialised
        # one replaces self.process, so stop() would never reach this group again).
        signal_group(process.pid, signal.SIGKILL)
        reason = f"signal {-exit_code}" if exit_code < 0 else f"exit status {exit_code}"
        message = f"Runtime exited with error: {reason}"
        startup = self.executor_endpoint.startup_future
        invocation = self.executor_endpoint.invocation_future
        if startup is not None and not startup.done():
            LOG.warning("Lambda environment %s died during init (%s):\n%s", self.id, reason, self._log_tail())
            payload = error_payload("Runtime.ExitError", f"{message}\n{self._log_tail()}")
            set_future(startup, exception=StatusErrorException("Environment startup failed", payload=payload))
        elif invocation is not None and not invocation.done():
            request_id = self.current_request_id or ""
            result = InvocationResult(
                request_id,
                error_payload("Runtime.ExitError", f"RequestId: {request_id} Error: {message}"),
                is_error=True,
                logs=self._log_tail(),
            )
            set_future(invocation, result=result)

    def stop(self) -> None:
        with self.lifecycle_lock:
            self.stopping = True
            process = self.process
        try:
            self.executor_endpoint.shutdown()
        except Exception as error:  # never registered, or already shut down
            LOG.debug("Executor endpoint of %s already shut down: %s", self.id, error)
        if process is not None:
            self._terminate(process)
        self.pid_file.unlink(missing_ok=True)
        shutil.rmtree(self.environment_dir / "tmp", ignore_errors=True)

    def _terminate(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM, as Lambda sends at shutdown, then SIGKILL for the whole group after a grace period."""
        if process.poll() is None:
            signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                LOG.debug("Lambda environment %s ignored SIGTERM; killing it", self.id)
        # Kill stragglers the handler may have started, even if the bootstrap itself already exited.
        signal_group(process.pid, signal.SIGKILL)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            LOG.warning("Lambda environment %s (pid %s) did not die", self.id, process.pid)

    def _restart(self) -> None:
        """Re-initialise a timed-out or crashed environment before its next invocation, as Lambda does."""
        LOG.info("Re-initialising Lambda environment %s", self.id)
        self.executor_endpoint.startup_future = Future()
        self._spawn()
        try:
            self._wait_until_ready(timeout=RESTART_READY_TIMEOUT_SECONDS)
        except BaseException:
            with self.lifecycle_lock:
                process, self.process = self.process, None
            if process is not None:
                self._terminate(process)
            raise

    # --- invocations ---------------------------------------------------------------------------

    def invoke(self, payload: dict[str, str]) -> InvocationResult:
        with self.invoke_lock:
            process = self.process
            if process is None or process.poll() is not None:
                self._restart()
                process = self.process
            assert process is not None
            request_id = payload["invoke-id"]
            self.current_request_id = request_id
            timeout = float(self.function_version.config.timeout)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            timer = threading.Timer(timeout, self._time_out, args=(process, request_id, timeout, log_offset))
            timer.daemon = True
            timer.start()
            try:
                return self.executor_endpoint.invoke(payload)
            finally:
                timer.cancel()
                self.current_request_id = None

    def _time_out(
        self, process: subprocess.Popen[bytes], request_id: str, timeout: float, log_offset: int
    ) -> None:
        """Kill the environment, then answer the invocation with Lambda's timeout error.

        Killing from outside is what makes the timeout hold for a handler blocked in native code. The
        kill comes first and is SIGKILL, as Lambda's sandbox teardown: a timed-out handler that kept
        running could otherwise post its late answer while the next invocation is current, and
        LocalStack would hand it to that invocation. The next invocation re-initialises the environment.
        """
        invocation = self.executor_endpoint.invocation_future
        if invocation is None or invocation.done():
            return  # answered just in time
        with self.lifecycle_lock:
            if process is self.process:
                self.pid_file.unlink(missing_ok=True)
                # The exit watcher must not report this exit: mark the process as replaced.
                self.process = None
        signal_group(process.pid, signal.SIGKILL)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            LOG.warning("Lambda environment %s (pid %s) did not die after SIGKILL", self.id, process.pid)
        timestamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        message = f"{timestamp} {request_id} Task timed out after {timeout:.2f} seconds"
        LOG.info("Lambda environment %s: %s", self.id, message)
        logs = self._log_since(log_offset) + f"\n{message}\n"
        result = InvocationResult(
            request_id, error_payload("Sandbox.Timedout", message), is_error=True, logs=logs
        )
        set_future(invocation, result=result)

    # --- addresses -----------------------------------------------------------------------------

    def get_address(self) -> str:
        return LOOPBACK

    def get_endpoint_from_executor(self) -> str:
        return LOOPBACK

    def get_runtime_endpoint(self) -> str:
        port = config.GATEWAY_LISTEN[0].port
        return f"http://{LOOPBACK}:{port}{self.executor_endpoint.get_endpoint_prefix()}"

    # --- logs ----------------------------------------------------------------------------------

    def get_logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "Environment was not started"

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(offset)
                return log_file.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self) -> str:
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        return self._log_since(max(0, size - LOG_TAIL_BYTES))

    # --- versions ------------------------------------------------------------------------------

    @classmethod
    def prepare_version(cls, function_version: FunctionVersion) -> None:
        """Check that this host can run the function natively, and unzip its code and layers."""
        config_ = function_version.config
        runtime = config_.runtime or ""
        if not runtime.startswith("python"):
            raise LambdaRuntimeException(
                f"The process executor runs python runtimes only, not {runtime or 'container images'}"
            )
        host_architecture = HOST_ARCHITECTURES.get(platform.machine().lower(), platform.machine())
        function_architecture = str(config_.architectures[0]) if config_.architectures else "x86_64"
        if function_architecture != host_architecture and not os.environ.get("LAMBDA_PROCESS_ALLOW_ANY_ARCH"):
            # Native code built for another architecture (such as an onnxruntime layer) would fail
            # at import with an obscure error; say so at deploy time instead.
            raise LambdaRuntimeException(
                f"{function_version.qualified_arn} is built for {function_architecture}, but this host is "
                f"{host_architecture} and the process executor runs code natively; deploy for "
                f"{host_architecture} (or set LAMBDA_PROCESS_ALLOW_ANY_ARCH=1 for pure-Python code)"
            )
        runtime_interpreter(runtime)
        config_.code.prepare_for_execution()
        layer_code_dirs(function_version)

    @classmethod
    def cleanup_version(cls, function_version: FunctionVersion) -> None:
        # LocalStack owns the unzipped code and layers; environments clean up after themselves.
        pass

    @classmethod
    def validate_environment(cls) -> bool:
        if sys.platform != "linux":
            LOG.warning("The process executor is only tested on Linux")
        return True


def set_future(future: Future[Any], *, result: Any = None, exception: BaseException | None = None) -> bool:
    """Complete a future unless someone (the endpoint, a timer, the watcher) already did; True if we did."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except Exception as error:  # InvalidStateError: already done or cancelled
        LOG.debug("Future already completed: %s", error)
        return False
    return True
