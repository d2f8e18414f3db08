"""Which ONNX IR version and opsets the bundled onnxruntime loads, and a model's against them.

onnxruntime publishes neither limit through its API, so they are probed once per process: a one-node
model, encoded here without the onnx package, is offered at higher and higher versions until onnxruntime
refuses it (some thirty sessions of a tiny model, about 10 ms). What it says is then the truth for this
very build, even after an upgrade.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from modelship.core.model_checks import DEFAULT_DOMAIN, declared_versions, encode_field, encode_varint_field

ML_DOMAIN: Final = "ai.onnx.ml"
# Where the probe starts: versions every onnxruntime loads (IR 3 introduced opset imports).
_LOWEST_IR: Final = 3
_LOWEST_OPSET: Final = 1
# Where it gives up: far beyond any version ONNX has defined.
_HIGHEST_PROBED: Final = 1000
_FLOAT: Final = 1  # TensorProto.FLOAT


@dataclass(frozen=True, slots=True)
class RuntimeLimits:
    """The highest IR version and opsets (per domain) the bundled onnxruntime loads."""

    onnxruntime_version: str
    ir_version: int
    opsets: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ModelVersions:
    """What a model declares: its IR version and its opset imports (domain → version)."""

    ir_version: int
    opsets: Mapping[str, int]

    def describe(self) -> str:
        """e.g. ``IR version 14, opset ai.onnx 28``."""
        opsets = ", ".join(f"{domain} {version}" for domain, version in sorted(self.opsets.items()))
        return f"IR version {self.ir_version}, opset {opsets or 'none'}"

    def fits(self, limits: RuntimeLimits) -> bool:
        """Whether onnxruntime loads these versions (domains it does not report are not judged here)."""
        return self.ir_version <= limits.ir_version and all(
            version <= limits.opsets.get(domain, version) for domain, version in self.opsets.items()
        )


def read_versions(data: bytes) -> ModelVersions:
    """The versions a model declares, read without the onnx package; ``ModelRefused`` if the bytes are
    not a protobuf message."""
    ir_version, opsets = declared_versions(data)
    return ModelVersions(ir_version, opsets)


def _describe_limits(limits: RuntimeLimits, domains: Mapping[str, int] | None = None) -> str:
    """e.g. ``IR version 13, opset ai.onnx 26``: the limits for ``domains`` that onnxruntime has
    (the default domain always)."""
    wanted = {DEFAULT_DOMAIN, *(domains or {})}
    opsets = ", ".join(
        f"{domain} {version}" for domain, version in sorted(limits.opsets.items()) if domain in wanted
    )
    return f"IR version {limits.ir_version}, opset {opsets}"


def refusal(versions: ModelVersions, limits: RuntimeLimits) -> str | None:
    """Why onnxruntime will not load a model of these versions and what to do, or None if it will."""
    if versions.fits(limits):
        return None
    return (
        f"the model has {versions.describe()}, newer than the bundled onnxruntime "
        f"{limits.onnxruntime_version} loads (at most {_describe_limits(limits, versions.opsets)}): push it "
        "with --convert to convert it with the onnx package, or re-export it within those limits"
    )


@functools.cache
def runtime_limits() -> RuntimeLimits | None:
    """This onnxruntime's limits, probed once; None if it refuses even the oldest probe (then no one
    can tell, and onnxruntime's own error has to do)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    def loads(ir_version: int, opsets: dict[str, int]) -> bool:
        try:
            ort.InferenceSession(probe_model(ir_version, opsets), options, providers=["CPUExecutionProvider"])
        except Exception:  # any refusal: the version is beyond what it loads
            return False
        return True

    base = {DEFAULT_DOMAIN: _LOWEST_OPSET}
    if not loads(_LOWEST_IR, base):
        return None
    ir_version = _highest(lambda version: loads(version, base), _LOWEST_IR)
    opsets = {
        DEFAULT_DOMAIN: _highest(lambda version: loads(ir_version, {DEFAULT_DOMAIN: version}), _LOWEST_OPSET)
    }
    if loads(ir_version, {**base, ML_DOMAIN: _LOWEST_OPSET}):
        opsets[ML_DOMAIN] = _highest(
            lambda version: loads(ir_version, {**base, ML_DOMAIN: version}), _LOWEST_OPSET
        )
    return RuntimeLimits(ort.__version__, ir_version, opsets)


def _highest(accepts: Callable[[int], bool], low: int) -> int:
    """The highest version ``accepts`` takes, given that it takes ``low`` and refuses every version
    above the highest (binary search)."""
    high = _HIGHEST_PROBED
    while low < high:
        middle = (low + high + 1) // 2
        if accepts(middle):
            low = middle
        else:
            high = middle - 1
    return low


def probe_model(ir_version: int, opsets: Mapping[str, int]) -> bytes:
    """A model ``y = Identity(x)`` on a float [1] tensor with this IR version and these opset imports,
    in the protobuf wire format of onnx.proto."""
    # TypeProto.Tensor: elem_type FLOAT, shape [1].
    tensor_type = encode_field(
        1, encode_varint_field(1, _FLOAT) + encode_field(2, encode_field(1, encode_varint_field(1, 1)))
    )

    def value_info(name: str) -> bytes:  # ValueInfoProto: name, TypeProto{tensor_type{elem_type, shape}}
        return _string(1, name) + encode_field(2, tensor_type)

    node = _string(1, "x") + _string(2, "y") + _string(4, "Identity")  # NodeProto: input, output, op_type
    graph = (
        encode_field(1, node)
        + _string(2, "probe")
        + encode_field(11, value_info("x"))
        + encode_field(12, value_info("y"))
    )
    imports = b"".join(
        encode_field(
            8, _string(1, "" if domain == DEFAULT_DOMAIN else domain) + encode_varint_field(2, version)
        )
        for domain, version in opsets.items()
    )
    return encode_varint_field(1, ir_version) + imports + encode_field(7, graph)


def _string(number: int, text: str) -> bytes:
    return encode_field(number, text.encode())
