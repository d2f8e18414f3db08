"""Small ONNX models built in code for tests: one identity model per datatype, and a two-output model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from modelship.core.default_model import softmax_classifier
from onnx import GraphProto, TensorProto, helper

# onnx 1.23 writes IR version 14 by default; onnxruntime 1.31 reads up to 13.
IR_VERSION = 10
OPSET = 17

TENSOR_TYPE_BY_DATATYPE = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}

SAMPLE_BY_DATATYPE: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 7, 255], [1, 2, 3]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535], [1, 2, 3]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1], [1, 2, 3]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1], [1, 2, 3]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [1, -2, 3]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [1, -2, 3]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, -2, 3]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [1, -2, 3]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0], [1, 2, 3]], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5, 3.4e38], [1, 2, 3]], dtype=np.float32),
    "FP64": np.array([[0.1, -2.5, 1.7e308], [1, 2, 3]], dtype=np.float64),
    "BYTES": np.array([["a", "béta", ""], ["x", "yy", "zzz"]], dtype=object),
}


def serialize(graph: GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    serialized: bytes = model.SerializeToString()
    return serialized


def identity_model(datatype: str, shape: tuple[int | str, ...] = ("batch", 3)) -> bytes:
    tensor_type = TENSOR_TYPE_BY_DATATYPE[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("x", tensor_type, list(shape))],
        [helper.make_tensor_value_info("y", tensor_type, list(shape))],
    )
    return serialize(graph)


def add_sub_model() -> bytes:
    """Inputs a, b: FP32 [batch, 4]; outputs sum = a + b and diff = a - b."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Sub", ["a", "b"], ["diff"])],
        "add_sub",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("diff", TensorProto.FLOAT, ["batch", 4]),
        ],
    )
    return serialize(graph)


def write_model(directory: Path, name: str, data: bytes) -> Path:
    path = directory / f"{name}.onnx"
    path.write_bytes(data)
    return path


def random_classifier(seed: int, features: int = 4, classes: int = 3) -> bytes:
    """A classifier with iris's signature but its own weights, so that its answers differ from iris's."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(features, classes)).astype(np.float32)
    bias = rng.normal(size=(classes,)).astype(np.float32)
    return softmax_classifier(weights, bias, name=f"classifier_{seed}")
