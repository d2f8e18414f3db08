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
_BINARY_NEGATIVE_HEADER = orjson.dumps(
    {
        "inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": -16}}
        ]
    }
)
_BINARY_AND_DATA_HEADER = orjson.dumps(
    {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 4],
                "datatype": "FP32",
                "data": [1, 2, 3, 4],
                "parameters": {"binary_data_size": 16},
            }
        ]
    }
)


def _bytes_request(section: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary request to identity_bytes ([batch, 3] BYTES) whose section is exactly ``section``."""
    parameters = {"binary_data_size": len(section)}
    header = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "parameters": parameters}]}
    )
    return header + section, {"Inference-Header-Content-Length": str(len(header))}


# Three elements, the first two bytes that are not UTF-8; and one whose length runs past the section.
_BYTES_NOT_UTF8 = _bytes_request(b"\x02\x00\x00\x00\xff\xfe" + b"\x00\x00\x00\x00" * 2)
_BYTES_PAST_THE_END = _bytes_request(b"\xff\x00\x00\x00AB")
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
    # --- the shape of the document ---
    BadRequestCase("null-body", IRIS, b"null", message="JSON object"),
    BadRequestCase("string-body", IRIS, b'"inputs"', message="JSON object"),
    BadRequestCase("inputs-an-object", IRIS, b'{"inputs": {"name": "input"}}', message="'inputs'"),
    BadRequestCase("input-not-an-object", IRIS, _iris([1]), message="each entry of 'inputs'"),
    BadRequestCase("input-name-a-number", IRIS, _iris([{**GOOD_INPUT, "name": 7}]), message="unknown input"),
    BadRequestCase("shape-not-a-list", IRIS, _iris([{**GOOD_INPUT, "shape": "1,4"}]), message="'shape'"),
    BadRequestCase(
        "fractional-dimension", IRIS, _iris([{**GOOD_INPUT, "shape": [1.5, 4]}]), message="invalid dimension"
    ),
    BadRequestCase(
        "boolean-dimension", IRIS, _iris([{**GOOD_INPUT, "shape": [True, 4]}]), message="invalid dimension"
    ),
    BadRequestCase(
        "rank-over-the-limit",
        "/v2/models/identity_any_rank/infer",
        orjson.dumps({"inputs": [{"name": "x", "shape": [1] * 40, "datatype": "FP32", "data": [1.0]}]}),
        message="over the limit",
    ),
    BadRequestCase("data-a-string", IRIS, _iris([{**GOOD_INPUT, "data": "5.1,3.5"}]), message="needs 4"),
    BadRequestCase(
        "data-holds-objects", IRIS, _iris([{**GOOD_INPUT, "data": [{"a": 1}] * 4}]), message="cannot be FP32"
    ),
    BadRequestCase(
        "data-nested-too-deep",
        IRIS,
        b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": '
        + b"[" * 2000
        + b"]" * 2000
        + b"}]}",
        message="not valid JSON",
    ),
    BadRequestCase("id-a-number", IRIS, _iris([GOOD_INPUT], id=7), message="'id' must be a string"),
    BadRequestCase("parameters-a-list", IRIS, _iris([GOOD_INPUT], parameters=[1]), message="'parameters'"),
    BadRequestCase(
        "input-parameters-a-string",
        IRIS,
        _iris([{**GOOD_INPUT, "parameters": "binary"}]),
        message="'parameters' must be an object",
    ),
    BadRequestCase(
        "binary-size-negative",
        IRIS,
        _iris(
            [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": -16}}]
        )
        + b"\0" * 16,
        headers={"Inference-Header-Content-Length": str(len(_BINARY_NEGATIVE_HEADER))},
        message="binary_data_size must be a non-negative integer",
    ),
    BadRequestCase(
        "binary-size-and-data",
        IRIS,
        _BINARY_AND_DATA_HEADER + b"\0" * 16,
        headers={"Inference-Header-Content-Length": str(len(_BINARY_AND_DATA_HEADER))},
        message="both 'data' and binary_data_size",
    ),
    BadRequestCase(
        "binary-bytes-not-utf8",
        "/v2/models/identity_bytes/infer",
        _BYTES_NOT_UTF8[0],
        headers=_BYTES_NOT_UTF8[1],
        message="not valid UTF-8",
    ),
    BadRequestCase(
        "binary-bytes-length-past-the-end",
        "/v2/models/identity_bytes/infer",
        _BYTES_PAST_THE_END[0],
        headers=_BYTES_PAST_THE_END[1],
        message="runs past",
    ),
    BadRequestCase(
        "outputs-an-object", IRIS, _iris([GOOD_INPUT], outputs={"name": "label"}), message="'outputs'"
    ),
    BadRequestCase("outputs-empty", IRIS, _iris([GOOD_INPUT], outputs=[]), message="'outputs'"),
    BadRequestCase(
        "output-not-an-object", IRIS, _iris([GOOD_INPUT], outputs=["label"]), message="unknown output"
    ),
    BadRequestCase(
        "output-binary-not-a-boolean",
        IRIS,
        _iris([GOOD_INPUT], outputs=[{"name": "label", "parameters": {"binary_data": "yes"}}]),
        message="binary_data must be true or false",
    ),
    BadRequestCase(
        "classification-negative",
        IRIS,
        _iris([GOOD_INPUT], outputs=[{"name": "probabilities", "parameters": {"classification": -1}}]),
        message="classification",
    ),
    BadRequestCase(
        "classification-of-strings",
        "/v2/models/identity_bytes/infer",
        orjson.dumps(
            {
                "inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"]}],
                "outputs": [{"name": "y", "parameters": {"classification": 1}}],
            }
        ),
        message="classification needs a numeric output",
    ),
    BadRequestCase(
        "uint8-out-of-range",
        "/v2/models/identity_uint8/infer",
        orjson.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "UINT8", "data": [1, -1, 2]}]}),
        message="out of range",
    ),
    BadRequestCase(
        "version-zero", "/v2/models/iris/versions/0/infer", _iris([GOOD_INPUT]), message="version"
    ),
    BadRequestCase(
        "version-leading-zero", "/v2/models/iris/versions/01/infer", _iris([GOOD_INPUT]), message="version"
    ),
    BadRequestCase(
        "version-missing", "/v2/models/iris/versions", method="GET", status=404, message="version"
    ),
    BadRequestCase(
        "model-name-too-long",
        f"/v2/models/{'m' * 200}/infer",
        _iris([GOOD_INPUT]),
        message="invalid model name",
    ),
    BadRequestCase("index-body-not-json", "/v2/repository/index", b"{nope", message="not valid JSON"),
    BadRequestCase("index-body-a-list", "/v2/repository/index", b"[]", message="JSON object"),
    BadRequestCase(
        "load-unknown-model", "/v2/repository/models/nosuchmodel/load", status=404, message="not in the store"
    ),
    BadRequestCase(
        "load-with-get", "/v2/repository/models/iris/load", method="GET", status=405, message="POST"
    ),
    BadRequestCase("put-on-server-metadata", "/v2", method="PUT", status=405, message="use GET"),
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
    {
        "add_sub",
        "broken",
        "identity_any_rank",
        *(f"identity_{datatype}" for datatype in ("int8", "uint8", "fp16", "bool", "bytes")),
    }
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
