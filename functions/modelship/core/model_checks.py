"""Checks on untrusted model bytes before onnxruntime opens them, with no dependency on the onnx package.

onnxruntime follows a tensor's *external data* to a file named by the model: it refuses absolute paths
and symlink escapes, but not a relative path inside its working directory (in Lambda, the code). A model
could make inference return any such file's bytes. modelship serves single-file models only, so every
tensor that points outside the model is refused: initializers, sparse initializers, node attributes
(tensors, graphs and sparse tensors), subgraphs of control-flow nodes, functions and training graphs.

The walk reads the protobuf wire format directly (field numbers from onnx.proto), skipping over tensor
payloads without copying them, and bounds its own nesting, so a hostile file cannot exhaust the stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

# How deep graphs may nest (If/Loop/Scan bodies inside each other). Real models nest a handful, and
# protobuf's own parsers stop at 100 message levels (three per nesting).
MAX_GRAPH_NESTING: Final = 32

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5

# Message kinds, and for each the fields (number → kind of the sub-message) that can hold a tensor.
_MODEL, _TRAINING, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _SPARSE, _TENSOR = range(8)
_CHILDREN: Final[dict[int, dict[int, int]]] = {
    # ModelProto: graph, training_info, functions.
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    # TrainingInfoProto: initialization, algorithm.
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    # GraphProto: node, initializer, sparse_initializer.
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    # NodeProto: attribute.
    _NODE: {5: _ATTRIBUTE},
    # AttributeProto: t, g, tensors, graphs, sparse_tensor, sparse_tensors.
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    # FunctionProto: node, attribute_proto.
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    # SparseTensorProto: values, indices.
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {},
}
# TensorProto.external_data (13) and TensorProto.data_location (14), whose EXTERNAL is 1.
_TENSOR_EXTERNAL_DATA: Final = 13
_TENSOR_DATA_LOCATION: Final = 14
_DATA_LOCATION_EXTERNAL: Final = 1
# The default operator set's name in manifests and messages (onnx.proto writes it as "").
DEFAULT_DOMAIN: Final = "ai.onnx"


class ModelRefused(ValueError):
    """The model is not one modelship will hand to onnxruntime; the message says why, naming no path."""


def refuse_unsafe_model(data: bytes | memoryview) -> None:
    """Raise ``ModelRefused`` if any tensor of the model refers to external data, or if the bytes are
    not a well-formed protobuf message."""
    _walk(memoryview(data), _MODEL, depth=0)


def unranked_tensors(data: bytes | memoryview) -> frozenset[str]:
    """The main graph's inputs and outputs declared as tensors of unknown rank (no shape at all).

    onnxruntime reports them with the shape ``[]``, as it does scalars; only the graph tells them apart.
    Call after ``refuse_unsafe_model``, which has checked that the bytes are well formed.
    """
    names: set[str] = set()
    for graph in _fields(memoryview(data), 7):
        for value_info in (*_fields(graph, 11), *_fields(graph, 12)):
            name = bytes(next(iter(_fields(value_info, 1)), b"")).decode("utf-8", "replace")
            for type_proto in _fields(value_info, 2):
                # TypeProto.tensor_type (1) whose TypeProto.Tensor has no shape (2).
                if any(not _fields(tensor, 2) for tensor in _fields(type_proto, 1)):
                    names.add(name)
    return frozenset(names)


def declared_versions(data: bytes | memoryview) -> tuple[int, dict[str, int]]:
    """The model's IR version and its opset imports (domain → version, the default domain named
    ``ai.onnx``), as declared in ``ModelProto``, read without the onnx package. Reads only the top-level
    message; ``ModelRefused`` if that is not well-formed protobuf."""
    view = memoryview(data)
    ir_versions = _varint_fields(view, 1)  # ModelProto.ir_version
    opsets: dict[str, int] = {}
    for entry in _fields(view, 8):  # ModelProto.opset_import: OperatorSetIdProto
        domain = bytes(next(iter(_fields(entry, 1)), b"")).decode("utf-8", "replace")  # domain
        versions = _varint_fields(entry, 2)  # version
        opsets[domain or DEFAULT_DOMAIN] = versions[-1] if versions else 0
    return (ir_versions[-1] if ir_versions else 0), opsets


def _varint_fields(view: memoryview, wanted: int) -> list[int]:
    """The varint occurrences of field ``wanted`` in one message, in order."""
    return [value for field, value in _scan(view) if field == wanted and isinstance(value, int)]


def _fields(view: memoryview, wanted: int) -> list[memoryview]:
    """The length-delimited occurrences of field ``wanted`` in one message, in order."""
    return [value for field, value in _scan(view) if field == wanted and isinstance(value, memoryview)]


def _scan(view: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """Each field of one message: its number and value, a varint's integer or a length-delimited field's
    bytes (fixed-width fields are skipped). ``ModelRefused`` for anything that is not well-formed."""
    position, end = 0, len(view)
    while position < end:
        key, position = _varint(view, position)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise ModelRefused("not a valid ONNX model (malformed protobuf: field 0)")
        if wire_type == _VARINT:
            value, position = _varint(view, position)
            yield field, value
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _varint(view, position)
            if length > end - position:
                raise ModelRefused("not a valid ONNX model (malformed protobuf: truncated field)")
            yield field, view[position : position + length]
            position += length
        elif wire_type in (_FIXED64, _FIXED32):
            position += 8 if wire_type == _FIXED64 else 4
            if position > end:
                raise ModelRefused("not a valid ONNX model (malformed protobuf: truncated field)")
        else:
            raise ModelRefused(f"not a valid ONNX model (malformed protobuf: wire type {wire_type})")


def _walk(view: memoryview, kind: int, depth: int) -> None:
    if depth > MAX_GRAPH_NESTING:
        raise ModelRefused(f"graphs nest more than {MAX_GRAPH_NESTING} deep")
    children = _CHILDREN[kind]
    for field, value in _scan(view):
        if isinstance(value, int):
            if kind == _TENSOR and field == _TENSOR_DATA_LOCATION and value == _DATA_LOCATION_EXTERNAL:
                raise _external_data_refused()
            continue
        if kind == _TENSOR and field == _TENSOR_EXTERNAL_DATA:
            raise _external_data_refused()
        child = children.get(field)
        if child is not None:
            _walk(value, child, depth + (child == _GRAPH))


def _varint(view: memoryview, position: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if position >= len(view) or shift > 63:
            raise ModelRefused("not a valid ONNX model (malformed protobuf: bad varint)")
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def encode_varint(value: int) -> bytes:
    """A non-negative integer in the protobuf varint encoding."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_varint_field(number: int, value: int) -> bytes:
    """An integer field (int32, int64, an enum): key, varint."""
    return encode_varint(number << 3 | _VARINT) + encode_varint(value)


def encode_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a sub-message, bytes, a string): key, length, payload."""
    return encode_varint(number << 3 | _LENGTH_DELIMITED) + encode_varint(len(payload)) + payload


def _external_data_refused() -> ModelRefused:
    return ModelRefused(
        "a tensor refers to external data (a file outside the model); only single-file models are "
        "served: save it with all tensors inside the model"
    )
