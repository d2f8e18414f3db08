"""The benchmark's models, built here with ``onnx.helper`` from a seeded RNG: nothing is downloaded.

- ``tiny``: one ``Add`` on a 1x16 float tensor. It does almost nothing, so it measures overhead.
- ``cnn``: about 5 MB on a 224x224x3 (NHWC) image: four Conv+Relu+MaxPool blocks, then a Gemm head.
- ``mlp``: about 17 MB: four 1024x1024 float32 MatMul+Relu layers.

Every model has one float32 input named ``x`` and one output named ``y``; the CNN and the MLP have a
dynamic batch dimension. ``write_models`` writes them as ``NAME.onnx`` and returns their paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
IR_VERSION = 10
MODEL_NAMES = ("tiny", "cnn", "mlp")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    # The input's shape for one item (without the batch dimension, except for tiny's fixed [1, 16]).
    item_shape: tuple[int, ...]
    batched: bool
    description: str

    def input_shape(self, batch: int) -> tuple[int, ...]:
        if not self.batched:
            return self.item_shape
        return (batch, *self.item_shape)

    def example(self, batch: int = 1, seed: int = 1) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(self.input_shape(batch)).astype(np.float32)


SPECS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("tiny", (1, 16), batched=False, description="one Add on 1x16 float32"),
    "cnn": ModelSpec(
        "cnn", (224, 224, 3), batched=True, description="4 Conv+Relu+MaxPool blocks and a Gemm head"
    ),
    "mlp": ModelSpec("mlp", (1024,), batched=True, description="4 x (1024x1024 MatMul + Relu)"),
}


def _serialize(graph: Any) -> bytes:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    serialized: bytes = model.SerializeToString()
    return serialized


def tiny_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
    )
    return _serialize(graph)


def mlp_model(width: int = 1024, depth: int = 4) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, previous = [], [], "x"
    for layer in range(depth):
        weight = (rng.standard_normal((width, width)) * 0.02).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [f"h{layer}"]))
        previous = f"h{layer}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    return _serialize(graph)


def cnn_model(
    channels: tuple[int, ...] = (16, 32, 64, 64), hidden: int = 384, classes: int = 10, side: int = 224
) -> bytes:
    """NHWC image in, ``classes`` logits out. The first block's convolution has stride 2, every block
    ends in a 2x2 max-pool, so 224 becomes 7 after four blocks; the Gemm head holds most of the weights
    (7*7*64*384 float32 = 4.8 MB)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = []
    nodes = [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2])]
    previous, in_channels, size = "nchw", 3, side
    for block, out_channels in enumerate(channels):
        stride = 2 if block == 0 else 1
        scale = np.sqrt(2.0 / (in_channels * 9))
        weight = (rng.standard_normal((out_channels, in_channels, 3, 3)) * scale).astype(np.float32)
        bias = np.zeros(out_channels, dtype=np.float32)
        inits += [numpy_helper.from_array(weight, f"cw{block}"), numpy_helper.from_array(bias, f"cb{block}")]
        nodes += [
            helper.make_node(
                "Conv",
                [previous, f"cw{block}", f"cb{block}"],
                [f"c{block}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            ),
            helper.make_node("Relu", [f"c{block}"], [f"r{block}"]),
            helper.make_node("MaxPool", [f"r{block}"], [f"p{block}"], kernel_shape=[2, 2], strides=[2, 2]),
        ]
        previous, in_channels, size = f"p{block}", out_channels, size // stride // 2
    features = in_channels * size * size
    head = (rng.standard_normal((features, hidden)) * np.sqrt(2.0 / features)).astype(np.float32)
    out = (rng.standard_normal((hidden, classes)) * np.sqrt(1.0 / hidden)).astype(np.float32)
    inits += [
        numpy_helper.from_array(head, "gw0"),
        numpy_helper.from_array(np.zeros(hidden, dtype=np.float32), "gb0"),
        numpy_helper.from_array(out, "gw1"),
        numpy_helper.from_array(np.zeros(classes, dtype=np.float32), "gb1"),
    ]
    nodes += [
        helper.make_node("Flatten", [previous], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "gw0", "gb0"], ["g0"]),
        helper.make_node("Relu", ["g0"], ["h0"]),
        helper.make_node("Gemm", ["h0", "gw1", "gb1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    return _serialize(graph)


BUILDERS = {"tiny": tiny_model, "cnn": cnn_model, "mlp": mlp_model}


def write_models(directory: Path, names: tuple[str, ...] = MODEL_NAMES) -> dict[str, Path]:
    """Write each model as ``directory/NAME.onnx`` (rewritten only when its bytes changed)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        data = BUILDERS[name]()
        path = directory / f"{name}.onnx"
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        paths[name] = path
    return paths


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("build/bench/models")
    for model, written in write_models(target).items():
        print(f"{model}: {written} ({written.stat().st_size:,} bytes)")
