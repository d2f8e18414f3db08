"""A model is first loaded in a child process, bounded in time and memory, before the server loads it.

Creating an onnxruntime session cannot be cancelled: constant folding runs inside it, so a model of a
few hundred bytes can spend minutes or gigabytes there before the server could look at what it costs.
The child does what the server will do (create the session and run the warm-up) under an address-space
limit and a wall-clock timeout, and reports what the session cost. A model that does not fit, or does
not finish, is refused with that reason; the server's own memory and threads are never at stake.

Run as ``python -m modelship.core.isolation LIMIT_BYTES RUN_TIMEOUT THREADS LOAD_TIMEOUT PARENT_PID``
with the model on stdin; it prints one JSON line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess  # nosec B404: runs only this interpreter on this module, never a shell
import sys
from dataclasses import dataclass
from typing import Any, Final

from modelship.core.errors import ModelUnavailable
from modelship.core.memory import mebibytes, resident_bytes, status_bytes

logger = logging.getLogger(__name__)

# What the child may use beyond what it had mapped after its imports: the session's own budget plus
# room for onnxruntime's arenas, thread stacks and the warm-up's tensors.
ADDRESS_SPACE_SLACK_BYTES: Final = 512 * 1024 * 1024
# What the child's CPU-time limit allows beyond the load timeout (imports, start-up).
CPU_LIMIT_MARGIN_SECONDS: Final = 5
# prctl(2)'s option: a signal for this process when its parent dies.
_PR_SET_PDEATHSIG: Final = 1
# The child's exit status when Python itself ran out of memory under the limit.
OUT_OF_MEMORY_EXIT: Final = 3
# How onnxruntime's arena reports an allocation that the address-space limit refused.
_ALLOCATION_FAILED: Final = "Failed to allocate memory"


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """What loading the model in the child cost: resident memory beyond the child's baseline."""

    session_bytes: int
    seconds: float


def probe_model(
    data: bytes,
    *,
    where: str,
    memory_limit_bytes: int,
    timeout_seconds: float,
    run_timeout: float,
    threads: int | None,
) -> ProbeReport:
    """Load ``data`` in a child process; raise ``ModelUnavailable`` naming why if it fails there."""
    command = [
        sys.executable,
        "-m",
        "modelship.core.isolation",
        str(memory_limit_bytes + ADDRESS_SPACE_SLACK_BYTES),
        repr(run_timeout),
        str(threads or 0),
        str(math.ceil(timeout_seconds)),
        str(os.getpid()),
    ]
    try:
        # nosec B603: argv is this interpreter, this module and three numbers; the model goes on stdin.
        completed = subprocess.run(  # nosec B603
            command, input=data, capture_output=True, timeout=timeout_seconds, check=False, env=_child_env()
        )
    except subprocess.TimeoutExpired:
        raise _timed_out(where, timeout_seconds) from None
    if completed.returncode == -signal.SIGXCPU:
        # Its CPU-time limit, the load timeout's counterpart for a child whose parent stopped watching.
        raise _timed_out(where, timeout_seconds)
    report = _parse(completed.stdout)
    if completed.returncode == 0 and report is not None and report.get("ok") is True:
        return ProbeReport(int(report["session_bytes"]), float(report["seconds"]))
    if report is not None and isinstance(report.get("error"), str):
        raise ModelUnavailable(f"{where} cannot be loaded: {report['error']}")
    if completed.returncode < 0 or completed.returncode == OUT_OF_MEMORY_EXIT:
        # Killed (the kernel, or onnxruntime aborting when an allocation failed) or out of memory in
        # Python: the model needs more than the limit.
        code = completed.returncode
        ended = f"signal {signal.Signals(-code).name}" if code < 0 else "an allocation failure"
        raise ModelUnavailable(
            f"{where} needs more than {mebibytes(memory_limit_bytes)} MiB to load (the isolated load ended "
            f"with {ended}); refusing it"
        )
    # Our own failure, not the model's (the child could not start, say): the log gets the details.
    detail = completed.stderr.decode("utf-8", "replace").strip().splitlines()
    logger.error("the isolated load of %s exited with %s: %s", where, completed.returncode, detail[-20:])
    raise ModelUnavailable(
        f"{where} cannot be loaded: the isolated load failed ({detail[-1][:200] if detail else 'no output'})"
    )


def _timed_out(where: str, timeout_seconds: float) -> ModelUnavailable:
    return ModelUnavailable(
        f"{where} did not finish loading within {timeout_seconds:g} s in an isolated process; refusing it"
    )


def _child_env() -> dict[str, str]:
    environment = dict(os.environ)
    # The child must import what this process imports; its path may have been built in-process (a
    # Lambda runtime's bootstrap does), so it is passed on explicitly.
    environment["PYTHONPATH"] = os.pathsep.join(entry for entry in sys.path if entry)
    # The child's answer is one JSON line; Python's own warnings and buffering must not interleave.
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def _parse(stdout: bytes) -> dict[str, Any] | None:
    lines = stdout.strip().splitlines()
    if not lines:
        return None
    try:
        document = json.loads(lines[-1])
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _bind_to_parent(cpu_seconds: int, parent: int) -> None:
    """Die with the server, and within its load timeout of CPU even if the server is gone: a child
    re-parented to init would otherwise keep folding a hostile graph for as long as it likes."""
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the CPU limit still bounds the child
    if os.getppid() != parent:
        # The parent died before the signal was armed (its pid comes from the command line: reading our
        # own parent now would already give init's).
        os._exit(1)


def _child(limit_bytes: int, run_timeout: float, threads: int) -> dict[str, Any]:
    import resource
    import time

    from modelship.core.deadlines import RunWatchdog
    from modelship.core.model_checks import ModelRefused
    from modelship.core.sessions import (
        create_session,
        first_line,
        read_signature,
        warm_up_feeds,
    )

    data = sys.stdin.buffer.read()
    started = time.perf_counter()
    baseline = resident_bytes() or 0
    mapped = status_bytes("VmSize")
    if mapped is not None:
        resource.setrlimit(resource.RLIMIT_AS, (mapped + limit_bytes, resource.RLIM_INFINITY))
    try:
        session = create_session(data, threads or None)
        inputs, _ = read_signature(session, data)
    except ModelRefused as error:
        return {"ok": False, "error": f"refused: {error}"}
    except MemoryError:
        raise
    except Exception as error:
        return {"ok": False, "error": f"onnxruntime cannot load it: {first_line(error)}"}
    watchdog = RunWatchdog()
    with watchdog.run(run_timeout) as ticket:
        try:
            session.run(None, warm_up_feeds(inputs), ticket.options)
        except Exception as error:
            if ticket.reason is not None:
                return {"ok": False, "error": f"its warm-up ran past the {run_timeout:g} s deadline"}
            if _ALLOCATION_FAILED in str(error):
                return {"ok": False, "error": f"its warm-up needs more than {mebibytes(limit_bytes)} MiB"}
            # Any other refusal of all-zero input is legitimate; the server's warm-up skips it too.
    # VmHWM, not ru_maxrss: that one survives fork and exec, so it would carry the parent's peak.
    peak = status_bytes("VmHWM") or baseline
    return {"ok": True, "session_bytes": max(0, peak - baseline), "seconds": time.perf_counter() - started}


def main() -> int:
    limit_bytes, run_timeout, threads = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    # CPU time adds up over onnxruntime's threads: the wall-clock timeout times the threads it may use,
    # and a little over, so that the parent's own timeout normally comes first.
    cpu_seconds = max(1, int(sys.argv[4])) * max(1, threads or os.cpu_count() or 1) + CPU_LIMIT_MARGIN_SECONDS
    _bind_to_parent(cpu_seconds, parent=int(sys.argv[5]))
    try:
        report = _child(limit_bytes, run_timeout, threads)
    except MemoryError:
        return OUT_OF_MEMORY_EXIT
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
