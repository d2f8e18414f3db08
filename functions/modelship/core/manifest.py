"""The manifest that makes a model version exist: integrity, signature and provenance."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from modelship.core.datatypes import NUMPY_DTYPE_BY_DATATYPE
from modelship.core.errors import ModelUnavailable
from modelship.core.names import MAX_VERSION, validate_model_name

MANIFEST_SCHEMA_VERSION: Final = 1
MAX_MANIFEST_BYTES: Final = 1 << 20
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    # -1 marks a dynamic dimension; None, a tensor of any rank.
    shape: tuple[int, ...] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "datatype": self.datatype,
            "shape": list(self.shape) if self.shape is not None else None,
        }

    def to_metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol's tensor metadata. Its shape is a list, so a tensor of any rank is
        ``[-1]`` with the parameter ``any_rank``: a client must not take it for a scalar or a vector."""
        if self.shape is not None:
            return self.to_json()
        return {"name": self.name, "datatype": self.datatype, "shape": [-1], "parameters": {"any_rank": True}}


@dataclass(frozen=True, slots=True)
class Conversion:
    """How ``push --convert`` made the published bytes: from which original, to which versions, with
    what, and what was checked."""

    original_sha256: str
    original_ir_version: int
    original_opset: dict[str, int]
    ir_version: int
    opset: dict[str, int]
    converter: str
    checked: str

    def to_json(self) -> dict[str, Any]:
        return {
            "original_sha256": self.original_sha256,
            "original_ir_version": self.original_ir_version,
            "original_opset": self.original_opset,
            "ir_version": self.ir_version,
            "opset": self.opset,
            "converter": self.converter,
            "checked": self.checked,
        }

    @classmethod
    def from_json(cls, document: Any) -> Conversion:
        if not isinstance(document, dict):
            raise TypeError("'conversion' must be an object")
        original_sha256 = _require(document, "original_sha256", str)
        if not _SHA256_HEX.fullmatch(original_sha256):
            raise ValueError("'conversion' has an invalid original_sha256")
        return cls(
            original_sha256=original_sha256,
            original_ir_version=_require(document, "original_ir_version", int),
            original_opset=_opsets(_require(document, "original_opset", dict)),
            ir_version=_require(document, "ir_version", int),
            opset=_opsets(_require(document, "opset", dict)),
            converter=_require(document, "converter", str),
            checked=_require(document, "checked", str),
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    version: int
    sha256: str
    size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    created: str
    labels: tuple[str, ...] | None = None
    producer: dict[str, str] = field(default_factory=dict)
    opset: dict[str, int] = field(default_factory=dict)
    # Only for a model that push --convert converted; absent from the JSON otherwise.
    conversion: Conversion | None = None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
            "labels": list(self.labels) if self.labels is not None else None,
            "producer": self.producer,
            "opset": self.opset,
            "created": self.created,
        }
        if self.conversion is not None:
            document["conversion"] = self.conversion.to_json()
        return document

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def loads(cls, raw: bytes, *, expected_name: str, expected_version: int) -> Manifest:
        """Parse a manifest read from a store, refusing anything that does not describe this version."""
        where = f"manifest of {expected_name} version {expected_version}"
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ModelUnavailable(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            document = orjson.loads(raw)
            manifest = cls(
                name=_require(document, "name", str),
                version=_require(document, "version", int),
                sha256=_require(document, "sha256", str),
                size=_require(document, "size", int),
                inputs=_specs(_require(document, "inputs", list)),
                outputs=_specs(_require(document, "outputs", list)),
                created=_require(document, "created", str),
                labels=_labels(document.get("labels")),
                producer={str(k): str(v) for k, v in dict(document.get("producer") or {}).items()},
                opset=_opsets(document.get("opset") or {}),
                conversion=Conversion.from_json(document["conversion"]) if "conversion" in document else None,
            )
        except (orjson.JSONDecodeError, TypeError, ValueError, KeyError) as error:
            raise ModelUnavailable(f"{where} is malformed: {error}") from None
        if manifest.name != expected_name or manifest.version != expected_version:
            raise ModelUnavailable(
                f"{where} describes {manifest.name} version {manifest.version}; "
                "refusing a mismatched artifact"
            )
        validate_model_name(manifest.name)
        if not _SHA256_HEX.fullmatch(manifest.sha256):
            raise ModelUnavailable(f"{where} has an invalid sha256")
        if not manifest.size > 0 or not 0 < manifest.version <= MAX_VERSION:
            raise ModelUnavailable(f"{where} has an invalid size or version")
        return manifest


def _require(document: Any, key: str, kind: type) -> Any:
    value = document[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key!r} must be {kind.__name__}")
    return value


def _opsets(value: Any) -> dict[str, int]:
    return {str(domain): int(version) for domain, version in dict(value).items()}


def _specs(items: list[Any]) -> tuple[TensorSpec, ...]:
    specs = []
    for item in items:
        datatype = _require(item, "datatype", str)
        if datatype not in NUMPY_DTYPE_BY_DATATYPE:
            raise ValueError(f"unknown datatype {datatype!r}")
        raw_shape = item.get("shape")
        # null: a tensor of any rank.
        shape = None if raw_shape is None else tuple(int(dim) for dim in _require(item, "shape", list))
        specs.append(TensorSpec(name=_require(item, "name", str), datatype=datatype, shape=shape))
    return tuple(specs)


def _labels(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
        raise TypeError("'labels' must be a list of strings")
    return tuple(value)
