"""Reading a model's input/output signature from onnxruntime, and its provenance from the graph."""

from __future__ import annotations

from typing import Any

from modelship.datatypes import datatype_from_ort_type
from modelship.manifest import TensorSpec


def _dim(value: Any) -> int:
    # onnxruntime reports symbolic or unknown dims as str or None.
    return value if isinstance(value, int) and value >= 0 else -1


def tensor_specs(node_args: list[Any]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(
            name=arg.name,
            datatype=datatype_from_ort_type(arg.type, arg.name),
            shape=tuple(_dim(dim) for dim in (arg.shape or [])),
        )
        for arg in node_args
    )


def read_opset(model_bytes: bytes) -> dict[str, int]:
    """Opset imports need the onnx package; without it the manifest simply omits them."""
    try:
        import onnx
    except ImportError:
        return {}
    model = onnx.load_model_from_string(model_bytes)
    return {entry.domain or "ai.onnx": int(entry.version) for entry in model.opset_import}
