"""What the core and its doors exchange: the ``Response``, JSON error bodies and the request-size rule.

Imports no onnxruntime or numpy, so a door can refuse a request before the core is involved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from modelship.core.errors import MethodNotAllowed, ModelshipError, PayloadTooLarge

JSON: Final = "application/json"
OCTET_STREAM: Final = "application/octet-stream"
HEADER_LENGTH_HEADER: Final = "inference-header-content-length"
INTERNAL_ERROR_BODY: Final = b'{"error":"internal server error"}'


@dataclass(slots=True)
class Response:
    """One answer of the core. Immutable in practice: doors read it and build their own reply."""

    status: int
    body: bytes
    content_type: str = JSON
    # Set when binary tensors follow a JSON header of this many bytes.
    header_length: int | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def is_binary(self) -> bool:
        return self.header_length is not None

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type}
        if self.extra_headers:
            headers.update(self.extra_headers)
        if self.header_length is not None:
            headers["Inference-Header-Content-Length"] = str(self.header_length)
        return headers


def json_response(status: int, document: Any) -> Response:
    return Response(status, orjson.dumps(document))


def error_response(error: ModelshipError) -> Response:
    response = json_response(error.status, {"error": error.message})
    if isinstance(error, MethodNotAllowed):
        response.extra_headers["Allow"] = ", ".join(error.allowed)
    return response


def check_request_size(length: int, limit: int) -> None:
    """The one request-size rule. The core applies it to every body it is handed; a door that can learn
    the size earlier (the HTTP door from Content-Length, before reading) asks here, so both answer the
    same 413."""
    if length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the {limit}-byte limit")
