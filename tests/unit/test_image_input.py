"""``infer --image``'s half on this machine: an image file to the model's tensor as the preprocessing
block says, bounded before decoding, and every bad file said in one line; the CLI's new arguments."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from modelship.core.errors import InvalidModel
from modelship.core.manifest import Preprocessing
from modelship.core.preprocessing import normalize, read_preprocessing
from modelship.tools import cli
from modelship.tools.image_input import ImageError, image_tensor, top_classes
from PIL import Image

GRAY = Preprocessing(
    input="image", size=(8, 8), channels=1, layout="NCHW", scale=1 / 255, mean=(0.3,), std=(0.4,)
)
RGB = Preprocessing(
    input="x",
    size=(4, 6),
    channels=3,
    layout="NHWC",
    scale=1 / 255,
    mean=(0.5, 0.4, 0.3),
    std=(0.2, 0.25, 0.3),
)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_an_image_is_resized_by_area_and_normalised_as_the_block_says(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    path = tmp_path / "digit.png"
    # 4x larger, nearest neighbour: averaging each 4x4 block gives the pixels back exactly.
    Image.fromarray(pixels, mode="L").resize((32, 32), Image.Resampling.NEAREST).save(path)
    image = image_tensor(path, GRAY)
    assert image.original_size == (32, 32)
    assert image.tensor.shape == (1, 1, 8, 8) and image.tensor.dtype == np.float32
    expected = (pixels.astype(np.float32) / 255 - np.float32(0.3)) / np.float32(0.4)
    np.testing.assert_allclose(image.tensor[0, 0], expected, rtol=1e-6)


def test_a_jpeg_in_rgb_becomes_nhwc_with_one_mean_and_std_per_channel(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (60, 40), (255, 128, 0)).save(path, format="JPEG", quality=95)
    tensor = image_tensor(path, RGB).tensor
    assert tensor.shape == (1, 4, 6, 3)
    np.testing.assert_allclose(tensor[0, 0, 0], [(1 - 0.5) / 0.2, (128 / 255 - 0.4) / 0.25, -1.0], atol=0.05)
    # The same picture in grayscale for a one-channel model.
    assert image_tensor(path, GRAY).tensor.shape == (1, 1, 8, 8)


def test_bad_images_are_refused_with_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(ImageError, match=r"notes\.png is not a PNG or JPEG image$"):
        image_tensor(text, GRAY)
    gif = tmp_path / "anim.gif"
    Image.new("L", (8, 8)).save(gif, format="GIF")
    with pytest.raises(ImageError, match="is not a PNG or JPEG image"):
        image_tensor(gif, GRAY)
    # A 99-byte PNG that declares 100,000 x 100,000 pixels: refused from its header, nothing decoded.
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
    )
    with pytest.raises(ImageError, match=r"declares more pixels than|over the 40,000,000-pixel limit"):
        image_tensor(bomb, GRAY)
    wide = tmp_path / "wide.png"
    wide.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 50_000, 1_000, 8, 0, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
    )
    with pytest.raises(ImageError, match=r"is 50000x1000 pixels, over the 40,000,000-pixel limit"):
        image_tensor(wide, GRAY)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(deep)
    with pytest.raises(ImageError, match="has pixel mode I;16, which modelship does not convert"):
        image_tensor(deep, GRAY)
    truncated = tmp_path / "truncated.png"
    whole = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(
        whole, format="PNG"
    )
    truncated.write_bytes(whole.getvalue()[:200])
    with pytest.raises(ImageError, match="cannot be decoded"):
        image_tensor(truncated, GRAY)
    with pytest.raises(ImageError, match="cannot read"):
        image_tensor(tmp_path / "absent.png", GRAY)


def test_normalize_refuses_pixels_of_another_size() -> None:
    with pytest.raises(ValueError, match=r"do not match the preprocessing's 8x8 with 1 channel"):
        normalize(np.zeros((4, 4), dtype=np.uint8), GRAY)


def test_a_preprocessing_file_is_read_with_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "block.json"
    path.write_text('{"input": "image", "size": [8, 8], "channels": 1}')
    with pytest.raises(InvalidModel, match=r"block\.json: 'layout' is missing"):
        read_preprocessing(path)
    path.write_text("{")
    with pytest.raises(InvalidModel, match="is not valid JSON"):
        read_preprocessing(path)
    path.write_bytes(b" " * (65 << 10))
    with pytest.raises(InvalidModel, match="larger than 65536 bytes"):
        read_preprocessing(path)


def test_top_classes_come_from_the_output_with_one_score_per_label() -> None:
    response = {
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [1], "data": [2]},
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.2, 0.7]},
        ]
    }
    output, ranked = top_classes(response, ["cat", "dog", "fox"], 2)
    assert output == "probabilities"
    assert [item.label for item in ranked] == ["fox", "dog"]
    np.testing.assert_allclose([item.score for item in ranked], [0.7, 0.2], rtol=1e-6)
    with pytest.raises(ImageError, match="no output of class scores for one image with 4 entries"):
        top_classes(response, ["a", "b", "c", "d"], 2)


def test_the_cli_says_what_goes_with_what(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli.main(["optimize", "digits", "--store", str(tmp_path)])
    assert "the following arguments are required: --int8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["optimize", "digits", "--int8", "--min-agreement", "1.5"])
    assert "expected a fraction from 0 to 1, not '1.5'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(
            ["infer", "--url", "http://127.0.0.1:1", "--model", "m", "--input", "[1]", "--image", "x.png"]
        )
    assert "not allowed with argument" in capsys.readouterr().err
    block = tmp_path / "block.json"
    block.write_text('{"input": "image"}')
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    code = cli.main(
        ["push", str(model), "--name", "m", "--store", str(tmp_path / "s"), "--preprocessing", str(block)]
    )
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {block}: 'size' is missing"
    assert not (tmp_path / "s").exists()
