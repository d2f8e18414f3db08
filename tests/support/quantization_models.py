"""Models for the INT8 tests, built with onnx.helper from a seeded RNG."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def tied_classifier() -> bytes:
    """Ten classes whose weights differ by far less than one INT8 step: the source's top-1 depends on
    those differences, which quantisation rounds away."""
    random = np.random.default_rng(7)
    base = random.standard_normal((16, 1)).astype(np.float32)
    weights = (base + random.standard_normal((16, 10)).astype(np.float32) * 1e-4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"])],
        "tied",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    serialized: bytes = model.SerializeToString()
    return serialized
