"""The binary tensor data extension's encoding of BYTES tensors: each element is a 4-byte little-endian
length followed by that many bytes. Shared by the server and the client, with no onnxruntime import."""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

_LENGTH_PREFIX: Final = struct.Struct("<I")


class MalformedBytesTensor(ValueError):
    pass


def encode_bytes_elements(array: np.ndarray) -> bytes:
    # One growing buffer: a list of parts costs a Python object (about 40 bytes) per prefix and element.
    out = bytearray()
    for item in array.ravel():
        encoded = item if isinstance(item, bytes) else str(item).encode("utf-8")
        out += _LENGTH_PREFIX.pack(len(encoded))
        out += encoded
    return bytes(out)


def decode_bytes_elements(raw: bytes) -> list[bytes]:
    items: list[bytes] = []
    position = 0
    while position < len(raw):
        if position + 4 > len(raw):
            raise MalformedBytesTensor("truncated BYTES element length")
        (length,) = _LENGTH_PREFIX.unpack_from(raw, position)
        position += 4
        if position + length > len(raw):
            raise MalformedBytesTensor("BYTES element runs past binary_data_size")
        items.append(raw[position : position + length])
        position += length
    return items
