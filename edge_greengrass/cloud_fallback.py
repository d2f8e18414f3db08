"""Hybrid serving: a request for a model the device does not hold goes to the cloud endpoint.

``HybridHandler`` wraps the Lambda-style handler the door serves (over HTTP and over IPC). A request on a
model route (``/v2/models/<name>[/versions/<v>][/infer|/ready]``) for a model the device holds is served
here; one for a model it does not hold (or a version it does not hold), or one that ``cloudOnlyModels``
names, is forwarded by ``CloudForwarder`` to the cloud endpoint (API Gateway in front of the same Lambda
handler) over the same Open Inference Protocol, in the request's own mode: a JSON body as JSON, a binary
one (the binary tensor extension) with its ``Inference-Header-Content-Length``. Every answer on a model
route says where it was served, in the same form on both paths: the ``x-modelship-served-by`` header
(``edge`` or ``cloud``), and for an inference the ``served_by`` response parameter (inside the JSON header
part of a binary answer, whose ``Inference-Header-Content-Length`` is fixed to match).

Forwarding is bounded: the request is already bounded by the door; the connection by
``cloudConnectTimeoutMs``, the whole answer by ``cloudReadTimeoutMs`` (a watchdog closes the socket, so a
cloud that trickles cannot hold a request longer), and its size by ``cloudMaxResponseBytes``. Only
``Content-Type``, ``Inference-Header-Content-Length`` and ``Accept`` are forwarded: never a hop-by-hop
header, never the caller's own ``Authorization`` or ``x-api-key``. The device authenticates itself with
SigV4 (``execute-api``, signed with awscrt, credentials from the nucleus's token exchange service) or
with an API key in ``x-api-key``, as API Gateway expects; neither is ever logged.

Failures are explicit JSON errors: 503 when the cloud is unreachable (and while the circuit breaker is
open), 504 when it does not answer in time, 502 when its answer is unusable. The breaker opens after
``cloudBreakerFailures`` unreachable or timed-out attempts in a row, answers 503 at once for
``cloudBreakerOpenMs``, then lets one request through as a probe (half-open): its success closes the
breaker, its failure opens it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import http.client
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
import pybase64
from modelship import __version__
from modelship.core.errors import BadRequest
from modelship.core.names import is_valid_model_name, version_from_text
from modelship.doors.apigw import event_body
from modelship.doors.local_http import LambdaHandler

from edge_greengrass.settings import AUTH_API_KEY, AUTH_SIGV4, CloudSettings

logger = logging.getLogger("edge_greengrass.cloud")

SERVED_BY_HEADER: Final = "x-modelship-served-by"
SERVED_BY_PARAMETER: Final = "served_by"
EDGE: Final = "edge"
CLOUD: Final = "cloud"
API_KEY_HEADER: Final = "x-api-key"
SIGNING_SERVICE: Final = "execute-api"
# What the nucleus gives a component that depends on aws.greengrass.TokenExchangeService (NUC
# tes/TokenExchangeService.java, lifecyclemanager/ShellRunner.java).
TES_URI_ENV: Final = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
TES_TOKEN_ENV: Final = "AWS_CONTAINER_AUTHORIZATION_TOKEN"  # noqa: S105 (a variable's name)
REGION_ENV: Final = "AWS_REGION"
TES_TIMEOUT_SECONDS: Final = 2.0
MAX_CREDENTIALS_BYTES: Final = 64 * 1024
# Credentials are fetched again this long before they expire (the nucleus refreshes 5 minutes ahead too).
CREDENTIALS_MARGIN_SECONDS: Final = 300.0
SIGNING_TIMEOUT_SECONDS: Final = 5.0
MAX_UPSTREAM_MESSAGE_CHARS: Final = 300
FORWARDED_METHODS: Final = frozenset({"GET", "HEAD", "POST"})
# An allowlist: everything else (hop-by-hop headers, Host, Cookie, the caller's Authorization and
# x-api-key, X-Forwarded-*) stays on the device.
FORWARDED_HEADERS: Final = {
    "content-type": "Content-Type",
    "inference-header-content-length": "Inference-Header-Content-Length",
    "accept": "Accept",
    # The body goes as it came: a gzip request stays gzip, and the cloud (API Gateway, or the function's
    # own door) inflates it within its size cap.
    "content-encoding": "Content-Encoding",
}
_EXECUTE_API_HOST: Final = re.compile(r"[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com")
_DIGITS: Final = re.compile(r"[0-9]{1,19}")
_SIGNED_HEADERS: Final = frozenset({"authorization", "x-amz-date", "x-amz-security-token"})
_JSON_HEADERS: Final = {"Content-Type": "application/json"}


# --- routes ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    version: int | None
    action: str  # "infer", "ready" or "metadata"


def model_route(path: str) -> ModelRoute | None:
    """The model route ``path`` names (as the core routes it, trailing '/' ignored), or None for any other
    path, or a model route the core would refuse (it answers those itself)."""
    parts = path.rstrip("/").split("/")
    if len(parts) < 4 or parts[0] or parts[1] != "v2" or parts[2] != "models":
        return None
    name, tail = parts[3], parts[4:]
    version: int | None = None
    if len(tail) >= 2 and tail[0] == "versions":
        version = version_from_text(tail[1])
        if version is None:
            return None
        tail = tail[2:]
    if tail == ["infer"]:
        action = "infer"
    elif tail == ["ready"]:
        action = "ready"
    elif not tail:
        action = "metadata"
    else:
        return None
    if not is_valid_model_name(name):
        return None
    return ModelRoute(name, version, action)


# --- where it was served -----------------------------------------------------------------------------


def add_served_by(body: bytes, header_length: int | None, where: str) -> tuple[bytes, int | None]:
    """An inference response with ``parameters.served_by`` set: in the JSON document, or in the JSON
    header part of a binary response (the binary sections are kept byte for byte; the returned length is
    the new header part's). ``ValueError`` if the response is not an OIP response document."""
    split = len(body) if header_length is None else header_length
    if not 0 <= split <= len(body):
        raise ValueError("the JSON header length does not fit the body")
    document = orjson.loads(body[:split])
    if not isinstance(document, dict):
        raise TypeError("the response is not a JSON object")
    parameters = document.get("parameters")
    document["parameters"] = {
        **(parameters if isinstance(parameters, dict) else {}),
        SERVED_BY_PARAMETER: where,
    }
    header = orjson.dumps(document)
    if header_length is None:
        return header, None
    return header + body[split:], len(header)


def mark_served_by(result: dict[str, Any], where: str, route: ModelRoute) -> dict[str, Any]:
    """A proxy result with the served-by header, and for a successful inference the served-by parameter.
    An inference answer that cannot carry the parameter is a 502 (only a cloud's answer can be one)."""
    headers = dict(result.get("headers") or {})
    status = int(result.get("statusCode", 0))
    marked = {**result, "headers": headers}
    if route.action == "infer" and status == 200:
        binary = bool(result.get("isBase64Encoded"))
        raw_length = _header_value(headers, "inference-header-content-length")
        try:
            payload = result.get("body") or ""
            body = pybase64.b64decode(payload) if binary else payload.encode("utf-8")
            header_length = _parse_length(raw_length) if raw_length is not None else None
            body, header_length = add_served_by(body, header_length, where)
        except (ValueError, TypeError):
            logger.error("an inference answer from the %s is not an Open Inference Protocol response", where)
            marked = error_result(
                502,
                f"the {where} answered an inference with a body that is not an Open "
                "Inference Protocol response",
            )
            headers = marked["headers"]
        else:
            marked["body"] = pybase64.b64encode_as_string(body) if binary else body.decode("utf-8")
            if header_length is not None:
                for name in [name for name in headers if name.lower() == "inference-header-content-length"]:
                    del headers[name]
                headers["Inference-Header-Content-Length"] = str(header_length)
    headers[SERVED_BY_HEADER] = where
    return marked


def error_result(status: int, message: str, extra_headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {**_JSON_HEADERS, **(extra_headers or {})},
        "body": json.dumps({"error": message}),
        "isBase64Encoded": False,
    }


def _header_value(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return str(value)
    return None


def _parse_length(text: str) -> int:
    if not _DIGITS.fullmatch(text.strip()):
        raise ValueError("Inference-Header-Content-Length is not a number")
    return int(text)


# --- the circuit breaker -----------------------------------------------------------------------------

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half-open"


class CircuitBreaker:
    """Closed: every request goes. ``failures`` unreachable attempts in a row open it: requests are
    refused at once for ``open_seconds``. Then it is half-open: the next request goes as a probe and the
    others are refused while it runs; the probe's success closes it, its failure opens it again."""

    def __init__(
        self, failures: int, open_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures_to_open = failures
        self.open_seconds = open_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CLOSED
        self._failures = 0
        self._opened_at = 0.0

    def acquire(self) -> float | None:
        """None if a request may go now, else the seconds until the next probe may go."""
        with self._lock:
            if self.state == CLOSED:
                return None
            waited = self._clock() - self._opened_at
            if self.state == OPEN and waited >= self.open_seconds:
                self.state = HALF_OPEN
                logger.info("cloud circuit half-open: the next request is a probe")
                return None
            return max(0.0, self.open_seconds - waited)

    def succeeded(self) -> None:
        with self._lock:
            if self.state != CLOSED:
                logger.info("cloud circuit closed: the cloud endpoint answered again")
            self.state = CLOSED
            self._failures = 0

    def failed(self) -> None:
        with self._lock:
            if self.state == HALF_OPEN:
                self._open("the probe failed")
            elif self.state == CLOSED:
                self._failures += 1
                if self._failures >= self.failures_to_open:
                    self._open(f"{self._failures} attempts in a row failed")

    def abandoned(self) -> None:
        """A request that went but proved nothing about the cloud (no credentials to sign it): a probe's
        turn goes to the next request."""
        with self._lock:
            if self.state == HALF_OPEN:
                self.state = OPEN
                self._opened_at = self._clock() - self.open_seconds

    def _open(self, reason: str) -> None:
        self.state = OPEN
        self._opened_at = self._clock()
        logger.warning(
            "cloud circuit open (%s): requests for the cloud answer 503 for %g s, then one probes",
            reason,
            self.open_seconds,
        )


# --- credentials -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)
    # Seconds since the epoch; None when the source gave no expiry.
    expires_at: float | None = None


class ForwardError(Exception):
    """A forward that ended without a usable answer: the status and message the caller gets.
    ``unreachable`` counts against the circuit breaker; ``neutral`` says nothing about the cloud."""

    def __init__(
        self, status: int, message: str, *, unreachable: bool = False, neutral: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.unreachable = unreachable
        self.neutral = neutral


class TokenExchangeCredentials:
    """The credentials of the nucleus's token exchange service: ``GET $AWS_CONTAINER_CREDENTIALS_FULL_URI``
    with ``Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN`` answers ``{AccessKeyId, SecretAccessKey,
    Token, Expiration}``. Cached until shortly before they expire; one fetch at a time."""

    def __init__(self, environ: Mapping[str, str], clock: Callable[[], float] = time.time) -> None:
        self._uri = environ.get(TES_URI_ENV, "")
        self._token = environ.get(TES_TOKEN_ENV, "")
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: AwsCredentials | None = None

    def problem(self) -> str | None:
        """Why no credentials can be had at all, or None."""
        if not self._uri:
            return (
                f"{TES_URI_ENV} is not set: the component needs a dependency on "
                "aws.greengrass.TokenExchangeService for cloudAuth sigv4 (package it with that auth)"
            )
        if not self._token:
            return f"{TES_TOKEN_ENV} is not set: the nucleus gives it to every component it starts"
        parts = urlsplit(self._uri)
        if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1", "::1"):
            return f"{TES_URI_ENV} must be an http:// URL on this device, got {self._uri[:100]!r}"
        return None

    def get(self) -> AwsCredentials:
        with self._lock:
            cached = self._cached
            if cached is not None and (
                cached.expires_at is None or cached.expires_at - CREDENTIALS_MARGIN_SECONDS > self._clock()
            ):
                return cached
            self._cached = self._fetch()
            return self._cached

    def _fetch(self) -> AwsCredentials:
        problem = self.problem()
        if problem is not None:
            raise ForwardError(503, f"no AWS credentials to sign the cloud request: {problem}", neutral=True)
        parts = urlsplit(self._uri)
        host = parts.hostname or "localhost"
        path = parts.path or "/"
        connection = http.client.HTTPConnection(host, parts.port or 80, timeout=TES_TIMEOUT_SECONDS)
        try:
            connection.request("GET", path, headers={"Authorization": self._token})
            response = connection.getresponse()
            body = response.read(MAX_CREDENTIALS_BYTES + 1)
        except (OSError, http.client.HTTPException) as error:
            raise ForwardError(
                503, f"the token exchange service gave no credentials: {_describe(error)}", neutral=True
            ) from None
        finally:
            connection.close()
        if response.status != 200 or len(body) > MAX_CREDENTIALS_BYTES:
            raise ForwardError(
                503,
                f"the token exchange service answered {response.status} instead of credentials",
                neutral=True,
            )
        try:
            document = json.loads(body)
            credentials = AwsCredentials(
                access_key_id=_required_text(document, "AccessKeyId"),
                secret_access_key=_required_text(document, "SecretAccessKey"),
                session_token=document.get("Token") or None,
                expires_at=_expiry(document.get("Expiration")),
            )
        except (ValueError, TypeError, AttributeError):
            raise ForwardError(
                503, "the token exchange service answered something that is not credentials", neutral=True
            ) from None
        logger.info(
            "AWS credentials from the token exchange service (access key %s)", credentials.access_key_id
        )
        return credentials


def _required_text(document: Mapping[str, Any], key: str) -> str:
    value = document[key]
    if not isinstance(value, str) or not value:
        raise ValueError(key)
    return value


def _expiry(raw: Any) -> float | None:
    if raw is None:
        return None
    moment = datetime.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def sigv4_headers(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: AwsCredentials,
    region: str,
    when: datetime.datetime | None = None,
) -> dict[str, str]:
    """``Authorization``, ``X-Amz-Date`` and ``X-Amz-Security-Token`` for a request to API Gateway,
    computed by awscrt (installed on the device with the IPC SDK). ``headers`` must hold ``host`` and every
    header that will be sent, except those three."""
    from awscrt.auth import (
        AwsCredentialsProvider,
        AwsSignatureType,
        AwsSigningAlgorithm,
        AwsSigningConfig,
        aws_sign_request,
    )
    from awscrt.http import HttpHeaders, HttpRequest

    request = HttpRequest(method, path, HttpHeaders(list(headers.items())))
    config = AwsSigningConfig(
        algorithm=AwsSigningAlgorithm.V4,
        signature_type=AwsSignatureType.HTTP_REQUEST_HEADERS,
        credentials_provider=AwsCredentialsProvider.new_static(
            credentials.access_key_id, credentials.secret_access_key, credentials.session_token
        ),
        region=region,
        service=SIGNING_SERVICE,
        date=when,
        signed_body_value=hashlib.sha256(body).hexdigest(),
    )
    signed = aws_sign_request(request, config).result(SIGNING_TIMEOUT_SECONDS)
    return {name: value for name, value in signed.headers if name.lower() in _SIGNED_HEADERS}


def region_from_host(host: str) -> str:
    match = _EXECUTE_API_HOST.fullmatch(host)
    return match.group(1) if match else ""


# --- forwarding --------------------------------------------------------------------------------------


class CloudForwarder:
    """Sends one request to the cloud endpoint and turns its answer into a proxy result."""

    def __init__(
        self,
        settings: CloudSettings,
        environ: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        parts = urlsplit(settings.endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        # The Host header as the URL spells it: what API Gateway and the signature expect.
        self._host_header = parts.netloc
        self._base_path = parts.path.rstrip("/")
        self.region = settings.region or region_from_host(self._host) or environ.get(REGION_ENV, "")
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_open_seconds, clock)
        self.credentials = TokenExchangeCredentials(environ) if settings.auth == AUTH_SIGV4 else None
        self._ssl = ssl.create_default_context() if self._https else None

    def problems(self) -> list[str]:
        """What will make every forward fail, for the start-up log."""
        found = []
        if self.credentials is not None:
            problem = self.credentials.problem()
            if problem is not None:
                found.append(problem)
            if not self.region:
                found.append(f"no region to sign for: set cloudRegion (or {REGION_ENV})")
        return found

    def forward(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        wait = self.breaker.acquire()
        if wait is not None:
            return error_result(
                503,
                f"the cloud endpoint is unreachable (circuit open): the next attempt is in {wait:.1f} s",
                {"Retry-After": str(max(1, int(wait + 0.999)))},
            )
        try:
            result = self._exchange(method, path, headers, body)
        except ForwardError as error:
            if error.neutral:
                self.breaker.abandoned()
            elif error.unreachable:
                self.breaker.failed()
            else:
                self.breaker.succeeded()
            logger.warning("forwarding %s %s to the cloud: %s", method, path[:200], error.message)
            return error_result(error.status, error.message)
        self.breaker.succeeded()
        return result

    def _request_headers(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        sent = {"host": self._host_header, "user-agent": f"modelship-edge/{__version__}"}
        for name, value in headers.items():
            if name.lower() in FORWARDED_HEADERS:
                sent[name.lower()] = value
        if body or method == "POST":
            sent["content-length"] = str(len(body))
        if self.settings.auth == AUTH_API_KEY:
            sent[API_KEY_HEADER] = self.settings.api_key
        elif self.credentials is not None:
            if not self.region:
                raise ForwardError(
                    503, "no region to sign the cloud request for: set cloudRegion", neutral=True
                )
            credentials = self.credentials.get()
            signed = {name: value for name, value in sent.items() if name != "user-agent"}
            sent.update(sigv4_headers(method, path, signed, body, credentials, self.region))
        return sent

    def _exchange(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        target = self._base_path + path
        sent = self._request_headers(method, target, headers, body)
        settings = self.settings
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=settings.connect_timeout_seconds, context=self._ssl
            )
        else:
            connection = http.client.HTTPConnection(
                self._host, self._port, timeout=settings.connect_timeout_seconds
            )
        expired = threading.Event()

        def expire() -> None:
            # The whole answer's deadline: a cloud that sends a byte at a time cannot hold the request.
            expired.set()
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(settings.connect_timeout_seconds + settings.read_timeout_seconds, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            try:
                connection.connect()
            except TimeoutError:
                raise ForwardError(
                    504,
                    "the cloud endpoint did not accept a connection within "
                    f"{settings.connect_timeout_seconds:g} s",
                    unreachable=True,
                ) from None
            except OSError as error:
                raise ForwardError(
                    503, f"the cloud endpoint is unreachable: {_describe(error)}", unreachable=True
                ) from None
            if connection.sock is None:  # connect() returned without a socket: nothing to read from
                raise ForwardError(503, "the cloud endpoint is unreachable: no connection", unreachable=True)
            connection.sock.settimeout(settings.read_timeout_seconds)
            try:
                connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in sent.items():
                    connection.putheader(name, value)
                connection.endheaders(body if body else None)
                response = connection.getresponse()
                data = self._read_body(response, method)
            except TimeoutError:
                raise self._timed_out() from None
            except http.client.HTTPException as error:
                if expired.is_set():
                    raise self._timed_out() from None
                raise ForwardError(
                    502, f"the cloud endpoint's answer is not HTTP: {_describe(error)}"
                ) from None
            except OSError as error:
                if expired.is_set():
                    raise self._timed_out() from None
                raise ForwardError(
                    503, f"the connection to the cloud endpoint broke: {_describe(error)}", unreachable=True
                ) from None
        finally:
            watchdog.cancel()
            connection.close()
        return self._result(response, data)

    def _timed_out(self) -> ForwardError:
        return ForwardError(
            504,
            f"the cloud endpoint did not answer within {self.settings.read_timeout_seconds:g} s",
            unreachable=True,
        )

    def _read_body(self, response: http.client.HTTPResponse, method: str) -> bytes:
        limit = self.settings.max_response_bytes
        declared = response.getheader("Content-Length")
        if declared is not None and _DIGITS.fullmatch(declared.strip()) and int(declared) > limit:
            raise ForwardError(502, f"the cloud endpoint's answer is larger than {limit} bytes")
        if method == "HEAD":
            return b""
        data = response.read(limit + 1)
        if len(data) > limit:
            raise ForwardError(502, f"the cloud endpoint's answer is larger than {limit} bytes")
        return data

    def _result(self, response: http.client.HTTPResponse, data: bytes) -> dict[str, Any]:
        status = response.status
        if 200 <= status < 300:
            content_type = response.getheader("Content-Type") or "application/json"
            raw_length = response.getheader("Inference-Header-Content-Length")
            if raw_length is None:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    return _refused_answer(
                        error_result(502, "the cloud endpoint answered a body that is not UTF-8")
                    )
                return {
                    "statusCode": status,
                    "headers": {"Content-Type": content_type},
                    "body": text,
                    "isBase64Encoded": False,
                }
            try:
                header_length = _parse_length(raw_length)
            except ValueError:
                header_length = -1
            if not 0 <= header_length <= len(data):
                return _refused_answer(
                    error_result(
                        502,
                        "the cloud endpoint answered an Inference-Header-Content-Length that "
                        "does not fit its body",
                    )
                )
            return {
                "statusCode": status,
                "headers": {
                    "Content-Type": content_type,
                    "Inference-Header-Content-Length": str(header_length),
                },
                "body": pybase64.b64encode_as_string(data),
                "isBase64Encoded": True,
            }
        message = _upstream_message(data)
        if status in (401, 403):
            return _refused_answer(
                error_result(
                    502,
                    f"the cloud endpoint refused the device's credentials ({status})"
                    + (f": {message}" if message else ""),
                )
            )
        if 400 <= status < 600:
            if message is not None and _is_own_error(data):
                return error_result(status, message)
            suffix = f": {message}" if message else ""
            return error_result(status, f"the cloud endpoint answered {status}{suffix}")
        return _refused_answer(
            error_result(502, f"the cloud endpoint answered an unexpected status {status}")
        )


def _refused_answer(result: dict[str, Any]) -> dict[str, Any]:
    logger.warning("cloud answer refused: %s", result["body"][:400])
    return result


def _upstream_message(data: bytes) -> str | None:
    """The ``error`` (modelship) or ``message`` (API Gateway) of an error body, shortened."""
    try:
        document = json.loads(data[:65536])
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    for key in ("error", "message", "Message"):
        value = document.get(key)
        if isinstance(value, str) and value:
            return value[:MAX_UPSTREAM_MESSAGE_CHARS]
    return None


def _is_own_error(data: bytes) -> bool:
    try:
        document = json.loads(data[:65536])
    except (ValueError, RecursionError):
        return False
    return isinstance(document, dict) and isinstance(document.get("error"), str)


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --- the handler ---------------------------------------------------------------------------------------


class HybridHandler:
    """The door's handler with the fallback: a Lambda-style handler, safe from any thread."""

    def __init__(
        self,
        handler: LambdaHandler,
        held: Mapping[str, frozenset[int]],
        forwarder: CloudForwarder,
    ) -> None:
        self.handler = handler
        self.held = dict(held)
        self.forwarder = forwarder
        self.cloud_only = forwarder.settings.cloud_only_models

    def goes_to_cloud(self, route: ModelRoute) -> bool:
        if route.name in self.cloud_only:
            return True
        versions = self.held.get(route.name)
        if versions is None:
            return True
        return route.version is not None and route.version not in versions

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        path = event.get("path") if isinstance(event, dict) else None
        method = event.get("httpMethod") if isinstance(event, dict) else None
        route = model_route(path) if isinstance(path, str) else None
        if route is None or not isinstance(path, str) or not isinstance(method, str):
            # Not a model route, or not an event: the local handler answers (and refuses) as it does alone.
            return self.handler(event, context)
        if method in FORWARDED_METHODS and self.goes_to_cloud(route):
            try:
                body = event_body(event)
            except BadRequest as error:
                return mark_served_by(error_result(error.status, error.message), EDGE, route)
            raw_headers = event.get("headers") or {}
            headers = (
                {str(k): str(v) for k, v in raw_headers.items()} if isinstance(raw_headers, dict) else {}
            )
            return mark_served_by(self.forwarder.forward(method, path, headers, body), CLOUD, route)
        return mark_served_by(self.handler(event, context), EDGE, route)
