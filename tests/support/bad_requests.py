"""Bad requests a serving endpoint must answer with a clear 4xx/503 JSON error, and survive.

Drawn from Triton's and KServe's own test suites (see shared notes). Shared by the unit tests (core
and API Gateway events) and the functional tests (a real HTTP server).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_REQUEST_BYTES = 6 * 1024 * 1024


@dataclass(frozen=True)
class BadRequestCase:
    id: str
    path: str
    body: bytes = b""
    status: int = 400
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    # A fragment the error message must contain, so the error is the right one, not any 4xx.
    message: str = ""
    # False where API Gateway itself answers (a path outside the API's /v2 resource), so the case
    # never reaches the function behind it.
    reaches_the_function: bool = True

    @property
    def model(self) -> str | None:
        """The model the path names, if any."""
        parts = self.path.split("/")
        return parts[3] if len(parts) > 3 and parts[1:3] == ["v2", "models"] else None


def _iris(inputs: list[Any], **extra: object) -> bytes:
    return orjson.dumps({"inputs": inputs, **extra})


_BOOL_HEADER = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}}]}
)
# iris's input declared as 12 binary bytes, where [1, 4] FP32 needs 16.
_BINARY_12_BYTES_HEADER = _iris(
    [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]
)
GOOD_INPUT: dict[str, Any] = {
    "name": "input",
    "shape": [1, 4],
    "datatype": "FP32",
    "data": [5.1, 3.5, 1.4, 0.2],
}
IRIS = "/v2/models/iris/infer"

BAD_REQUESTS = [
    BadRequestCase("not-json", IRIS, b"{this is not json", message="not valid JSON"),
    BadRequestCase("json-nested-deep", IRIS, b"[" * 5000 + b"]" * 5000, message="not valid JSON"),
    BadRequestCase("json-array-body", IRIS, b"[1, 2, 3]", message="JSON object"),
    BadRequestCase("missing-inputs", IRIS, b"{}", message="'inputs'"),
    BadRequestCase("empty-inputs", IRIS, _iris([]), message="'inputs'"),
    BadRequestCase(
        "missing-required-input",
        "/v2/models/add_sub/infer",
        orjson.dumps({"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
        message="missing required",
    ),
    BadRequestCase(
        "input-without-data",
        IRIS,
        _iris([{"name": "input", "shape": [1, 4], "datatype": "FP32"}]),
        message="no 'data'",
    ),
    BadRequestCase("unknown-input", IRIS, _iris([{**GOOD_INPUT, "name": "pixels"}]), message="unknown input"),
    BadRequestCase("duplicate-input", IRIS, _iris([GOOD_INPUT, GOOD_INPUT]), message="more than once"),
    BadRequestCase(
        "duplicate-output",
        IRIS,
        _iris([GOOD_INPUT], outputs=[{"name": "label"}, {"name": "label"}]),
        message="more than once",
    ),
    BadRequestCase(
        "unknown-output", IRIS, _iris([GOOD_INPUT], outputs=[{"name": "logits"}]), message="unknown output"
    ),
    BadRequestCase("wrong-datatype", IRIS, _iris([{**GOOD_INPUT, "datatype": "FP64"}]), message="datatype"),
    BadRequestCase(
        "unknown-datatype", IRIS, _iris([{**GOOD_INPUT, "datatype": "FLOAT128"}]), message="datatype"
    ),
    BadRequestCase("shape-count-mismatch", IRIS, _iris([{**GOOD_INPUT, "shape": [2, 4]}]), message="needs 8"),
    BadRequestCase("wrong-rank", IRIS, _iris([{**GOOD_INPUT, "shape": [4]}]), message="rank"),
    BadRequestCase("fixed-dimension-mismatch", IRIS, _iris([{**GOOD_INPUT, "shape": [2, 2]}]), message="fit"),
    BadRequestCase(
        "negative-dimension", IRIS, _iris([{**GOOD_INPUT, "shape": [-1, 4]}]), message="invalid dimension"
    ),
    BadRequestCase(
        "overflowing-dimension",
        IRIS,
        _iris([{**GOOD_INPUT, "shape": [2**62, 4]}]),
        message="invalid dimension",
    ),
    BadRequestCase(
        "booleans-for-numbers",
        IRIS,
        _iris([{**GOOD_INPUT, "data": [True, 3.5, 1.4, 0.2]}]),
        message="true and false are not FP32 values",
    ),
    BadRequestCase(
        "header-length-of-thousands-of-digits",
        IRIS,
        _iris([GOOD_INPUT]),
        headers={"Inference-Header-Content-Length": "9" * 5000},
        message="Inference-Header-Content-Length",
    ),
    BadRequestCase(
        "strings-for-numbers",
        IRIS,
        _iris([{**GOOD_INPUT, "data": ["5.1", "3.5", "1.4", "0.2"]}]),
        message="cannot be FP32",
    ),
    BadRequestCase(
        "ragged-data",
        IRIS,
        _iris([{**GOOD_INPUT, "shape": [2, 4], "data": [[1, 2, 3, 4], [1, 2]]}]),
        message="regular array",
    ),
    BadRequestCase(
        "integer-out-of-range",
        "/v2/models/identity_int8/infer",
        orjson.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT8", "data": [1, 2, 300]}]}),
        message="out of range",
    ),
    BadRequestCase(
        "mismatched-dynamic-dimensions",
        "/v2/models/add_sub/infer",
        orjson.dumps(
            {
                "inputs": [
                    {"name": "a", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 8},
                    {"name": "b", "shape": [3, 4], "datatype": "FP32", "data": [1.0] * 12},
                ]
            }
        ),
        message="onnxruntime rejected the input",
    ),
    BadRequestCase(
        "float-overflows-fp16",
        "/v2/models/identity_fp16/infer",
        orjson.dumps(
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP16", "data": [1e5, -1e5, 1]}]}
        ),
        message="out of range",
    ),
    BadRequestCase(
        "float-overflows-fp32",
        IRIS,
        _iris([{**GOOD_INPUT, "data": [1e39, 1, 1, 1]}]),
        message="out of range",
    ),
    BadRequestCase(
        "binary-bool-not-0-or-1",
        "/v2/models/identity_bool/infer",
        _BOOL_HEADER + b"\x02\x00\x01",
        headers={"Inference-Header-Content-Length": str(len(_BOOL_HEADER))},
        message="BOOL elements must be the bytes 0 or 1",
    ),
    BadRequestCase(
        "body-over-size-cap",
        IRIS,
        b" " * (MAX_REQUEST_BYTES + 1),
        status=413,
        message="limit",
    ),
    BadRequestCase(
        "unknown-model",
        "/v2/models/nosuchmodel/infer",
        _iris([GOOD_INPUT]),
        status=404,
        message="not in the store",
    ),
    BadRequestCase("unknown-version", "/v2/models/iris/versions/99/infer", _iris([GOOD_INPUT]), status=404),
    BadRequestCase(
        "model-name-dotdot", "/v2/models/../infer", _iris([GOOD_INPUT]), message="invalid model name"
    ),
    BadRequestCase(
        "model-name-blank", "/v2/models/   /infer", _iris([GOOD_INPUT]), message="invalid model name"
    ),
    BadRequestCase("model-name-slash", "/v2/models/a/b/infer", _iris([GOOD_INPUT]), status=404),
    BadRequestCase(
        "version-not-a-number",
        "/v2/models/iris/versions/latest/infer",
        _iris([GOOD_INPUT]),
        message="invalid model version",
    ),
    BadRequestCase(
        "bad-header-length",
        IRIS,
        _iris([GOOD_INPUT]),
        headers={"Inference-Header-Content-Length": "abc"},
        message="Inference-Header-Content-Length",
    ),
    BadRequestCase(
        "header-length-past-body",
        IRIS,
        _iris([GOOD_INPUT]),
        headers={"Inference-Header-Content-Length": "999999"},
        message="Inference-Header-Content-Length",
    ),
    BadRequestCase(
        "binary-size-mismatch",
        IRIS,
        _BINARY_12_BYTES_HEADER + b"\0" * 12,
        headers={"Inference-Header-Content-Length": str(len(_BINARY_12_BYTES_HEADER))},
        message="needs 16 bytes",
    ),
    BadRequestCase(
        "binary-size-without-header",
        IRIS,
        _iris(
            [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]
        ),
        message="no Inference-Header-Content-Length",
    ),
    BadRequestCase("unknown-route", "/v2/nothing/here", method="GET", status=404, message="no route"),
    BadRequestCase(
        "outside-v2",
        "/v1/models/iris:predict",
        _iris([GOOD_INPUT]),
        status=404,
        message="no route",
        reaches_the_function=False,
    ),
    BadRequestCase("wrong-method-infer", IRIS, method="GET", status=405, message="use POST"),
    BadRequestCase("wrong-method-health", "/v2/health/live", method="DELETE", status=405, message="use GET"),
    BadRequestCase(
        "model-not-loadable", "/v2/models/broken/infer", _iris([GOOD_INPUT]), status=503, message="sha256"
    ),
]


# Models that only the unit and functional tiers' store holds (tests/conftest.py: populated_store).
FIXTURE_ONLY_MODELS = frozenset(
    {"add_sub", "broken", *(f"identity_{datatype}" for datatype in ("int8", "fp16", "bool"))}
)


def cases_for_deployment(max_body_bytes: int) -> list[BadRequestCase]:
    """The cases a deployment that holds only the default model can answer through API Gateway: no
    fixture-only models, nothing API Gateway answers itself, no body over what the gateway passes on."""
    return [
        case
        for case in BAD_REQUESTS
        if case.model not in FIXTURE_ONLY_MODELS
        and case.reaches_the_function
        and len(case.body) <= max_body_bytes
    ]
