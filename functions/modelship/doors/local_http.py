"""The local HTTP door: a hardened, threaded HTTP/1.1 server in front of a Lambda-style handler.

Each request becomes an API Gateway REST proxy event (body base64-encoded when binary, as API
Gateway does with binaryMediaTypes), and the proxy result becomes the HTTP response. Responses are
written with a single send and TCP_NODELAY, so keep-alive clients never wait on Nagle's algorithm.

The edge door runs this server on devices, on networks that may be hostile, so every request is parsed
strictly (RFC 9112) and every client is bounded (``Limits``):

- a request head (request line and headers) must be well-formed: a line that is not ``name: value``,
  a bare CR or LF, a folded line, a control character or a byte outside ASCII in a name is a 400 and the
  connection is closed, so the bytes after it can never be read as a second request;
- any ``Transfer-Encoding`` is refused (411 for chunked, 501 otherwise) and ``Content-Length`` must be
  one plain number of at most 19 digits, the same in every copy;
- the head is limited in bytes and in header lines (431), and must arrive within a deadline from its
  first byte (408), as must the body from the end of the head; a new connection that sends nothing
  within that deadline is closed (a keep-alive one waits up to the idle timeout for its next request);
- at most ``max_connections`` connections are served at once (below the file-descriptor limit); past
  it a new connection gets a 503 at once; running out of descriptors pauses accepting and says so;
- the listen backlog is a real one, and ``serve_forever`` stops gracefully on SIGTERM or Ctrl-C: it
  stops accepting, closes idle connections, lets requests in flight finish for a grace period, calls
  ``on_shutdown`` (the CLI cancels the runs still inside onnxruntime) and waits for the workers.

Every refusal is a JSON ``{"error": ...}`` body; a client that resets its connection costs one debug
line, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
import select
import selectors
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import FrameType
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
import pybase64

from modelship.core.errors import PayloadTooLarge
from modelship.core.messages import check_request_size
from modelship.doors.prometheus_metrics import METRICS_PATH, LoadedModels, ServerMetrics

logger = logging.getLogger("modelship.http")

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]
IDLE_CONNECTION_TIMEOUT_SECONDS: Final = 60
LINGER_SECONDS: Final = 2.0
LINGER_MAX_BYTES: Final = 64 * 1024 * 1024
# How long requests in flight may run on after SIGTERM before ``on_shutdown`` is called.
SHUTDOWN_GRACE_SECONDS: Final = 5.0
# After ``on_shutdown``: how long the workers get to answer and end.
SHUTDOWN_FINISH_SECONDS: Final = 5.0
_BINARY_MARKERS: Final = ("inference-header-content-length",)
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_RECV_BYTES: Final = 65536
_HAS_POLL: Final = hasattr(select, "poll")
_sched_yield: Final[Callable[[], object]] = getattr(os, "sched_yield", lambda: None)
_POLLIN: Final = 1  # select.POLLIN, select.POLLOUT on every platform that has them
_POLLOUT: Final = 4
# File descriptors kept for everything but client connections (models, logs, S3, the listener).
_FD_RESERVE: Final = 64
# Connections refused at the cap are drained for this long after their 503, at most this many at once.
_REFUSAL_LINGER_SECONDS: Final = 1.0
_MAX_LINGERING_REFUSALS: Final = 256
# Accepting pauses this long when the process is out of file descriptors.
_ACCEPT_PAUSE_SECONDS: Final = 0.5
_WARNING_INTERVAL_SECONDS: Final = 10.0

_TCHAR: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE: Final = re.compile(rb"(" + _TCHAR + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# The value is stripped in Python: a lazy group between two blank runs backtracks quadratically over a
# long run of blanks inside a value (a cheap CPU attack on every head the fast path leaves to this parse).
_HEADER_LINE: Final = re.compile(rb"(" + _TCHAR + rb"):(.*)", re.DOTALL)
# Field values: visible characters, obs-text, space and tab; no other control character.
_BAD_VALUE_BYTE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CONTENT_LENGTH: Final = re.compile(r"[0-9]{1,19}")
# The common case in one match, on the head decoded as Latin-1: HTTP/1.0 or 1.1, every line ending in CRLF,
# every header a token, a colon and a value without control characters. A head it does not match goes
# through the line-by-line parse, which says what is wrong with it.
_STR_TCHAR: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FAST_HEAD: Final = re.compile(
    r"("
    + _STR_TCHAR
    + r") ([\x21-\x7e]+) HTTP/1\.([01])((?:\r\n"
    + _STR_TCHAR
    + r":[\t\x20-\x7e\x80-\xff]*)*)"
)
# A target that ``urlsplit`` and ``unquote`` would return unchanged as the path, with no query.
_PLAIN_PATH: Final = re.compile(r"/(?!/)[^?#%\t\r\n]*")
_JSON: Final = {"Content-Type": "application/json"}
_METRICS_QUERY: Final = METRICS_PATH + "?"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may cost the server. The defaults suit a device on a network it does not trust."""

    # Request line plus headers, in bytes (API Gateway allows 10 KB of them); past it, 431 (414 when the
    # request line alone is longer).
    max_head_bytes: int = 16 * 1024
    max_headers: int = 100
    # From a request's first byte to the end of its headers, then from there to the end of its body.
    header_seconds: float = 10.0
    body_seconds: float = 30.0
    # A keep-alive connection waiting for its next request; and the longest a response may take to send.
    idle_seconds: float = IDLE_CONNECTION_TIMEOUT_SECONDS
    send_seconds: float = 30.0
    # Connections served at once; fewer when the file-descriptor limit is lower.
    max_connections: int = 128
    backlog: int = 1024
    # Requests run the handler one at a time, in the order they arrived (see ``_Turns``); one still
    # running after this long stops holding the others up: the next in line starts beside it.
    turn_seconds: float = 0.05


DEFAULT_LIMITS: Final = Limits()


def new_request_id() -> str:
    """A random (version 4) UUID as a string, as ``str(uuid.uuid4())`` but a few times cheaper."""
    digits = os.urandom(16).hex()
    return (
        f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-"
        f"{'89ab'[int(digits[16], 16) & 3]}{digits[17:20]}-{digits[20:]}"
    )


@dataclass
class LocalLambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    aws_request_id: str = field(default_factory=new_request_id)
    function_name: str = "modelship-local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 2048
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:modelship-local"
    log_group_name: str = "/aws/lambda/modelship-local"
    log_stream_name: str = "local"
    deadline: float = field(default_factory=lambda: time.monotonic() + 29)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def _is_metrics_target(target: str) -> bool:
    """``/metrics``, with or without a query, in origin form or absolute form (RFC 9112, 3.2.2)."""
    if target == METRICS_PATH or target.startswith(_METRICS_QUERY):
        return True
    return not target.startswith("/") and urlsplit(target).path == METRICS_PATH


def build_proxy_event(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes | bytearray, request_id: str
) -> dict[str, Any]:
    if _PLAIN_PATH.fullmatch(target):
        path = target
        query_parameters = None
    else:
        split = urlsplit(target)
        path = unquote(split.path)
        query_parameters = dict(parse_qsl(split.query, keep_blank_values=True)) or None
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    is_binary = False
    for key, value in headers:
        single[key] = value
        if key in multi:
            multi[key].append(value)
        else:
            multi[key] = [value]
        if not is_binary and key.lower() in _BINARY_MARKERS:
            is_binary = True
    text_body: str | None = None
    if body and not is_binary:
        try:
            text_body = body.decode("utf-8")
        except UnicodeDecodeError:
            is_binary = True
    if not body:
        encoded_body = None
    elif is_binary:
        encoded_body = pybase64.b64encode(body).decode("ascii")
    else:
        encoded_body = text_body
    return {
        "resource": "/v2/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": single,
        "multiValueHeaders": multi,
        "queryStringParameters": query_parameters,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.removeprefix("/v2/")} if path.startswith("/v2/") else None,
        "stageVariables": None,
        "requestContext": {
            "requestId": request_id,
            "stage": "local",
            "httpMethod": method,
            "path": f"/local{path}",
            "resourcePath": "/v2/{proxy+}",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": encoded_body,
        "isBase64Encoded": is_binary and bool(body),
    }


class _Refusal(Exception):
    """A request answered with an error and a closed connection, before it reaches the handler."""

    def __init__(self, status: int, message: str, linger: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # Drain what the client may still be sending, so it reads this answer instead of a reset.
        self.linger = linger
        # A head refused before it became a request still said HEAD: its answer carries no body.
        self.to_head_request = False


def _oversized_head(buffer: bytearray, limit: int) -> _Refusal:
    """414 when the request line alone is over the limit, however the bytes arrived; else 431."""
    line_end = buffer.find(b"\r\n")
    if line_end < 0 or line_end > limit:
        return _Refusal(414, f"the request line is longer than {limit} bytes")
    return _Refusal(431, f"the request headers are longer than {limit} bytes")


class _ClientGone(Exception):
    """The client closed or reset its side in the middle of a request."""


@dataclass(slots=True)
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    content_length: int
    expect_continue: bool
    close: bool


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


_STATUS_LINES: Final[dict[int, str]] = {}


def _response_head(status: int, headers: dict[str, str], length: int, connection: str | None) -> bytes:
    status_line = _STATUS_LINES.get(status)
    if status_line is None:
        status_line = f"HTTP/1.1 {status} {_phrase(status)}\r\n"
        if len(_STATUS_LINES) < 1000:
            _STATUS_LINES[status] = status_line
    lines = [status_line]
    for key, value in headers.items():
        if key.lower() != "content-length":
            lines.append(f"{key}: {value}\r\n")
    lines.append(f"Content-Length: {length}\r\n")
    if connection is not None:
        lines.append(f"Connection: {connection}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _parse_head(head: bytes, limits: Limits = DEFAULT_LIMITS) -> _Request:
    """Parse a request head (without its final empty line) strictly, or raise ``_Refusal``."""
    text = head.decode("latin-1")
    match = _FAST_HEAD.fullmatch(text)
    if match is None:
        return _parse_head_lines(head, limits)
    method, target, minor, block = match.groups()
    if target.startswith("//"):
        target = "/" + target.lstrip("/")
    elif not target.startswith("/"):
        # Rare forms: the line-by-line parse decides.
        return _parse_head_lines(head, limits)
    headers: list[tuple[str, str]] = []
    if block:
        lines = block.split("\r\n")
        if len(lines) - 1 > limits.max_headers:
            raise _Refusal(431, f"more than {limits.max_headers} header lines")
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip(" \t")))
    return _framing(target, method, "HTTP/1.0" if minor == "0" else "HTTP/1.1", headers)


def _parse_head_lines(head: bytes, limits: Limits) -> _Request:
    """``_parse_head`` line by line: slower, but it names what is wrong with a head."""
    without_line_ends = head.replace(b"\r\n", b"")
    if b"\r" in without_line_ends or b"\n" in without_line_ends:
        raise _Refusal(400, "malformed request head: every line must end with CRLF")
    request_line, *lines = head.split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise _Refusal(400, "malformed request line")
    method_bytes, target_bytes, major, minor = match.groups()
    if major != b"1":
        raise _Refusal(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    version = "HTTP/1.0" if minor == b"0" else "HTTP/1.1"
    target = target_bytes.decode("ascii")
    if target.startswith("//"):
        # As http.server does: '//host/path' is a path, never another host.
        target = "/" + target.lstrip("/")
    lowered_target = target[:8].lower()
    if not (target.startswith("/") or lowered_target.startswith(("http://", "https://")) or target == "*"):
        raise _Refusal(400, "malformed request target")
    if not target.startswith("/"):
        try:
            urlsplit(target)  # what build_proxy_event does with it: "http://[::1/" raises ValueError
        except ValueError:
            raise _Refusal(400, "malformed request target") from None
    if len(lines) > limits.max_headers:
        raise _Refusal(431, f"more than {limits.max_headers} header lines")
    headers: list[tuple[str, str]] = []
    for line in lines:
        header = _HEADER_LINE.fullmatch(line)
        # No colon, blanks before it, a folded line or a name that is not an ASCII token: all refused.
        if header is None:
            raise _Refusal(400, "malformed header line")
        name, value = header.groups()
        value = value.strip(b" \t")
        if _BAD_VALUE_BYTE.search(value):
            raise _Refusal(400, "control character in a header value")
        headers.append((name.decode("ascii"), value.decode("latin-1")))
    return _framing(target, method_bytes.decode("ascii"), version, headers)


_CONTENT_LENGTH_KEY: Final = 0
_TRANSFER_ENCODING_KEY: Final = 1
_CONNECTION_KEY: Final = 2
_HOST_KEY: Final = 3
_EXPECT_KEY: Final = 4
_FRAMING_KEYS: Final = {
    "content-length": _CONTENT_LENGTH_KEY,
    "transfer-encoding": _TRANSFER_ENCODING_KEY,
    "connection": _CONNECTION_KEY,
    "host": _HOST_KEY,
    "expect": _EXPECT_KEY,
}


def _framing(target: str, method: str, version: str, headers: list[tuple[str, str]]) -> _Request:
    """How long the body is and whether the connection stays open, refusing anything ambiguous."""
    lengths: list[str] = []
    codings: list[str] = []
    connection: list[str] = []
    hosts = 0
    expect_continue = False
    for name, value in headers:
        key = _FRAMING_KEYS.get(name.lower())
        if key is None:
            continue
        if key == _CONTENT_LENGTH_KEY:
            lengths.append(value)
        elif key == _TRANSFER_ENCODING_KEY:
            codings.append(value.lower())
        elif key == _CONNECTION_KEY:
            connection.extend(token.strip().lower() for token in value.split(","))
        elif key == _HOST_KEY:
            hosts += 1
        else:
            expect_continue = value.lower() == "100-continue" and version == "HTTP/1.1"
    if codings:
        # Two Transfer-Encoding headers, or one beside Content-Length, are how requests get smuggled;
        # no client of this server needs a transfer coding, so every one is refused.
        if any("chunked" in coding for coding in codings):
            raise _Refusal(411, "chunked bodies are not supported; send Content-Length")
        raise _Refusal(501, "transfer codings are not supported; send Content-Length")
    content_length = 0
    if lengths:
        for value in lengths:
            if _CONTENT_LENGTH.fullmatch(value) is None:
                raise _Refusal(400, "invalid or conflicting Content-Length")
        content_length = int(lengths[0])
        if len(lengths) > 1 and any(int(value) != content_length for value in lengths):
            # Differing duplicates would let a request hide inside another's body (RFC 9112, 6.3).
            raise _Refusal(400, "invalid or conflicting Content-Length")
    if hosts > 1:
        raise _Refusal(400, "more than one Host header")
    if method not in _METHODS:
        raise _Refusal(501, f"Unsupported method ({method!r})")
    close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    return _Request(method, target, version, headers, content_length, expect_continue, close)


class _Turns:
    """Requests take turns at the handler, first come first served.

    Threads time-slicing one CPU under the GIL would interleave every request with all the others, so
    each would take as long as all of them together and the tail would grow with the connections. Here
    one request at a time runs the handler and writes its answer, and the next in line is handed the
    turn directly (``threading.Lock`` is not fair: a thread releasing it can take it straight back).
    A request holding its turn longer than ``seconds`` (a slow model, a client that does not read) is
    passed: the next in line takes the turn and runs beside it, so nobody waits on it for longer.
    Reading and parsing requests happen outside the turns, so a slow client never holds anyone up."""

    __slots__ = ("_lock", "_owner", "_seconds", "_since", "_waiters")

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._seconds = seconds
        # The current turn's gate (None when nobody holds it), since when it is held, and who waits.
        self._owner: threading.Lock | None = None
        self._since = 0.0
        self._waiters: deque[threading.Lock] = deque()

    def take(self) -> threading.Lock:
        """Wait for this request's turn; returns the token to ``give`` back."""
        gate, wait = self._join()
        return gate if wait is None else self._await(gate, wait)

    def _join(self) -> tuple[threading.Lock, float | None]:
        """A new gate: the turn at once (None), or in the queue, with how long to wait first."""
        gate = threading.Lock()
        gate.acquire()
        with self._lock:
            now = time.monotonic()
            if self._owner is None:
                self._owner = gate
                self._since = now
                return gate, None
            self._waiters.append(gate)
            return gate, self._timeout(gate, now)

    def _await(self, gate: threading.Lock, wait: float) -> threading.Lock:
        while True:
            # Only ``give`` releases a gate: once it has, the turn was handed here, even if it has since
            # run long enough for the next in line to start beside it. Otherwise look again when it runs
            # long. (Checked again under the lock: ``give`` may release it just after the timeout.)
            if gate.acquire(timeout=wait):
                return gate
            with self._lock:
                if gate.acquire(blocking=False):
                    return gate
                now = time.monotonic()
                if now - self._since >= self._seconds and self._waiters[0] is gate:
                    # The turn has run too long: take it over and leave the slow request to finish alone.
                    self._waiters.popleft()
                    self._owner = gate
                    self._since = now
                    return gate
                wait = self._timeout(gate, now)

    def _timeout(self, gate: threading.Lock, now: float) -> float:
        """How long a waiter waits before it looks again: until the turn runs long; when it has, no
        time at all for the first in line, and a whole turn for the others (the first takes over)."""
        remaining = self._since + self._seconds - now
        if remaining > 0:
            return remaining
        return 0.0 if self._waiters[0] is gate else self._seconds

    def give(self, gate: threading.Lock) -> None:
        """End a turn (idempotent) and hand it to the next in line."""
        with self._lock:
            if self._owner is not gate:
                return
            if self._waiters:
                following = self._waiters.popleft()
                self._owner = following
                self._since = time.monotonic()
                following.release()
            else:
                self._owner = None


class _Connection:
    """One client connection, served by its own thread: requests one after another (keep-alive).

    The socket is non-blocking: each read or write is tried first and waited for (``poll``) only when it
    would block, so a request costs a few system calls, with every deadline still enforced."""

    __slots__ = ("buffer", "busy", "fresh", "peer", "poller", "server", "sock")

    def __init__(self, server: LocalServer, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.buffer = bytearray()
        # True from a request's first byte until its answer is sent; idle connections close at shutdown.
        self.busy = False
        # True until the first request's first byte: a new connection gets the head's deadline for it,
        # not the keep-alive idle timeout, so connections that never send cannot hold every place for long.
        self.fresh = True
        self.poller: Any = None

    def serve(self) -> None:
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setblocking(False)
            if _HAS_POLL:
                self.poller = select.poll()
            while self._serve_one():
                pass
        except (_ClientGone, OSError) as error:
            # A reset, a broken pipe, a timeout: the client's business, not a fault of ours.
            logger.debug("connection from %s ended: %s", self.peer, str(error) or type(error).__name__)
        except Exception:
            logger.exception("unexpected error while serving %s", self.peer)
        finally:
            self.sock.close()
            self.server._forget(self)

    def abort(self) -> None:
        """Wake the thread from any read or write on this connection (used at shutdown)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _serve_one(self) -> bool:
        """Serve one request; True when the connection stays open for another."""
        if not self._await_request():
            return False
        started = time.perf_counter()
        request: _Request | None = None
        try:
            request = self._read_head()
            body = self._read_body(request)
        except _Refusal as refusal:
            self._refuse(refusal, request, started)
            return False
        except _ClientGone:
            if request is not None:
                # Half a request is not one and there is no one to answer; it is still logged.
                self._log(request.method, request.target, 400, 0, started)
            raise
        metrics = self.server.metrics
        if _is_metrics_target(request.target):
            return self._serve_metrics(request, started)
        metrics.request_started()
        path = request.target
        status = 502
        counted = False
        turns = self.server._turns
        turn = turns.take()
        try:
            context = LocalLambdaContext()
            event = build_proxy_event(
                request.method, request.target, request.headers, body, context.aws_request_id
            )
            path = event["path"]
            try:
                result = self.server.lambda_handler(event, context)
                status = int(result["statusCode"])
                headers = dict(result.get("headers") or {})
                payload = result.get("body") or ""
                raw = pybase64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
            except Exception:
                # API Gateway answers 502 when the integration fails; so do we, without leaking a traceback.
                logger.exception("the Lambda handler failed")
                status, headers, raw = 502, _JSON, _error_body("internal server error")
            close = request.close or self.server.stopping
            # Counted before it is sent: a client that has its answer finds it in /metrics.
            metrics.request_done(path, status, time.perf_counter() - started)
            counted = True
            # A client slow to read its answer gives up the turn while it is waited for.
            self._send(status, headers, raw, request, close, on_wait=lambda: turns.give(turn))
            self._log(request.method, request.target, status, len(raw), started)
        finally:
            turns.give(turn)
            if not counted:
                metrics.request_done(path, status, time.perf_counter() - started)
        return self._after_answer(close)

    def _serve_metrics(self, request: _Request, started: float) -> bool:
        """``/metrics``, answered by the server itself: no handler, no turn (a scrape never waits behind
        inference, and inference never waits behind a scrape)."""
        accept = accept_encoding = None
        for key, value in request.headers:
            lowered = key.lower()
            if lowered == "accept":
                accept = value
            elif lowered == "accept-encoding":
                accept_encoding = value
        status, headers, raw = self.server.metrics.answer(request.method, accept, accept_encoding)
        close = request.close or self.server.stopping
        self.server.metrics.request_done(METRICS_PATH, status, time.perf_counter() - started, in_flight=False)
        self._send(status, headers, raw, request, close)
        self._log(request.method, request.target, status, len(raw), started)
        return self._after_answer(close)

    def _after_answer(self, close: bool) -> bool:
        """After an answer: True when the connection stays open for the next request."""
        if close:
            self._linger()
            return False
        if not self.server._idle(self):
            return False
        if len(self.server._connections) > 1:
            # Let the other connections' threads run before reading this one's next request. A keep-alive
            # client answered at once has its next request ready by now: without this, this thread would
            # go on serving it, keeping the CPU for a whole scheduler slice (milliseconds) while the
            # others' requests wait unread, unable even to queue for their turn.
            _sched_yield()
        return True

    def _wait(self, event: int, deadline: float) -> bool:
        """Wait until the socket is readable (``select.POLLIN``) or writable; False at the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if self.poller is not None:
            self.poller.register(self.sock, event)
            # poll takes whole milliseconds: round up, so that it never returns early for ever.
            return bool(self.poller.poll(int(remaining * 1000) + 1))
        readable, writable, _ = select.select(
            [self.sock] if event == _POLLIN else [], [self.sock] if event != _POLLIN else [], [], remaining
        )
        return bool(readable or writable)

    def _read(self, deadline: float) -> bytes | None:
        """What the client sent next (``b""`` when it closed its side), or None past the deadline."""
        while True:
            try:
                return self.sock.recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                pass
            if not self._wait(_POLLIN, deadline):
                return None

    def _sendall(self, data: bytes, deadline: float, on_wait: Callable[[], object] | None = None) -> None:
        """Send everything by the deadline (else ``TimeoutError``); ``on_wait`` is called before waiting."""
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            return
        if on_wait is not None:
            on_wait()
        view = memoryview(data)[sent:]
        while view:
            if not self._wait(_POLLOUT, deadline):
                raise TimeoutError("the client did not read its answer in time")
            with contextlib.suppress(BlockingIOError, InterruptedError):
                view = view[self.sock.send(view) :]

    def _await_request(self) -> bool:
        """Wait for the first byte of the next request: up to the head's deadline on a new connection, up
        to the idle timeout between keep-alive requests."""
        if not self.buffer:
            limits = self.server.limits
            wait = limits.header_seconds if self.fresh else limits.idle_seconds
            chunk = self._read(time.monotonic() + wait)
            if not chunk:
                return False
            self.buffer += chunk
        self.fresh = False
        self.server._busy(self)
        return True

    def _recv(self, deadline: float, body: bool) -> None:
        """Read more of a request, or refuse it (408) past its deadline."""
        chunk = self._read(deadline) if deadline > time.monotonic() else None
        if chunk is None:
            limits = self.server.limits
            if body:
                raise _Refusal(
                    408, f"the request body did not arrive within {limits.body_seconds:g} s", linger=False
                )
            raise _Refusal(408, f"the request headers did not arrive within {limits.header_seconds:g} s")
        if not chunk:
            raise _ClientGone("the client closed the connection mid-request")
        self.buffer += chunk

    def _read_head(self) -> _Request:
        limits = self.server.limits
        buffer = self.buffer
        deadline = time.monotonic() + limits.header_seconds
        while True:
            # Empty lines before a request line are ignored (RFC 9112, 2.2).
            while buffer.startswith(b"\r\n"):
                del buffer[:2]
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buffer) > limits.max_head_bytes:
                raise _oversized_head(buffer, limits.max_head_bytes)
            if buffer.count(b"\n") != buffer.count(b"\r\n"):
                raise _Refusal(400, "malformed request head: every line must end with CRLF")
            self._recv(deadline, body=False)
        if end + 4 > limits.max_head_bytes:
            raise _oversized_head(buffer, limits.max_head_bytes)
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        try:
            return _parse_head(head, limits)
        except _Refusal as refusal:
            refusal.to_head_request = head.startswith(b"HEAD ")
            raise

    def _read_body(self, request: _Request) -> bytes | bytearray:
        length = request.content_length
        if not length:
            return b""
        try:
            # The core's rule, asked before the body is read, so a huge body is never buffered.
            check_request_size(length, self.server.max_request_bytes)
        except PayloadTooLarge as error:
            raise _Refusal(error.status, error.message) from None
        buffer = self.buffer
        if request.expect_continue:
            self._sendall(
                b"HTTP/1.1 100 Continue\r\n\r\n", time.monotonic() + self.server.limits.send_seconds
            )
        if len(buffer) >= length:
            if len(buffer) == length:
                body = bytes(buffer)
                buffer.clear()
                return body
            body = bytes(buffer[:length])
            del buffer[:length]
            return body
        deadline = time.monotonic() + self.server.limits.body_seconds
        # Grown as bytes arrive, never allocated from the declared length alone.
        while len(buffer) < length:
            self._recv(deadline, body=True)
        body_bytes = buffer[:length]
        del buffer[:length]
        return body_bytes

    def _refuse(self, refusal: _Refusal, request: _Request | None, started: float) -> None:
        body = _error_body(refusal.message)
        method, target = (request.method, request.target) if request is not None else ("-", "-")
        self.server.metrics.request_done(
            target.split("?", 1)[0], refusal.status, time.perf_counter() - started, in_flight=False
        )
        self._send(refusal.status, _JSON, body, request, close=True, head_only=refusal.to_head_request)
        self._log(method, target, refusal.status, len(body), started)
        if refusal.linger:
            self._linger()

    def _send(
        self,
        status: int,
        headers: dict[str, str],
        body: bytes,
        request: _Request | None,
        close: bool,
        on_wait: Callable[[], object] | None = None,
        head_only: bool = False,
    ) -> None:
        if close:
            connection: str | None = "close"
        elif request is not None and request.version == "HTTP/1.0":
            # HTTP/1.0 closes by default; say we keep it open, or the client waits for EOF.
            connection = "keep-alive"
        else:
            connection = None
        head = _response_head(status, headers, len(body), connection)
        deadline = time.monotonic() + self.server.limits.send_seconds
        head_request = request.method == "HEAD" if request is not None else head_only
        self._sendall(head if head_request else head + body, deadline, on_wait)

    def _linger(self) -> None:
        """Lingering close: stop sending, then read (and drop) what the client still sends for a bounded
        time, so a client still sending a refused body reads our answer instead of a reset."""
        deadline = time.monotonic() + LINGER_SECONDS
        remaining = LINGER_MAX_BYTES
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while remaining > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                chunk = self.sock.recv(_RECV_BYTES)
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass

    def _log(self, method: str, target: str, status: int, length: int, started: float) -> None:
        if logger.isEnabledFor(logging.INFO):
            # As ``logger.info`` does, less looking up the caller's frame, which the access log never shows.
            logger.handle(
                logger.makeRecord(
                    logger.name,
                    logging.INFO,
                    __file__,
                    0,
                    '%s "%s %s" %d %dB %.2fms',
                    (self.peer, method, target[:200], status, length, (time.perf_counter() - started) * 1000),
                    None,
                    "_log",
                )
            )


def _loaded_models_of(handler: LambdaHandler) -> LoadedModels | None:
    """``handler.service.lifecycle.loaded``, when the handler names the ``InferenceService`` it runs."""
    lifecycle = getattr(getattr(handler, "service", None), "lifecycle", None)
    loaded: LoadedModels | None = getattr(lifecycle, "loaded", None)
    return loaded


def _descriptor_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4 loopback mapped into IPv6."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


class LocalServer:
    """One thread per connection (at most ``limits.max_connections``), each running ``lambda_handler`` for
    its requests; the handler must be thread-safe. ``serve_forever`` below runs it until Ctrl-C or
    SIGTERM, then shuts it down gracefully."""

    def __init__(
        self,
        address: tuple[str, int],
        lambda_handler: LambdaHandler,
        max_request_bytes: int,
        limits: Limits = DEFAULT_LIMITS,
        *,
        loaded_models: LoadedModels | None = None,
    ) -> None:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=limits.backlog)
        self.socket.setblocking(False)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self.lambda_handler = lambda_handler
        self.max_request_bytes = max_request_bytes
        self.limits = limits
        self.limit_connections(limits.max_connections)
        if not is_loopback(self.server_address[0]):
            logger.warning(
                "listening on %s port %d, which is not a loopback address: anyone who can reach it can "
                "call every model in the store, with no authentication and no TLS",
                self.server_address[0],
                self.server_address[1],
            )
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._last_warning: dict[str, float] = {}
        self._turns = _Turns(limits.turn_seconds)
        # GET /metrics. The models' load times come from the service behind the handler when it names one
        # (``apigw.proxy_handler``'s and ``inference.app.handler`` do), unless ``loaded_models`` is given.
        self.metrics = ServerMetrics(
            loaded_models if loaded_models is not None else _loaded_models_of(lambda_handler),
            lambda: self.open_connections,
        )

    def limit_connections(self, count: int) -> None:
        """Serve at most ``count`` connections at once, fewer if the file-descriptor limit is lower. Safe
        while serving (the edge door applies a configuration update in place)."""
        descriptors = _descriptor_limit()
        if descriptors is not None and descriptors - _FD_RESERVE < count:
            count = max(1, descriptors - _FD_RESERVE)
            logger.warning(
                "the file-descriptor limit is %d: serving at most %d connections at once", descriptors, count
            )
        body = _error_body(f"the server has {count} connections open already; retry shortly")
        # The refusal first: a connection refused in between names the new count, never a stale one.
        self._refusal = _response_head(503, {**_JSON, "Retry-After": "1"}, len(body), "close") + body
        self.max_connections = count

    @property
    def open_connections(self) -> int:
        """Connections being served now (closed ones leave once their thread has seen them close)."""
        with self._lock:
            return len(self._connections)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def shutdown(self) -> None:
        """Ask ``serve_forever`` to stop accepting. Safe from any thread and from a signal handler; a
        second call cuts the grace period short."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")

    def serve_forever(self) -> None:
        """Accept connections until ``shutdown``; each is served by a thread of its own."""
        lingering: dict[socket.socket, float] = {}
        paused_until: float | None = None
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ, "accept")
            selector.register(self._wake_read, selectors.EVENT_READ, "wake")
            while not self._stop.is_set():
                now = time.monotonic()
                if paused_until is not None and now >= paused_until:
                    selector.register(self.socket, selectors.EVENT_READ, "accept")
                    paused_until = None
                timeout = 0.5 if not lingering else min(0.5, max(0.0, min(lingering.values()) - now))
                for key, _ in selector.select(timeout):
                    if key.data == "accept":
                        if not self._accept(selector, lingering):
                            selector.unregister(self.socket)
                            paused_until = time.monotonic() + _ACCEPT_PAUSE_SECONDS
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_read.recv(64)
                    else:
                        self._drain_refused(selector, lingering, key.fileobj)  # type: ignore[arg-type]
                now = time.monotonic()
                for sock in [sock for sock, until in lingering.items() if until <= now]:
                    self._close_refused(selector, lingering, sock)
            for sock in list(lingering):
                self._close_refused(selector, lingering, sock)

    def _accept(self, selector: selectors.BaseSelector, lingering: dict[socket.socket, float]) -> bool:
        """Accept one connection; False when accepting must pause (no file descriptors left)."""
        try:
            sock, peer = self.socket.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return True
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._warn(
                    "accept",
                    "cannot accept connections (%s) with %d open: pausing accepts for %g s",
                    error.strerror,
                    len(self._connections),
                    _ACCEPT_PAUSE_SECONDS,
                )
                return False
            raise
        with self._lock:
            full = len(self._connections) >= self.max_connections
            connection = None if full else _Connection(self, sock, str(peer[0]))
            if connection is not None:
                self._connections.add(connection)
        if connection is None:
            self._warn(
                "full",
                "%d connections open, the most this server serves at once: answering new ones 503",
                self.max_connections,
            )
            self._refuse_connection(selector, lingering, sock)
            return True
        try:
            threading.Thread(target=connection.serve, name=f"http-{peer[0]}", daemon=True).start()
        except RuntimeError as error:  # can't start new thread
            self._warn("thread", "cannot start a thread for a connection: %s", error)
            sock.close()
            self._forget(connection)
        return True

    def _refuse_connection(
        self, selector: selectors.BaseSelector, lingering: dict[socket.socket, float], sock: socket.socket
    ) -> None:
        """Answer 503 without a thread: send, stop sending, then drain until the client closes."""
        try:
            sock.setblocking(False)
            sock.send(self._refusal)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(lingering) >= _MAX_LINGERING_REFUSALS:
            sock.close()
            return
        lingering[sock] = time.monotonic() + _REFUSAL_LINGER_SECONDS
        selector.register(sock, selectors.EVENT_READ, "refused")

    def _drain_refused(
        self, selector: selectors.BaseSelector, lingering: dict[socket.socket, float], sock: socket.socket
    ) -> None:
        try:
            if sock.recv(_RECV_BYTES):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._close_refused(selector, lingering, sock)

    @staticmethod
    def _close_refused(
        selector: selectors.BaseSelector, lingering: dict[socket.socket, float], sock: socket.socket
    ) -> None:
        selector.unregister(sock)
        del lingering[sock]
        sock.close()

    def _warn(self, kind: str, message: str, *args: object) -> None:
        """A warning at most every few seconds per kind, so a flood cannot flood the log."""
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_WARNING_INTERVAL_SECONDS) >= _WARNING_INTERVAL_SECONDS:
            self._last_warning[kind] = now
            logger.warning(message, *args)

    def _busy(self, connection: _Connection) -> None:
        connection.busy = True

    def _idle(self, connection: _Connection) -> bool:
        """Mark a connection idle after its answer; False when the server is stopping (close it)."""
        connection.busy = False
        if not self._stop.is_set():
            return True
        # ``drain`` may be waiting for this: tell it now rather than at its next look.
        with self._changed:
            self._changed.notify_all()
        return False

    def _forget(self, connection: _Connection) -> None:
        with self._changed:
            connection.busy = False
            self._connections.discard(connection)
            self._changed.notify_all()

    def _wait(self, seconds: float, done: Callable[[], bool], hurry: bool) -> None:
        deadline = time.monotonic() + seconds
        with self._changed:
            while not done() and not (hurry and self._hurry.is_set()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(min(remaining, 0.1))

    def drain(
        self,
        grace_seconds: float = SHUTDOWN_GRACE_SECONDS,
        on_shutdown: Callable[[], object] | None = None,
        finish_seconds: float = SHUTDOWN_FINISH_SECONDS,
    ) -> int:
        """Shut down after ``serve_forever`` returned: close idle connections, give requests in flight
        ``grace_seconds`` to finish, call ``on_shutdown``, give the workers ``finish_seconds`` to answer
        and end. Returns how many connections were still being served at the end (0: a clean stop)."""
        self._stop.set()
        self.socket.close()
        with self._lock:
            for connection in self._connections:
                if not connection.busy:
                    connection.abort()
        self._wait(grace_seconds, lambda: not any(c.busy for c in self._connections), hurry=True)
        if on_shutdown is not None:
            try:
                on_shutdown()
            except Exception:
                logger.exception("the shutdown hook failed")
        self._wait(finish_seconds, lambda: not any(c.busy for c in self._connections), hurry=False)
        with self._lock:
            for connection in self._connections:
                connection.abort()
        self._wait(1.0, lambda: not self._connections, hurry=False)
        with self._lock:
            return len(self._connections)

    def server_close(self) -> None:
        self.socket.close()
        self._wake_read.close()
        self._wake_write.close()


def serve_forever(
    server: LocalServer,
    on_shutdown: Callable[[], object] | None = None,
    grace_seconds: float = SHUTDOWN_GRACE_SECONDS,
) -> int:
    """Serve until Ctrl-C or SIGTERM, then shut down gracefully (``LocalServer.drain``): requests in
    flight get ``grace_seconds``, then ``on_shutdown`` is called (to cancel what still runs) and the
    workers are waited for. Returns how many requests were abandoned (0 after a clean stop): the caller
    should then end the process without running the interpreter's finalisation over them."""

    def stop(signum: int, frame: FrameType | None) -> None:
        # Only flags and a byte on a socket here; a second signal cuts the grace period short.
        server.shutdown()

    installed: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            installed[signum] = signal.signal(signum, stop)
    try:
        server.serve_forever()
        logger.info("shutting down")
        abandoned = server.drain(grace_seconds, on_shutdown)
        if abandoned:
            logger.warning("%d requests were still running after shutdown; abandoning them", abandoned)
        return abandoned
    finally:
        server.server_close()
        for signum, previous in installed.items():
            signal.signal(signum, previous)
