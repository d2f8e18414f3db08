"""``push --convert``: bring a model down to the IR version and opset the bundled onnxruntime loads.

Only what the onnx package (the ``local`` extra; never imported by a door) does losslessly: its version
converter for the default domain's opset, and a lower IR version when the model uses nothing the lower
one lacks. The result must pass ``onnx.checker``, load in onnxruntime and, where ``onnx.reference`` can
run the original cheaply, give the same outputs on the same input. Anything else is refused with the
reason; nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from modelship.core.datatypes import NUMPY_DTYPE_BY_DATATYPE, datatype_from_ort_type
from modelship.core.errors import InvalidModel
from modelship.core.manifest import Conversion
from modelship.core.model_checks import DEFAULT_DOMAIN, refuse_unsafe_model
from modelship.core.onnx_versions import RuntimeLimits, read_versions
from modelship.core.sessions import create_session, first_line

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

# What each IR version added that a model can use, as onnx.proto records it, for the versions a model
# may be lowered across. Lowering across any other IR version is refused: we could not tell.
_TYPES_ADDED_BY_IR: Final[dict[int, tuple[str, ...]]] = {
    12: ("FLOAT8E8M0",),
    13: ("UINT2", "INT2"),
    # IR 14 also made TypeProto.Opaque available outside ONNX-ML builds; onnxruntime is one.
    14: ("FLOAT6E2M3", "FLOAT6E3M2"),
}
# Integer attributes that name an element type (Cast's "to", the generators' "dtype", ...).
_TYPE_ATTRIBUTES: Final = frozenset({"to", "dtype", "output_dtype"})
# Comparing outputs runs the original in onnx.reference (numpy, in this process): only for small models.
MAX_COMPARED_MODEL_BYTES: Final = 8 << 20
MAX_COMPARED_NODES: Final = 2000
MAX_COMPARED_ELEMENTS: Final = 1 << 20
_RANDOM_OPS: Final = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
)
RELATIVE_TOLERANCE: Final = 1e-4
ABSOLUTE_TOLERANCE: Final = 1e-5
LOCAL_EXTRA_HINT: Final = "install the local extra: pip install -e '.[local]' (it pins onnx)"


@dataclass(frozen=True, slots=True)
class Converted:
    data: bytes
    conversion: Conversion


def convert_for_runtime(data: bytes, limits: RuntimeLimits) -> Converted | None:
    """The model converted to what onnxruntime loads, checked; None if it loads as it is."""
    refuse_unsafe_model(data)
    original = read_versions(data)
    if original.fits(limits):
        return None
    try:
        import onnx
        import onnx.version_converter
    except ImportError:
        raise InvalidModel(f"--convert needs the onnx package: {LOCAL_EXTRA_HINT}") from None
    for domain, version in sorted(original.opsets.items()):
        highest = limits.opsets.get(domain, version)
        if version > highest and domain != DEFAULT_DOMAIN:
            raise _cannot(
                f"its {domain} opset is {version} and onnxruntime loads up to {highest}, but onnx's version "
                f"converter converts only the {DEFAULT_DOMAIN} domain: re-export it with {domain} opset "
                f"{highest} or lower"
            )
    model = onnx.load_model_from_string(data)
    converted = model
    target_opset = limits.opsets[DEFAULT_DOMAIN]
    if original.opsets.get(DEFAULT_DOMAIN, 0) > target_opset:
        try:
            converted = onnx.version_converter.convert_version(model, target_opset)
        except Exception as error:  # the converter's C++ assertions, e.g. an operator with no adapter
            raise _cannot(
                f"onnx {onnx.__version__}'s version converter cannot take opset {DEFAULT_DOMAIN} "
                f"{original.opsets[DEFAULT_DOMAIN]} down to {target_opset}: {first_line(error)}"
            ) from None
    if converted.ir_version > limits.ir_version:
        _lower_ir_version(converted, limits.ir_version)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except Exception as error:
        raise _cannot(f"the converted model fails onnx.checker: {first_line(error)}") from None
    result = converted.SerializeToString()
    session = _session(result, limits)
    checked = _compare_outputs(model, data, session)
    final = read_versions(result)
    return Converted(
        result,
        Conversion(
            original_sha256=hashlib.sha256(data).hexdigest(),
            original_ir_version=original.ir_version,
            original_opset=dict(original.opsets),
            ir_version=final.ir_version,
            opset=dict(final.opsets),
            converter=f"onnx {onnx.__version__}",
            checked=checked,
        ),
    )


def _cannot(reason: str) -> InvalidModel:
    return InvalidModel(f"cannot convert the model: {reason}; nothing was pushed")


def _lower_ir_version(model: onnx.ModelProto, target: int) -> None:
    """Set the IR version to ``target`` if the model uses nothing that the versions in between added."""
    import onnx

    unknown = [
        version for version in range(target + 1, model.ir_version + 1) if version not in _TYPES_ADDED_BY_IR
    ]
    if unknown:
        raise _cannot(
            f"it has IR version {model.ir_version}, and modelship cannot tell whether it uses what "
            f"IR version {unknown[0]} added: re-export it with IR version {target} or lower"
        )
    needed_by_opsets = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if needed_by_opsets > target:
        raise _cannot(f"its opsets need IR version {needed_by_opsets}; onnxruntime loads up to {target}")
    used = _element_types(model)
    for version in range(target + 1, model.ir_version + 1):
        for type_name in _TYPES_ADDED_BY_IR[version]:
            if getattr(onnx.TensorProto, type_name, None) in used:
                raise _cannot(
                    f"it uses the {type_name} type, which IR version {version} added; onnxruntime loads "
                    f"up to IR version {target}"
                )
    model.ir_version = target


def _element_types(model: onnx.ModelProto) -> set[int]:
    """Every element type the model names: in value types (after shape inference, so intermediate values
    count too), tensors, and the attributes that name a type."""
    import onnx

    with contextlib.suppress(Exception):  # inference is a help here; the declared types are still walked
        model = onnx.shape_inference.infer_shapes(model)
    found: set[int] = set()

    def type_proto(proto: onnx.TypeProto) -> None:
        kind = proto.WhichOneof("value")
        if kind in ("tensor_type", "sparse_tensor_type"):
            found.add(getattr(proto, kind).elem_type)
        elif kind in ("sequence_type", "optional_type"):
            type_proto(getattr(proto, kind).elem_type)
        elif kind == "map_type":
            found.add(proto.map_type.key_type)
            type_proto(proto.map_type.value_type)

    def tensor(proto: onnx.TensorProto) -> None:
        found.add(proto.data_type)

    def graph(proto: onnx.GraphProto) -> None:
        for value in (*proto.input, *proto.output, *proto.value_info):
            type_proto(value.type)
        for initializer in proto.initializer:
            tensor(initializer)
        for sparse in proto.sparse_initializer:
            tensor(sparse.values)
        nodes(proto.node)

    def nodes(items: Any) -> None:
        for node in items:
            for attribute in node.attribute:
                if attribute.name in _TYPE_ATTRIBUTES and attribute.type == onnx.AttributeProto.INT:
                    found.add(attribute.i)
                if attribute.HasField("t"):
                    tensor(attribute.t)
                for item in attribute.tensors:
                    tensor(item)
                for sparse in attribute.sparse_tensors:
                    tensor(sparse.values)
                if attribute.HasField("sparse_tensor"):
                    tensor(attribute.sparse_tensor.values)
                if attribute.HasField("tp"):
                    type_proto(attribute.tp)
                for item in attribute.type_protos:
                    type_proto(item)
                if attribute.HasField("g"):
                    graph(attribute.g)
                for item in attribute.graphs:
                    graph(item)

    graph(model.graph)
    for function in model.functions:
        nodes(function.node)
        for value in function.value_info:
            type_proto(value.type)
    return found


def _session(data: bytes, limits: RuntimeLimits) -> ort.InferenceSession:
    try:
        return create_session(data, threads=1)
    except Exception as error:
        raise _cannot(
            f"onnxruntime {limits.onnxruntime_version} cannot load the converted model: {first_line(error)}"
        ) from None


def _compare_outputs(original: onnx.ModelProto, data: bytes, session: ort.InferenceSession) -> str:
    """What was checked: the outputs on one sample input against ``onnx.reference`` running the original,
    when that is cheap and deterministic; else that onnxruntime loads the converted model."""
    loaded = "onnx.checker; onnxruntime loads it"
    if len(data) > MAX_COMPARED_MODEL_BYTES or len(original.graph.node) > MAX_COMPARED_NODES:
        return f"{loaded} (too large to compare outputs with onnx.reference)"
    if any(node.op_type in _RANDOM_OPS for node in original.graph.node):
        return f"{loaded} (random operators: outputs not compared)"
    feeds = _sample_feeds(session)
    if feeds is None:
        return f"{loaded} (inputs too large or of a kind not sampled: outputs not compared)"
    try:
        from onnx.reference import ReferenceEvaluator

        expected = ReferenceEvaluator(original).run(None, feeds)
    except Exception:  # an operator onnx.reference lacks, a custom domain: nothing to compare with
        return f"{loaded} (onnx.reference cannot run the original: outputs not compared)"
    try:
        actual = session.run(None, feeds)
    except Exception as error:
        raise _cannot(
            f"the converted model fails on a sample input the original runs: {first_line(error)}"
        ) from None
    names = [output.name for output in session.get_outputs()]
    for name, want, got in zip(names, expected, actual, strict=True):
        if not _same(np.asarray(want), np.asarray(got)):
            raise _cannot(
                f"the converted model's output {name!r} differs from the original's on a sample input"
            )
    return "onnx.checker; outputs match onnx.reference running the original on a sample input"


def _sample_feeds(session: ort.InferenceSession) -> dict[str, np.ndarray] | None:
    """Random floats (a fixed seed) and zeros for the rest, in each input's smallest shape."""
    random = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for argument in session.get_inputs():
        try:
            datatype = datatype_from_ort_type(argument.type, argument.name)
        except Exception:  # sequences, maps, optional: not sampled
            return None
        shape = tuple(dim if isinstance(dim, int) and dim >= 0 else 1 for dim in (argument.shape or []))
        if int(np.prod(shape, dtype=np.int64)) > MAX_COMPARED_ELEMENTS:
            return None
        dtype = NUMPY_DTYPE_BY_DATATYPE[datatype]
        if dtype.kind == "f":
            feeds[argument.name] = random.standard_normal(shape).astype(dtype)
        elif dtype.kind == "O":
            feeds[argument.name] = np.full(shape, "", dtype=object)
        else:
            feeds[argument.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _same(expected: np.ndarray, actual: np.ndarray) -> bool:
    if expected.shape != actual.shape:
        return False
    if expected.dtype.kind in "fc" or actual.dtype.kind in "fc":
        return bool(
            np.allclose(actual, expected, rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE, equal_nan=True)
        )
    return bool(np.array_equal(expected, actual))
