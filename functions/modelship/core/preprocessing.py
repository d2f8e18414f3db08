"""An image model's preprocessing: read from a file at push, checked against the model's input, and
applied to decoded pixels (numpy only: decoding an image file is the client's, ``tools/image_input.py``).

The manifest's ``preprocessing`` block (``manifest.Preprocessing``) is the contract between whoever
trained the model and every client: resize to ``size``, take ``channels``, multiply by ``scale``, subtract
``mean`` and divide by ``std`` per channel, lay out as ``layout``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
import orjson

from modelship.core.errors import InvalidModel
from modelship.core.manifest import Preprocessing, TensorSpec

MAX_PREPROCESSING_FILE_BYTES: Final = 64 << 10
FLOAT_DATATYPES: Final = frozenset({"FP16", "FP32", "FP64"})


def read_preprocessing(path: Path) -> Preprocessing:
    """The preprocessing block in ``path`` (JSON), or ``InvalidModel`` saying what is wrong with it."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_PREPROCESSING_FILE_BYTES + 1)
    except OSError as error:
        raise InvalidModel(f"cannot read the preprocessing file {path}: {error.strerror or error}") from None
    if len(raw) > MAX_PREPROCESSING_FILE_BYTES:
        raise InvalidModel(
            f"{path} is larger than {MAX_PREPROCESSING_FILE_BYTES} bytes: not a preprocessing block"
        )
    try:
        return Preprocessing.from_json(orjson.loads(raw))
    except orjson.JSONDecodeError as error:
        raise InvalidModel(f"{path} is not valid JSON: {error}") from None
    except (TypeError, ValueError, KeyError) as error:
        detail = f"{error} is missing" if isinstance(error, KeyError) else str(error)
        raise InvalidModel(f"{path}: {detail}") from None


def input_shape(preprocessing: Preprocessing) -> tuple[int, int, int, int]:
    """The tensor one image becomes: a batch of one, in the block's layout."""
    height, width = preprocessing.size
    if preprocessing.layout == "NCHW":
        return (1, preprocessing.channels, height, width)
    return (1, height, width, preprocessing.channels)


def check_fits(preprocessing: Preprocessing, inputs: tuple[TensorSpec, ...]) -> None:
    """``InvalidModel`` unless the block's tensor is one the model's named input takes."""
    spec = next((spec for spec in inputs if spec.name == preprocessing.input), None)
    if spec is None:
        names = ", ".join(spec.name for spec in inputs)
        raise InvalidModel(
            f"the preprocessing names input {preprocessing.input!r}, but the model's inputs are {names}"
        )
    if spec.datatype not in FLOAT_DATATYPES:
        raise InvalidModel(f"the preprocessing makes floats, but input {spec.name!r} is {spec.datatype}")
    produced = input_shape(preprocessing)
    if spec.shape is None:
        return
    if len(spec.shape) != len(produced) or any(
        want >= 0 and want != have for want, have in zip(spec.shape, produced, strict=True)
    ):
        raise InvalidModel(
            f"the preprocessing makes {preprocessing.layout} tensors of shape {list(produced)}, which input "
            f"{spec.name!r} of shape {list(spec.shape)} does not take"
        )


def normalize(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Pixels already resized to ``size``, as [height, width] or [height, width, channels] with
    ``channels`` channels (uint8, or any numbers), to the model's float32 batch of one."""
    height, width = preprocessing.size
    image = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
    if image.shape != (height, width, preprocessing.channels):
        raise ValueError(
            f"pixels of shape {list(pixels.shape)} do not match the preprocessing's "
            f"{height}x{width} with {preprocessing.channels} channel(s)"
        )
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    scaled = image.astype(np.float32) * np.float32(preprocessing.scale)
    normalized = (scaled - mean) / std
    batch = normalized[np.newaxis, ...]
    if preprocessing.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32)
