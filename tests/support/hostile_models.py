"""Hostile models, made by our own code: each family a probe found, plus broken files.

Every builder returns serialized ONNX bytes with IR version 8 and opset 17 (what the bundled
onnxruntime reads). Nothing here is fetched; the "secret" read by the external-data models is a file
the test writes itself.
"""

from __future__ import annotations

import numpy as np
from modelship.core.model_checks import encode_field
from onnx import GraphProto, ModelProto, TensorProto, ValueInfoProto, helper, numpy_helper

IR_VERSION = 8
OPSET = 17
SECRET_FILE = "modelship-secret.bin"


def _model(graph: GraphProto, functions: list[object] | None = None) -> ModelProto:
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("hostile", 1)],
        ir_version=IR_VERSION,
        functions=functions or [],
    )


def _external_tensor(name: str, elements: int, location: str = SECRET_FILE) -> TensorProto:
    """A UINT8 tensor whose bytes onnxruntime would read from ``location``, relative to its cwd."""
    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[elements])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(elements))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _uint8_io(shape: list[int | str | None]) -> tuple[ValueInfoProto, ValueInfoProto]:
    return (
        helper.make_tensor_value_info("x", TensorProto.UINT8, shape),
        helper.make_tensor_value_info("y", TensorProto.UINT8, shape),
    )


def external_initializer(elements: int = 16) -> bytes:
    """y = x + secret: the classic read. onnxruntime itself loads it from a relative location."""
    x, y = _uint8_io([elements])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "secret"], ["y"])],
        "external_initializer",
        [x],
        [y],
        initializer=[_external_tensor("secret", elements)],
    )
    return bytes(_model(graph).SerializeToString())


def external_constant_attribute(elements: int = 16) -> bytes:
    """The secret as a Constant node's tensor attribute."""
    x, y = _uint8_io([elements])
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["secret"], value=_external_tensor("value", elements)),
            helper.make_node("Add", ["x", "secret"], ["y"]),
        ],
        "external_constant_attribute",
        [x],
        [y],
    )
    return bytes(_model(graph).SerializeToString())


def external_in_subgraph(elements: int = 16) -> bytes:
    """The secret inside the then-branch of an If: a subgraph's initializer."""
    x, y = _uint8_io([elements])
    branch_out = helper.make_tensor_value_info("branch", TensorProto.UINT8, [elements])
    then_graph = helper.make_graph(
        [helper.make_node("Identity", ["secret"], ["branch"])],
        "then",
        [],
        [branch_out],
        initializer=[_external_tensor("secret", elements)],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["branch"])], "else", [], [branch_out]
    )
    condition = numpy_helper.from_array(np.array(True), "condition")
    graph = helper.make_graph(
        [helper.make_node("If", ["condition"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        "external_in_subgraph",
        [x],
        [y],
        initializer=[condition],
    )
    return bytes(_model(graph).SerializeToString())


def external_sparse_initializer(elements: int = 16) -> bytes:
    """The secret as the values of a sparse initializer."""
    x, y = _uint8_io([elements])
    indices = numpy_helper.from_array(np.arange(elements, dtype=np.int64), "indices")
    sparse = helper.make_sparse_tensor(_external_tensor("secret", elements), indices, [elements])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "secret"], ["y"])],
        "external_sparse_initializer",
        [x],
        [y],
    )
    graph.sparse_initializer.append(sparse)
    return bytes(_model(graph).SerializeToString())


def external_in_function(elements: int = 16) -> bytes:
    """The secret in a Constant inside a model-local function."""
    function = helper.make_function(
        "hostile",
        "AddSecret",
        ["a"],
        ["b"],
        [
            helper.make_node("Constant", [], ["secret"], value=_external_tensor("value", elements)),
            helper.make_node("Add", ["a", "secret"], ["b"]),
        ],
        [helper.make_opsetid("", OPSET)],
    )
    x, y = _uint8_io([elements])
    graph = helper.make_graph(
        [helper.make_node("AddSecret", ["x"], ["y"], domain="hostile")], "external_in_function", [x], [y]
    )
    return bytes(_model(graph, [function]).SerializeToString())


EXTERNAL_DATA_MODELS = {
    "initializer": external_initializer,
    "constant-attribute": external_constant_attribute,
    "subgraph": external_in_subgraph,
    "sparse-initializer": external_sparse_initializer,
    "function": external_in_function,
}


def counting_loop(trip_count: int | None = None) -> bytes:
    """``y = x + n`` by a Loop of ``n`` single additions. ``n`` is the input ``n`` (INT64 [1]) when
    ``trip_count`` is None, else a constant: a huge constant never finishes, even on zeros."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["sum_in", "one"], ["sum_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("sum_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("sum_out", TensorProto.FLOAT, [1]),
        ],
        initializer=[numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])]
    initializers = [numpy_helper.from_array(np.array(True), "keep_going")]
    if trip_count is None:
        inputs.append(helper.make_tensor_value_info("n", TensorProto.INT64, [1]))
        trips = "n_scalar"
        nodes = [helper.make_node("Squeeze", ["n"], ["n_scalar"])]
    else:
        initializers.append(numpy_helper.from_array(np.array(trip_count, np.int64), "trips"))
        trips, nodes = "trips", []
    nodes.append(helper.make_node("Loop", [trips, "keep_going", "x"], ["y"], body=body))
    graph = helper.make_graph(
        nodes,
        "counting_loop",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=initializers,
    )
    return bytes(_model(graph).SerializeToString())


def memory_bomb(mebibytes: int = 256) -> bytes:
    """A few hundred bytes that constant-fold into ``mebibytes`` of float32 kept by the session: the
    table Gather reads from is ConstantOfShape of a constant shape."""
    elements = mebibytes * 1024 * 1024 // 4
    shape = numpy_helper.from_array(np.array([elements], np.int64), "table_shape")
    graph = helper.make_graph(
        [
            helper.make_node(
                "ConstantOfShape",
                ["table_shape"],
                ["table"],
                value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
            ),
            helper.make_node("Gather", ["table", "index"], ["y"]),
        ],
        "memory_bomb",
        [helper.make_tensor_value_info("index", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[shape],
    )
    return bytes(_model(graph).SerializeToString())


def output_amplifier() -> bytes:
    """``y`` = ``n`` zeros (FP32) for the INT64 input ``n``: a 2-element request, any size of answer."""
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["n"], ["y"])],
        "output_amplifier",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["count"])],
    )
    return bytes(_model(graph).SerializeToString())


def unranked_identity() -> bytes:
    """y = x for an FP32 tensor of any rank (the graph declares no shape at all)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "unranked_identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return bytes(_model(graph).SerializeToString())


def no_inputs() -> bytes:
    """A constant: it loads, but no inference request could ever call it."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
            )
        ],
        "no_inputs",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return bytes(_model(graph).SerializeToString())


def deeply_nested(depth: int) -> bytes:
    """Graphs nested ``depth`` deep (graph → node → attribute → graph ...), written at the wire level:
    the protobuf library itself refuses to build this, a hostile writer need not."""

    graph = b""
    for _ in range(depth):
        attribute = encode_field(6, graph)  # AttributeProto.g
        node = encode_field(5, attribute)  # NodeProto.attribute
        graph = encode_field(1, node)  # GraphProto.node
    return encode_field(7, graph)  # ModelProto.graph


def broken_files(good: bytes) -> dict[str, bytes]:
    """Truncated, bit-flipped, empty and junk versions of a good model."""
    flipped = bytearray(good)
    for position in range(0, len(flipped), 7):
        flipped[position] ^= 0xA5
    return {
        "truncated": good[: len(good) // 2],
        "flipped": bytes(flipped),
        "zero-bytes": b"",
        "junk": b"\x08\x96\x01" * 100,
    }


def slow_to_fold(boxes: int = 400_000) -> bytes:
    """y = x + shape(NonMaxSuppression over ``boxes`` constant boxes), x INT64 [2]: onnxruntime folds
    the suppression when the session is created, O(boxes²) inside one kernel, so that takes minutes."""
    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["box_shape"],
            ["boxes"],
            value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
        ),
        helper.make_node(
            "ConstantOfShape",
            ["score_shape"],
            ["scores"],
            value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
        ),
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "keep"], ["selected"]),
        helper.make_node("Shape", ["selected"], ["selected_shape"]),
        helper.make_node("Add", ["x", "selected_shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_to_fold",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])],
        initializer=[
            numpy_helper.from_array(np.array([1, boxes, 4], np.int64), "box_shape"),
            numpy_helper.from_array(np.array([1, 1, boxes], np.int64), "score_shape"),
            numpy_helper.from_array(np.array([boxes], np.int64), "keep"),
        ],
    )
    return bytes(_model(graph).SerializeToString())
