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


def handle_event(service: InferenceService, event: dict[str, Any]) -> dict[str, Any]:
    try:
        method = event["httpMethod"]
        path = event["path"]
    except (KeyError, TypeError):
        return to_proxy_result(error_response(BadRequest("not an API Gateway REST proxy event")))
    raw_headers = event.get("headers") or _NO_HEADERS
    headers = {key.lower(): value for key, value in raw_headers.items()}
    try:
        body = _body_bytes(event, service.settings.max_request_bytes)
    except ModelshipError as error:
        return to_proxy_result(error_response(error))
    return to_proxy_result(service.handle(method, path, headers, body))


def _body_bytes(event: dict[str, Any], max_bytes: int) -> bytes:
    body = event.get("body")
    if not body:
        return b""
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
        return {
            "statusCode": response.status,
            "headers": response.headers(),
            "body": pybase64.b64encode_as_string(response.body),
            "isBase64Encoded": True,
        }
    return {
        "statusCode": response.status,
        "headers": response.headers(),
        "body": response.body.decode("utf-8"),
        "isBase64Encoded": False,
    }
