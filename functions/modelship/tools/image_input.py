"""``modelship infer --image``: a PNG or JPEG file to the model's input tensor, as its manifest's
preprocessing block says, and the top classes of the answer.

Pillow (the ``examples`` extra) is imported only here, only when an image is given. An image file is
untrusted input: its size on disk and its pixel count are bounded before anything is decoded (a small
PNG can declare a gigapixel canvas), only PNG and JPEG decoders are tried, and only the pixel modes
that convert to grayscale or RGB without guessing are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from modelship.core.manifest import Preprocessing
from modelship.core.preprocessing import normalize

MAX_IMAGE_FILE_BYTES: Final = 32 << 20
# 40 megapixels: larger than any camera a client would send from, and about 120 MB once decoded as RGB.
MAX_IMAGE_PIXELS: Final = 40_000_000
IMAGE_FORMATS: Final = ("PNG", "JPEG")
# Modes with a plain meaning as gray or RGB; 16- and 32-bit and float modes would need a scale we would
# have to guess. Alpha is dropped.
ACCEPTED_MODES: Final = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
EXAMPLES_EXTRA_HINT: Final = "install the examples extra: pip install -e '.[examples]'"
FLOAT_DATATYPES: Final = ("FP16", "FP32", "FP64")
DEFAULT_TOP: Final = 5


class ImageError(Exception):
    """Why this file cannot become the model's input, in one line."""


@dataclass(frozen=True, slots=True)
class ImageTensor:
    tensor: np.ndarray
    original_size: tuple[int, int]  # width, height as in the file


def image_tensor(path: Path, preprocessing: Preprocessing) -> ImageTensor:
    """The model's input for the image in ``path``: decoded, resized with area averaging (Pillow's BOX
    filter) to the block's size, in its channels, then scaled and normalised (``core.preprocessing``)."""
    image_module = _pillow()
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageError(f"cannot read {path}: {error.strerror or error}") from None
    if not path.is_file():
        raise ImageError(f"{path} is not a file")
    if size > MAX_IMAGE_FILE_BYTES:
        raise ImageError(f"{path} is {size:,} bytes, over the {MAX_IMAGE_FILE_BYTES >> 20} MiB image limit")
    try:
        with image_module.open(path, formats=list(IMAGE_FORMATS)) as image:
            width, height = image.size
            _check_header(image, path)
            # Only now are the pixels decoded.
            target = "L" if preprocessing.channels == 1 else "RGB"
            resized = image.convert(target).resize(
                (preprocessing.size[1], preprocessing.size[0]), image_module.Resampling.BOX
            )
            pixels = np.asarray(resized, dtype=np.uint8)
    except ImageError:
        raise
    except image_module.DecompressionBombError:
        raise ImageError(f"{path} declares more pixels than the {MAX_IMAGE_PIXELS:,}-pixel limit") from None
    except image_module.UnidentifiedImageError:
        raise ImageError(f"{path} is not a PNG or JPEG image") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data, found while decoding
        raise ImageError(f"{path} cannot be decoded: {error}") from None
    return ImageTensor(normalize(pixels, preprocessing), (width, height))


def _check_header(image: Any, path: Path) -> None:
    """What the header declares, before any pixel is decoded."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path} is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit")
    if image.mode not in ACCEPTED_MODES:
        raise ImageError(
            f"{path} has pixel mode {image.mode}, which modelship does not convert: save it as 8-bit "
            "grayscale or RGB"
        )


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImageError(f"--image needs Pillow: {EXAMPLES_EXTRA_HINT}") from None
    return Image


@dataclass(frozen=True, slots=True)
class RankedClass:
    index: int
    label: str
    score: float


def top_classes(
    response: dict[str, Any], labels: list[str] | None, top: int
) -> tuple[str, list[RankedClass]]:
    """The output holding class scores (a float output of one row; with labels, as many entries as
    labels) and its ``top`` highest classes, best first."""
    for output in response.get("outputs", []):
        if output.get("datatype") not in FLOAT_DATATYPES:
            continue
        scores = np.asarray(output.get("data", []), dtype=np.float64).reshape(-1)
        shape = output.get("shape", [])
        if len(shape) < 1 or scores.size != shape[-1] or scores.size < 2:
            continue
        if labels is not None and len(labels) != scores.size:
            continue
        order = np.argsort(-scores, kind="stable")[:top]
        return output["name"], [
            RankedClass(int(index), labels[index] if labels else str(int(index)), float(scores[index]))
            for index in order
        ]
    raise ImageError(
        "the answer has no output of class scores for one image"
        + (f" with {len(labels)} entries (one per label)" if labels else "")
    )
