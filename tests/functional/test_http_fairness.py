"""The local door's turns: requests run the handler one at a time, first come first served, and a slow
one (a slow model, a client that does not read its answer) stops holding the others up after
``Limits.turn_seconds``. In-process servers with handlers that block on events; no timing is asserted:
every time limit here is an upper bound on waiting for something that must happen.

Also: the head parser's fast path agrees with the line-by-line one on every head."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modelship.doors import local_http
from modelship.doors.local_http import Limits, LocalServer, new_request_id, serve_forever

from tests.support.http_client import read_until_closed, statuses

WAIT = 30.0  # an upper bound on waiting, never a measurement

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def answer(body: bytes = b"{}") -> dict[str, Any]:
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": body.decode()}


@contextmanager
def running(
    handler: Handler, limits: Limits, on_shutdown: Callable[[], object] | None = None
) -> Iterator[LocalServer]:
    server = LocalServer(("127.0.0.1", 0), handler, 1 << 20, limits)
    abandoned: list[int] = []
    thread = threading.Thread(
        target=lambda: abandoned.append(serve_forever(server, on_shutdown, grace_seconds=WAIT)), daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(WAIT)
        assert not thread.is_alive()


def request(name: str) -> bytes:
    return f"GET /v2/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def connect(server: LocalServer) -> socket.socket:
    connection = socket.create_connection(server.server_address, timeout=WAIT)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def read_response(connection: socket.socket) -> tuple[int, bytes]:
    """One response (status, body) framed by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk
        body += chunk
    return statuses(data)[0], body


def waiting(server: LocalServer, count: int) -> Callable[[], bool]:
    """True once ``count`` requests have been read and wait for their turn."""

    def check() -> bool:
        with server._turns._lock:
            return len(server._turns._waiters) == count

    return check


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.005)


class Recorder:
    """A handler that records the order of its calls and how many ran at once; ``/v2/hold`` blocks
    until ``release`` is set."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.holding = threading.Event()

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        name = event["path"].removeprefix("/v2/")
        with self.lock:
            self.calls.append(name)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if name.startswith("hold"):
                self.holding.set()
                assert self.release.wait(WAIT)
            return answer(orjson.dumps({"name": name, "id": context.aws_request_id}))
        finally:
            with self.lock:
                self.running -= 1


def test_requests_run_one_at_a_time_in_arrival_order() -> None:
    recorder = Recorder()
    with running(recorder, Limits(turn_seconds=3600)) as server:
        first = connect(server)
        first.sendall(request("hold"))
        assert recorder.holding.wait(WAIT)
        others = []
        for index in range(8):
            connection = connect(server)
            connection.sendall(request(f"r{index}"))
            # Read by the server and waiting for its turn before the next one is sent.
            wait_until(waiting(server, index + 1))
            others.append(connection)
        assert recorder.calls == ["hold"]
        recorder.release.set()
        replies = [read_response(connection) for connection in [first, *others]]
        assert [orjson.loads(body)["name"] for _, body in replies] == ["hold"] + [f"r{i}" for i in range(8)]
        assert all(status == 200 for status, _ in replies)
        assert recorder.calls == ["hold"] + [f"r{i}" for i in range(8)]
        assert recorder.most_at_once == 1
        # Every request had a request id of its own.
        assert len({orjson.loads(body)["id"] for _, body in replies}) == 9
        for connection in [first, *others]:
            connection.close()


def test_keep_alive_clients_take_turns_without_losing_requests() -> None:
    recorder = Recorder()
    with running(recorder, Limits(turn_seconds=3600)) as server:
        connections = [connect(server) for _ in range(4)]
        for round_index in range(50):
            for index, connection in enumerate(connections):
                connection.sendall(request(f"c{index}-{round_index}"))
            for index, connection in enumerate(connections):
                status, body = read_response(connection)
                assert status == 200 and orjson.loads(body)["name"] == f"c{index}-{round_index}"
        assert recorder.most_at_once == 1 and len(recorder.calls) == 200
        for connection in connections:
            connection.close()


def test_a_slow_request_stops_holding_the_others_up() -> None:
    recorder = Recorder()
    with running(recorder, Limits(turn_seconds=0.05)) as server:
        slow = connect(server)
        slow.sendall(request("hold"))
        assert recorder.holding.wait(WAIT)
        # Still held, and yet the others are answered, each after the turn ran long.
        for index in range(3):
            with connect(server) as connection:
                connection.sendall(request(f"quick{index}"))
                status, body = read_response(connection)
                assert status == 200 and orjson.loads(body)["name"] == f"quick{index}"
        assert not recorder.release.is_set()
        recorder.release.set()
        status, body = read_response(slow)
        assert status == 200 and orjson.loads(body)["name"] == "hold"
        slow.close()


def test_a_client_that_does_not_read_gives_up_its_turn() -> None:
    # An answer far larger than the socket buffers: its client reads none of it, so sending blocks.
    large = b'"' + b"a" * (16 << 20) + b'"'

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return answer(large if event["path"] == "/v2/large" else b"{}")

    with running(handler, Limits(turn_seconds=3600, send_seconds=WAIT)) as server:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        stalled.settimeout(WAIT)
        stalled.connect(server.server_address)
        stalled.sendall(request("large"))
        # With the turn held for an hour, this is answered only because the stalled send gave it up.
        with connect(server) as connection:
            connection.sendall(request("small"))
            assert read_response(connection) == (200, b"{}")
        status, body = read_response(stalled)
        assert status == 200 and body == large
        stalled.close()


def test_shutdown_answers_the_requests_waiting_for_their_turn() -> None:
    recorder = Recorder()
    with running(recorder, Limits(turn_seconds=3600), on_shutdown=recorder.release.set) as server:
        first = connect(server)
        first.sendall(request("hold"))
        assert recorder.holding.wait(WAIT)
        others = []
        for index in range(3):
            connection = connect(server)
            connection.sendall(request(f"r{index}"))
            wait_until(waiting(server, index + 1))
            others.append(connection)
        server.shutdown()
        server.shutdown()  # the second cuts the grace period short: on_shutdown releases the handler
        for connection in [first, *others]:
            reply = read_until_closed(connection)
            assert statuses(reply) == [200] and b"Connection: close" in reply
            connection.close()
        assert recorder.calls == ["hold", "r0", "r1", "r2"]


def test_turns_are_handed_over_in_order_and_give_is_idempotent() -> None:
    turns = local_http._Turns(3600)
    order: list[int] = []
    first = turns.take()
    threads = []
    for index in range(5):

        def wait_for_turn(index: int = index) -> None:
            gate = turns.take()
            order.append(index)
            turns.give(gate)
            turns.give(gate)

        threads.append(threading.Thread(target=wait_for_turn))
        threads[-1].start()
        wait_until(lambda: len(turns._waiters) == len(threads))
    turns.give(first)
    turns.give(first)
    for thread in threads:
        thread.join(WAIT)
    assert order == [0, 1, 2, 3, 4]
    assert turns._owner is None and not turns._waiters


def test_an_overrun_turn_passes_to_the_next_and_its_late_give_hands_over_nothing() -> None:
    turns = local_http._Turns(0.01)
    slow = turns.take()
    taken = turns.take()  # after the slow turn ran long
    turns._seconds = 3600  # from here on, no turn runs long
    third: list[object] = []
    waiter = threading.Thread(target=lambda: third.append(turns.take()))
    waiter.start()
    wait_until(lambda: len(turns._waiters) == 1)
    turns.give(slow)  # no longer its turn: the waiter still waits for ``taken``'s
    assert turns._owner is taken and not third and len(turns._waiters) == 1
    turns.give(taken)
    waiter.join(WAIT)
    assert len(third) == 1


def test_a_turn_handed_over_then_overrun_before_its_thread_woke_is_still_taken() -> None:
    # Under load the thread handed a turn may wake after the next in line found the turn overrun and
    # took it over: it must still go ahead (it was given the turn), never wait forever or crash.
    turns = local_http._Turns(0.01)
    first = turns.take()
    handed, handed_wait = turns._join()
    next_in_line, next_wait = turns._join()
    assert handed_wait is not None and next_wait is not None
    turns.give(first)  # the turn is handed to ``handed``, whose thread has not woken yet
    time.sleep(0.02)  # and runs long
    assert turns._await(next_in_line, 0.0) is next_in_line  # the next takes it over
    assert turns._await(handed, 3600) is handed  # and the late one still goes ahead, at once
    turns.give(handed)
    turns.give(next_in_line)
    assert turns._owner is None and not turns._waiters


def test_request_ids_are_version_4_uuids() -> None:
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for value in list(ids)[:1000]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value


# ------------------------------------------------------------------------- the head parser's two paths
_PIECES = [
    "GET",
    "POST",
    "BREW",
    "G T",
    " ",
    "/",
    "//",
    "/v2/models/x/infer",
    "/a?b=c",
    "*",
    "http://h/p",
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/1.2",
    "HTTP/2.0",
    "\r\n",
    "\n",
    "\r",
    ":",
    " : ",
    "Host",
    "Content-Length",
    "content-length",
    "Transfer-Encoding",
    "Connection",
    "close",
    "keep-alive",
    "Expect",
    "100-continue",
    "chunked",
    "0",
    "12",
    "012",
    "9" * 25,
    "\t",
    "\x00",
    "\x7f",
    "\x1b",
    "\xe9",
    "\xff",
    "X-A",
    "a b",
]


def _outcome(parse: Callable[[], Any]) -> object:
    try:
        return repr(parse())
    except local_http._Refusal as refusal:
        return refusal.status


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "PUT", "BREW"]),
    st.sampled_from(["/", "/v2/models/x/infer", "//x", "*", "http://h/p", "x"]),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.9", "HTTP/2.0"]),
    st.lists(st.lists(st.sampled_from(_PIECES), max_size=5).map("".join), max_size=6),
    st.integers(1, 8),
)
def test_the_fast_head_parse_agrees_with_the_line_by_line_one(
    method: str, target: str, version: str, lines: list[str], max_headers: int
) -> None:
    head = "\r\n".join([f"{method} {target} {version}", *lines]).encode("latin-1")
    limits = Limits(max_headers=max_headers)
    assert _outcome(lambda: local_http._parse_head(head, limits)) == _outcome(
        lambda: local_http._parse_head_lines(head, limits)
    )


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1",
        b"POST /v2/models/x/infer HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nContent-Type: text/plain",
        b"GET /x HTTP/1.0\r\nConnection: keep-alive",
        b"GET /x HTTP/1.1\r\nX-A:  spaced value \t",
        b"GET /x HTTP/1.1\r\nX-A: caf\xe9",
        b"GET //x//y HTTP/1.1\r\nHost: h",
    ],
)
def test_the_fast_head_parse_agrees_on_well_formed_heads(head: bytes) -> None:
    assert local_http._FAST_HEAD.fullmatch(head.decode("latin-1")) is not None
    assert repr(local_http._parse_head(head)) == repr(
        local_http._parse_head_lines(head, local_http.DEFAULT_LIMITS)
    )
