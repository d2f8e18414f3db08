"""Translation between API Gateway REST proxy events and the core's request/response.

The Lambda door uses it directly; the local door builds the same events from HTTP requests so that
both run the same handler.
"""

from __future__ import annotations

import binascii
from typing import Any, Final

import pybase64

from modelship.errors import BadRequest, ModelshipError, PayloadTooLarge
from modelship.service import InferenceService, Response, error_response

_NO_HEADERS: Final[dict[str, str]] = {}
# Lambda's synchronous response payload limit, for the whole proxy result as JSON. Room is left for
# the status, headers and JSON framing around the body.
MAX_RESPONSE_PAYLOAD_BYTES: Final = 6 * 1024 * 1024
_RESPONSE_FRAMING_BYTES: Final = 4096


def handle_event(service: InferenceService, event: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(event, dict):
        return _not_an_event()
    method = event.get("httpMethod")
    path = event.get("path")
    raw_headers = event.get("headers") or _NO_HEADERS
    if not isinstance(method, str) or not isinstance(path, str) or not isinstance(raw_headers, dict):
        return _not_an_event()
    headers = {str(key).lower(): str(value) for key, value in raw_headers.items()}
    try:
        body = _body_bytes(event, service.settings.max_request_bytes)
    except ModelshipError as error:
        return to_proxy_result(error_response(error))
    return to_proxy_result(service.handle(method, path, headers, body))


def _not_an_event() -> dict[str, Any]:
    return to_proxy_result(error_response(BadRequest("not an API Gateway REST proxy event")))


def _body_bytes(event: dict[str, Any], max_bytes: int) -> bytes:
    body = event.get("body")
    if not body:
        return b""
    if not isinstance(body, str):
        raise BadRequest("not an API Gateway REST proxy event: 'body' must be a string")
    if event.get("isBase64Encoded"):
        # Refuse before decoding: base64 is 4/3 of the payload.
        if len(body) > (max_bytes + 2) // 3 * 4:
            raise PayloadTooLarge(f"request body exceeds the {max_bytes}-byte limit")
        try:
            decoded: bytes = pybase64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("request body is marked base64 but is not valid base64") from None
        return decoded
    encoded: bytes = body.encode("utf-8", "surrogateescape")
    return encoded


def to_proxy_result(response: Response) -> dict[str, Any]:
    if response.is_binary:
        body: str = pybase64.b64encode_as_string(response.body)
    else:
        body = response.body.decode("utf-8")
    if len(body) > MAX_RESPONSE_PAYLOAD_BYTES - _RESPONSE_FRAMING_BYTES and response.status == 200:
        # Lambda would refuse to return it and API Gateway would answer a bare 502; say why instead.
        # (A JSON body may grow a little more when Lambda escapes it; the margin covers ordinary output.)
        return to_proxy_result(
            error_response(
                BadRequest(
                    f"the response would be {len(body)} bytes, over the {MAX_RESPONSE_PAYLOAD_BYTES}-byte "
                    "limit of a Lambda response: request fewer outputs, binary outputs, or a smaller batch"
                )
            )
        )
    return {
        "statusCode": response.status,
        "headers": response.headers(),
        "body": body,
        "isBase64Encoded": response.is_binary,
    }
