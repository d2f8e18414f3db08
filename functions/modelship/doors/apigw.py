"""The API Gateway door: REST proxy events in, proxy results out, around the core's ``InferenceService``.

The Lambda entry (``functions/inference/app.py``) wraps ``handle_event`` in Powertools; ``modelship
serve`` runs the same translation behind the local HTTP door, which builds the same events, so a request
gets the same response through every door, content codings included (``doors.compression``).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from typing import Any, Final

import pybase64

from modelship.core.errors import BadRequest, ModelshipError
from modelship.core.messages import Response, error_response
from modelship.core.service import InferenceService
from modelship.doors.compression import MIN_COMPRESSED_BYTES, VARY_HEADER, decode_body, encode_body

# A Lambda handler's shape: (event, context) -> proxy result.
ProxyHandler = Callable[[dict[str, Any], Any], dict[str, Any]]

_NO_HEADERS: Final[dict[str, str]] = {}
# Lambda's synchronous response payload limit, for the whole proxy result as JSON. Room is left for
# the status, headers and JSON framing around the body.
MAX_RESPONSE_PAYLOAD_BYTES: Final = 6 * 1024 * 1024
_RESPONSE_FRAMING_BYTES: Final = 4096


def handle_event(service: InferenceService, event: dict[str, Any]) -> dict[str, Any]:
    """One API Gateway REST proxy event through the core. Never raises; safe from any thread."""
    if not isinstance(event, dict):
        return _not_an_event()
    method = event.get("httpMethod")
    path = event.get("path")
    raw_headers = event.get("headers") or _NO_HEADERS
    if not isinstance(method, str) or not isinstance(path, str) or not isinstance(raw_headers, dict):
        return _not_an_event()
    # API Gateway's header names and values are strings; anything else is made one, as before.
    headers = {
        (key if type(key) is str else str(key)).lower(): value if type(value) is str else str(value)
        for key, value in raw_headers.items()
    }
    accept_encoding = headers.get("accept-encoding")
    try:
        body = event_body(event)
        content_encoding = headers.get("content-encoding")
        if content_encoding is not None:
            content_encoding = _all_values(event, "content-encoding", content_encoding)
            # Inflated within the cap, which the core then checks again: the same 413 either way.
            body = decode_body(body, content_encoding, service.settings.max_request_bytes)
    except ModelshipError as error:
        return to_proxy_result(error_response(error), accept_encoding)
    return to_proxy_result(service.handle(method, path, headers, body), accept_encoding)


def _all_values(event: dict[str, Any], name: str, last: str) -> str:
    """Every line of header ``name`` as one list (RFC 9110, 5.3): ``headers`` keeps only the last of
    repeated lines, ``multiValueHeaders`` keeps them all. ``last`` when there is one line."""
    multi = event.get("multiValueHeaders")
    if isinstance(multi, dict):
        for key, values in multi.items():
            if isinstance(key, str) and key.lower() == name and isinstance(values, list) and len(values) > 1:
                return ", ".join(str(value) for value in values)
    return last


def _not_an_event() -> dict[str, Any]:
    return to_proxy_result(error_response(BadRequest("not an API Gateway REST proxy event")))


class ServiceHandler:
    """``handle_event`` as a plain Lambda-style handler, without Powertools: what the local door runs.
    It names the service behind it (``service``), so the local door's ``/metrics`` can report the models
    it has loaded; ``inference.app.handler`` does the same."""

    __slots__ = ("service",)

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        return handle_event(self.service, event)


def proxy_handler(service: InferenceService) -> ServiceHandler:
    return ServiceHandler(service)


def event_body(event: dict[str, Any]) -> bytes:
    """The request body an API Gateway proxy event carries, as bytes (base64 decoded); ``BadRequest``
    for a body that is not one. As sent: a ``Content-Encoding`` is the caller's to undo."""
    body = event.get("body")
    if not body:
        return b""
    if not isinstance(body, str):
        raise BadRequest("not an API Gateway REST proxy event: 'body' must be a string")
    if event.get("isBase64Encoded"):
        # The size limit is the core's (messages.check_request_size), on the decoded bytes: Lambda has
        # already capped the event at 6 MB, so decoding first costs at most that.
        try:
            decoded: bytes = pybase64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("request body is marked base64 but is not valid base64") from None
        return decoded
    try:
        encoded: bytes = body.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate: JSON can spell one ("\\ud800"), UTF-8 cannot.
        raise BadRequest("request body is not valid UTF-8 text") from None
    return encoded


def to_proxy_result(response: Response, accept_encoding: str | None = None) -> dict[str, Any]:
    """The proxy result for ``response``, compressed when ``accept_encoding`` (the request's
    ``Accept-Encoding``) takes it; a compressed body goes base64-encoded, like a binary one."""
    raw = response.body
    headers = response.headers()
    is_binary = response.header_length is not None
    if len(raw) > MIN_COMPRESSED_BYTES:
        headers = {**headers, **VARY_HEADER}
        if accept_encoding is not None:
            raw, coding = encode_body(raw, accept_encoding)
            if coding is not None:
                headers["Content-Encoding"] = coding
                is_binary = True
    if is_binary:
        body: str = pybase64.b64encode_as_string(raw)
    else:
        body = raw.decode("utf-8")
    if len(body) > MAX_RESPONSE_PAYLOAD_BYTES - _RESPONSE_FRAMING_BYTES and response.status == 200:
        # Lambda would refuse to return it and API Gateway would answer a bare 502; say why instead.
        # (A JSON body may grow a little more when Lambda escapes it; the margin covers ordinary output.)
        return to_proxy_result(
            error_response(
                BadRequest(
                    f"the response would be {len(body)} bytes, over the {MAX_RESPONSE_PAYLOAD_BYTES}-byte "
                    "limit of a Lambda response: request fewer outputs, binary outputs, or a smaller batch"
                )
            ),
            accept_encoding,
        )
    return {
        "statusCode": response.status,
        "headers": headers,
        "body": body,
        "isBase64Encoded": is_binary,
    }
