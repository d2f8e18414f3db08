"""Open Inference Protocol (KServe v2 / Triton) request decoding and response encoding.

Requests are validated against the model's signature before onnxruntime sees them, so a bad request
is a clear 400 rather than an onnxruntime error. The binary tensor data extension is decoded with
zero-copy ``np.frombuffer`` views into the request body.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson

from modelship.core.datatypes import BYTES
from modelship.core.errors import BadRequest
from modelship.core.sessions import InputBinding, LoadedModel
from modelship.core.wire import MalformedBytesTensor, decode_bytes_elements, encode_bytes_elements

# An overflowing cast is reported to the client as a 400 (see _decode_json), and an overflowing dot
# product only sends _all_finite to its exact check; numpy's warnings about them would only add stray
# lines to the logs. A filter costs nothing per request, unlike np.errstate.
warnings.filterwarnings(
    "ignore",
    message="overflow encountered in (cast|dot)",
    category=RuntimeWarning,
    module=r"modelship\.core\.protocol",
)

MAX_DIMENSION: Final = 2**31 - 1
MAX_ELEMENTS: Final = 2**31 - 1
# How many scores one classification output may rank, and how many "score:index:label" strings it
# may produce.
MAX_CLASSIFIED_SCORES: Final = 2**21
MAX_CLASSIFICATION_ENTRIES: Final = 32_768
# onnxruntime's own limit on a tensor's rank is far higher; no served model needs more than this.
MAX_RANK: Final = 32

_INT_LIMITS: Final = {
    kind: np.iinfo(kind) for kind in ("<i1", "<i2", "<i4", "<i8", "<u1", "<u2", "<u4", "<u8")
}
# Which numpy kinds a JSON array may arrive as for each target kind: no strings for numbers, no floats
# for integers, only true/false for BOOL.
_ACCEPTED_JSON_KINDS: Final = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


# Binary requests whose JSON header was seen before skip its parsing (see _Plan): at most this many
# headers are remembered, each of at most this many bytes.
MAX_PLANS: Final = 256
MAX_PLANNED_HEADER_BYTES: Final = 4096
# How many response headers (one per set of output shapes) a plan remembers.
MAX_PLANNED_RESPONSES: Final = 16


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int


@dataclass(slots=True)
class InferenceCall:
    """A validated request. ``outputs`` and ``output_names`` may be shared between calls: read only."""

    request_id: str | None
    feeds: dict[str, np.ndarray]
    outputs: list[RequestedOutput]
    output_names: list[str]
    # Set when the request's header had been validated before: see _Plan.
    plan: _Plan | None = None


@dataclass(frozen=True, slots=True)
class _PlannedInput:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    count: int
    # Where the tensor starts in the binary section.
    offset: int
    is_bool: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    """What validating one JSON header against one model's signature concluded, when every input is a
    numeric tensor in the binary section: the same header bytes for the same model always conclude the
    same, so a repeated header (a client sending one shape again and again) is not parsed again. What
    depends on the binary data (its length, BOOL bytes) is still checked on every request."""

    # The model's own tables (never rebuilt for a loaded model): a plan serves only the model it was
    # made for, even if another model later gets the same id().
    bindings: dict[str, InputBinding]
    output_datatypes: dict[str, str]
    request_id: str | None
    inputs: tuple[_PlannedInput, ...]
    binary_length: int
    outputs: list[RequestedOutput]
    output_names: list[str]
    # Every output is a numeric tensor in the binary section: the response's JSON header then depends
    # only on the outputs' shapes and sizes, and is remembered here for each.
    binary_outputs: bool
    response_headers: dict[tuple[tuple[tuple[int, ...], int], ...], bytes]


_plans: dict[tuple[int, bytes], _Plan] = {}


def parse_header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    text = value.strip()
    # Twenty digits is already past any body: refusing longer ones keeps int() from the digit limit.
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise BadRequest(
            f"Inference-Header-Content-Length must be a non-negative integer, got {value[:32]!r}"
        )
    length = int(text)
    if length > body_length:
        raise BadRequest(
            f"Inference-Header-Content-Length is {length} but the body has only {body_length} bytes"
        )
    return length


def parse_json_object(raw: bytes | memoryview, expected: str) -> dict[str, Any]:
    """A request body that must be a JSON object; ``expected`` completes "request body must be ..."."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadRequest(f"request body must be {expected}")
    return document


def decode_infer_request(model: LoadedModel, body: bytes, header_length: int | None) -> InferenceCall:
    """Validate an inference request against ``model``'s signature and build onnxruntime's feeds.

    Pure: no I/O, and the only shared state is a memo of headers already validated (``_plans``), so
    any number of request threads may call it at once. Binary
    inputs are zero-copy views into ``body``, which must therefore stay alive (and unchanged) until the
    run that uses the returned feeds has finished. Every refusal is a ``BadRequest`` naming the input.
    """
    if header_length is not None and header_length <= MAX_PLANNED_HEADER_BYTES and isinstance(body, bytes):
        key = (id(model), body[:header_length])
        plan = _plans.get(key)
        if (
            plan is not None
            and plan.bindings is model.inputs
            and plan.output_datatypes is model.output_datatypes
            and len(body) - header_length == plan.binary_length
        ):
            return _planned_call(plan, body, header_length)
        call, planned = _decode(model, body, header_length)
        if planned is not None:
            if len(_plans) >= MAX_PLANS:
                _plans.clear()
            _plans[key] = _Plan(
                model.inputs,
                model.output_datatypes,
                call.request_id,
                planned,
                len(body) - header_length,
                call.outputs,
                call.output_names,
                all(
                    output.binary
                    and not output.classification
                    and model.output_datatypes[output.name] != BYTES
                    for output in call.outputs
                ),
                {},
            )
        return call
    return _decode(model, body, header_length)[0]


def _planned_call(plan: _Plan, body: bytes, header_length: int) -> InferenceCall:
    feeds: dict[str, np.ndarray] = {}
    for planned in plan.inputs:
        array = np.frombuffer(
            body, dtype=planned.dtype, count=planned.count, offset=header_length + planned.offset
        )
        if planned.is_bool and planned.count and array.view(np.uint8).max() > 1:
            raise BadRequest(f"input {planned.name!r}: BOOL elements must be the bytes 0 or 1")
        feeds[planned.name] = array.reshape(planned.shape)
    return InferenceCall(plan.request_id, feeds, plan.outputs, plan.output_names, plan)


def _decode(
    model: LoadedModel, body: bytes, header_length: int | None
) -> tuple[InferenceCall, tuple[_PlannedInput, ...] | None]:
    """``decode_infer_request`` from scratch; also the plan of its inputs when every one is a numeric
    tensor in the binary section (None otherwise)."""
    if header_length is None:
        json_part: bytes | memoryview = body
        binary: memoryview | None = None
    else:
        view = memoryview(body)
        json_part = view[:header_length]
        binary = view[header_length:]
    document = parse_json_object(json_part, "a JSON object with an 'inputs' list")
    # Whether the JSON could hold true or false, looked up once and only for an input given as JSON data.
    may_hold_booleans: bool | None = None

    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = _parameters(document, "request", None)
    binary_default = parameters.get("binary_data_output") is True if parameters else False

    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    bindings = model.inputs
    feeds: dict[str, np.ndarray] = {}
    planned: list[_PlannedInput] | None = []
    offset = 0
    for item in inputs:
        if not isinstance(item, dict):
            raise BadRequest("each entry of 'inputs' must be an object with name, shape, datatype and data")
        name = item.get("name")
        if not isinstance(name, str) or (binding := bindings.get(name)) is None:
            raise BadRequest(f"unknown input {name!r}; {model.name} takes {sorted(bindings)}")
        if name in feeds:
            raise BadRequest(f"input {name!r} is given more than once")
        datatype = item.get("datatype")
        if datatype != binding.datatype:
            raise BadRequest(f"input {name!r} has datatype {binding.datatype}, not {datatype!r}")
        shape, count = _validate_shape(binding, item.get("shape"))
        item_parameters = _parameters(item, "input", name)
        binary_size = item_parameters.get("binary_data_size") if item_parameters else None
        if binary_size is not None:
            if binary is None:
                raise BadRequest(
                    f"input {name!r} sets binary_data_size but the request has no "
                    "Inference-Header-Content-Length"
                )
            if "data" in item:
                raise BadRequest(f"input {name!r} has both 'data' and binary_data_size")
            if type(binary_size) is not int or binary_size < 0:
                raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
            end = offset + binary_size
            if end > len(binary):
                raise BadRequest(
                    f"input {name!r}: binary_data_size {binary_size} runs past the end of the binary data"
                )
            feeds[name] = _decode_binary(binding, binary, offset, binary_size, shape, count)
            if planned is not None and binding.datatype != BYTES:
                planned.append(
                    _PlannedInput(name, binding.dtype, shape, count, offset, binding.datatype == "BOOL")
                )
            else:
                planned = None
            offset = end
        else:
            planned = None
            if "data" not in item:
                raise BadRequest(f"input {name!r} has no 'data' (nor binary_data_size)")
            if may_hold_booleans is None:
                # A byte search is cheap; walking every element for true/false is not, so only when they
                # appear.
                json_bytes = json_part if isinstance(json_part, bytes) else json_part.tobytes()
                may_hold_booleans = _may_hold_booleans(json_bytes)
            feeds[name] = _decode_json(binding, item["data"], shape, count, may_hold_booleans)
    if len(feeds) != len(model.required_inputs):
        missing = sorted(model.required_inputs - feeds.keys())
        raise BadRequest(f"missing required input(s) {missing}")
    if binary is not None and offset != len(binary):
        raise BadRequest(
            f"the binary section has {len(binary)} bytes but the inputs declare {offset} (binary_data_size)"
        )
    outputs = _requested_outputs(model, document.get("outputs"), binary_default)
    call = InferenceCall(request_id, feeds, outputs, [output.name for output in outputs])
    return call, tuple(planned) if planned is not None else None


# Below this many bytes, substring search is quicker than looking at each candidate first letter.
_SMALL_JSON_BYTES: Final = 4096
# How many first letters _may_hold_booleans looks at before one full substring search instead.
_MAX_LITERAL_CANDIDATES: Final = 16


def _may_hold_booleans(json_bytes: bytes) -> bool:
    """Whether ``true`` or ``false`` appears anywhere in the document. Numbers hold neither letter, so in
    a large tensor a first letter is found in a few keys only: a single-byte find (memchr) runs about
    thirty times faster over megabytes than a substring search (3.5 ms for a 224x224x3 image)."""
    if len(json_bytes) < _SMALL_JSON_BYTES:
        return b"true" in json_bytes or b"false" in json_bytes
    for literal in (b"true", b"false"):
        first = literal[:1]
        position = json_bytes.find(first)
        candidates = 0
        while position != -1:
            if json_bytes.startswith(literal, position):
                return True
            candidates += 1
            if candidates == _MAX_LITERAL_CANDIDATES:
                # Many of that letter (strings in the document): one substring search bounds the work.
                if literal in json_bytes:
                    return True
                break
            position = json_bytes.find(first, position + 1)
    return False


_NO_PARAMETERS: Final[dict[str, Any]] = {}


def _parameters(holder: dict[str, Any], kind: str, name: str | None) -> dict[str, Any]:
    """The holder's 'parameters' object, empty when absent. ``kind`` and ``name`` say where, for the
    error only (no message is built for a valid request)."""
    parameters = holder.get("parameters")
    if parameters is None:
        return _NO_PARAMETERS
    if not isinstance(parameters, dict):
        where = kind if name is None else f"{kind} {name!r}"
        raise BadRequest(f"{where}: 'parameters' must be an object")
    return parameters


def _validate_shape(binding: InputBinding, shape: Any) -> tuple[tuple[int, ...], int]:
    if not isinstance(shape, list):
        raise BadRequest(f"input {binding.name!r}: 'shape' must be a list of non-negative integers")
    # A tensor of any rank (binding.shape None) takes any list of dimensions.
    expected_shape = binding.shape if binding.shape is not None else (-1,) * len(shape)
    if len(shape) != len(expected_shape):
        raise BadRequest(
            f"input {binding.name!r}: expected rank {len(expected_shape)} shape {list(expected_shape)}, "
            f"got {shape}"
        )
    if len(shape) > MAX_RANK:
        raise BadRequest(f"input {binding.name!r}: rank {len(shape)} is over the limit of {MAX_RANK}")
    count = 1
    for dim, expected in zip(shape, expected_shape, strict=True):
        # JSON numbers parse to exactly int, float or bool: ``type is int`` refuses true and 1.0 alike.
        if type(dim) is not int or dim < 0 or dim > MAX_DIMENSION:
            raise BadRequest(f"input {binding.name!r}: invalid dimension {dim!r} in shape {shape}")
        if expected >= 0 and dim != expected:
            raise BadRequest(
                f"input {binding.name!r}: shape {shape} does not fit the model's {list(expected_shape)}"
            )
        count *= dim
    if count > MAX_ELEMENTS:
        raise BadRequest(f"input {binding.name!r}: shape {shape} has too many elements")
    return tuple(shape), count


def _decode_json(
    binding: InputBinding, data: Any, shape: tuple[int, ...], count: int, may_hold_booleans: bool
) -> np.ndarray:
    name = binding.name
    if binding.datatype == BYTES:
        return _decode_json_strings(name, data, shape, count)
    if may_hold_booleans and binding.dtype.kind != "b" and any(type(item) is bool for item in _flatten(data)):
        # numpy would silently read true and false as 1 and 0.
        raise BadRequest(f"input {name!r}: true and false are not {binding.datatype} values")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as error:
        raise BadRequest(f"input {name!r}: 'data' is not a regular array: {error}") from None
    if array.size != count:
        raise BadRequest(f"input {name!r}: shape {list(shape)} needs {count} elements, data has {array.size}")
    target = binding.dtype
    if count and array.dtype.kind not in _ACCEPTED_JSON_KINDS[target.kind]:
        if target.kind == "u" and array.dtype.kind in "fO":
            # Integers beyond int64 make numpy infer float or object; only UINT64 can hold them.
            return _exact_unsigned(binding, data, shape)
        raise BadRequest(f"input {name!r}: data of kind {array.dtype} cannot be {binding.datatype}")
    if binding.int_limits is not None and count and array.dtype != target:
        low, high = binding.int_limits
        if array.min() < low or array.max() > high:
            raise BadRequest(f"input {name!r}: values out of range for {binding.datatype}")
    if target.kind == "f" and array.dtype != target:
        converted = array.astype(target)
        # JSON cannot carry NaN or Infinity, so a non-finite value here is an overflow of the target type.
        if count and not _all_finite(converted):
            raise BadRequest(f"input {name!r}: values out of range for {binding.datatype}")
        return converted.reshape(shape)
    return array.astype(target, copy=False).reshape(shape)


def _all_finite(array: np.ndarray) -> bool:
    """Whether no element is infinite, for an array that holds no NaN (JSON has none). The dot product
    with itself is finite when every element is (one BLAS call, a third of ``isfinite().all()`` on a
    small tensor); only when it is not, since large finite values can overflow it too, is each element
    looked at."""
    flat = array.reshape(-1)
    if math.isfinite(flat.dot(flat)):
        return True
    return bool(np.isfinite(flat).all())


def _exact_unsigned(binding: InputBinding, data: Any, shape: tuple[int, ...]) -> np.ndarray:
    flat = _flatten(data)
    high = binding.int_limits[1] if binding.int_limits is not None else 0
    if not all(type(item) is int and 0 <= item <= high for item in flat):
        raise BadRequest(f"input {binding.name!r}: values must be integers in range for {binding.datatype}")
    return np.array(flat, dtype=binding.dtype).reshape(shape)


def _decode_json_strings(name: str, data: Any, shape: tuple[int, ...], count: int) -> np.ndarray:
    flat = _flatten(data)
    if len(flat) != count:
        raise BadRequest(f"input {name!r}: shape {list(shape)} needs {count} elements, data has {len(flat)}")
    if not all(isinstance(item, str) for item in flat):
        raise BadRequest(f"input {name!r}: BYTES data must be strings")
    array = np.empty(count, dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _decode_binary(
    binding: InputBinding, binary: memoryview, offset: int, size: int, shape: tuple[int, ...], count: int
) -> np.ndarray:
    """The ``size`` bytes at ``offset`` of the binary section (the caller has checked they are there)."""
    if binding.datatype == BYTES:
        return _decode_binary_strings(binding.name, binary[offset : offset + size], shape, count)
    expected = count * binding.itemsize
    if size != expected:
        raise BadRequest(
            f"input {binding.name!r}: shape {list(shape)} of {binding.datatype} needs {expected} bytes, "
            f"binary_data_size is {size}"
        )
    array = np.frombuffer(binary, dtype=binding.dtype, count=count, offset=offset)
    if binding.datatype == "BOOL" and count and array.view(np.uint8).max() > 1:
        # Any other byte is not a valid bool: numpy, orjson and onnxruntime kernels disagree about it.
        raise BadRequest(f"input {binding.name!r}: BOOL elements must be the bytes 0 or 1")
    return array.reshape(shape)


def _decode_binary_strings(name: str, chunk: memoryview, shape: tuple[int, ...], count: int) -> np.ndarray:
    try:
        items = [item.decode("utf-8") for item in decode_bytes_elements(chunk.tobytes())]
    except MalformedBytesTensor as error:
        raise BadRequest(f"input {name!r}: {error}") from None
    except UnicodeDecodeError:
        raise BadRequest(f"input {name!r}: BYTES element is not valid UTF-8") from None
    if len(items) != count:
        raise BadRequest(f"input {name!r}: shape {list(shape)} needs {count} elements, data has {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def _requested_outputs(model: LoadedModel, requested: Any, binary_default: bool) -> list[RequestedOutput]:
    if requested is None:
        return [RequestedOutput(name, binary_default, 0) for name in model.all_output_names]
    if not isinstance(requested, list) or not requested:
        raise BadRequest("'outputs' must be a non-empty list of {\"name\": ...} objects")
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in model.output_datatypes:
            raise BadRequest(f"unknown output {name!r}; {model.name} produces {model.all_output_names}")
        if name in seen:
            raise BadRequest(f"output {name!r} is requested more than once")
        seen.add(name)
        parameters = _parameters(item, "output", name)
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise BadRequest(f"output {name!r}: binary_data must be true or false")
        classification = parameters.get("classification", 0)
        if not isinstance(classification, int) or isinstance(classification, bool) or classification < 0:
            raise BadRequest(f"output {name!r}: classification must be a positive integer")
        if classification and model.output_datatypes[name] == BYTES:
            raise BadRequest(f"output {name!r}: classification needs a numeric output")
        outputs.append(RequestedOutput(name, binary, classification))
    return outputs


def classify(array: np.ndarray, top_k: int, labels: tuple[str, ...] | None) -> np.ndarray:
    """Triton's classification extension: the top-k of the last axis as "score:index[:label]" strings."""
    if array.ndim == 0 or array.shape[-1] == 0:
        raise BadRequest("classification needs an output whose last dimension is not empty")
    scores = array.reshape(-1, array.shape[-1])
    if scores.dtype.kind == "b":
        scores = scores.view(np.uint8)
    k = min(top_k, scores.shape[-1])
    # Compare in the output's own datatype (negating would wrap unsigned and INT64-min values). Reversing
    # a stable ascending sort puts the highest first; among ties, the higher index first.
    top = np.argsort(scores, axis=1, kind="stable")[:, ::-1][:, :k]
    integral = scores.dtype.kind in "iu"
    rows = []
    for row_scores, row_top in zip(scores, top, strict=True):
        for index in row_top:
            label = f":{labels[index]}" if labels is not None and index < len(labels) else ""
            value = int(row_scores[index]) if integral else f"{float(row_scores[index]):g}"
            rows.append(f"{value}:{int(index)}{label}")
    result = np.empty(len(rows), dtype=object)
    result[:] = rows
    return result.reshape((*array.shape[:-1], k))


def _strings(array: np.ndarray) -> list[str]:
    return [
        item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in array.ravel()
    ]


def check_response_size(call: InferenceCall, results: list[np.ndarray], limit: int) -> None:
    """Refuse, before encoding, a response that cannot fit in ``limit`` bytes: binary tensors take at
    least their raw size, and a JSON element at least two bytes ("0,"). A tiny request can ask a model
    for a huge output; building its JSON first would cost several times the output's memory."""
    least = 0
    for output, array in zip(call.outputs, results, strict=True):
        if output.classification:
            if array.size > MAX_CLASSIFIED_SCORES:
                # Ranking sorts every score: its time and memory grow with them, not with k.
                raise BadRequest(
                    f"output {output.name!r} has {array.size} scores, over the {MAX_CLASSIFIED_SCORES} that "
                    "classification ranks: ask for the output itself (binary) instead"
                )
            rows = array.size // array.shape[-1] if array.ndim and array.shape[-1] else 0
            entries = rows * min(output.classification, array.shape[-1] if array.ndim else 0)
            if entries > MAX_CLASSIFICATION_ENTRIES:
                # Each entry becomes a Python string ("score:index:label"): bounded in count, not bytes.
                raise BadRequest(
                    f"output {output.name!r}: classification would give {entries} entries (rows x classes), "
                    f"over the limit of {MAX_CLASSIFICATION_ENTRIES}: ask for fewer classes or fewer rows"
                )
            least += 2 * entries
        elif output.binary:
            least += array.nbytes if array.dtype != object else 4 * array.size
        else:
            least += 2 * array.size
    if least > limit:
        raise_response_too_large(least, limit, at_least=True)


def raise_response_too_large(size: int, limit: int, *, at_least: bool = False) -> None:
    raise BadRequest(
        f"the response would be {'at least ' if at_least else ''}{size} bytes, over the {limit}-byte "
        "response limit: request fewer outputs, binary outputs, or a smaller batch"
    )


def encode_infer_response(
    model: LoadedModel, call: InferenceCall, results: list[np.ndarray], limit: int
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it. A response over
    ``limit`` bytes is refused (``BadRequest``), before it is built where its size is known earlier."""
    plan = call.plan
    if plan is None or not plan.binary_outputs:
        return _checked_encode(model, call, results, limit)
    key = tuple([(array.shape, array.nbytes) for array in results])
    header = plan.response_headers.get(key)
    if header is None:
        body, header_length = _checked_encode(model, call, results, limit)
        if header_length is not None:
            if len(plan.response_headers) >= MAX_PLANNED_RESPONSES:
                plan.response_headers.clear()
            plan.response_headers[key] = body[:header_length]
        return body, header_length
    # A remembered header: the size is exact before anything is copied.
    size = len(header) + sum([array.nbytes for array in results])
    if size > limit:
        raise_response_too_large(size, limit)
    chunks = [np.ascontiguousarray(array).data.cast("B") if array.size else b"" for array in results]
    return b"".join([header, *chunks]), len(header)


def _checked_encode(
    model: LoadedModel, call: InferenceCall, results: list[np.ndarray], limit: int
) -> tuple[bytes, int | None]:
    check_response_size(call, results, limit)
    body, header_length = _encode(model, call, results)
    if len(body) > limit:
        raise_response_too_large(len(body), limit)
    return body, header_length


def _encode(model: LoadedModel, call: InferenceCall, results: list[np.ndarray]) -> tuple[bytes, int | None]:
    entries: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for output, array in zip(call.outputs, results, strict=True):
        datatype = model.output_datatypes[output.name]
        if output.classification:
            array = classify(array, output.classification, model.manifest.labels)
            datatype = BYTES
        entry: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": array.shape}
        if output.binary:
            if datatype == BYTES:
                raw: bytes | memoryview = encode_bytes_elements(array)
            elif array.size == 0:
                # memoryview cannot cast a view with a zero in its shape.
                raw = b""
            else:
                raw = np.ascontiguousarray(array).data.cast("B")
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == BYTES:
            entry["data"] = _strings(array)
        else:
            entry["data"] = np.ascontiguousarray(array).ravel()
        entries.append(entry)
    document: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version_text,
        "outputs": entries,
    }
    if call.request_id is not None:
        document["id"] = call.request_id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
