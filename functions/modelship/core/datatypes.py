"""Open Inference Protocol datatypes, their numpy dtypes and onnxruntime type strings."""

from __future__ import annotations

from typing import Final

import numpy as np

from modelship.core.errors import InvalidModel

BYTES: Final = "BYTES"

# Little-endian explicitly: the binary extension's wire format is little-endian on every host.
NUMPY_DTYPE_BY_DATATYPE: Final[dict[str, np.dtype[np.generic]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    BYTES: np.dtype(object),
}

DATATYPE_BY_ORT_TYPE: Final[dict[str, str]] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": BYTES,
}


def datatype_from_ort_type(ort_type: str, tensor_name: str) -> str:
    try:
        return DATATYPE_BY_ORT_TYPE[ort_type]
    except KeyError:
        raise InvalidModel(
            f"tensor {tensor_name!r} has type {ort_type}, which the Open Inference Protocol cannot carry"
        ) from None
