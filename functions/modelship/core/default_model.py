"""The bundled default model: a softmax classifier for Fisher's iris data, trained here with numpy.

The data set ships inside the package (150 rows), so nothing is downloaded. Training is full-batch
gradient descent from zeros, hence deterministic. Standardisation is part of the graph, so clients
send raw measurements in centimetres.
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path
from typing import Final

import numpy as np

from modelship.core.repository import ModelRepository

DEFAULT_MODEL_NAME: Final = "iris"
FEATURES: Final = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
OPSET: Final = 17
IR_VERSION: Final = 8
TRAINING_STEPS: Final = 3000
LEARNING_RATE: Final = 0.5
L2_PENALTY: Final = 1e-3


def load_iris() -> tuple[np.ndarray, np.ndarray, list[str]]:
    text = resources.files("modelship.core").joinpath("data/iris.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines()))
    labels = rows[0][2:]
    data = np.array([[float(value) for value in row[:4]] for row in rows[1:]])
    targets = np.array([int(row[4]) for row in rows[1:]])
    return data, targets, labels


def train_softmax(features: np.ndarray, targets: np.ndarray, classes: int) -> tuple[np.ndarray, ...]:
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    standardized = (features - mean) / std
    one_hot = np.eye(classes)[targets]
    weights = np.zeros((features.shape[1], classes))
    bias = np.zeros(classes)
    for _ in range(TRAINING_STEPS):
        logits = standardized @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        error = (probabilities - one_hot) / len(features)
        weights -= LEARNING_RATE * (standardized.T @ error + L2_PENALTY * weights)
        bias -= LEARNING_RATE * error.sum(axis=0)
    return mean, std, weights, bias


def softmax_classifier(
    weights: np.ndarray,
    bias: np.ndarray,
    *,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    name: str = "softmax_classifier",
    doc: str = "",
) -> bytes:
    """A serialized linear softmax classifier: FP32 ``input`` [batch, features] to ``probabilities``
    [batch, classes] and the argmax ``label`` (INT64 [batch]). With ``mean`` and ``std``, the input is
    standardised inside the graph. The shape of the bundled model, and of the stand-ins tests push."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    features, classes = weights.shape
    initializers = {"weights": weights, "bias": bias}
    nodes = []
    source = "input"
    if mean is not None and std is not None:
        initializers |= {"mean": mean, "std": std}
        nodes += [
            helper.make_node("Sub", ["input", "mean"], ["centered"]),
            helper.make_node("Div", ["centered", "std"], ["standardized"]),
        ]
        source = "standardized"
    nodes += [
        helper.make_node("Gemm", [source, "weights", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes=nodes,
        name=name,
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[
            numpy_helper.from_array(np.asarray(value, dtype=np.float32), name=key)
            for key, value in initializers.items()
        ],
    )
    model = helper.make_model(
        graph,
        producer_name="modelship",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=doc,
    )
    # onnx writes its newest IR version by default; the bundled onnxruntime reads up to 13.
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def build_iris_model() -> tuple[bytes, list[str], float]:
    """The serialized ONNX model, its class labels, and its training-set accuracy."""
    features, targets, labels = load_iris()
    mean, std, weights, bias = train_softmax(features, targets, len(labels))
    logits = ((features - mean) / std) @ weights + bias
    accuracy = float((logits.argmax(axis=1) == targets).mean())
    data = softmax_classifier(
        weights,
        bias,
        mean=mean,
        std=std,
        name="iris_softmax",
        doc="Softmax regression on Fisher's iris data. Input: " + ", ".join(FEATURES) + ".",
    )
    return data, labels, accuracy


def export_default_model(directory: Path) -> tuple[Path, Path, list[str]]:
    """Write ``iris.onnx`` and ``iris.labels.json`` for ``modelship push``; return them and the labels."""
    import orjson

    data, labels, _ = build_iris_model()
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / f"{DEFAULT_MODEL_NAME}.onnx"
    labels_path = directory / f"{DEFAULT_MODEL_NAME}.labels.json"
    model_path.write_bytes(data)
    labels_path.write_bytes(orjson.dumps(labels))
    return model_path, labels_path, labels


def ensure_default_model(repository: ModelRepository, scratch: Path) -> bool:
    """Push the default model into ``repository`` unless it is already there. True if pushed."""
    if repository.versions(DEFAULT_MODEL_NAME):
        return False
    model_path, _, labels = export_default_model(scratch)
    repository.push(model_path, DEFAULT_MODEL_NAME, labels=labels)
    return True
