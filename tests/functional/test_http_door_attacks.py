"""``modelship serve`` attacked as an outsider would, over raw sockets to a real process on 127.0.0.1.

After the local door's rework for speed (a regex fast path for request heads, non-blocking sockets with
poll, FIFO turns at the handler, a yield between keep-alive requests): malformed and ambiguous heads,
framing and smuggling, pipelining and response attribution, slow, stuck and vanishing clients, a slow
model holding its turn, and the connection cap. Every answer must be a well-formed HTTP/1.1 response
(a JSON ``{"error": ...}`` body for 4xx and 5xx, no traceback or machine path), the server must keep
serving afterwards (``/v2/health/live`` and an iris inference), and no answer may go to another request.

What tests/functional/test_http_hardening.py and test_local_server.py cover already is not repeated.
No timing is asserted: every time limit here is an upper bound that proves "no hang".
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from modelship.core.repository import ModelRepository
from modelship.doors.local_http import DEFAULT_LIMITS

from tests.support.hostile_models import counting_loop, output_amplifier
from tests.support.http_client import host_port, raw_exchange, read_until_closed, reset, statuses
from tests.support.models import write_model
from tests.support.processes import REPO_ROOT, RunningServer, running_server

pytestmark = pytest.mark.functional

# The core's run deadline: long enough that a slow run is still running while fast requests pass it.
INFERENCE_TIMEOUT_SECONDS = 5
WAIT = 10.0  # an upper bound on waiting for an answer, never a measurement
MAX_HEAD_BYTES = DEFAULT_LIMITS.max_head_bytes
IRIS_SAMPLE = [5.1, 3.5, 1.4, 0.2]  # setosa: label 0

_RESPONSE_HEAD: re.Pattern[bytes] = re.compile(
    rb"HTTP/1\.1 ([1-5][0-9]{2}) [^\r\n]*((?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [^\r\n]*)*)"
)
_CONTENT_LENGTH: re.Pattern[bytes] = re.compile(rb"\r\ncontent-length: ([0-9]+)", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def store(iris_model: tuple[bytes, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris, an endless model (``counting_loop``) and one whose answer is as large as asked."""
    root = tmp_path_factory.mktemp("door-attacks-store")
    scratch = tmp_path_factory.mktemp("door-attacks-models")
    repository = ModelRepository.open(str(root))
    data, labels = iris_model
    repository.push(write_model(scratch, "iris", data), "iris", labels=labels)
    repository.push(write_model(scratch, "endless", counting_loop()), "endless")
    repository.push(write_model(scratch, "amplifier", output_amplifier()), "amplifier")
    return root


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    logs = tmp_path_factory.mktemp("door-attacks-logs")
    environment = {"MODELSHIP_INFERENCE_TIMEOUT_SECONDS": str(INFERENCE_TIMEOUT_SECONDS)}
    with running_server(
        ["--store", str(store), "--preload", "iris,endless,amplifier"], logs, environment
    ) as running:
        yield running


@pytest.fixture
def log_start(server: RunningServer) -> int:
    """Where this test's part of the server log starts (the server is shared by the whole module)."""
    return len(server.log())


# ------------------------------------------------------------------------------------------------ helpers
def address(server: RunningServer) -> tuple[str, int]:
    return host_port(server.url)


def new_log(server: RunningServer, start: int) -> str:
    return server.log()[start:]


def wait_for_log(server: RunningServer, start: int, marker: str, seconds: float = WAIT) -> str:
    deadline = time.monotonic() + seconds
    while marker not in new_log(server, start) and time.monotonic() < deadline:
        time.sleep(0.05)
    return new_log(server, start)


def infer_body(request_id: str, data: list[float] | None = None) -> bytes:
    return orjson.dumps(
        {
            "id": request_id,
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": data or IRIS_SAMPLE}],
        }
    )


def infer_request(
    request_id: str, extra: bytes = b"", model: str = "iris", body: bytes | None = None
) -> bytes:
    payload = infer_body(request_id) if body is None else body
    return b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (
        model.encode(),
        extra,
        len(payload),
        payload,
    )


def live_request(marker: str, extra: bytes = b"") -> bytes:
    return f"GET /v2/health/live?{marker} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


def endless_request() -> bytes:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]},
                {"name": "n", "shape": [1], "datatype": "INT64", "data": [10**15]},
            ]
        }
    )
    return infer_request("endless", model="endless", body=body)


def amplify_body(request_id: str) -> bytes:
    """An answer of a million zeros, about 4 MB of JSON."""
    return orjson.dumps(
        {"id": request_id, "inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [1_000_000]}]}
    )


def responses(reply: bytes) -> list[tuple[int, bytes, bytes]]:
    """Every response in ``reply`` as (status, head, body), framed by Content-Length; asserts that each
    is well-formed HTTP/1.1 and that nothing but responses was sent."""
    found: list[tuple[int, bytes, bytes]] = []
    position = 0
    while position < len(reply):
        end = reply.find(b"\r\n\r\n", position)
        assert end >= 0, f"a response head without its end: {reply[position : position + 300]!r}"
        head = reply[position:end]
        match = _RESPONSE_HEAD.fullmatch(head)
        assert match is not None, f"a malformed response head: {head[:300]!r}"
        status = int(match.group(1))
        length = _CONTENT_LENGTH.search(head)
        if status >= 200:
            assert length is not None, f"a response without Content-Length: {head!r}"
        size = int(length.group(1)) if length else 0
        body = reply[end + 4 : end + 4 + size]
        assert len(body) == size, f"a response body cut short: {head!r}"
        found.append((status, head, body))
        position = end + 4 + size
    return found


def final(reply: bytes) -> list[tuple[int, bytes, bytes]]:
    """The final responses (no 100 Continue)."""
    return [response for response in responses(reply) if response[0] >= 200]


def assert_clean_error(body: bytes) -> str:
    """A JSON ``{"error": "..."}`` body with no traceback and no path of the machine."""
    document = orjson.loads(body)
    assert isinstance(document, dict) and isinstance(document.get("error"), str), body[:300]
    text = body.decode("utf-8", "replace")
    for leak in ("Traceback", 'File "', ".py", str(REPO_ROOT), tempfile.gettempdir() + "/"):
        assert leak not in text, text
    return str(document["error"])


def assert_refused(reply: bytes, status: int) -> str:
    """The door's refusal: one JSON error response that closes the connection, nothing after it."""
    answered = responses(reply)
    assert [answer[0] for answer in answered] == [status], reply[:500]
    _, head, body = answered[0]
    assert b"\r\nContent-Type: application/json" in head and b"\r\nConnection: close" in head, head
    return assert_clean_error(body)


def assert_still_serving(server: RunningServer, start: int | None = None) -> None:
    """``/v2/health/live`` and an iris inference still answer; no traceback since ``start``."""
    assert statuses(raw_exchange(address(server), b"GET /v2/health/live HTTP/1.0\r\n\r\n", WAIT)) == [200]
    reply = raw_exchange(address(server), infer_request("still-serving", b"Connection: close\r\n"), WAIT)
    (answer,) = responses(reply)
    assert answer[0] == 200, reply[:500]
    assert orjson.loads(answer[2])["id"] == "still-serving"
    if start is not None:
        log = new_log(server, start)
        assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def read_responses(connection: socket.socket, count: int, seconds: float) -> bytes:
    """Read until ``count`` final responses arrived, the server closed, or ``seconds`` passed."""
    data = b""
    deadline = time.monotonic() + seconds
    while len([status for status in statuses(data) if status >= 200]) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([connection], [], [], remaining)
        if not readable:
            break
        try:
            chunk = connection.recv(1 << 20)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def has_data(connection: socket.socket) -> bool:
    readable, _, _ = select.select([connection], [], [], 0)
    return bool(readable)


def send_quietly(connection: socket.socket, data: bytes) -> None:
    """``sendall`` from a thread of its own; the server may close or the test may reset first."""
    with contextlib.suppress(OSError):
        connection.sendall(data)


def wait_until(condition: Callable[[], bool], seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def serves_again(server: RunningServer) -> bool:
    try:
        return statuses(raw_exchange(address(server), b"GET /v2/health/live HTTP/1.0\r\n\r\n", 2)) == [200]
    except OSError:
        return False


# ----------------------------------------------------------------------------- malformed, ambiguous heads
# Each head is refused with a JSON error and a closed connection; the request after it (in what would
# otherwise be its body or the next request) is never served.
REFUSED_HEADS: dict[str, tuple[bytes, int]] = {
    # Line folding and line endings.
    "obs-fold-content-length": (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 0", 400),
    "obs-fold-tab": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tfolded", 400),
    "obs-fold-transfer-encoding": (
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked",
        400,
    ),
    "bare-lf-request-line": (b"GET /v2/health/live HTTP/1.1\nHost: x", 400),
    "bare-lf-then-crlf": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\nX-A: 1", 400),
    "bare-cr-in-line": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\rX-A: 1", 400),
    "cr-before-crlf": (b"GET /v2/health/live HTTP/1.1\r\nX-A: 1\r", 400),
    "lf-before-request-line": (b"\nGET /v2/health/live HTTP/1.1\r\nHost: x", 400),
    # NUL, control and non-ASCII bytes.
    "nul-in-value": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-A: a\x00b", 400),
    "nul-in-name": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-\x00: 1", 400),
    "nul-in-target": (b"GET /v2/health\x00/live HTTP/1.1\r\nHost: x", 400),
    "del-in-value": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-A: 1\x7f", 400),
    "escape-in-value": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-A: \x1b[2J", 400),
    "utf8-in-name": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-\xc3\xa9: 1", 400),
    "utf8-in-target": (b"GET /v2/health/live\xc3\xa9 HTTP/1.1\r\nHost: x", 400),
    # Names with blanks before the colon, as smugglers send them.
    "space-before-colon-transfer-encoding": (
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked",
        400,
    ),
    "tab-before-colon-content-length": (
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length\t: 0",
        400,
    ),
    "space-before-name": (b"GET /v2/health/live HTTP/1.1\r\n Host: x", 400),
    # Content-Length that is not one plain number.
    "content-length-plus": (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: +0", 400),
    "content-length-minus": (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: -1", 400),
    "content-length-list": (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0", 400),
    "content-length-inner-space": (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 1 0", 400),
    "content-length-hex": (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 0x0", 400),
    "content-length-underscore": (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0", 400),
    "content-length-empty": (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length:", 400),
    "content-length-fullwidth": (
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: \xef\xbc\x90",
        400,
    ),
    "content-length-conflict-case": (
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\nCONTENT-LENGTH: 60",
        400,
    ),
    # Transfer-Encoding in any form, with or without Content-Length.
    "te-chunked-capitalised": (
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked",
        411,
    ),
    "te-chunked-upper-with-length": (
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: CHUNKED",
        411,
    ),
    "te-chunked-then-gzip": (
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip",
        411,
    ),
    "te-gzip-then-chunked-with-length": (
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 0",
        411,
    ),
    "te-tab-chunked": (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked", 411),
    "te-chunked-http-1-0": (b"POST /v2/health/live HTTP/1.0\r\nTransfer-Encoding: chunked", 411),
    "te-empty": (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:", 501),
    "te-identity": (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity", 501),
    # Request lines.
    "lower-case-method": (b"get /v2/health/live HTTP/1.1\r\nHost: x", 501),
    "trace-method": (b"TRACE /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Secret: s3cr3t", 501),
    "connect-authority-form": (b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x", 400),
    "http-0-9-version": (b"GET /v2/health/live HTTP/0.9", 505),
    "lower-case-version": (b"GET /v2/health/live http/1.1\r\nHost: x", 400),
    "space-after-version": (b"GET /v2/health/live HTTP/1.1 \r\nHost: x", 400),
    "tab-separator": (b"GET\t/v2/health/live HTTP/1.1\r\nHost: x", 400),
    "version-without-dot": (b"GET /v2/health/live HTTP/11\r\nHost: x", 400),
    "two-hosts": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nHost: y", 400),
}


@pytest.mark.parametrize(("head", "status"), REFUSED_HEADS.values(), ids=REFUSED_HEADS.keys())
def test_malformed_and_ambiguous_heads_are_refused_and_nothing_after_them_is_served(
    server: RunningServer, log_start: int, head: bytes, status: int
) -> None:
    marker = f"smuggled-{log_start}"
    smuggled = live_request(marker) + b"\r\n"
    # A chunked body (with an overflowing size, an extension and a trailer) and the smuggled request.
    chunked = b"ffffffffffffffffffff;ext=1\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n"
    reply = raw_exchange(address(server), head + b"\r\n\r\n" + chunked + smuggled, read_timeout=WAIT)
    assert_refused(reply, status)
    assert marker not in new_log(server, log_start)
    assert_still_serving(server, log_start)


# Odd but valid heads: answered, and framed by the Content-Length they state.
ACCEPTED_HEADS: dict[str, bytes] = {
    "leading-empty-lines": b"\r\n\r\n\r\nGET /v2/health/live HTTP/1.1\r\nHost: x",
    "absolute-form": b"GET http://example.com:8080/v2/health/live HTTP/1.1\r\nHost: x",
    "absolute-form-upper-scheme": b"GET HTTP://EXAMPLE.COM/v2/health/live HTTP/1.1\r\nHost: x",
    "double-slash-path": b"GET //v2/health/live HTTP/1.1\r\nHost: x",
    "http-1-9-is-1-1": b"GET /v2/health/live HTTP/1.9\r\nHost: x",
    "obs-text-value": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-A: caf\xe9 \xff\xfe",
    "blanks-around-values": b"GET /v2/health/live HTTP/1.1\r\nHost: \t x \t\r\nX-A:\t\t",
    "content-length-leading-zeros": b"GET /v2/health/live HTTP/1.1\r\nContent-Length: 00000000000000002",
    "content-length-padded": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: \t 2 \t",
    "content-length-equal-copies": b"GET /v2/health/live HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 02",
    "expect-lower-case-value": b"GET /v2/health/live HTTP/1.1\r\nExpect: 100-CONTINUE\r\nContent-Length: 2",
    "unknown-transfer-encoding-name": b"GET /v2/health/live HTTP/1.1\r\nTransfer_Encoding: chunked",
    "99-more-headers": b"GET /v2/health/live HTTP/1.1\r\nHost: x"
    + b"".join(b"\r\nX-%d: %d" % (index, index) for index in range(DEFAULT_LIMITS.max_headers - 1)),
}


@pytest.mark.parametrize("head", ACCEPTED_HEADS.values(), ids=ACCEPTED_HEADS.keys())
def test_odd_but_valid_heads_are_answered_and_framed_by_their_length(
    server: RunningServer, log_start: int, head: bytes
) -> None:
    length = re.search(rb"content-length:[ \t]*0*([0-9]+)", head, re.IGNORECASE)
    body = b"{}" if length else b""
    marker = f"after-{log_start}"
    follow = live_request(marker, b"Connection: close\r\n") + b"\r\n"
    reply = raw_exchange(address(server), head + b"\r\n\r\n" + body + follow, read_timeout=WAIT)
    answered = final(reply)
    # The first request, then the one after its body: never the body read as a request.
    assert [answer[0] for answer in answered] == [200, 200], reply[:800]
    assert all(orjson.loads(answer[2]) == {"live": True} for answer in answered)
    assert b"Connection: close" in answered[1][1]
    assert new_log(server, log_start).count(marker) == 1
    assert_still_serving(server, log_start)


def test_asterisk_form_is_a_json_404_and_keeps_the_connection(server: RunningServer, log_start: int) -> None:
    reply = raw_exchange(
        address(server),
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"
        + live_request("after-asterisk", b"Connection: close\r\n")
        + b"\r\n",
        read_timeout=WAIT,
    )
    answered = final(reply)
    assert [answer[0] for answer in answered] == [404, 200], reply[:500]
    assert_clean_error(answered[0][2])
    assert_still_serving(server, log_start)


@pytest.mark.parametrize(
    "target",
    [b"http://[::1/v2/health/live", b"http://[1.2.3.4]/v2/health/live", b"http://x]/v2/health/live"],
    ids=["unclosed-bracket", "ipv4-in-brackets", "stray-bracket"],
)
def test_absolute_form_with_a_bad_bracketed_host_gets_a_json_400(
    server: RunningServer, log_start: int, target: bytes
) -> None:
    reply = raw_exchange(
        address(server), b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", read_timeout=WAIT
    )
    answered = final(reply)
    assert len(answered) == 1 and 400 <= answered[0][0] < 500, reply[:500]
    assert_clean_error(answered[0][2])
    assert_still_serving(server, log_start)


def test_a_request_line_over_the_head_limit_arriving_in_pieces_is_414(
    server: RunningServer, log_start: int
) -> None:
    with socket.create_connection(address(server), timeout=WAIT) as connection:
        # No end of line: the server knows only that the request line alone is too long.
        send_quietly(connection, b"GET /" + b"a" * (MAX_HEAD_BYTES + 100))
        reply = read_until_closed(connection)
    assert "request line" in assert_refused(reply, 414)
    assert_still_serving(server, log_start)


def test_a_request_line_over_the_head_limit_is_414_even_when_its_head_arrives_whole(
    server: RunningServer, log_start: int
) -> None:
    line = b"GET /" + b"a" * (MAX_HEAD_BYTES + 100) + b" HTTP/1.1"
    with socket.socket() as connection:
        # A send buffer larger than the head: one write, one segment, one read on the server's side.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        connection.settimeout(WAIT)
        connection.connect(address(server))
        connection.sendall(line + b"\r\nHost: x\r\n\r\n")
        reply = read_until_closed(connection)
    assert "request line" in assert_refused(reply, 414)
    assert_still_serving(server, log_start)


def test_heads_that_take_the_line_by_line_parse_cost_no_more_than_their_length(
    server: RunningServer, log_start: int
) -> None:
    # Absolute-form targets skip the fast path. Each head is 16 KB with one long run of blanks in a value;
    # parsed in linear time, the 50 of them take milliseconds.
    count = 50
    one = b"GET http://x/v2/health/live HTTP/1.1\r\nHost: x\r\nX-Pad: a" + b" " * 16_000 + b"b\r\n\r\n"
    assert len(one) < MAX_HEAD_BYTES
    connection = socket.create_connection(address(server), timeout=WAIT)
    sender = threading.Thread(target=send_quietly, args=(connection, one * count), daemon=True)
    sender.start()
    try:
        reply = read_responses(connection, count, seconds=WAIT)
    finally:
        # Reset: the server gives up this connection at its next answer, not after parsing them all.
        reset(connection)
        sender.join(WAIT)
    assert statuses(reply) == [200] * count
    assert_still_serving(server, log_start)


@pytest.mark.parametrize(
    ("header", "status"),
    [(b"Content-Length: +1", 400), (b"Transfer-Encoding: chunked", 411), (b"Host: x\r\nHost: y", 400)],
    ids=["bad-content-length", "chunked", "two-hosts"],
)
def test_a_refused_head_request_gets_no_body(
    server: RunningServer, log_start: int, header: bytes, status: int
) -> None:
    reply = raw_exchange(
        address(server), b"HEAD /v2/health/live HTTP/1.1\r\n" + header + b"\r\n\r\n", read_timeout=WAIT
    )
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert statuses(reply)[:1] == [status], reply[:300]
    assert b"\r\nContent-Type: application/json" in head and b"\r\nConnection: close" in head
    # RFC 9110, 9.3.2: a response to HEAD has no content, whatever its status.
    assert rest == b"", rest
    assert_still_serving(server, log_start)


def test_an_urgent_byte_is_skipped_not_spun_on(server: RunningServer, log_start: int) -> None:
    with socket.create_connection(address(server), timeout=WAIT) as connection:
        connection.send(b"!", socket.MSG_OOB)
        connection.sendall(b"GET /v2/heal")
        connection.send(b"!", socket.MSG_OOB)
        connection.sendall(b"th/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = read_until_closed(connection)
    assert [answer[0] for answer in final(reply)] == [200]
    assert_still_serving(server, log_start)


# ------------------------------------------------------------------------ pipelining, framing, attribution
def test_pipelined_requests_on_many_connections_are_each_answered_to_their_own(
    server: RunningServer, log_start: int
) -> None:
    """Eight connections at once, each pipelining inferences (some with 100-continue), an unknown model,
    a body that is no JSON, and a GET whose body is a whole request: every answer in order, each naming
    its own request, and the request inside a body never served."""
    connections = 8
    per_connection = 20
    replies: dict[int, bytes] = {}
    marker = f"inside-a-body-{log_start}"

    def client(index: int) -> None:
        parts = []
        for number in range(per_connection):
            expect = b"Expect: 100-continue\r\n" if number % 4 == 0 else b""
            parts.append(infer_request(f"c{index}-r{number}", expect))
        hidden = live_request(marker) + b"\r\n"
        parts.insert(
            5, b"GET /v2/health/live HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(hidden), hidden)
        )
        parts.insert(10, infer_request("unknown", model="nosuch"))
        parts.insert(15, infer_request("not-json", body=b'{"id": "not-json", "inputs": ['))
        parts.append(live_request(f"last-{index}", b"Connection: close\r\n") + b"\r\n")
        replies[index] = raw_exchange(address(server), b"".join(parts), read_timeout=WAIT * 2)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    for index in range(connections):
        answered = final(replies[index])
        assert [answer[0] for answer in answered].count(200) == per_connection + 2, replies[index][:500]
        ids = [orjson.loads(body).get("id") for status, _, body in answered if status == 200]
        expected = [f"c{index}-r{number}" for number in range(per_connection)]
        assert [value for value in ids if value is not None] == expected
        assert [answer[0] for answer in answered][5] == 200 and orjson.loads(answered[5][2]) == {"live": True}
        assert answered[10][0] == 404 and "nosuch" in assert_clean_error(answered[10][2])
        assert answered[15][0] == 400 and "JSON" in assert_clean_error(answered[15][2])
        assert len(answered) == per_connection + 4
        # One 100 Continue for each request that asked for one, and no other interim answer.
        assert len(responses(replies[index])) - len(answered) == per_connection // 4
    assert marker not in new_log(server, log_start)
    assert_still_serving(server, log_start)


def test_a_complete_request_then_a_partial_one(server: RunningServer, log_start: int) -> None:
    second = infer_request("second", b"Connection: close\r\n")
    with socket.create_connection(address(server), timeout=WAIT) as connection:
        connection.sendall(infer_request("first") + second[:40])
        # The first is answered without waiting for the rest of the second.
        reply = read_responses(connection, 1, seconds=WAIT)
        assert [orjson.loads(body)["id"] for _, _, body in final(reply)] == ["first"]
        time.sleep(0.5)
        connection.sendall(second[40:])
        rest = read_until_closed(connection)
    assert [(status, orjson.loads(body)["id"]) for status, _, body in final(rest)] == [(200, "second")]
    assert_still_serving(server, log_start)


@pytest.mark.parametrize(
    "connection_header",
    [b"Connection: close", b"Connection: CLOSE", b"Connection: keep-alive, close", b"Connection: x, Close"],
    ids=["close", "upper-case", "keep-alive-then-close", "close-in-a-list"],
)
def test_nothing_pipelined_after_connection_close_is_served(
    server: RunningServer, log_start: int, connection_header: bytes
) -> None:
    marker = f"after-close-{log_start}"
    reply = raw_exchange(
        address(server),
        infer_request("one")
        + infer_request("two", connection_header + b"\r\n")
        + infer_request("three")
        + live_request(marker)
        + b"\r\n",
        read_timeout=WAIT,
    )
    answered = final(reply)
    assert [orjson.loads(body)["id"] for _, _, body in answered] == ["one", "two"]
    assert b"\r\nConnection: close" in answered[1][1] and b"Connection:" not in answered[0][1]
    time.sleep(0.3)
    assert marker not in new_log(server, log_start)
    assert_still_serving(server, log_start)


def test_http_1_0_keep_alive_and_close_mixes(server: RunningServer, log_start: int) -> None:
    reply = raw_exchange(
        address(server),
        b"GET /v2/health/live HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        + b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        + b"GET /v2/health/live HTTP/1.0\r\n\r\n"
        + b"GET /v2/health/live?never HTTP/1.1\r\n\r\n",
        read_timeout=WAIT,
    )
    answered = final(reply)
    assert [answer[0] for answer in answered] == [200, 200, 200]
    assert [b"Connection: keep-alive" in head for _, head, _ in answered] == [True, True, False]
    assert b"Connection: close" in answered[2][1]
    assert_still_serving(server, log_start)


def test_expect_100_continue_variants(server: RunningServer, log_start: int) -> None:
    address_ = address(server)
    # HTTP/1.0 has no 100 Continue; an empty body needs none; a body already sent gets one anyway.
    http_1_0 = raw_exchange(
        address_,
        infer_request("one-zero", b"Expect: 100-continue\r\n").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        read_timeout=WAIT,
    )
    assert [answer[0] for answer in responses(http_1_0)] == [200]
    empty = raw_exchange(
        address_,
        b"GET /v2/health/live HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n",
        read_timeout=WAIT,
    )
    assert [answer[0] for answer in responses(empty)] == [200]
    eager = raw_exchange(
        address_, infer_request("eager", b"Expect: 100-Continue\r\nConnection: close\r\n"), read_timeout=WAIT
    )
    assert [answer[0] for answer in responses(eager)] == [100, 200]
    assert orjson.loads(responses(eager)[1][2])["id"] == "eager"
    # An Expect the server does not know is ignored, not echoed.
    unknown = raw_exchange(
        address_,
        infer_request("unknown-expect", b"Expect: 200-ok\r\nConnection: close\r\n"),
        read_timeout=WAIT,
    )
    assert [answer[0] for answer in responses(unknown)] == [200]
    assert_still_serving(server, log_start)


# ------------------------------------------------------------------------- slow, stuck and vanishing clients
def test_half_closed_after_pipelined_requests_still_gets_every_answer(
    server: RunningServer, log_start: int
) -> None:
    with socket.create_connection(address(server), timeout=WAIT) as connection:
        connection.sendall(infer_request("half-1") + infer_request("half-2"))
        connection.shutdown(socket.SHUT_WR)
        reply = read_until_closed(connection)
    assert [(status, orjson.loads(body)["id"]) for status, _, body in final(reply)] == [
        (200, "half-1"),
        (200, "half-2"),
    ]
    assert_still_serving(server, log_start)


@pytest.mark.parametrize(
    "partial",
    [
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n",
        infer_request("short")[:-10],
        b"POST /v2/models/iris/infer HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n",
    ],
    ids=["half-a-head", "body-shorter-than-its-length", "expect-then-no-body"],
)
def test_a_client_that_half_closes_mid_request_gets_no_half_answer(
    server: RunningServer, log_start: int, partial: bytes
) -> None:
    with socket.create_connection(address(server), timeout=WAIT) as connection:
        connection.sendall(partial)
        connection.shutdown(socket.SHUT_WR)
        reply = read_until_closed(connection)
    # Nothing, or the 100 Continue it asked for: half a request is never served.
    assert [answer[0] for answer in responses(reply)] in ([], [100])
    assert_still_serving(server, log_start)


def test_resets_during_a_model_run_and_during_a_large_answer_leave_no_trace(
    server: RunningServer, log_start: int
) -> None:
    running = socket.create_connection(address(server), timeout=WAIT)
    running.sendall(endless_request())
    large = socket.socket()
    large.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    large.settimeout(WAIT)
    large.connect(address(server))
    large.sendall(infer_request("large", model="amplifier", body=amplify_body("large")))
    assert large.recv(100).startswith(b"HTTP/1.1 200 OK")
    time.sleep(0.3)
    reset(running)
    reset(large)
    # The endless run ends at its deadline; its answer then goes nowhere, quietly.
    time.sleep(INFERENCE_TIMEOUT_SECONDS + 1)
    assert_still_serving(server, log_start)


def test_a_client_that_never_reads_its_large_answers_holds_nobody_up(
    server: RunningServer, log_start: int
) -> None:
    count = 3
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.settimeout(WAIT)
    stalled.connect(address(server))
    with stalled:
        stalled.sendall(
            b"".join(
                infer_request(f"large-{n}", model="amplifier", body=amplify_body(f"large-{n}"))
                for n in range(count)
            )
        )
        time.sleep(0.5)  # long enough for the server to be stuck sending
        for number in range(5):
            reply = raw_exchange(
                address(server), infer_request(f"quick-{number}", b"Connection: close\r\n"), WAIT
            )
            assert [(status, orjson.loads(body)["id"]) for status, _, body in final(reply)] == [
                (200, f"quick-{number}")
            ]
        assert_still_serving(server, log_start)
        stalled.shutdown(socket.SHUT_WR)
        reply = read_until_closed(stalled)
    answered = final(reply)
    assert [answer[0] for answer in answered] == [200] * count
    for number, (_, _, body) in enumerate(answered):
        document = orjson.loads(body)
        assert document["model_name"] == "amplifier" and document["id"] == f"large-{number}"
        assert len(document["outputs"][0]["data"]) == 1_000_000


def test_a_slow_model_run_does_not_hold_fast_requests_up(server: RunningServer, log_start: int) -> None:
    """Two runs that never end hold the turn past ``turn_seconds``: fast requests are answered while they
    still run (no timing: their answers must arrive before the slow ones'), then the slow ones get 504."""
    slow = [socket.create_connection(address(server), timeout=WAIT * 2) for _ in range(2)]
    try:
        for connection in slow:
            connection.sendall(endless_request())
        time.sleep(0.5)  # inside onnxruntime by now
        for number in range(5):
            reply = raw_exchange(
                address(server), infer_request(f"fast-{number}", b"Connection: close\r\n"), WAIT
            )
            assert [(status, orjson.loads(body)["id"]) for status, _, body in final(reply)] == [
                (200, f"fast-{number}")
            ]
            with socket.create_connection(address(server), timeout=WAIT) as keep_alive:
                keep_alive.sendall(live_request("fast-live") + b"\r\n")
                assert statuses(read_responses(keep_alive, 1, WAIT)) == [200]
        assert not any(has_data(connection) for connection in slow), (
            "the slow runs ended before the fast ones"
        )
        for connection in slow:
            answered = final(read_responses(connection, 1, INFERENCE_TIMEOUT_SECONDS + WAIT))
            assert [answer[0] for answer in answered] == [504]
            assert "deadline" in assert_clean_error(answered[0][2])
    finally:
        for connection in slow:
            connection.close()
    assert_still_serving(server, log_start)


def test_clients_stuck_mid_request_hold_nobody_up(server: RunningServer, log_start: int) -> None:
    """Reading a request happens outside the turns: forty clients stalled mid-head, mid-body or after a
    100 Continue do not delay anyone else's answer."""
    stuck: list[socket.socket] = []
    try:
        for index in range(40):
            connection = socket.create_connection(address(server), timeout=WAIT)
            connection.sendall(
                [
                    b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ",
                    infer_request("stuck")[:-20],
                    b"POST /v2/models/iris/infer HTTP/1.1\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 90\r\n\r\n",
                ][index % 3]
            )
            stuck.append(connection)
        for number in range(5):
            reply = raw_exchange(
                address(server), infer_request(f"past-stuck-{number}", b"Connection: close\r\n"), WAIT
            )
            assert [(status, orjson.loads(body)["id"]) for status, _, body in final(reply)] == [
                (200, f"past-stuck-{number}")
            ]
    finally:
        for connection in stuck:
            reset(connection)
    assert_still_serving(server, log_start)


# ------------------------------------------------------------------------------------------ connection cap
def test_the_cap_full_of_clients_in_every_state_answers_503_and_recovers_after_resets(
    server: RunningServer, log_start: int
) -> None:
    held: list[socket.socket] = []
    try:
        for index in range(DEFAULT_LIMITS.max_connections):
            connection = socket.create_connection(address(server), timeout=WAIT)
            state = index % 4
            if state == 0:  # idle after a keep-alive answer
                connection.sendall(live_request("kept") + b"\r\n")
                read_responses(connection, 1, WAIT)
            elif state == 1:  # half a head
                connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            elif state == 2:  # half a body
                connection.sendall(infer_request("never-finished")[:-20])
            held.append(connection)  # state 3: connected, never a byte
        reply = raw_exchange(address(server), live_request("past-the-cap") + b"\r\n", read_timeout=WAIT)
        assert "connections open" in assert_refused(reply, 503)
        assert b"\r\nRetry-After: " in responses(reply)[0][1]
    finally:
        for connection in held:
            reset(connection)
    wait_until(lambda: serves_again(server), WAIT, "the server did not recover after the connections reset")
    assert_still_serving(server, log_start)


def test_the_cap_filled_by_slow_heads_frees_itself_at_the_head_deadline(
    server: RunningServer, log_start: int
) -> None:
    """Clients that trickle their heads (one of them only empty lines) and never close: the head
    deadline answers them 408 and the server serves again without their help."""
    upper_bound = DEFAULT_LIMITS.header_seconds + WAIT
    trickler = socket.create_connection(address(server), timeout=WAIT)
    trickler.sendall(b"\r\n")
    held: list[socket.socket] = [trickler]
    try:
        for _ in range(DEFAULT_LIMITS.max_connections - 1):
            connection = socket.create_connection(address(server), timeout=WAIT)
            connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: a")
            held.append(connection)
        deadline = time.monotonic() + upper_bound
        while not serves_again(server):
            assert time.monotonic() < deadline, "the slow heads held the cap past their deadline"
            if not has_data(trickler):
                trickler.sendall(b"\r\n")
            time.sleep(0.3)
        for connection in held[:10]:
            assert "did not arrive" in assert_refused(read_until_closed(connection), 408)
    finally:
        for connection in held:
            connection.close()
    assert_still_serving(server, log_start)


def test_the_cap_filled_by_silent_connections_frees_itself_at_the_head_deadline(
    server: RunningServer, log_start: int
) -> None:
    """Connections that never send a byte get the head's deadline for their first request, not the
    keep-alive idle timeout: the server closes them and serves again without their help."""
    held = [
        socket.create_connection(address(server), timeout=WAIT) for _ in range(DEFAULT_LIMITS.max_connections)
    ]
    try:
        wait_until(
            lambda: serves_again(server),
            DEFAULT_LIMITS.header_seconds + WAIT,
            "silent connections held the cap past the head deadline",
        )
        for connection in held:
            connection.settimeout(WAIT)
            assert connection.recv(1) == b""  # closed by the server, without a word
    finally:
        for connection in held:
            connection.close()
    assert_still_serving(server, log_start)
