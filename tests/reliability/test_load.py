"""A load test of ``modelship serve`` as a real process on 127.0.0.1: 3,000 mixed requests (good ones
of every kind, and the bad-request table) from 16 threads with http.client, some on keep-alive
connections and some on new ones, with iris unloaded and loaded again half-way through.

Asserted: zero wrong answers (every good answer equals onnxruntime run here on the store's bytes, every
bad one has the table's status and message), zero 5xx for good requests, the reload answered 200, and
the server's RSS growth within RSS_GROWTH_BOUND. Not asserted: any timing. Bounded: 3,000 requests (plus
300 to warm up) or 60 s, whichever comes first. Figures: build/reliability/load.json."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
import pytest

from tests.reliability.figures import write_figures
from tests.reliability.oracle import Reference, classify_reference
from tests.support.bad_requests import BAD_REQUESTS, BadRequestCase
from tests.support.oip import binary_request, json_request, read_response
from tests.support.processes import RunningServer, running_server

TOTAL: Final = 3000
WARMUP: Final = 300
CONCURRENCY: Final = 16
DEADLINE_SECONDS: Final = 60.0
BAD_FRACTION: Final = 0.25
NEW_CONNECTION_FRACTION: Final = 0.3
# The 6 MiB body-over-size-cap case costs 6 MiB of loopback traffic each time: a few are enough.
MAX_OVER_CAP: Final = 3
# RSS growth of the server over the 3,000 requests after warm-up. Measured here: 3.8-5.5 MiB (glibc keeps
# freed arenas of the connection threads, and the reload's new session). 64 MiB is ~10x that: a leak of
# ~20 KiB per request (a kept body, response or session) goes over it.
RSS_GROWTH_BOUND_KIB: Final = 64 * 1024
MODELS: Final = ("iris", "add_sub", "identity_bytes", "identity_int64", "identity_fp16")
SEED: Final = 20261122


@dataclass
class Job:
    label: str
    good: bool
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Returns what is wrong with the answer (status, lower-cased headers, body), or None.
    check: Callable[[int, dict[str, str], bytes], str | None] = lambda status, headers, body: None


@dataclass
class Outcome:
    job: Job
    status: int
    started: float
    seconds: float
    new_connection: bool
    problem: str | None


def infer_job(
    reference: Reference,
    label: str,
    model: str,
    inputs: dict[str, tuple[np.ndarray, str]],
    binary: bool,
    outputs: list[dict[str, Any]] | None = None,
    labels: tuple[str, ...] | None = None,
) -> Job:
    extra: dict[str, Any] = {}
    if outputs is not None:
        extra["outputs"] = outputs
    elif binary:
        extra["parameters"] = {"binary_data_output": True}
    if binary:
        body, headers = binary_request(inputs, **extra)
    else:
        body, headers = json_request(inputs, **extra), {}
    names = [o["name"] for o in outputs] if outputs is not None else None
    session = reference.sessions[model]
    names = names or [o.name for o in session.get_outputs()]
    results = reference.run(model, {name: array for name, (array, _) in inputs.items()}, names)
    expected: dict[str, np.ndarray] = {}
    for name, result in zip(names, results, strict=True):
        wanted = next((o for o in outputs or [] if o["name"] == name), {})
        k = (wanted.get("parameters") or {}).get("classification", 0)
        classified = classify_reference(result, k, labels) if k else None
        expected[name] = classified if classified is not None else result

    def check(status: int, headers: dict[str, str], body: bytes) -> str | None:
        if status != 200:
            return f"status {status}: {body[:200]!r}"
        _, arrays = read_response(body, headers.get("inference-header-content-length"))
        for name, want in expected.items():
            got = arrays.get(name)
            if got is None or got.shape != want.shape:
                return f"{name}: shape {None if got is None else got.shape}, expected {want.shape}"
            if want.dtype == object:
                same = [str(x) for x in got.ravel()] == [str(x) for x in want.ravel()]
            else:
                same = got.dtype == want.dtype and np.array_equal(got, want, equal_nan=want.dtype.kind == "f")
            if not same:
                return f"{name}: {got.ravel()[:6]} != {want.ravel()[:6]}"
        return None

    return Job(label, True, "POST", f"/v2/models/{model}/infer", body, headers, check)


def json_job(label: str, path: str, predicate: Callable[[Any], bool]) -> Job:
    def check(status: int, headers: dict[str, str], body: bytes) -> str | None:
        if status != 200:
            return f"status {status}: {body[:200]!r}"
        return None if predicate(orjson.loads(body)) else f"unexpected {body[:200]!r}"

    return Job(label, True, "GET", path, check=check)


def bad_job(case: BadRequestCase) -> Job:
    def check(status: int, headers: dict[str, str], body: bytes) -> str | None:
        if status != case.status:
            return f"status {status}, expected {case.status}: {body[:200]!r}"
        if headers.get("content-type") != "application/json":
            return f"content type {headers.get('content-type')}"
        error = orjson.loads(body).get("error", "")
        return None if case.message in error and "Traceback" not in error else f"error {error[:200]!r}"

    return Job(f"bad:{case.id}", False, case.method, case.path, case.body, dict(case.headers), check)


def good_jobs(reference: Reference, iris_labels: tuple[str, ...], rng: np.random.Generator) -> list[Job]:
    jobs: list[Job] = []
    for variant in range(12):
        batch = int(rng.integers(1, 9))
        samples = (rng.standard_normal((batch, 4)) * 2 + 4).astype(np.float32)
        binary = variant % 2 == 1
        outputs = None
        if variant % 3 == 2:
            outputs = [
                {"name": "label", "parameters": {"binary_data": binary}},
                {"name": "probabilities", "parameters": {"classification": 2}},
            ]
        iris_inputs = {"input": (samples, "FP32")}
        jobs.append(
            infer_job(reference, f"iris-{variant}", "iris", iris_inputs, binary, outputs, iris_labels)
        )
    for variant in range(4):
        a = rng.standard_normal((3, 4)).astype(np.float32)
        b = rng.standard_normal((3, 4)).astype(np.float32)
        inputs = {"a": (a, "FP32"), "b": (b, "FP32")}
        jobs.append(infer_job(reference, f"add_sub-{variant}", "add_sub", inputs, variant % 2 == 1))
    words = np.array([["alpha", "béta", ""], ["x", "yy", "zzz"]], dtype=object)
    jobs.append(infer_job(reference, "bytes-json", "identity_bytes", {"x": (words, "BYTES")}, False))
    jobs.append(infer_job(reference, "bytes-binary", "identity_bytes", {"x": (words, "BYTES")}, True))
    ints = rng.integers(-(2**62), 2**62, size=(4, 3), dtype=np.int64)
    jobs.append(infer_job(reference, "int64-binary", "identity_int64", {"x": (ints, "INT64")}, True))
    halves = rng.standard_normal((2, 3)).astype(np.float16)
    jobs.append(infer_job(reference, "fp16-json", "identity_fp16", {"x": (halves, "FP16")}, False))
    jobs.append(json_job("live", "/v2/health/live", lambda d: d == {"live": True}))
    jobs.append(json_job("ready", "/v2/health/ready", lambda d: d.get("ready") is True))
    jobs.append(json_job("metadata", "/v2/models/iris", lambda d: d["name"] == "iris" and d["inputs"]))
    jobs.append(json_job("model-ready", "/v2/models/iris/ready", lambda d: d.get("ready") is True))
    return jobs


def plan(good: list[Job], bad: list[Job], count: int, rng: random.Random) -> list[tuple[Job, bool]]:
    """``count`` (job, new connection?) pairs: BAD_FRACTION bad ones, at most MAX_OVER_CAP over the cap."""
    jobs: list[tuple[Job, bool]] = []
    over_cap = 0
    while len(jobs) < count:
        job = rng.choice(bad) if rng.random() < BAD_FRACTION else rng.choice(good)
        if job.label == "bad:body-over-size-cap":
            if over_cap >= MAX_OVER_CAP:
                continue
            over_cap += 1
        jobs.append((job, rng.random() < NEW_CONNECTION_FRACTION))
    return jobs


class Client:
    """One worker's connections: a keep-alive one reused until the server closes it, and fresh ones."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.kept: http.client.HTTPConnection | None = None
        self.stale_retries = 0

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    @staticmethod
    def _exchange(
        connection: http.client.HTTPConnection, job: Job
    ) -> tuple[int, dict[str, str], bytes, bool]:
        connection.putrequest(job.method, job.path.replace(" ", "%20"), skip_accept_encoding=True)
        for key, value in job.headers.items():
            connection.putheader(key, value)
        connection.putheader("Content-Length", str(len(job.body)))
        connection.endheaders(job.body)
        response = connection.getresponse()
        body = response.read()
        headers = {key.lower(): value for key, value in response.getheaders()}
        return response.status, headers, body, response.will_close

    def send(self, job: Job, new_connection: bool) -> Outcome:
        started = time.perf_counter()
        if new_connection:
            connection = self._connect()
            try:
                status, headers, body, _ = self._exchange(connection, job)
            finally:
                connection.close()
        else:
            if self.kept is None:
                self.kept = self._connect()
            try:
                status, headers, body, closing = self._exchange(self.kept, job)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed the idle keep-alive connection before this request reached it:
                # what any HTTP client retries once, on a new connection.
                self.stale_retries += 1
                self.kept.close()
                self.kept = self._connect()
                status, headers, body, closing = self._exchange(self.kept, job)
            if closing:
                self.kept.close()
                self.kept = None
        seconds = time.perf_counter() - started
        return Outcome(job, status, started, seconds, new_connection, job.check(status, headers, body))

    def close(self) -> None:
        if self.kept is not None:
            self.kept.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] if ordered else 0.0


def latency_figures(outcomes: list[Outcome]) -> dict[str, float | int]:
    milliseconds = [o.seconds * 1000 for o in outcomes]
    return {
        "count": len(milliseconds),
        "p50_ms": round(percentile(milliseconds, 0.50), 3),
        "p99_ms": round(percentile(milliseconds, 0.99), 3),
        "max_ms": round(max(milliseconds, default=0.0), 3),
    }


@dataclass
class Reload:
    """Unload and load iris once, when half the requests are done, while the others keep coming."""

    url: tuple[str, int]
    at: int
    statuses: dict[str, int] = field(default_factory=dict)
    done_at: int | None = None
    # perf_counter() when the unload was sent and when the load was answered.
    window: tuple[float, float] = (0.0, 0.0)

    def run(self, progress: Callable[[], int], finished: threading.Event) -> None:
        while progress() < self.at and not finished.is_set():
            time.sleep(0.005)
        began = time.perf_counter()
        for action in ("unload", "load"):
            connection = http.client.HTTPConnection(*self.url, timeout=30)
            connection.request("POST", f"/v2/repository/models/iris/{action}", body=b"")
            response = connection.getresponse()
            response.read()
            self.statuses[action] = response.status
            connection.close()
        self.done_at = progress()
        self.window = (began, time.perf_counter())


def run_phase(server: RunningServer, jobs: list[tuple[Job, bool]], reload: Reload | None) -> list[Outcome]:
    host, port = _host_port(server)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    next_index = iter(range(len(jobs)))
    deadline = time.monotonic() + DEADLINE_SECONDS
    finished = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        client = Client(host, port)
        try:
            while time.monotonic() < deadline:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                job, new_connection = jobs[index]
                outcome = client.send(job, new_connection)
                with lock:
                    outcomes.append(outcome)
        except BaseException as error:
            errors.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, name=f"load-{n}") for n in range(CONCURRENCY)]
    if reload is not None:
        threads.append(threading.Thread(target=reload.run, args=(lambda: len(outcomes), finished)))
    for thread in threads:
        thread.start()
    for thread in threads[:CONCURRENCY]:
        thread.join()
    finished.set()
    for thread in threads[CONCURRENCY:]:
        thread.join()
    assert not errors, errors
    return outcomes


@pytest.fixture(scope="module")
def server(populated_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    logs = tmp_path_factory.mktemp("load-logs")
    with running_server(["--store", str(populated_store), "--preload", "iris,add_sub"], logs) as running:
        yield running


def test_mixed_load_with_a_reload(
    server: RunningServer, populated_store: Path, iris_model: tuple[bytes, list[str]]
) -> None:
    reference = Reference(populated_store, MODELS)
    good = good_jobs(reference, tuple(iris_model[1]), np.random.default_rng(SEED))
    bad = [bad_job(case) for case in BAD_REQUESTS]
    rng = random.Random(SEED)
    pid = server.process.pid

    run_phase(server, plan(good, bad, WARMUP, rng), None)
    rss_before = rss_kib(pid)
    jobs = plan(good, bad, TOTAL, rng)
    reload = Reload(_host_port(server), TOTAL // 2)
    started = time.perf_counter()
    outcomes = run_phase(server, jobs, reload)
    elapsed = time.perf_counter() - started
    rss_after = rss_kib(pid)

    wrong = [o for o in outcomes if o.problem is not None]
    good_5xx = [o for o in outcomes if o.job.good and o.status >= 500]
    statuses = Counter(str(o.status) for o in outcomes)
    figures = {
        "requests": {
            "planned": len(jobs),
            "completed": len(outcomes),
            "good": sum(o.job.good for o in outcomes),
            "bad": sum(not o.job.good for o in outcomes),
            "new_connection": sum(o.new_connection for o in outcomes),
            "keep_alive": sum(not o.new_connection for o in outcomes),
            "by_status": dict(sorted(statuses.items())),
            "warmup": WARMUP,
        },
        "concurrency": CONCURRENCY,
        "wrong_answers": len(wrong),
        "wrong_examples": [f"{o.job.label}: {o.problem}" for o in wrong[:10]],
        "good_5xx": len(good_5xx),
        "reload": {
            "statuses": reload.statuses,
            "at_request": reload.at,
            "done_at_request": reload.done_at,
            "took_ms": round((reload.window[1] - reload.window[0]) * 1000, 1),
        },
        "duration_s": round(elapsed, 3),
        "throughput_rps": round(len(outcomes) / elapsed, 1) if elapsed else 0.0,
        "latency": {
            "all": latency_figures(outcomes),
            "good": latency_figures([o for o in outcomes if o.job.good]),
            "bad": latency_figures([o for o in outcomes if not o.job.good]),
            "keep_alive": latency_figures([o for o in outcomes if not o.new_connection]),
            "new_connection": latency_figures([o for o in outcomes if o.new_connection]),
        },
        # Each as: label, connection, latency, and when it started relative to the reload's unload.
        "slowest": [
            f"{o.job.label} {'new' if o.new_connection else 'kept'} {o.seconds * 1000:.1f} ms, started "
            f"{(o.started - reload.window[0]) * 1000:+.0f} ms from the reload"
            for o in sorted(outcomes, key=lambda o: -o.seconds)[:10]
        ],
        "rss_kib": {
            "before": rss_before,
            "after": rss_after,
            "growth": rss_after - rss_before,
            "bound": RSS_GROWTH_BOUND_KIB,
        },
    }
    write_figures("load", figures)

    assert outcomes, "no request completed"
    assert not wrong, figures["wrong_examples"]
    assert not good_5xx
    assert reload.statuses == {"unload": 200, "load": 200}, reload.statuses
    assert rss_after - rss_before < RSS_GROWTH_BOUND_KIB, figures["rss_kib"]


def _host_port(server: RunningServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)
