"""LocalStack's own entry point (``python -m localstack.runtime.main``), with one fix to its API Gateway.

scripts/localstack.sh runs this file with LocalStack's virtualenv (.venv-localstack), not the project's.

The fix: API Gateway hands a Lambda proxy integration the request body exactly as the client sent it, for
any content type. LocalStack's (2026.3.0) rebuilds the body with rolo's ``restore_payload`` instead, which
for ``application/x-www-form-urlencoded`` (what ``curl -d`` sends when no Content-Type is given) parses the
body as form fields and url-encodes them again: ``{"inputs": ...}`` reaches the function as
``%7B%22inputs%22...=`` (and a ``+`` or ``%xx`` in the body is decoded on the way, so it cannot be undone
downstream). Here the API Gateway's request parser gets the raw bytes instead, as long as nothing has
parsed the form before it; otherwise LocalStack's own rebuild is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The module of LocalStack's next-gen API Gateway that builds the invocation request from the HTTP request.
PARSE_MODULE = "localstack.services.apigateway.next_gen.execute_api.handlers.parse"


def raw_payload(request: Any, rebuild: Callable[[Any], bytes]) -> bytes:
    """The body as the client sent it, or ``rebuild(request)`` when the form parser has consumed it."""
    if getattr(request, "shallow", False):
        return rebuild(request)
    # werkzeug parses a form from the cached raw bytes if there are any, and reads the stream otherwise:
    # only then are the raw bytes gone.
    if "form" not in request.__dict__ or getattr(request, "_cached_data", None):
        data: bytes = request.get_data(cache=True)
        return data
    return rebuild(request)


def patch_api_gateway() -> None:
    import importlib

    parse = importlib.import_module(PARSE_MODULE)
    rebuild = parse.restore_payload
    if getattr(rebuild, "modelship_raw_payload", False):
        return

    def restore_payload(request: Any) -> bytes:
        return raw_payload(request, rebuild)

    restore_payload.modelship_raw_payload = True  # type: ignore[attr-defined]
    setattr(parse, "restore_payload", restore_payload)  # noqa: B010


def main() -> None:
    from localstack.runtime.main import main as localstack_main

    patch_api_gateway()
    localstack_main()


if __name__ == "__main__":
    main()
