"""The bundled default model: a softmax classifier for Fisher's iris data, trained here with numpy.

The data set ships inside the package (150 rows), so nothing is downloaded. Training is full-batch
gradient descent from zeros, hence deterministic. Standardisation is part of the graph, so clients
send raw measurements in centimetres.
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np

from modelship.repository import ModelRepository

DEFAULT_MODEL_NAME: Final = "iris"
FEATURES: Final = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
OPSET: Final = 17
TRAINING_STEPS: Final = 3000
LEARNING_RATE: Final = 0.5
L2_PENALTY: Final = 1e-3


def load_iris() -> tuple[np.ndarray, np.ndarray, list[str]]:
    text = resources.files("modelship").joinpath("data/iris.csv").read_text(encoding="utf-8")
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


def build_iris_model() -> tuple[bytes, list[str], float]:
    """The serialized ONNX model, its class labels, and its training-set accuracy."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    features, targets, labels = load_iris()
    mean, std, weights, bias = train_softmax(features, targets, len(labels))
    logits = ((features - mean) / std) @ weights + bias
    accuracy = float((logits.argmax(axis=1) == targets).mean())

    def constant(name: str, value: np.ndarray) -> Any:
        return numpy_helper.from_array(value.astype(np.float32), name=name)

    graph = helper.make_graph(
        nodes=[
            helper.make_node("Sub", ["input", "mean"], ["centered"]),
            helper.make_node("Div", ["centered", "std"], ["standardized"]),
            helper.make_node("Gemm", ["standardized", "weights", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ],
        name="iris_softmax",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", len(FEATURES)])],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(labels)]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[
            constant("mean", mean),
            constant("std", std),
            constant("weights", weights),
            constant("bias", bias),
        ],
    )
    model = helper.make_model(
        graph,
        producer_name="modelship",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string="Softmax regression on Fisher's iris data. Input: " + ", ".join(FEATURES) + ".",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), labels, accuracy


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
