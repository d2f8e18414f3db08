"""``modelship optimize --int8``: an INT8 version of a stored model, measured against its source.

onnxruntime's quantization tools (``onnxruntime.quantization``, which needs the onnx package of the
``local`` extra; imported only here, only when asked) make the INT8 model: dynamic quantisation (weights
INT8, activations quantised at run time) or, given calibration data, static quantisation (QDQ, INT8
activations and weights, MinMax ranges from the calibration data). The result must load in onnxruntime;
then the source and the INT8 model are compared side by side in one process with the same session
options: size, p50 latency (interleaved runs after a warm-up) and agreement (top-1 and the largest
absolute error, on the calibration data or on a generated, seeded set). Below the agreement threshold
nothing is published; otherwise the repository's own push publishes it (so every check of a push
applies) with its lineage in the manifest (``manifest.Optimization``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from modelship.core.datatypes import BYTES, NUMPY_DTYPE_BY_DATATYPE
from modelship.core.errors import InvalidModel
from modelship.core.manifest import Manifest, Optimization, TensorSpec
from modelship.core.model_checks import ModelRefused
from modelship.core.sessions import create_session, first_line, read_signature

if TYPE_CHECKING:
    import onnxruntime as ort

    from modelship.core.repository import ModelRepository

DEFAULT_MIN_AGREEMENT: Final = 0.99
MIN_REPEATS: Final = 20
DEFAULT_REPEATS: Final = 50
WARM_UP_RUNS: Final = 5
GENERATED_SAMPLES: Final = 64
GENERATED_SEED: Final = 0
# A calibration file is read whole into memory (twice: the quantiser's reader and the comparison).
MAX_CALIBRATION_BYTES: Final = 256 << 20
MAX_CALIBRATION_SAMPLES: Final = 10_000
LOCAL_EXTRA_HINT: Final = "install the local extra: pip install -e '.[local]' (it pins onnx)"
# What the INT8 model is made with; recorded in the manifest as they are.
DYNAMIC_SETTINGS: Final = {"weight_type": "QInt8", "per_channel": "false", "reduce_range": "false"}
STATIC_SETTINGS: Final = {
    "quant_format": "QDQ",
    "activation_type": "QInt8",
    "weight_type": "QInt8",
    "per_channel": "false",
    "reduce_range": "false",
    "calibrate_method": "MinMax",
}


@dataclass(frozen=True, slots=True)
class SampleSet:
    """Inputs to compare (and, for static quantisation, calibrate) on: one feed per batch the model
    takes, ``rows`` samples in all."""

    feeds: tuple[dict[str, np.ndarray], ...]
    rows: int
    description: str


@dataclass(frozen=True, slots=True)
class Agreement:
    samples: int
    compared_on: str
    top1: float
    max_abs_error: float
    disagreements: int


@dataclass(frozen=True, slots=True)
class Int8Report:
    """The side-by-side figures of one run: sizes in bytes, p50 latencies in seconds, agreement."""

    method: str
    settings: dict[str, str]
    tool: str
    source_bytes: int
    int8_bytes: int
    source_p50: float
    int8_p50: float
    repeats: int
    agreement: Agreement

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tool": self.tool,
            "settings": self.settings,
            "size_bytes": {"source": self.source_bytes, "int8": self.int8_bytes},
            "p50_ms": {"source": self.source_p50 * 1000, "int8": self.int8_p50 * 1000},
            "repeats": self.repeats,
            "agreement": {
                "compared_on": self.agreement.compared_on,
                "samples": self.agreement.samples,
                "top1": self.agreement.top1,
                "max_abs_error": self.agreement.max_abs_error,
                "disagreements": self.agreement.disagreements,
            },
        }

    def table(self) -> str:
        """A small table, source and INT8 side by side."""
        rows = [
            ("", "source", "int8", ""),
            (
                "size (bytes)",
                f"{self.source_bytes:,}",
                f"{self.int8_bytes:,}",
                _ratio(self.int8_bytes, self.source_bytes),
            ),
            (
                f"p50 latency (ms, {self.repeats} interleaved runs)",
                f"{self.source_p50 * 1000:.4f}",
                f"{self.int8_p50 * 1000:.4f}",
                _ratio(self.int8_p50, self.source_p50),
            ),
            ("top-1 agreement", "", f"{self.agreement.top1:.4f}", f"{self.agreement.disagreements} differ"),
            ("largest absolute error", "", f"{self.agreement.max_abs_error:.6g}", ""),
        ]
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        lines = [
            "  ".join(
                cell.ljust(widths[column]) if column == 0 else cell.rjust(widths[column])
                for column, cell in enumerate(row)
            ).rstrip()
            for row in rows
        ]
        return "\n".join(
            [
                f"{self.method} ({self.tool}; {', '.join(f'{k}={v}' for k, v in self.settings.items())})",
                *lines,
                f"agreement measured on {self.agreement.compared_on}",
            ]
        )


@dataclass(frozen=True, slots=True)
class Quantized:
    data: bytes
    report: Int8Report


@dataclass(frozen=True, slots=True)
class OptimizeResult:
    """What ``optimize`` did: the report, and the published manifest, or why nothing was published."""

    source: Manifest
    report: Int8Report
    published: Manifest | None
    refusal: str | None


def _ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}x" if old > 0 else ""


def optimize_int8(
    repository: ModelRepository,
    name: str,
    version: int | None,
    *,
    calibration: Path | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    repeats: int = DEFAULT_REPEATS,
) -> OptimizeResult:
    """Quantise ``name`` (``version``, else the latest) fetched verified from ``repository``, measure it,
    and push it as the next version unless its top-1 agreement is below ``min_agreement``."""
    if not 0.0 <= min_agreement <= 1.0:
        raise InvalidModel(f"the minimum agreement is a fraction from 0 to 1, got {min_agreement}")
    source = repository.read_manifest(
        name, version if version is not None else repository.latest_version(name)
    )
    if source.optimization is not None:
        raise InvalidModel(
            f"{name} version {source.version} is already {source.optimization.method} (from version "
            f"{source.optimization.source_version}): quantise the original instead"
        )
    data = repository.fetch_verified(source)
    samples = load_calibration(calibration, source.inputs) if calibration is not None else None
    quantized = quantize_int8(data, source.inputs, samples, repeats=repeats)
    report = quantized.report
    if report.agreement.top1 < min_agreement:
        shortfall = min_agreement - report.agreement.top1
        refusal = (
            f"top-1 agreement {report.agreement.top1:.4f} is below the minimum {min_agreement:.4f} by "
            f"{shortfall:.4f} ({report.agreement.disagreements} of {report.agreement.samples} samples "
            "differ): nothing was published"
        )
        return OptimizeResult(source, report, None, refusal)
    record = Optimization(
        source_name=source.name,
        source_version=source.version,
        source_sha256=source.sha256,
        method=report.method,
        tool=report.tool,
        settings=dict(report.settings),
        compared_on=report.agreement.compared_on,
        samples=report.agreement.samples,
        top1_agreement=report.agreement.top1,
        max_abs_error=report.agreement.max_abs_error,
    )
    with tempfile.TemporaryDirectory(prefix="modelship-int8-") as scratch:
        path = Path(scratch) / "model.int8.onnx"
        path.write_bytes(quantized.data)
        published = repository.push(
            path,
            source.name,
            labels=source.labels,
            preprocessing=source.preprocessing,
            optimization=record,
        )
    return OptimizeResult(source, report, published, None)


def quantize_int8(
    data: bytes,
    inputs: tuple[TensorSpec, ...] | None = None,
    calibration: SampleSet | None = None,
    *,
    repeats: int = DEFAULT_REPEATS,
) -> Quantized:
    """The model's INT8 version (static with ``calibration``, else dynamic), loaded in onnxruntime and
    measured against ``data``. ``inputs``: the model's signature (read from the model if None)."""
    if repeats < MIN_REPEATS:
        raise InvalidModel(f"at least {MIN_REPEATS} timed repeats are needed, got {repeats}")
    source_session = _session(data, "the source model")
    if inputs is None:
        inputs = read_signature(source_session, data)[0]
    quantization, tool = _quantization_tools()
    with tempfile.TemporaryDirectory(prefix="modelship-int8-") as scratch:
        source_path, int8_path = Path(scratch) / "source.onnx", Path(scratch) / "int8.onnx"
        source_path.write_bytes(data)
        with _quiet_quantizer():
            try:
                if calibration is None:
                    method, settings = "int8-dynamic", dict(DYNAMIC_SETTINGS)
                    quantization.quantize_dynamic(
                        source_path,
                        int8_path,
                        weight_type=quantization.QuantType.QInt8,
                        per_channel=False,
                        reduce_range=False,
                    )
                else:
                    method, settings = "int8-static", dict(STATIC_SETTINGS)
                    settings["calibration"] = calibration.description
                    quantization.quantize_static(
                        source_path,
                        int8_path,
                        _reader(quantization, calibration),
                        quant_format=quantization.QuantFormat.QDQ,
                        activation_type=quantization.QuantType.QInt8,
                        weight_type=quantization.QuantType.QInt8,
                        per_channel=False,
                        reduce_range=False,
                        calibrate_method=quantization.CalibrationMethod.MinMax,
                    )
            except InvalidModel:
                raise
            except Exception as error:  # the quantiser raises whatever its graph passes raise
                raise InvalidModel(f"{tool} could not quantise the model: {first_line(error)}") from None
        int8 = int8_path.read_bytes()
    int8_session = _session(int8, "the INT8 model")
    samples = calibration if calibration is not None else generated_samples(inputs)
    agreement = compare(source_session, int8_session, samples)
    source_p50, int8_p50 = interleaved_p50(source_session, int8_session, samples.feeds[0], repeats)
    report = Int8Report(
        method=method,
        settings=settings,
        tool=tool,
        source_bytes=len(data),
        int8_bytes=len(int8),
        source_p50=source_p50,
        int8_p50=int8_p50,
        repeats=repeats,
        agreement=agreement,
    )
    return Quantized(int8, report)


def _quantization_tools() -> tuple[Any, str]:
    try:
        import onnxruntime
        from onnxruntime import quantization
    except ImportError:
        raise InvalidModel(f"optimize --int8 needs the onnx package: {LOCAL_EXTRA_HINT}") from None
    return quantization, f"onnxruntime {onnxruntime.__version__}"


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantiser logs advice (pre-processing, per-channel) through the root logger at WARNING; the
    report says what was done, so that advice is held back while it runs."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(previous)


def _reader(quantization: Any, calibration: SampleSet) -> Any:
    class Reader(quantization.CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._feeds = iter(calibration.feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    return Reader()


def _session(data: bytes, what: str) -> ort.InferenceSession:
    """Both sessions the same way (``sessions.create_session``, one intra-op thread), as a fair
    comparison needs."""
    try:
        return create_session(data, threads=1)
    except ModelRefused as error:
        raise InvalidModel(f"{what} is refused: {error}") from None
    except Exception as error:
        raise InvalidModel(f"onnxruntime cannot load {what}: {first_line(error)}") from None


def compare(source: ort.InferenceSession, int8: ort.InferenceSession, samples: SampleSet) -> Agreement:
    """Top-1 agreement on every output that holds class scores (a float output whose last dimension has
    two or more entries; the lowest if several), and the largest absolute error over all float outputs."""
    names = [output.name for output in source.get_outputs()]
    agreeing = 0
    rows = 0
    max_abs_error = 0.0
    for feed in samples.feeds:
        expected = source.run(names, feed)
        actual = int8.run(names, feed)
        batch_agrees: np.ndarray | None = None
        for want, got in zip(expected, actual, strict=True):
            want, got = np.asarray(want), np.asarray(got)
            if want.dtype.kind != "f" or want.shape != got.shape:
                continue
            if want.size:
                difference = np.abs(want.astype(np.float64) - got.astype(np.float64))
                # NaN on one side only: as far off as can be.
                difference[np.isnan(difference)] = np.inf
                max_abs_error = max(max_abs_error, float(difference.max()))
            if want.ndim >= 2 and want.shape[-1] >= 2:
                agrees = (want.argmax(axis=-1) == got.argmax(axis=-1)).reshape(want.shape[0], -1).all(axis=1)
                batch_agrees = agrees if batch_agrees is None else batch_agrees & agrees
        if batch_agrees is None:
            raise InvalidModel(
                "no output holds class scores (a float output whose last dimension has two or more "
                "entries): top-1 agreement cannot be measured"
            )
        agreeing += int(batch_agrees.sum())
        rows += len(batch_agrees)
    return Agreement(
        samples=rows,
        compared_on=samples.description,
        top1=agreeing / rows if rows else 0.0,
        max_abs_error=max_abs_error,
        disagreements=rows - agreeing,
    )


def interleaved_p50(
    source: ort.InferenceSession, int8: ort.InferenceSession, feed: dict[str, np.ndarray], repeats: int
) -> tuple[float, float]:
    """Median seconds per run of each, measured in alternating order after a warm-up, so that a slow
    patch of the machine falls on both alike."""
    sessions = (source, int8)
    for session in sessions:
        for _ in range(WARM_UP_RUNS):
            session.run(None, feed)
    times: tuple[list[float], list[float]] = ([], [])
    for repeat in range(repeats):
        order = (0, 1) if repeat % 2 == 0 else (1, 0)
        for index in order:
            started = time.perf_counter()
            sessions[index].run(None, feed)
            times[index].append(time.perf_counter() - started)
    return float(np.median(times[0])), float(np.median(times[1]))


def _batch_size(spec: TensorSpec) -> int:
    if spec.shape is None or not spec.shape:
        rank = "unknown" if spec.shape is None else "0"
        raise InvalidModel(
            f"input {spec.name!r} has no batch dimension (its rank is {rank}): modelship cannot split "
            "samples for it"
        )
    return spec.shape[0] if spec.shape[0] > 0 else 1


def _split(arrays: dict[str, np.ndarray], inputs: tuple[TensorSpec, ...], description: str) -> SampleSet:
    rows = len(next(iter(arrays.values())))
    batch = max(_batch_size(spec) for spec in inputs)
    if any(_batch_size(spec) != batch for spec in inputs) or rows % batch:
        raise InvalidModel(
            f"{rows} samples cannot be split into the batches of {batch} the model's inputs take"
        )
    feeds = tuple(
        {name: np.ascontiguousarray(array[start : start + batch]) for name, array in arrays.items()}
        for start in range(0, rows, batch)
    )
    return SampleSet(feeds, rows, description)


def generated_samples(
    inputs: tuple[TensorSpec, ...], samples: int = GENERATED_SAMPLES, seed: int = GENERATED_SEED
) -> SampleSet:
    """``samples`` inputs made from the signature alone, the same every time: standard normal floats,
    integers from 0 to 9, random booleans; a dynamic dimension other than the batch is 1."""
    random = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in inputs:
        _batch_size(spec)  # refuses an input without a batch dimension, so the shape is known below
        if spec.shape is None:
            raise InvalidModel(f"input {spec.name!r} has no shape")
        if spec.datatype == BYTES:
            raise InvalidModel(
                f"input {spec.name!r} holds strings, which modelship cannot generate: give --calibration"
            )
        shape = (samples * _batch_size(spec), *(dim if dim >= 0 else 1 for dim in spec.shape[1:]))
        dtype = NUMPY_DTYPE_BY_DATATYPE[spec.datatype]
        if dtype.kind == "f":
            arrays[spec.name] = random.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = random.integers(0, 2, shape).astype(dtype)
        else:
            arrays[spec.name] = random.integers(0, 10, shape).astype(dtype)
    return _split(arrays, inputs, f"{samples} generated samples (seed {seed})")


def load_calibration(path: Path, inputs: tuple[TensorSpec, ...]) -> SampleSet:
    """The calibration data in ``path`` (an .npz with one array per model input, keyed by its name,
    samples along the first axis), checked against the model's inputs; ``InvalidModel`` says what is
    wrong. Bounded: the file's uncompressed arrays within ``MAX_CALIBRATION_BYTES``, no pickles."""
    where = f"calibration data {path.name}"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except FileNotFoundError:
        raise InvalidModel(f"{where}: no such file") from None
    except (OSError, zipfile.BadZipFile):
        raise InvalidModel(f"{where} is not an .npz file (numpy.savez)") from None
    if sum(member.file_size for member in members) > MAX_CALIBRATION_BYTES:
        raise InvalidModel(f"{where} holds more than {MAX_CALIBRATION_BYTES >> 20} MiB of arrays")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise InvalidModel(f"{where} cannot be read as numeric arrays: {first_line(error)}") from None
    expected = [spec.name for spec in inputs]
    missing = [name for name in expected if name not in arrays]
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"no array for input(s) {', '.join(map(repr, missing))}")
        if extra:
            problems.append(f"arrays for no input: {', '.join(map(repr, extra))}")
        raise InvalidModel(
            f"{where}: {'; '.join(problems)} (the model's inputs: {', '.join(expected)}; "
            "an .npz keyed by input name, samples along the first axis)"
        )
    checked = {spec.name: _checked_array(arrays[spec.name], spec, where) for spec in inputs}
    counts = {name: len(array) for name, array in checked.items()}
    if len(set(counts.values())) != 1:
        raise InvalidModel(f"{where}: the inputs have different numbers of samples: {counts}")
    rows = next(iter(counts.values()))
    if not 0 < rows <= MAX_CALIBRATION_SAMPLES:
        raise InvalidModel(f"{where}: {rows} samples; give from 1 to {MAX_CALIBRATION_SAMPLES}")
    return _split(checked, inputs, f"{rows} samples of calibration data {path.name}")


def _checked_array(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    if spec.datatype == BYTES or array.dtype.kind not in "biuf":
        raise InvalidModel(
            f"{where}: input {spec.name!r} is {spec.datatype}, but its array holds {array.dtype} values"
        )
    if spec.shape is not None and (
        array.ndim != len(spec.shape)
        or any(want >= 0 and want != have for want, have in zip(spec.shape[1:], array.shape[1:], strict=True))
    ):
        wanted = ["N", *(str(dim) if dim >= 0 else "any" for dim in spec.shape[1:])]
        raise InvalidModel(
            f"{where}: input {spec.name!r} takes samples of shape [{', '.join(wanted)}], but its array "
            f"has shape {list(array.shape)}"
        )
    if array.ndim == 0:
        raise InvalidModel(f"{where}: input {spec.name!r}'s array is a scalar, not samples")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidModel(f"{where}: input {spec.name!r}'s array holds NaN or infinite values")
    dtype = NUMPY_DTYPE_BY_DATATYPE[spec.datatype]
    converted = array.astype(dtype)
    if dtype.kind in "iu" and not np.array_equal(converted, array):
        raise InvalidModel(f"{where}: input {spec.name!r}'s values do not fit {spec.datatype}")
    return converted
