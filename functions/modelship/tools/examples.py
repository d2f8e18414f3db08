"""``modelship example digits``: a small real image classifier, trained here in seconds, nothing downloaded.

The data are scikit-learn's bundled 8x8 handwritten digits (``sklearn.datasets.load_digits``, 1,797
images, ink from 0 to 16), shipped inside scikit-learn; the ``examples`` extra installs it and Pillow.
The classifier is a two-layer perceptron (64 -> 64 ReLU -> 10) trained with numpy by full-batch Adam
from a seeded initialisation, so the same versions give the same bytes. It is exported with
``onnx.helper`` like the bundled iris model (``core/default_model.py``): input ``image`` [batch, 1, 8, 8]
FP32, outputs ``probabilities`` [batch, 10] and ``label`` (INT64, the argmax).

The images are written and read as 8-bit grayscale, light ink on a dark background: a pixel is the ink
times 255/16, rounded. The preprocessing block (``digits.preprocessing.json``, pushed with
``--preprocessing``) says how a client gets from such an image to the input: resize to 8x8, grayscale,
times 1/255, minus the training set's mean, over its standard deviation, NCHW.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import orjson

from modelship.core.manifest import Preprocessing

DIGITS_MODEL_NAME: Final = "digits"
INPUT_NAME: Final = "image"
SIDE: Final = 8
LABELS: Final = tuple(str(digit) for digit in range(10))
HIDDEN: Final = 64
SEED: Final = 0
TRAINING_STEPS: Final = 200
LEARNING_RATE: Final = 0.02
L2_PENALTY: Final = 1e-4
TEST_FRACTION: Final = 0.2
CALIBRATION_SAMPLES: Final = 200
# The sample images: drawn 4x larger than the data (nearest neighbour), so ``infer --image`` resizes them.
SAMPLE_DIGITS: Final = (3, 7)
SAMPLE_UPSCALE: Final = 4
OPSET: Final = 17
IR_VERSION: Final = 8
EXAMPLES_EXTRA_HINT: Final = "install the examples extra: pip install -e '.[examples]'"
LOCAL_EXTRA_HINT: Final = "install the local extra: pip install -e '.[local]' (it pins onnx)"


class ExampleError(Exception):
    """A missing package or an unwritable folder, said in one line."""


@dataclass(frozen=True, slots=True)
class DigitsExample:
    model: Path
    labels: Path
    preprocessing: Path
    calibration: Path
    samples: tuple[Path, ...]
    test_accuracy: float
    test_images: int


@dataclass(frozen=True, slots=True)
class DigitsModel:
    data: bytes
    preprocessing: Preprocessing
    # The held-out images as 8-bit pixels [n, 8, 8], their digits, and the model's accuracy on them.
    test_pixels: np.ndarray
    test_targets: np.ndarray
    test_accuracy: float
    # Preprocessed training images [n, 1, 8, 8] for static quantisation.
    calibration: np.ndarray


def digit_pixels() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits as 8-bit grayscale [n, 8, 8] (light ink on dark), and their digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ExampleError(f"the digits example needs scikit-learn: {EXAMPLES_EXTRA_HINT}") from None
    digits = load_digits()
    pixels = np.rint(np.asarray(digits.images, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)
    return pixels, np.asarray(digits.target, dtype=np.int64)


def build_digits_model() -> DigitsModel:
    """Train the classifier on 80 % of the digits (a seeded split) and export it; the rest measure it."""
    pixels, targets = digit_pixels()
    order = np.random.default_rng(SEED).permutation(len(pixels))
    test_count = int(len(pixels) * TEST_FRACTION)
    test, train = order[:test_count], order[test_count:]
    scaled = pixels.astype(np.float64) / 255.0
    mean, std = float(scaled[train].mean()), float(scaled[train].std())
    preprocessing = Preprocessing(
        input=INPUT_NAME,
        size=(SIDE, SIDE),
        channels=1,
        layout="NCHW",
        scale=1.0 / 255.0,
        mean=(mean,),
        std=(std,),
    )
    # float32 throughout: what the model computes in, and half the work of float64.
    features = ((scaled - mean) / std).reshape(len(pixels), SIDE * SIDE).astype(np.float32)
    with _one_blas_thread():
        weights = _train(features[train], targets[train])
    data = _export(weights)
    hidden = np.maximum(features[test] @ weights[0] + weights[1], 0)
    accuracy = float(((hidden @ weights[2] + weights[3]).argmax(axis=1) == targets[test]).mean())
    calibration = features[train[:CALIBRATION_SAMPLES]].reshape(-1, 1, SIDE, SIDE).astype(np.float32)
    return DigitsModel(data, preprocessing, pixels[test], targets[test], accuracy, calibration)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Small matrices: BLAS threads cost more than they bring (ten times more on a busy 2-CPU machine),
    and one thread sums in one order. threadpoolctl comes with scikit-learn."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _train(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, ...]:
    """Full-batch Adam on the cross-entropy, He-initialised from ``SEED``."""
    random = np.random.default_rng(SEED)
    inputs = features.shape[1]
    parameters = [
        (random.standard_normal((inputs, HIDDEN)) * np.sqrt(2.0 / inputs)).astype(np.float32),
        np.zeros(HIDDEN, dtype=np.float32),
        (random.standard_normal((HIDDEN, len(LABELS))) * np.sqrt(2.0 / HIDDEN)).astype(np.float32),
        np.zeros(len(LABELS), dtype=np.float32),
    ]
    first = [np.zeros_like(parameter) for parameter in parameters]
    second = [np.zeros_like(parameter) for parameter in parameters]
    one_hot = np.eye(len(LABELS), dtype=np.float32)[targets]
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8
    for step in range(1, TRAINING_STEPS + 1):
        w1, b1, w2, b2 = parameters
        pre = features @ w1 + b1
        hidden = np.maximum(pre, 0)
        logits = hidden @ w2 + b2
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        error = (probabilities - one_hot) / len(features)
        hidden_error = (error @ w2.T) * (pre > 0)
        gradients = [
            features.T @ hidden_error + L2_PENALTY * w1,
            hidden_error.sum(axis=0),
            hidden.T @ error + L2_PENALTY * w2,
            error.sum(axis=0),
        ]
        for index, gradient in enumerate(gradients):
            first[index] = beta1 * first[index] + (1 - beta1) * gradient
            second[index] = beta2 * second[index] + (1 - beta2) * gradient**2
            corrected_first = first[index] / (1 - beta1**step)
            corrected_second = second[index] / (1 - beta2**step)
            parameters[index] = parameters[index] - LEARNING_RATE * corrected_first / (
                np.sqrt(corrected_second) + epsilon
            )
    return tuple(parameters)


def _export(weights: tuple[np.ndarray, ...]) -> bytes:
    """MatMul and Add rather than Gemm: onnxruntime's dynamic INT8 quantisation handles MatMul."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ExampleError(f"building the digits model needs the onnx package: {LOCAL_EXTRA_HINT}") from None
    nodes = [
        helper.make_node("Flatten", [INPUT_NAME], ["pixels"], axis=1),
        helper.make_node("MatMul", ["pixels", "w1"], ["hidden_product"]),
        helper.make_node("Add", ["hidden_product", "b1"], ["hidden_sum"]),
        helper.make_node("Relu", ["hidden_sum"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["logits_product"]),
        helper.make_node("Add", ["logits_product", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes=nodes,
        name="digits_mlp",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, SIDE, SIDE])],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(LABELS)]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[
            numpy_helper.from_array(np.asarray(value, dtype=np.float32), name=name)
            for name, value in zip(("w1", "b1", "w2", "b2"), weights, strict=True)
        ],
    )
    model = helper.make_model(
        graph,
        producer_name="modelship",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string="A two-layer perceptron on scikit-learn's 8x8 digits. Input: one 8x8 grayscale image, "
        "preprocessed as digits.preprocessing.json says.",
    )
    # onnx writes its newest IR version by default; the bundled onnxruntime reads up to 13.
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def write_digits_example(directory: Path) -> DigitsExample:
    """Write ``digits.onnx``, ``digits.labels.json``, ``digits.preprocessing.json``,
    ``digits.calibration.npz`` (for ``optimize --int8 --calibration``) and a few sample PNGs."""
    try:
        from PIL import Image
    except ImportError:
        raise ExampleError(f"the digits example needs Pillow: {EXAMPLES_EXTRA_HINT}") from None
    built = build_digits_model()
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / f"{DIGITS_MODEL_NAME}.onnx"
    labels = directory / f"{DIGITS_MODEL_NAME}.labels.json"
    preprocessing = directory / f"{DIGITS_MODEL_NAME}.preprocessing.json"
    calibration = directory / f"{DIGITS_MODEL_NAME}.calibration.npz"
    model.write_bytes(built.data)
    labels.write_bytes(orjson.dumps(list(LABELS)))
    preprocessing.write_bytes(orjson.dumps(built.preprocessing.to_json(), option=orjson.OPT_INDENT_2))
    np.savez(calibration, image=built.calibration)  # keyed by the model's input name, INPUT_NAME
    samples = []
    for digit in SAMPLE_DIGITS:
        index = int(np.flatnonzero(built.test_targets == digit)[0])
        image = Image.fromarray(built.test_pixels[index], mode="L")
        side = SIDE * SAMPLE_UPSCALE
        path = directory / f"digit-{digit}.png"
        image.resize((side, side), Image.Resampling.NEAREST).save(path, format="PNG")
        samples.append(path)
    return DigitsExample(
        model=model,
        labels=labels,
        preprocessing=preprocessing,
        calibration=calibration,
        samples=tuple(samples),
        test_accuracy=built.test_accuracy,
        test_images=len(built.test_targets),
    )
