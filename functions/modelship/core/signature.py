"""Reading a model's input/output signature from onnxruntime, and its provenance from the graph."""

from __future__ import annotations

from typing import Any

from modelship.core.datatypes import datatype_from_ort_type
from modelship.core.manifest import TensorSpec


def _dim(value: Any) -> int:
    # onnxruntime reports symbolic or unknown dims as str or None.
    return value if isinstance(value, int) and value >= 0 else -1


def tensor_specs(node_args: list[Any], unranked: frozenset[str] = frozenset()) -> tuple[TensorSpec, ...]:
    """The specs of onnxruntime's inputs or outputs. onnxruntime reports a tensor of unknown rank with
    the shape ``[]``, like a scalar: ``unranked`` (``model_checks.unranked_tensors``) tells them apart."""
    return tuple(
        TensorSpec(
            name=arg.name,
            datatype=datatype_from_ort_type(arg.type, arg.name),
            shape=None if arg.name in unranked else tuple(_dim(dim) for dim in (arg.shape or [])),
        )
        for arg in node_args
    )


def read_provenance(model_bytes: bytes, fallback_producer: str) -> tuple[dict[str, str], dict[str, int]]:
    """The producer (name, version) and opset imports. onnxruntime exposes neither the producer's
    version nor the opsets, so they need the onnx package; without it the manifest records only the
    producer's name."""
    try:
        import onnx
    except ImportError:
        return {"name": fallback_producer}, {}
    model = onnx.load_model_from_string(model_bytes)
    producer = {"name": model.producer_name, "version": model.producer_version}
    return producer, {entry.domain or "ai.onnx": int(entry.version) for entry in model.opset_import}
