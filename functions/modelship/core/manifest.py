"""The manifest that makes a model version exist: integrity, signature and provenance."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import orjson

from modelship.core.datatypes import NUMPY_DTYPE_BY_DATATYPE
from modelship.core.errors import ModelUnavailable
from modelship.core.names import MAX_VERSION, is_valid_model_name, validate_model_name

MANIFEST_SCHEMA_VERSION: Final = 1
MAX_MANIFEST_BYTES: Final = 1 << 20
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
# An image classifier's side: well past any real model's input, small enough that a client resizing to it
# cannot be made to allocate gigabytes by a manifest.
MAX_PREPROCESSING_SIDE: Final = 4096
PREPROCESSING_LAYOUTS: Final = ("NCHW", "NHWC")
PREPROCESSING_CHANNELS: Final = (1, 3)
OPTIMIZATION_METHODS: Final = ("int8-dynamic", "int8-static")
_Parsed = TypeVar("_Parsed")


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
class Preprocessing:
    """How a client turns an image into the model's input tensor: resize to ``size`` (height, width),
    take ``channels`` (1: grayscale, 3: RGB), multiply by ``scale``, then per channel subtract ``mean`` and
    divide by ``std``, and lay the batch of one out as ``layout`` for the input named ``input``."""

    input: str
    size: tuple[int, int]
    channels: int
    layout: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.input:
            raise ValueError("'preprocessing' names no input")
        height, width = self.size
        if not (0 < height <= MAX_PREPROCESSING_SIDE and 0 < width <= MAX_PREPROCESSING_SIDE):
            raise ValueError(f"'preprocessing' size must be two sides from 1 to {MAX_PREPROCESSING_SIDE}")
        if self.channels not in PREPROCESSING_CHANNELS:
            raise ValueError("'preprocessing' channels must be 1 (grayscale) or 3 (RGB)")
        if self.layout not in PREPROCESSING_LAYOUTS:
            raise ValueError(f"'preprocessing' layout must be one of {', '.join(PREPROCESSING_LAYOUTS)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError("'preprocessing' scale must be a positive finite number")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("'preprocessing' needs one mean and one std per channel")
        if not all(math.isfinite(value) for value in self.mean):
            raise ValueError("'preprocessing' mean must be finite numbers")
        if not all(math.isfinite(value) and value > 0 for value in self.std):
            raise ValueError("'preprocessing' std must be positive finite numbers")

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "size": list(self.size),
            "channels": self.channels,
            "layout": self.layout,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_json(cls, document: Any) -> Preprocessing:
        """Raises ``TypeError`` or ``ValueError`` naming the field at fault."""
        if not isinstance(document, dict):
            raise TypeError("'preprocessing' must be an object")
        unknown = sorted(set(document) - {"input", "size", "channels", "layout", "scale", "mean", "std"})
        if unknown:
            raise ValueError(f"'preprocessing' has unknown fields: {', '.join(map(str, unknown))}")
        size = _require(document, "size", list)
        if len(size) != 2 or not all(isinstance(side, int) and not isinstance(side, bool) for side in size):
            raise TypeError("'size' must be [height, width] in pixels")
        return cls(
            input=_require(document, "input", str),
            size=(size[0], size[1]),
            channels=_require(document, "channels", int),
            layout=_require(document, "layout", str),
            scale=_number(document, "scale"),
            mean=_numbers(document, "mean"),
            std=_numbers(document, "std"),
        )


@dataclass(frozen=True, slots=True)
class Optimization:
    """How ``modelship optimize`` made this version from another: the source version, the method, the
    tool and its settings, and the agreement with the source that was measured before publishing."""

    source_name: str
    source_version: int
    source_sha256: str
    method: str
    tool: str
    settings: dict[str, str]
    compared_on: str
    samples: int
    top1_agreement: float
    max_abs_error: float

    def to_json(self) -> dict[str, Any]:
        return {
            "source": {
                "name": self.source_name,
                "version": self.source_version,
                "sha256": self.source_sha256,
            },
            "method": self.method,
            "tool": self.tool,
            "settings": self.settings,
            "agreement": {
                "compared_on": self.compared_on,
                "samples": self.samples,
                "top1": self.top1_agreement,
                "max_abs_error": self.max_abs_error,
            },
        }

    @classmethod
    def from_json(cls, document: Any) -> Optimization:
        if not isinstance(document, dict):
            raise TypeError("'optimization' must be an object")
        source = _require(document, "source", dict)
        agreement = _require(document, "agreement", dict)
        source_name = _require(source, "name", str)
        if not is_valid_model_name(source_name):
            raise ValueError("'optimization' has an invalid source name")
        source_version = _require(source, "version", int)
        if not 0 < source_version <= MAX_VERSION:
            raise ValueError("'optimization' has an invalid source version")
        source_sha256 = _require(source, "sha256", str)
        if not _SHA256_HEX.fullmatch(source_sha256):
            raise ValueError("'optimization' has an invalid source sha256")
        method = _require(document, "method", str)
        if method not in OPTIMIZATION_METHODS:
            raise ValueError(f"'optimization' method must be one of {', '.join(OPTIMIZATION_METHODS)}")
        settings = _require(document, "settings", dict)
        if not all(isinstance(value, str) for value in settings.values()):
            raise TypeError("'optimization' settings must map names to strings")
        top1 = _number(agreement, "top1")
        max_abs_error = _number(agreement, "max_abs_error")
        samples = _require(agreement, "samples", int)
        if not (0.0 <= top1 <= 1.0 and max_abs_error >= 0 and samples > 0):
            raise ValueError("'optimization' agreement is out of range")
        return cls(
            source_name=source_name,
            source_version=source_version,
            source_sha256=source_sha256,
            method=method,
            tool=_require(document, "tool", str),
            settings={str(key): value for key, value in settings.items()},
            compared_on=_require(agreement, "compared_on", str),
            samples=samples,
            top1_agreement=top1,
            max_abs_error=max_abs_error,
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
    # Only for an image model pushed with --preprocessing; absent from the JSON otherwise.
    preprocessing: Preprocessing | None = None
    # Only for a version that modelship optimize made from another; absent from the JSON otherwise.
    optimization: Optimization | None = None

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
        if self.preprocessing is not None:
            document["preprocessing"] = self.preprocessing.to_json()
        if self.optimization is not None:
            document["optimization"] = self.optimization.to_json()
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
                conversion=_optional(document, "conversion", Conversion.from_json),
                preprocessing=_optional(document, "preprocessing", Preprocessing.from_json),
                optimization=_optional(document, "optimization", Optimization.from_json),
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


def _optional(document: Any, key: str, parse: Callable[[Any], _Parsed]) -> _Parsed | None:
    """An optional field: absent (older manifests, ordinary pushes) is None; present must parse."""
    return parse(document[key]) if key in document else None


def _number(document: Any, key: str) -> float:
    value = document[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key!r} must be a number")
    return float(value)


def _numbers(document: Any, key: str) -> tuple[float, ...]:
    values = _require(document, key, list)
    return tuple(_number({key: value}, key) for value in values)


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
