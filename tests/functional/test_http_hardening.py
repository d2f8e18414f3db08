"""``modelship serve`` against hostile HTTP, as a real process on 127.0.0.1 spoken to over raw sockets.

One test per defect of the security probe (issue "Reliability and security", items 8-12): request
smuggling through malformed header lines and duplicate Transfer-Encoding, slow and oversized heads,
no connection cap, a listen backlog of 5, running out of file descriptors, a Content-Length of
thousands of digits, SIGTERM during an onnxruntime run, and tracebacks for connection resets. No timing
is asserted: time limits here are upper bounds on waiting.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import orjson
import pytest
from modelship.core.repository import ModelRepository
from modelship.core.service import InferenceService
from modelship.doors import local_http
from modelship.doors.local_http import DEFAULT_LIMITS, LocalServer, is_loopback

from tests.support.hostile_models import counting_loop
from tests.support.http_client import host_port, raw_exchange, read_until_closed, reset, statuses, trickle
from tests.support.models import write_model
from tests.support.processes import (
    REPO_ROOT,
    RunningServer,
    free_port,
    modelship_command,
    running_server,
    stop,
)

IRIS_INFER = b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\n"
# What a smuggler hides where the server should see a body: served, it would be a second response.
SMUGGLED = b"GET /v2/health/live?smuggled=yes HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def server(populated_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    logs = tmp_path_factory.mktemp("logs")
    with running_server(["--store", str(populated_store), "--preload", "iris"], logs) as running:
        yield running


def address(server: RunningServer) -> tuple[str, int]:
    return host_port(server.url)


def assert_still_serving(server: RunningServer) -> None:
    with urllib.request.urlopen(f"{server.url}/v2/health/live", timeout=10) as response:
        assert response.status == 200


def assert_json_error(reply: bytes, status: int) -> str:
    assert statuses(reply) == [status], reply[:500]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head and b"Connection: close" in head
    error: str = orjson.loads(body)["error"]
    assert "Traceback" not in error and "/" not in error.replace("HTTP/1.", "")
    return error


def wait_for_log(server: RunningServer, marker: str, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while marker not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.log()


# Item 8: a malformed header line must end the connection with a 400, never the header block.
MALFORMED_HEADER_LINES = {
    "no-colon": b"X-Broken header line",
    "space-before-colon": b"X-Broken : 1",
    "non-utf8-name": b"X-\xff\xfe: 1",
    "folded-line": b" folded continuation",
    "bare-lf": b"X-One: 1\nX-Two: 2",
    "control-character": b"X-Bell: \x07",
}


@pytest.mark.parametrize("line", MALFORMED_HEADER_LINES.values(), ids=MALFORMED_HEADER_LINES.keys())
def test_malformed_header_line_is_refused_not_smuggled(server: RunningServer, line: bytes) -> None:
    request = (
        IRIS_INFER + line + b"\r\nContent-Length: " + str(len(SMUGGLED)).encode() + b"\r\n\r\n" + SMUGGLED
    )
    reply = raw_exchange(address(server), request)
    assert "head" in assert_json_error(reply, 400)
    assert "smuggled=yes" not in server.log()
    assert_still_serving(server)


@pytest.mark.parametrize(
    ("codings", "status"),
    [((b"identity", b"chunked"), 411), ((b"chunked", b"identity"), 411), ((b"gzip",), 501)],
    ids=["identity-then-chunked", "chunked-then-identity", "gzip-beside-content-length"],
)
def test_transfer_encodings_are_refused_not_smuggled(
    server: RunningServer, codings: tuple[bytes, ...], status: int
) -> None:
    chunked_body = b"0\r\n\r\n"
    request = (
        IRIS_INFER
        + b"".join(b"Transfer-Encoding: " + coding + b"\r\n" for coding in codings)
        + b"Content-Length: "
        + str(len(chunked_body)).encode()
        + b"\r\n\r\n"
        + chunked_body
        + SMUGGLED
    )
    reply = raw_exchange(address(server), request)
    assert "Content-Length" in assert_json_error(reply, status)
    assert "smuggled=yes" not in server.log()


# Item 9: deadlines for the head and the body, limits on the head, a connection cap, a real backlog.
def test_slow_headers_and_bodies_are_cut_off(server: RunningServer) -> None:
    """One byte a second never trips a per-read timeout; the deadlines cut both connections off."""
    results: dict[str, bytes] = {}
    slow_head = (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a")
    slow_body = (IRIS_INFER + b"Content-Length: 1000\r\n\r\n", b" ")
    upper_bound = DEFAULT_LIMITS.body_seconds + 30

    def run(name: str, start: bytes, byte: bytes) -> None:
        results[name], _ = trickle(address(server), start, byte, every=1.0, give_up_after=upper_bound)

    threads = [
        threading.Thread(target=run, args=("head", *slow_head)),
        threading.Thread(target=run, args=("body", *slow_body)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(upper_bound + 30)
    assert "did not arrive" in assert_json_error(results["head"], 408)
    assert "did not arrive" in assert_json_error(results["body"], 408)
    assert_still_serving(server)


@pytest.mark.parametrize(
    "headers",
    [
        [b"X-Big-%d: %s" % (index, b"v" * 8000) for index in range(40)],
        [b"X-Line: " + b"v" * 20_000],
        [b"X-Many-%d: 1" % index for index in range(DEFAULT_LIMITS.max_headers + 1)],
    ],
    ids=["40-lines-of-8-KB", "one-20-KB-line", "too-many-lines"],
)
def test_oversized_heads_are_refused(server: RunningServer, headers: list[bytes]) -> None:
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"\r\n".join(headers) + b"\r\n\r\n"
    assert "header" in assert_json_error(raw_exchange(address(server), request), 431)
    assert_still_serving(server)


def test_connections_past_the_cap_get_503(server: RunningServer) -> None:
    with ExitStack() as stack:
        for _ in range(DEFAULT_LIMITS.max_connections):
            stack.enter_context(socket.create_connection(address(server), timeout=10))
        reply = raw_exchange(address(server), b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "connections open" in assert_json_error(reply, 503)
    # The held connections are gone: the server serves again once it has seen them close.
    deadline = time.monotonic() + 30
    while statuses(raw_exchange(address(server), b"GET /v2/health/live HTTP/1.0\r\n\r\n")) != [200]:
        assert time.monotonic() < deadline, "the server did not recover after the connections closed"
        time.sleep(0.1)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_listen_backlog_is_a_real_one(server: RunningServer) -> None:
    _, port = address(server)
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    # For a listening socket, ss shows the backlog as Send-Q: State Recv-Q Send-Q Local Peer.
    assert int(listing[2]) >= 128


@contextmanager
def server_with_descriptor_limit(store: Path, log_dir: Path, limit: int) -> Iterator[RunningServer]:
    """``modelship serve`` with RLIMIT_NOFILE lowered to ``limit`` (running_server cannot set one)."""
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    with log_path.open("w") as log:
        process = subprocess.Popen(
            modelship_command("serve", "--host", "127.0.0.1", "--port", str(port), "--store", str(store)),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "MODELSHIP_PRELOAD": "iris"},
            cwd=REPO_ROOT,
            text=True,
            preexec_fn=lower_limit,
        )
    running = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if statuses(raw_exchange(address(running), b"GET /v2/health/ready HTTP/1.0\r\n\r\n")) == [
                    200
                ]:
                    break
            except OSError:
                pass  # not listening yet
            assert process.poll() is None and time.monotonic() < deadline, running.log()
            time.sleep(0.1)
        yield running
    finally:
        stop(process, timeout=30)


def test_running_out_of_file_descriptors_is_reported_and_survived(
    populated_store: Path, tmp_path: Path
) -> None:
    limit = 128
    with server_with_descriptor_limit(populated_store, tmp_path, limit) as running:
        held: list[socket.socket] = []
        try:
            # Far more connections than descriptors: served, refused with 503, or left in the backlog.
            for _ in range(limit + 64):
                held.append(socket.create_connection(address(running), timeout=10))
            log = wait_for_log(running, "cannot accept connections")
            assert "cannot accept connections" in log or "connections open" in log, log
        finally:
            for connection in held:
                connection.close()
        deadline = time.monotonic() + 30
        while statuses(raw_exchange(address(running), b"GET /v2/health/live HTTP/1.0\r\n\r\n")) != [200]:
            assert time.monotonic() < deadline, "the server did not recover after the connections closed"
            time.sleep(0.1)
        assert "Traceback" not in running.log()


# Item 10: a Content-Length Python cannot even parse into an int is a 400 like any other bad one.
@pytest.mark.parametrize(
    "value", [b"9" * 5000, b"0" * 5000 + b"2", b"1" * 20], ids=["5000-digits", "zeros", "20-digits"]
)
def test_absurd_content_length_is_400(server: RunningServer, value: bytes) -> None:
    reply = raw_exchange(address(server), IRIS_INFER + b"Content-Length: " + value + b"\r\n\r\n{}")
    assert "Content-Length" in assert_json_error(reply, 400)
    assert_still_serving(server)
    assert "Traceback" not in server.log()


# Item 11: SIGTERM while a request is inside onnxruntime.
def test_sigterm_during_an_onnxruntime_run_exits_zero(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ModelRepository.open(str(store)).push(write_model(tmp_path, "endless", counting_loop()), "endless")
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]},
                {"name": "n", "shape": [1], "datatype": "INT64", "data": [10**15]},
            ]
        }
    )
    request = b"POST /v2/models/endless/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    # The core's own run deadline must not end the run first.
    environment = {"MODELSHIP_INFERENCE_TIMEOUT_SECONDS": "3600"}
    with (
        running_server(["--store", str(store), "--preload", "endless"], tmp_path, environment) as running,
        socket.create_connection(address(running), timeout=60) as connection,
    ):
        connection.sendall(request)
        time.sleep(2)  # long enough for the request to be inside onnxruntime
        running.process.send_signal(signal.SIGTERM)
        reply = read_until_closed(connection)
        assert running.process.wait(timeout=60) == 0, running.log()
    log = running.log()
    assert "shutting down" in log
    assert "Traceback" not in log and "terminate called" not in log
    if hasattr(InferenceService, "cancel_runs"):
        # The run was cancelled after the grace period, and its client was told.
        assert statuses(reply) == [503], reply[:500]
    else:
        assert statuses(reply) in ([], [503])


# Item 12: a client that resets its connection is not an error of the server's.
@pytest.mark.parametrize(
    "partial",
    [b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n", IRIS_INFER + b'Content-Length: 100\r\n\r\n{"inp'],
    ids=["mid-head", "mid-body"],
)
def test_connection_reset_logs_no_traceback(server: RunningServer, partial: bytes) -> None:
    for _ in range(5):
        connection = socket.create_connection(address(server), timeout=10)
        connection.sendall(partial)
        time.sleep(0.2)  # let the server start reading, so the reset reaches a blocked read
        reset(connection)
    marker = f"after-reset-{partial[:4].decode().strip()}"
    raw_exchange(address(server), f"GET /v2/health/live?{marker} HTTP/1.0\r\n\r\n".encode())
    log = wait_for_log(server, marker)
    assert marker in log
    assert "Traceback" not in log and "Exception occurred" not in log


def test_warns_when_not_bound_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(is_loopback(host) for host in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"])
    assert not any(is_loopback(host) for host in ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "fe80::1"])

    def handler(event: dict[str, object], context: object) -> dict[str, object]:
        return {"statusCode": 200, "body": ""}

    # A handler of our own: other tests may have configured this logger not to propagate.
    records: list[str] = []
    collector = logging.Handler(logging.WARNING)
    collector.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    access = logging.getLogger("modelship.http")
    monkeypatch.setattr(access, "level", logging.WARNING)
    access.addHandler(collector)
    try:
        LocalServer(("127.0.0.1", 0), handler, 1024).server_close()
        assert not any("not a loopback address" in record for record in records)
        # Binding a public address is not done here: the check is what decides, so pretend it failed.
        monkeypatch.setattr(local_http, "is_loopback", lambda address: False)
        LocalServer(("127.0.0.1", 0), handler, 1024).server_close()
        assert any("not a loopback address" in record for record in records)
    finally:
        access.removeHandler(collector)


# Behaviour the rewrite keeps: pipelining, 100-continue, HTTP versions and request lines.
def test_pipelined_requests_are_answered_in_order(server: RunningServer) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    )
    one = IRIS_INFER + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    reply = raw_exchange(
        address(server), one + b"\r\n" + one + b"GET /v2/health/live HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    assert statuses(reply) == [200, 200, 200]


def test_expect_100_continue_then_the_body(server: RunningServer) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    )
    with socket.create_connection(address(server), timeout=10) as connection:
        connection.sendall(
            IRIS_INFER
            + b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert connection.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        connection.sendall(body)
        assert statuses(read_until_closed(connection)) == [200]


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"GET /v2/health/live HTTP/2.0", 505),
        (b"GET /v2/health/live", 400),
        (b"GET  /v2/health/live HTTP/1.1", 400),
        (b"GET v2/health/live HTTP/1.1", 400),
        (b"BREW /v2/health/live HTTP/1.1", 501),
    ],
    ids=["http-2", "no-version", "two-spaces", "relative-target", "unknown-method"],
)
def test_bad_request_lines(server: RunningServer, request_line: bytes, status: int) -> None:
    assert_json_error(raw_exchange(address(server), request_line + b"\r\nHost: x\r\n\r\n"), status)
