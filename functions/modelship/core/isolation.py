"""A model is first loaded in a child process, bounded in time and memory, before the server loads it.

Creating an onnxruntime session cannot be cancelled: constant folding runs inside it, so a model of a
few hundred bytes can spend minutes or gigabytes there before the server could look at what it costs.
The child does what the server will do (create the session and run the warm-up) under an address-space
limit and a wall-clock timeout, and reports what the session cost. A model that does not fit, or does
not finish, is refused with that reason; the server's own memory and threads are never at stake.

The child is forked from the server when no thread but the libraries' idle ones runs (the usual case
at a cold start, before any session exists): it inherits onnxruntime and numpy already imported, so the
isolation costs about one session creation instead of a new interpreter's imports (``fork_is_safe``).
Otherwise it is a new interpreter: ``python -m modelship.core.isolation LIMIT_BYTES RUN_TIMEOUT THREADS
LOAD_TIMEOUT PARENT_PID`` with the model on stdin, printing one JSON line. Either way the child has the
same limits: RLIMIT_AS, RLIMIT_CPU, the wall-clock timeout, death with its parent, VmHWM measured alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import select
import signal
import subprocess  # nosec B404: runs only this interpreter on this module, never a shell
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

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
# A forked child that timed out having used less than this share of the time on the CPU was blocked,
# not loading (a model being folded keeps a CPU busy): the load is retried in a new interpreter.
STUCK_CPU_FRACTION: Final = 0.1
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
    """Load ``data`` in a child process; raise ``ModelUnavailable`` naming why if it fails there.

    The child is forked from this process when that is safe (it runs one thread only, so no lock can be
    held by a thread the child would not have): it starts with onnxruntime and numpy already imported,
    and costs what the session costs. Otherwise a new interpreter is started, which imports them again.
    Both children have the same limits: address space, CPU time, wall-clock timeout, death with the parent.
    """
    limit_bytes = memory_limit_bytes + ADDRESS_SPACE_SLACK_BYTES
    outcome: _Outcome = None
    forked = fork_is_safe()
    if forked:
        try:
            outcome = _run_forked(data, limit_bytes, run_timeout, threads or 0, timeout_seconds)
        except _ForkedChildStuck as stuck:
            logger.warning(
                "the forked isolated load of %s blocked (%.2f s of CPU); loading it in a new interpreter",
                where,
                stuck.cpu_seconds,
            )
            forked = False
    if not forked:
        outcome = _run_spawned(data, limit_bytes, run_timeout, threads or 0, timeout_seconds)
    if outcome is None:
        raise _timed_out(where, timeout_seconds)
    returncode, stdout, stderr = outcome
    if returncode == -signal.SIGXCPU:
        # Its CPU-time limit, the load timeout's counterpart for a child whose parent stopped watching.
        raise _timed_out(where, timeout_seconds)
    report = _parse(stdout)
    if returncode == 0 and report is not None and report.get("ok") is True:
        return ProbeReport(int(report["session_bytes"]), float(report["seconds"]))
    if report is not None and isinstance(report.get("error"), str):
        raise ModelUnavailable(f"{where} cannot be loaded: {report['error']}")
    if returncode < 0 or returncode == OUT_OF_MEMORY_EXIT:
        # Killed (the kernel, or onnxruntime aborting when an allocation failed) or out of memory in
        # Python: the model needs more than the limit.
        ended = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else "an allocation failure"
        raise ModelUnavailable(
            f"{where} needs more than {mebibytes(memory_limit_bytes)} MiB to load (the isolated load ended "
            f"with {ended}); refusing it"
        )
    # Our own failure, not the model's (the child could not start, say): the log gets the details.
    detail = stderr.decode("utf-8", "replace").strip().splitlines()
    logger.error("the isolated load of %s exited with %s: %s", where, returncode, detail[-20:])
    raise ModelUnavailable(
        f"{where} cannot be loaded: the isolated load failed ({detail[-1][:200] if detail else 'no output'})"
    )


# What a child left behind: its exit code (negative: the signal that killed it), its report and its
# diagnostics; None when it ran past the timeout and was killed.
_Outcome = tuple[int, bytes, bytes] | None


def fork_is_safe() -> bool:
    """Whether this process may fork the isolated load: Linux, no Python thread but this one, and no
    native thread but those onnxruntime and numpy start on import (``_LIBRARY_THREADS``).

    A thread that holds a lock at the fork leaves the child's copy of that lock held for ever. The
    library threads are idle daemons (OpenBLAS's pool, which its own fork handler stops before a fork;
    onnxruntime's background dispatcher, asleep in a timed wait); a session's thread pool or a request
    thread is not, so once one exists the load spawns a new interpreter instead. Should the child still
    block, it is caught by its CPU time (``_run_forked``) and the load is retried that way.
    """
    if _LIBRARY_THREADS is None or threading.active_count() != 1:
        return False
    threads = _native_threads()
    return threads is not None and threads - {threading.get_native_id()} <= _LIBRARY_THREADS


def _native_threads() -> set[int] | None:
    """The ids of this process's threads, as the kernel lists them (None where it cannot be read)."""
    try:
        return {int(entry.name) for entry in Path("/proc/self/task").iterdir()}
    except (OSError, ValueError):
        return None


def _library_threads() -> frozenset[int] | None:
    """The threads running once onnxruntime and numpy are imported, before anything else could start
    one; None where forking is not possible or not known to be safe."""
    if not hasattr(os, "fork") or not sys.platform.startswith("linux") or threading.active_count() != 1:
        return None
    import numpy  # noqa: F401 - imported for the threads it starts (the parent imports it anyway)
    import onnxruntime  # noqa: F401 - idem

    threads = _native_threads()
    return None if threads is None else frozenset(threads - {threading.get_native_id()})


_LIBRARY_THREADS: Final = _library_threads() if __name__ != "__main__" else None


def _cpu_seconds(load_timeout: float, threads: int) -> int:
    # CPU time adds up over onnxruntime's threads: the wall-clock timeout times the threads it may use,
    # and a little over, so that the parent's own timeout normally comes first.
    return max(1, math.ceil(load_timeout)) * max(1, threads or os.cpu_count() or 1) + CPU_LIMIT_MARGIN_SECONDS


def _run_spawned(
    data: bytes, limit_bytes: int, run_timeout: float, threads: int, timeout_seconds: float
) -> _Outcome:
    command = [
        sys.executable,
        "-m",
        "modelship.core.isolation",
        str(limit_bytes),
        repr(run_timeout),
        str(threads),
        str(math.ceil(timeout_seconds)),
        str(os.getpid()),
    ]
    try:
        # nosec B603: argv is this interpreter, this module and numbers; the model goes on stdin.
        completed = subprocess.run(  # nosec B603
            command, input=data, capture_output=True, timeout=timeout_seconds, check=False, env=_child_env()
        )
    except subprocess.TimeoutExpired:
        return None
    return completed.returncode, completed.stdout, completed.stderr


def _run_forked(
    data: bytes, limit_bytes: int, run_timeout: float, threads: int, timeout_seconds: float
) -> _Outcome:
    """Fork, load ``data`` in the child, and read its one JSON line from a pipe within the timeout."""
    started = time.monotonic()
    parent = os.getpid()
    reader, writer = os.pipe()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process with threads; the only ones here are the
            # libraries' idle daemons (fork_is_safe), which the child does not need.
            warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(reader)
        os.close(writer)
        raise
    if pid == 0:  # pragma: no cover - the child; its outcome is what the tests check
        os.close(reader)
        _forked_child(
            writer, data, limit_bytes, run_timeout, threads, _cpu_seconds(timeout_seconds, threads), parent
        )
    os.close(writer)
    try:
        received = _read_until(reader, started + timeout_seconds)
    finally:
        os.close(reader)
    status = None if received is None else _wait(pid, started + timeout_seconds)
    if received is None or status is None:
        busy = _cpu_seconds_used(pid)
        _kill(pid)
        if busy is not None and busy < STUCK_CPU_FRACTION * (time.monotonic() - started):
            # Asleep, not loading: a lock held at the fork by a library thread, never the model's doing.
            raise _ForkedChildStuck(busy)
        return None
    report, _, diagnostics = received.partition(b"\n")
    return os.waitstatus_to_exitcode(status), report, diagnostics


def _forked_child(
    writer: int,
    data: bytes,
    limit_bytes: int,
    run_timeout: float,
    threads: int,
    cpu_seconds: int,
    parent: int,
) -> NoReturn:  # pragma: no cover - runs in the forked child
    """The forked child: never returns, never runs the parent's clean-up (atexit, buffered output)."""
    code = 1
    try:
        # The server's handlers (graceful shutdown, say) are not the child's: a signal ends it.
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        _bind_to_parent(cpu_seconds, parent)
        try:
            report = _child(data, limit_bytes, run_timeout, threads)
        except MemoryError:
            code = OUT_OF_MEMORY_EXIT
        else:
            _write_all(writer, json.dumps(report).encode() + b"\n")
            code = 0
    except BaseException:  # our own failure: the parent logs what the child could say of it
        with contextlib.suppress(BaseException):
            _write_all(writer, b"\n" + traceback.format_exc().encode("utf-8", "replace"))
    finally:
        os._exit(code)


class _ForkedChildStuck(Exception):
    """The forked child ran out of time without using the CPU: blocked, so the fork is to blame."""

    def __init__(self, cpu_seconds: float) -> None:
        super().__init__(cpu_seconds)
        self.cpu_seconds = cpu_seconds


def _cpu_seconds_used(pid: int) -> float | None:
    """User and system CPU time of a child that has not been reaped yet (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _write_all(descriptor: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(descriptor, view) :]


def _read_until(descriptor: int, deadline: float) -> bytes | None:
    """Everything written to the pipe until the child closed it (exited); None past the deadline."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([descriptor], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(descriptor, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _wait(pid: int, deadline: float) -> int | None:
    """The child's wait status once it has exited; None if it is still there at the deadline."""
    pause = 0.0005
    while True:
        waited, status = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


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


def _child(data: bytes, limit_bytes: int, run_timeout: float, threads: int) -> dict[str, Any]:
    import resource

    from modelship.core.deadlines import RunWatchdog
    from modelship.core.model_checks import ModelRefused
    from modelship.core.sessions import (
        create_session,
        first_line,
        read_signature,
        warm_up_feeds,
    )

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
    _bind_to_parent(_cpu_seconds(int(sys.argv[4]), threads), parent=int(sys.argv[5]))
    try:
        report = _child(sys.stdin.buffer.read(), limit_bytes, run_timeout, threads)
    except MemoryError:
        return OUT_OF_MEMORY_EXIT
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
