"""The local HTTP door: a threaded HTTP/1.1 server in front of a Lambda-style handler.

Each request becomes an API Gateway REST proxy event (body base64-encoded when binary, as API
Gateway does with binaryMediaTypes), and the proxy result becomes the HTTP response. Responses are
written with a single send and TCP_NODELAY, so keep-alive clients never wait on Nagle's algorithm.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
import pybase64

from modelship.core.errors import PayloadTooLarge
from modelship.core.messages import check_request_size

logger = logging.getLogger("modelship.http")

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]
IDLE_CONNECTION_TIMEOUT_SECONDS: Final = 60
LINGER_SECONDS: Final = 2.0
LINGER_MAX_BYTES: Final = 64 * 1024 * 1024
_BINARY_MARKERS: Final = ("inference-header-content-length",)


@dataclass
class LocalLambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_name: str = "modelship-local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 2048
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:modelship-local"
    log_group_name: str = "/aws/lambda/modelship-local"
    log_stream_name: str = "local"
    deadline: float = field(default_factory=lambda: time.monotonic() + 29)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def build_proxy_event(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes, request_id: str
) -> dict[str, Any]:
    split = urlsplit(target)
    path = unquote(split.path)
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in headers:
        single[key] = value
        multi.setdefault(key, []).append(value)
    query = parse_qsl(split.query, keep_blank_values=True)
    is_binary = any(key.lower() in _BINARY_MARKERS for key, _ in headers)
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
        "queryStringParameters": dict(query) or None,
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


class ProxyRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "modelship"
    timeout = IDLE_CONNECTION_TIMEOUT_SECONDS
    server: LocalServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET  # noqa: N815

    def _proxy(self) -> None:
        started = time.perf_counter()
        status, body = self._proxy_once()
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                '%s "%s %s" %d %dB %.2fms',
                self.client_address[0],
                self.command,
                self.path[:200],
                status,
                len(body),
                (time.perf_counter() - started) * 1000,
            )

    def _proxy_once(self) -> tuple[int, bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return self._send_error_json(411, "chunked bodies are not supported; send Content-Length")
        length = self._content_length()
        if length is None:
            self.close_connection = True
            return self._send_error_json(400, "invalid or conflicting Content-Length")
        refusal = self._refuse_size(length)
        if refusal is not None:
            self.close_connection = True
            answer = self._send_error_json(refusal.status, refusal.message)
            self._discard_body(length)
            return answer
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            # The client went away mid-body: there is no one to answer, and half a request is not one.
            self.close_connection = True
            return 400, b""
        context = LocalLambdaContext()
        event = build_proxy_event(
            self.command, self.path, list(self.headers.items()), body, context.aws_request_id
        )
        try:
            result = self.server.lambda_handler(event, context)
            status = int(result["statusCode"])
            headers = dict(result.get("headers") or {})
            payload = result.get("body") or ""
            raw = pybase64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode("utf-8")
        except Exception:
            # API Gateway answers 502 when the integration fails; so do we, without leaking a traceback.
            logger.exception("the Lambda handler failed")
            return self._send_error_json(502, "internal server error")
        self._send(status, headers, raw)
        return status, raw

    def _content_length(self) -> int | None:
        # Differing duplicates would let a request hide inside another's body (RFC 9112, 6.3).
        values = {value.strip() for value in self.headers.get_all("Content-Length") or ["0"]}
        if len(values) != 1:
            return None
        (value,) = values
        return int(value) if value.isascii() and value.isdigit() else None

    def handle_expect_100(self) -> bool:
        # Refuse an oversized body before inviting the client to send it.
        length = self._content_length()
        refusal = self._refuse_size(length) if length is not None else None
        if refusal is not None:
            self.close_connection = True
            self._send_error_json(refusal.status, refusal.message)
            return False
        return super().handle_expect_100()

    def _refuse_size(self, length: int) -> PayloadTooLarge | None:
        # The core's rule, asked before the body is read, so a huge body is never buffered.
        try:
            check_request_size(length, self.server.max_request_bytes)
        except PayloadTooLarge as error:
            return error
        return None

    def _discard_body(self, length: int) -> None:
        """Lingering close: read (and drop) a refused body for a bounded time, so a client still
        sending it gets to read our 413 instead of a broken pipe."""
        deadline = time.monotonic() + LINGER_SECONDS
        remaining = min(length, LINGER_MAX_BYTES)
        try:
            self.connection.settimeout(LINGER_SECONDS)
            while remaining > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass

    def _send_error_json(self, status: int, message: str) -> tuple[int, bytes]:
        body = orjson.dumps({"error": message})
        self._send(status, {"Content-Type": "application/json"}, body)
        return status, body

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Called by the base class for malformed requests; answer in JSON like every other error.
        self.close_connection = True
        self._send_error_json(code, message or HTTPStatus(code).phrase)

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [f"HTTP/1.1 {status} {phrase}"]
        lines.extend(f"{key}: {value}" for key, value in headers.items() if key.lower() != "content-length")
        lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            # HTTP/1.0 closes by default; say we keep it open, or the client waits for EOF.
            lines.append("Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body if self.command != "HEAD" else head)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(format, *args)


class LocalServer(ThreadingHTTPServer):
    """One thread per connection, each running ``lambda_handler`` for its requests; the handler must be
    thread-safe. ``serve_forever`` below runs it until Ctrl-C or SIGTERM."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], lambda_handler: LambdaHandler, max_request_bytes: int
    ) -> None:
        super().__init__(address, ProxyRequestHandler)
        self.lambda_handler = lambda_handler
        self.max_request_bytes = max_request_bytes


def serve_forever(server: LocalServer) -> None:
    """Serve until Ctrl-C or SIGTERM, then stop accepting and close the socket."""

    def stop(signum: int, frame: FrameType | None) -> None:
        # Once: a second SIGTERM (a supervisor and its child both forwarding one) must not raise again
        # in the middle of interpreter shutdown; it ends the process quietly instead.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        logger.info("shutting down")
    finally:
        server.server_close()
