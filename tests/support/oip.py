"""Building Open Inference Protocol requests and reading responses in tests, independently of the
client in modelship (so a bug there cannot hide one in the server)."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

NUMPY_BY_DATATYPE: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def tensor_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        out = b""
        for item in array.ravel():
            encoded = item.encode() if isinstance(item, str) else bytes(item)
            out += struct.pack("<I", len(encoded)) + encoded
        return out
    raw: bytes = np.ascontiguousarray(array, dtype=NUMPY_BY_DATATYPE[datatype]).tobytes()
    return raw


def json_request(inputs: dict[str, tuple[np.ndarray, str]], **extra: Any) -> bytes:
    entries = []
    for name, (array, datatype) in inputs.items():
        data = [str(x) for x in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
        entries.append({"name": name, "shape": list(array.shape), "datatype": datatype, "data": data})
    return orjson.dumps({"inputs": entries, **extra})


def binary_request(inputs: dict[str, tuple[np.ndarray, str]], **extra: Any) -> tuple[bytes, dict[str, str]]:
    entries, chunks = [], []
    for name, (array, datatype) in inputs.items():
        raw = tensor_bytes(array, datatype)
        chunks.append(raw)
        entries.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    header = orjson.dumps({"inputs": entries, **extra})
    return header + b"".join(chunks), {"inference-header-content-length": str(len(header))}


def read_response(
    body: bytes, header_length: str | int | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON document and every output as a numpy array (from JSON data or binary sections)."""
    split = int(header_length) if header_length is not None else len(body)
    document = orjson.loads(body[:split])
    arrays: dict[str, np.ndarray] = {}
    offset = split
    for output in document["outputs"]:
        datatype, shape = output["datatype"], output["shape"]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            data = output["data"]
            arrays[output["name"]] = (
                np.array(data, dtype=object)
                if datatype == "BYTES"
                else np.array(data, dtype=NUMPY_BY_DATATYPE[datatype])
            ).reshape(shape)
            continue
        raw = body[offset : offset + size]
        offset += size
        if datatype == "BYTES":
            items, position = [], 0
            while position < len(raw):
                (length,) = struct.unpack_from("<I", raw, position)
                items.append(raw[position + 4 : position + 4 + length].decode())
                position += 4 + length
            arrays[output["name"]] = np.array(items, dtype=object).reshape(shape)
        else:
            arrays[output["name"]] = np.frombuffer(raw, dtype=NUMPY_BY_DATATYPE[datatype]).reshape(shape)
    assert offset == len(body), "binary sections must exactly fill the body"
    return document, arrays
