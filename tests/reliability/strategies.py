"""Hypothesis strategies: arbitrary JSON, valid inference requests for the fixture models, near-valid
mutations of them, header values, binary sections and BYTES encodings, and API Gateway events."""

from __future__ import annotations

import copy
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import orjson
from hypothesis import strategies as st

from tests.reliability.oracle import HEADER_LENGTH, ModelSpec, OutputRequest
from tests.support.oip import NUMPY_BY_DATATYPE, tensor_bytes

DATATYPES: Final = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)
PROTOCOL_WORDS: Final = (
    "inputs",
    "outputs",
    "name",
    "shape",
    "datatype",
    "data",
    "parameters",
    "binary_data_size",
    "binary_data",
    "binary_data_output",
    "classification",
    "id",
    "input",
    "x",
    "y",
    "a",
    "b",
    "sum",
    "diff",
    "probabilities",
    "label",
    *DATATYPES,
)
EDGE_INTEGERS: Final = (
    0,
    1,
    -1,
    3,
    4,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
)

# Text as JSON can carry it: any code point, lone surrogates included (JSON's "\ud800" escapes).
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
# Text orjson can write: no lone surrogates.
clean_text = st.text(max_size=12)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(EDGE_INTEGERS),
    st.floats(),
    any_text,
    st.sampled_from(PROTOCOL_WORDS),
)
json_keys = st.one_of(st.sampled_from(PROTOCOL_WORDS), any_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(json_keys, inner, max_size=5),
    max_leaves=25,
)

# How a document becomes bytes: orjson where it can (big integers and lone surrogates it refuses),
# the stdlib with ASCII escapes, or the stdlib's raw UTF-8 (lone surrogates then as invalid UTF-8; NaN and
# Infinity as the non-JSON literals the stdlib writes).
ENCODINGS: Final = ("orjson", "ascii", "utf8")


def encode_json(document: Any, encoding: str = "orjson") -> bytes:
    if encoding == "orjson":
        try:
            return orjson.dumps(document)
        except (TypeError, orjson.JSONEncodeError):
            encoding = "ascii"
    if encoding == "ascii":
        return json.dumps(document, ensure_ascii=True).encode("ascii")
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------------------
# Inference requests
# ---------------------------------------------------------------------------------------------------
@dataclass
class Draft:
    """An inference request before encoding: its JSON document, binary sections and header choice."""

    model: str
    document: Any
    chunks: list[bytes] = field(default_factory=list)
    binary: bool = False
    # "auto": Inference-Header-Content-Length is the JSON's length when ``binary``; "absent"; or
    # "explicit": ``header_value`` as given.
    header_mode: str = "auto"
    header_value: str = ""
    encoding: str = "orjson"
    # Byte-level edits of the final body: (offset, delete this many, insert these bytes).
    raw_edits: list[tuple[int, int, bytes]] = field(default_factory=list)
    path: str = ""

    @property
    def route(self) -> str:
        return self.path or f"/v2/models/{self.model}/infer"

    def encode(self) -> tuple[bytes, dict[str, str]]:
        header = encode_json(self.document, self.encoding)
        body = header + b"".join(self.chunks)
        for offset, delete, insert in self.raw_edits:
            position = offset % (len(body) + 1)
            body = body[:position] + insert + body[position + delete :]
        headers: dict[str, str] = {}
        if self.header_mode == "auto" and self.binary:
            headers[HEADER_LENGTH] = str(len(header))
        elif self.header_mode == "explicit":
            headers[HEADER_LENGTH] = self.header_value
        return body, headers


@dataclass
class ValidRequest:
    spec: ModelSpec
    draft: Draft
    feeds: dict[str, np.ndarray]
    outputs: list[OutputRequest]
    request_id: str | None


def elements(datatype: str, *, finite: bool) -> st.SearchStrategy[Any]:
    """One tensor element. JSON cannot carry NaN or ±Inf, so JSON inputs are ``finite``."""
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return clean_text
    if datatype.startswith("FP"):
        width: Literal[16, 32, 64] = 16 if datatype == "FP16" else 32 if datatype == "FP32" else 64
        return st.floats(width=width, allow_nan=not finite, allow_infinity=not finite)
    info = np.iinfo(NUMPY_BY_DATATYPE[datatype])
    return st.one_of(
        st.integers(int(info.min), int(info.max)), st.sampled_from([int(info.min), int(info.max)])
    )


def make_array(values: list[Any], datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    return np.array(values, dtype=NUMPY_BY_DATATYPE[datatype]).reshape(shape)


def json_data(array: np.ndarray, datatype: str, nested: bool, ints_for_floats: bool) -> Any:
    data = array.tolist() if nested else array.ravel().tolist()
    if ints_for_floats and datatype.startswith("FP"):

        def convert(value: Any) -> Any:
            if isinstance(value, list):
                return [convert(item) for item in value]
            # -0.0 stays a float: the integer 0 would lose its sign.
            integral = float(value).is_integer() and abs(value) < 2**53
            return int(value) if integral and (value != 0 or math.copysign(1.0, value) > 0) else value

        data = convert(data)
    return data


@st.composite
def valid_requests(
    draw: st.DrawFn, specs: dict[str, ModelSpec], *, binary_inputs: bool | None = None, min_batch: int = 0
) -> ValidRequest:
    """A request the server must answer exactly as onnxruntime does (``binary_inputs`` None: each input
    JSON or binary at random)."""
    spec = specs[draw(st.sampled_from(sorted(specs)))]
    batch = draw(st.integers(min_batch, 4))
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    feeds: dict[str, np.ndarray] = {}
    for tensor in draw(st.permutations(spec.inputs)):
        shape = tuple(batch if dim < 0 else dim for dim in tensor.shape)
        count = int(np.prod(shape))
        binary = draw(st.booleans()) if binary_inputs is None else binary_inputs
        values = draw(st.lists(elements(tensor.datatype, finite=not binary), min_size=count, max_size=count))
        array = make_array(values, tensor.datatype, shape)
        feeds[tensor.name] = array
        entry: dict[str, Any] = {"name": tensor.name, "shape": list(shape), "datatype": tensor.datatype}
        if binary:
            raw = tensor_bytes(array, tensor.datatype)
            chunks.append(raw)
            entry["parameters"] = {"binary_data_size": len(raw)}
        else:
            entry["data"] = json_data(array, tensor.datatype, draw(st.booleans()), draw(st.booleans()))
            if draw(st.booleans()):
                entry["parameters"] = {"unknown_parameter": 1}
        entries.append(entry)
    document: dict[str, Any] = {"inputs": entries}
    request_id, outputs = draw(output_plans(spec, document))
    draft = Draft(spec.name, document, chunks, binary=bool(chunks))
    return ValidRequest(spec, draft, feeds, outputs, request_id)


@st.composite
def output_plans(
    draw: st.DrawFn, spec: ModelSpec, document: dict[str, Any]
) -> tuple[str | None, list[OutputRequest]]:
    """Adds an id and the outputs part to ``document``: every output (optionally all binary by the
    request's binary_data_output), or a subset in any order, each JSON or binary, numeric ones
    optionally classified. Returns the id and what the answer must hold."""
    request_id = draw(st.none() | clean_text)
    if request_id is not None:
        document["id"] = request_id
    default = draw(st.sampled_from([None, True, False]))
    if default is not None:
        document["parameters"] = {"binary_data_output": default}
    all_names = [output.name for output in spec.outputs]
    if draw(st.booleans()):
        return request_id, [OutputRequest(name, default is True) for name in all_names]
    names = draw(st.permutations(all_names))[: draw(st.integers(1, len(all_names)))]
    requested, outputs = [], []
    for name in names:
        parameters: dict[str, Any] = {}
        binary_output = default is True
        if draw(st.booleans()):
            binary_output = draw(st.booleans())
            parameters["binary_data"] = binary_output
        classification = 0
        if spec.output(name).datatype != "BYTES" and draw(st.booleans()):
            classification = draw(st.integers(0, 4))
            parameters["classification"] = classification
        requested.append({"name": name, "parameters": parameters} if parameters else {"name": name})
        outputs.append(OutputRequest(name, binary_output, classification))
    document["outputs"] = requested
    return request_id, outputs


# ---------------------------------------------------------------------------------------------------
# Near-valid mutations
# ---------------------------------------------------------------------------------------------------
def nearby(value: Any) -> st.SearchStrategy[Any]:
    """Values a buggy or hostile client might put where ``value`` was."""
    if isinstance(value, bool):
        return st.sampled_from([not value, 0, 1, "true", None])
    if isinstance(value, int):
        return st.sampled_from(
            [value + 1, value - 1, -value, 0, -1, True, False, float(value) + 0.5, str(value), [value], None]
        ) | st.sampled_from(EDGE_INTEGERS)
    if isinstance(value, float):
        return st.sampled_from([value * 2, -value, 1e39, -1e39, 1e309, float("nan"), str(value), True, None])
    if isinstance(value, str):
        return st.sampled_from(
            ["", value.upper(), value.lower(), f" {value}", f"{value}x", value[:-1], "..", "/", "\ud800"]
        ) | st.sampled_from(PROTOCOL_WORDS)
    if isinstance(value, list):
        options: list[Any] = [[], value[:-1], value[::-1], [value], value * 2, [None] * len(value)]
        if value:
            options += [[*value, value[-1]], [[item] for item in value], [True, *value[1:]]]
        return st.sampled_from(options)
    if isinstance(value, dict):
        return st.sampled_from([{}, {**value, "extra": 1}, [value], None])
    return st.sampled_from([0, "", [], {}, False])


def _locations(node: Any) -> list[tuple[Any, Any]]:
    found: list[tuple[Any, Any]] = []
    stack = [node]
    while stack:
        current = stack.pop()
        keys = list(current) if isinstance(current, dict) else range(len(current))
        for key in keys:
            found.append((current, key))
            if isinstance(current[key], dict | list):
                stack.append(current[key])
    return found


def _containers(node: Any) -> list[Any]:
    return [node, *(c[k] for c, k in _locations(node) if isinstance(c[k], dict | list))]


@st.composite
def mutate_draft(draw: st.DrawFn, draft: Draft) -> Draft:
    """One to three edits of a valid request: in its JSON tree, its binary sections, its header, or its
    raw bytes."""
    draft = copy.deepcopy(draft)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(["tree", "tree", "tree", "insert", "chunk", "header", "raw", "encoding", "path"])
        )
        locations = _locations(draft.document)
        if kind == "tree" and locations:
            container, key = locations[draw(st.integers(0, len(locations) - 1))]
            how = draw(st.sampled_from(["replace", "nearby", "nearby", "delete"]))
            if how == "delete":
                del container[key]
            elif how == "nearby":
                container[key] = draw(nearby(container[key]))
            else:
                container[key] = draw(json_values)
        elif kind == "insert":
            containers = _containers(draft.document)
            target = containers[draw(st.integers(0, len(containers) - 1))]
            if isinstance(target, dict):
                target[draw(json_keys)] = draw(json_values)
            elif target and draw(st.booleans()):
                target.append(copy.deepcopy(target[draw(st.integers(0, len(target) - 1))]))
            else:
                target.insert(draw(st.integers(0, len(target))), draw(json_values))
        elif kind == "chunk":
            chunks = draft.chunks
            how = draw(st.sampled_from(["truncate", "extend", "flip", "drop", "duplicate", "add"]))
            if how == "add" or not chunks:
                chunks.append(draw(st.binary(max_size=16)))
                continue
            index = draw(st.integers(0, len(chunks) - 1))
            chunk = chunks[index]
            if how == "truncate":
                chunks[index] = chunk[: draw(st.integers(0, max(len(chunk) - 1, 0)))]
            elif how == "extend":
                chunks[index] = chunk + draw(st.binary(min_size=1, max_size=8))
            elif how == "flip" and chunk:
                position = draw(st.integers(0, len(chunk) - 1))
                flipped = chunk[position] ^ draw(st.integers(1, 255))
                chunks[index] = chunk[:position] + bytes([flipped]) + chunk[position + 1 :]
            elif how == "drop":
                del chunks[index]
            else:
                chunks.insert(index, chunk)
        elif kind == "header":
            how = draw(st.sampled_from(["absent", "explicit", "delta"]))
            draft.header_mode = "explicit" if how == "delta" else how
            if how == "explicit":
                draft.header_value = draw(header_values)
            elif how == "delta":
                length = len(encode_json(draft.document, draft.encoding))
                delta = draw(st.integers(-8, 8).filter(bool))
                draft.header_value = str(max(length + delta, 0))
        elif kind == "raw":
            offset = draw(st.integers(0, 1 << 16))
            draft.raw_edits.append((offset, draw(st.integers(0, 4)), draw(st.binary(max_size=4))))
        elif kind == "path":
            model = draft.model
            draft.path = draw(
                st.sampled_from(
                    [
                        f"/v2/models/{model}/versions/1/infer",
                        f"/v2/models/{model}/versions/2/infer",
                        f"/v2/models/{model}/versions/0/infer",
                        f"/v2/models/{model}/infer/",
                        f"/v2/models/{model.upper()}/infer",
                        "/v2/models/iris/infer",
                        "/v2/models/add_sub/infer",
                        "/v2/models/identity_fp32/infer",
                        "/v2/models/broken/infer",
                    ]
                )
            )
        else:
            draft.encoding = draw(st.sampled_from(ENCODINGS))
    return draft


# ---------------------------------------------------------------------------------------------------
# Header values
# ---------------------------------------------------------------------------------------------------
header_values = st.one_of(
    st.integers(0, 10**6).map(str),
    st.text(max_size=12),
    st.text(alphabet="0123456789 \t+-_.xXeE", max_size=12),
    st.sampled_from(
        ["", " ", "-1", "+5", "1e3", "0x10", "\u0661\u0662", "\u00b2", "1_000", "4294967296", "1" + "0" * 20]
    ),
    # Past 4,300 digits, int() refuses the string (CPython's limit on integer string conversion).
    (st.sampled_from([20, 21, 4300, 4301, 5000]) | st.integers(20, 5000)).map(lambda digits: "1" * digits),
    st.tuples(st.integers(1, 30), st.integers(0, 99)).map(lambda zeros: "0" * zeros[0] + str(zeros[1])),
    st.tuples(st.sampled_from([" ", "\t", "\u2003", "\u00a0", "\n"]), st.integers(0, 300)).map(
        lambda pair: f"{pair[0]}{pair[1]}{pair[0]}"
    ),
)


# ---------------------------------------------------------------------------------------------------
# Binary sections and BYTES encodings
# ---------------------------------------------------------------------------------------------------
def encode_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def decode_elements(raw: bytes) -> list[bytes] | None:
    """The binary extension's BYTES encoding, decoded independently of the core: None if malformed."""
    items, position = [], 0
    while position < len(raw):
        if position + 4 > len(raw):
            return None
        (length,) = struct.unpack_from("<I", raw, position)
        position += 4
        if length > len(raw) - position:
            return None
        items.append(raw[position : position + length])
        position += length
    return items


bytes_items = st.one_of(
    clean_text.map(lambda text: text.encode("utf-8")),
    st.binary(max_size=8),
    st.sampled_from([b"", b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok"]),
)


@st.composite
def bytes_sections(draw: st.DrawFn, count: int) -> bytes:
    """A BYTES section for ``count`` elements: well formed, or with one of the encoding faults."""
    items = draw(st.lists(bytes_items, min_size=count, max_size=count))
    fault = draw(
        st.sampled_from(["none", "none", "none", "count", "truncate", "overlong", "stray", "random"])
    )
    if fault == "count":
        drop = bool(items) and draw(st.booleans())
        items = items[:-1] if drop else [*items, draw(bytes_items)]
    raw = encode_elements(items)
    if fault == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif fault == "overlong":
        raw += struct.pack("<I", draw(st.sampled_from([1, 7, 2**31, 2**32 - 1]))) + draw(
            st.binary(max_size=3)
        )
    elif fault == "stray":
        raw += draw(st.binary(min_size=1, max_size=3))
    elif fault == "random":
        raw = draw(st.binary(max_size=48))
    return raw


# ---------------------------------------------------------------------------------------------------
# API Gateway events
# ---------------------------------------------------------------------------------------------------
PATH_SEGMENTS: Final = (
    "",
    "v2",
    "models",
    "iris",
    "add_sub",
    "identity_bytes",
    "broken",
    "nosuch",
    "versions",
    "1",
    "0",
    "99",
    "-1",
    "infer",
    "ready",
    "health",
    "live",
    "repository",
    "index",
    "load",
    "unload",
    "..",
    ".",
    " ",
    "%2F",
)
METHODS: Final = ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")

route_paths = st.one_of(
    st.lists(st.sampled_from(PATH_SEGMENTS) | any_text, max_size=7).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(
        [
            "/v2/models/iris/infer",
            "/v2/models/iris/versions/1/infer",
            "/v2/health/ready",
            "/v2/repository/index",
            "/v2",
            "/",
            "",
        ]
    ),
    any_text,
)
method_strategy = st.sampled_from(METHODS) | st.text(max_size=8)
