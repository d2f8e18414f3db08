"""What the fuzzers compare against: onnxruntime run directly, an independent classification, the
invariants every answer keeps, the allocation bound, and the known bugs (tolerated only while a probe
still reproduces them, so a fix turns each property back on by itself)."""

from __future__ import annotations

import logging
import re
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np
import onnxruntime as ort
import orjson
from modelship.core.service import InferenceService

from tests.reliability.figures import PropertyStats
from tests.support.oip import read_response

T = TypeVar("T")

# The allocation bound: the peak of traced allocations during one call stays below this multiple of
# max(request body, the service's request-size cap). Measured worst cases on this code (numpy 2.4,
# onnxruntime 1.31, CPython 3.11), all linear in the body from 64 KiB to 1 MiB bodies:
#   JSON BYTES tensor of empty strings, binary output                  78x
#   binary BYTES tensor of 2-byte elements, binary output              62x
#   iris classification output on a JSON batch of zeros               48x
#   JSON "data" of tens of thousands of empty lists/objects (a 400)    36x
#   JSON FP32/FP64 numbers                                             20x
# (Python objects per BYTES element and per JSON value dominate.) 100x leaves ~25% headroom over the
# worst measured case: a regression that adds a copy of the request or response on those paths, or an
# allocation sized by a claimed shape rather than the bytes received, goes over it.
MEMORY_FACTOR: Final = 100
# The request-size cap of the fuzzed service: small, so that generated bodies reach and pass it, and the
# allocation bound is tight enough to mean something.
FUZZ_CAP: Final = 64 * 1024

JSON_CONTENT_TYPE: Final = "application/json"
BINARY_CONTENT_TYPE: Final = "application/octet-stream"
HEADER_LENGTH: Final = "inference-header-content-length"


# ---------------------------------------------------------------------------------------------------
# Models and the reference
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    labels: tuple[str, ...] | None

    @property
    def route(self) -> str:
        return f"/v2/models/{self.name}/infer"

    def output(self, name: str) -> TensorInfo:
        return next(output for output in self.outputs if output.name == name)


def model_spec(service: InferenceService, name: str) -> ModelSpec:
    """The signature as the server publishes it (GET /v2/models/{name})."""
    response = service.handle("GET", f"/v2/models/{name}", {}, b"")
    assert response.status == 200, response.body
    document = orjson.loads(response.body)

    def tensors(entries: list[dict[str, Any]]) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(e["name"], e["datatype"], tuple(e["shape"])) for e in entries)

    labels = (document.get("parameters") or {}).get("labels")
    return ModelSpec(
        name=name,
        version=document["versions"][-1],
        inputs=tensors(document["inputs"]),
        outputs=tensors(document["outputs"]),
        labels=tuple(labels) if labels is not None else None,
    )


class Reference:
    """onnxruntime sessions on the very bytes the store holds, run directly: the expected answers."""

    def __init__(self, store: Path, names: Sequence[str]) -> None:
        self.sessions: dict[str, ort.InferenceSession] = {}
        for name in names:
            versions = sorted((store / "models" / name).iterdir(), key=lambda path: int(path.name))
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            self.sessions[name] = ort.InferenceSession(
                (versions[-1] / "model.onnx").read_bytes(), options, providers=["CPUExecutionProvider"]
            )

    def run(self, model: str, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        results: list[np.ndarray] = self.sessions[model].run(list(outputs), feeds)
        return results


def classify_reference(array: np.ndarray, k: int, labels: tuple[str, ...] | None) -> np.ndarray | None:
    """Triton's classification, written independently of the core: per row of the last axis, the k
    highest as "score:index[:label]", highest first, ties to the higher index, NaN ranked highest (as
    numpy sorts it). None where the output cannot be classified (the server must answer 400)."""
    if array.ndim == 0 or array.shape[-1] == 0:
        return None
    rows = array.reshape(-1, array.shape[-1])
    if rows.dtype.kind == "b":
        rows = rows.astype(np.uint8)
    k = min(k, rows.shape[-1])
    integral = rows.dtype.kind in "iu"
    strings: list[str] = []
    for row in rows:
        values = row.tolist()

        def key(index: int, values: list[Any] = values) -> tuple[bool, Any, int]:
            value = values[index]
            nan = value != value
            return (nan, 0 if nan else value, index)

        for index in sorted(range(len(values)), key=key, reverse=True)[:k]:
            score = str(int(values[index])) if integral else f"{float(values[index]):g}"
            label = f":{labels[index]}" if labels is not None and index < len(labels) else ""
            strings.append(f"{score}:{index}{label}")
    result = np.empty(len(strings), dtype=object)
    result[:] = strings
    return result.reshape((*array.shape[:-1], k))


# ---------------------------------------------------------------------------------------------------
# Answers and their invariants
# ---------------------------------------------------------------------------------------------------
@dataclass
class Answer:
    """A response from any door, normalised: lower-cased header names, body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def from_response(cls, response: Any) -> Answer:
        headers = {key.lower(): value for key, value in response.headers().items()}
        return cls(response.status, headers, response.body)

    @property
    def header_length(self) -> int | None:
        value = self.headers.get(HEADER_LENGTH)
        return int(value) if value is not None else None

    def error(self) -> str:
        document = orjson.loads(self.body)
        message = document["error"]
        assert isinstance(message, str)
        return message


def check_answer(answer: Answer, known: KnownBugs, stats: PropertyStats) -> bool:
    """The invariants of every answer. False when the answer is a known bug's 500 (tolerated while
    the bug reproduces); the caller then checks nothing more."""
    stats.statuses[str(answer.status)] += 1
    if answer.status >= 500 and answer.status != 503:
        if known.tolerated_500(stats):
            return False
        raise AssertionError(f"server error {answer.status}: {answer.body[:300]!r}\n{known.last_error()}")
    assert 200 <= answer.status < 600, answer.status
    if answer.status != 200:
        assert answer.headers.get("content-type") == JSON_CONTENT_TYPE, answer.headers
        message = answer.error()
        assert message and "Traceback" not in message
        stats.errors[f"{answer.status} {re.sub(r'[0-9]+', 'N', message)[:48]}"] += 1
        if answer.status == 405:
            assert answer.headers.get("allow"), answer.headers
        return True
    length = answer.header_length
    if length is None:
        assert answer.headers.get("content-type") == JSON_CONTENT_TYPE, answer.headers
        orjson.loads(answer.body)
    else:
        assert answer.headers.get("content-type") == BINARY_CONTENT_TYPE, answer.headers
        assert 0 < length <= len(answer.body)
        assert isinstance(orjson.loads(answer.body[:length]), dict)
    return True


def check_infer_200(answer: Answer, spec: ModelSpec) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A 200 to an inference request is well formed: the binary sections exactly fill the body, every
    output is one of the model's, and each has as many elements as its shape says."""
    document, arrays = read_response(answer.body, answer.header_length)
    assert document["model_name"] == spec.name
    names = [output["name"] for output in document["outputs"]]
    assert len(names) == len(set(names)) and set(names) <= {output.name for output in spec.outputs}
    for output in document["outputs"]:
        assert arrays[output["name"]].shape == tuple(output["shape"])
    return document, arrays


@dataclass(frozen=True)
class OutputRequest:
    name: str
    binary: bool
    classification: int = 0


def check_matches_reference(
    answer: Answer,
    spec: ModelSpec,
    feeds: dict[str, np.ndarray],
    outputs: Sequence[OutputRequest],
    request_id: str | None,
    reference: Reference,
) -> None:
    """A valid request's answer equals onnxruntime's own run on the same inputs. JSON cannot carry NaN
    or ±Inf: in a JSON output they must be null (read as NaN); binary outputs are exact."""
    results = reference.run(spec.name, feeds, [output.name for output in outputs])
    expected: list[tuple[str, np.ndarray]] = []
    for output, result in zip(outputs, results, strict=True):
        if output.classification:
            classified = classify_reference(result, output.classification, spec.labels)
            if classified is None:
                assert answer.status == 400, (answer.status, answer.body[:300])
                assert "classification" in answer.error()
                return
            expected.append(("BYTES", classified))
        else:
            expected.append((spec.output(output.name).datatype, result))
    assert answer.status == 200, (answer.status, answer.body[:500])
    document, arrays = check_infer_200(answer, spec)
    assert document["model_version"] == spec.version
    assert document.get("id") == request_id
    any_binary = any(output.binary for output in outputs)
    assert (answer.header_length is not None) == any_binary
    assert [entry["name"] for entry in document["outputs"]] == [output.name for output in outputs]
    for entry, output, (datatype, want) in zip(document["outputs"], outputs, expected, strict=True):
        assert entry["datatype"] == datatype, entry
        assert tuple(entry["shape"]) == want.shape, (entry["shape"], want.shape)
        assert ("binary_data_size" in (entry.get("parameters") or {})) == output.binary
        got = arrays[output.name]
        if datatype == "BYTES":
            assert [str(item) for item in got.ravel()] == [str(item) for item in want.ravel()], output
        elif want.dtype.kind == "f":
            if not output.binary:
                want = np.where(np.isfinite(want), want, np.nan).astype(want.dtype)
            assert got.dtype == want.dtype
            assert np.array_equal(got, want, equal_nan=True), (output.name, got, want)
        else:
            assert got.dtype == want.dtype and np.array_equal(got, want), (output.name, got, want)


# ---------------------------------------------------------------------------------------------------
# Allocations
# ---------------------------------------------------------------------------------------------------
class AllocationOverBound(AssertionError):
    """A call whose allocation peak went over the bound; carries the call's result."""

    def __init__(self, message: str, result: Any, ratio: float) -> None:
        super().__init__(message)
        self.result = result
        self.ratio = ratio


def measured(
    call: Callable[[], T], body_length: int, cap: int, stats: PropertyStats, what: Callable[[], str]
) -> T:
    """``call()``, asserting that its peak of traced allocations stays under the bound (raising
    AllocationOverBound). Only while tracemalloc traces (the fuzz modules' ``traced`` fixture); otherwise
    just the call. ``what`` describes the call, for the figures when it is the largest peak so far."""
    if not tracemalloc.is_tracing():
        return call()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    result = call()
    peak = tracemalloc.get_traced_memory()[1] - before
    base = max(body_length, cap)
    if peak >= MEMORY_FACTOR * base:
        raise AllocationOverBound(
            f"one call allocated {peak} bytes at its peak ({peak / base:.0f}x), over {MEMORY_FACTOR} x "
            f"max(body {body_length}, cap {cap}): {what()[:300]}",
            result,
            peak / base,
        )
    if peak > stats.max_peak_bytes:
        stats.max_peak_bytes = peak
        stats.max_peak_ratio = peak / base
        stats.max_peak_call = what()[:300]
    return result


def ask(
    service: InferenceService,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    known: KnownBugs,
    stats: PropertyStats,
    *,
    may_hit: str | None = None,
) -> Answer:
    """One request through the core, its allocations measured. ``may_hit``: the id of a known bug this
    request may hit by going over the allocation bound, tolerated while the bug reproduces."""
    known.reset()
    try:
        response = measured(
            lambda: service.handle(method, path, headers, body),
            len(body),
            FUZZ_CAP,
            stats,
            lambda: f"{method} {path} headers={dict(headers)} body={len(body)}B: {body[:120]!r}",
        )
    except AllocationOverBound as over:
        if may_hit is None or may_hit not in known.present:
            raise
        stats.known_bug_hits[may_hit] += 1
        stats.tolerated_peak_ratio = max(stats.tolerated_peak_ratio, over.ratio)
        response = over.result
    return Answer.from_response(response)


@contextmanager
def tracing() -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start(1)
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


# ---------------------------------------------------------------------------------------------------
# Known bugs
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KnownBug:
    id: str
    description: str
    # The unhandled exception behind its 500 (or its raise), as (type name, fragment of the message).
    signature: tuple[str, str] | None
    # False: reported by the core's owner; True: found by this tier (its example stays in
    # test_found_bugs.py).
    found_here: bool = False


# Bugs the fuzzers found or were told about, all fixed now. Their probes still run once per session,
# and the session fails if one reproduces: a tolerance kept for a bug while it was open must never hide
# its regression.
KNOWN_BUGS: Final = (
    KnownBug(
        "json-bool-in-numeric-data",
        "JSON booleans inside numeric data are converted to 1/0 instead of answering 400",
        None,
    ),
    KnownBug(
        "zero-size-batch-binary-output",
        "a zero-size batch with binary outputs answers 500",
        ("TypeError", "zeros in shape"),
    ),
    KnownBug(
        "apigw-lone-surrogate-body",
        "handle_event raises UnicodeEncodeError on a text body with a lone surrogate",
        ("UnicodeEncodeError", "surrogates not allowed"),
    ),
    KnownBug(
        "header-length-digit-limit",
        "an Inference-Header-Content-Length of thousands of digits hits int's digit limit (500)",
        ("ValueError", "digits"),
    ),
    KnownBug(
        "classification-amplification",
        "classification outputs cost up to ~320x the request in allocations (~100 B per 1-byte input "
        "element per class as Python strings, ~220 B more per string in encode_bytes_elements when binary)",
        None,
        found_here=True,
    ),
)


class _LastError(logging.Handler):
    """Keeps the last exception the core logged (its 500s log one), to tell known bugs from new ones."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.error = record.exc_info[1]


@dataclass
class KnownBugs:
    """Which known bugs still reproduce (probed once per session), and the tolerance for them."""

    present: frozenset[str]
    _handler: _LastError = field(default_factory=_LastError)

    def install(self) -> None:
        logging.getLogger("modelship").addHandler(self._handler)

    def uninstall(self) -> None:
        logging.getLogger("modelship").removeHandler(self._handler)

    def reset(self) -> None:
        self._handler.error = None

    def last_error(self) -> str:
        error = self._handler.error
        return "" if error is None else f"logged: {type(error).__name__}: {error}"

    def matching(self, error: BaseException | None) -> KnownBug | None:
        if error is None:
            return None
        for bug in KNOWN_BUGS:
            if bug.id in self.present and bug.signature is not None:
                kind, fragment = bug.signature
                if type(error).__name__ == kind and fragment in str(error):
                    return bug
        return None

    def tolerated_500(self, stats: PropertyStats) -> bool:
        bug = self.matching(self._handler.error)
        if bug is None:
            return False
        stats.known_bug_hits[bug.id] += 1
        return True

    def tolerated_raise(self, error: BaseException, stats: PropertyStats) -> bool:
        bug = self.matching(error)
        if bug is None:
            return False
        stats.known_bug_hits[bug.id] += 1
        return True


def probe_known_bugs(service: InferenceService, handle_event: Callable[..., Any]) -> frozenset[str]:
    """One minimal example of each known bug, run now: the ids of those that still reproduce."""
    present: set[str] = set()

    def infer(model: str, document: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> int:
        return service.handle(
            "POST", f"/v2/models/{model}/infer", headers or {}, orjson.dumps(document)
        ).status

    tensor = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [True, 1.0, 2.0]}
    if infer("identity_fp32", {"inputs": [tensor]}) == 200:
        present.add("json-bool-in-numeric-data")
    empty = {"name": "x", "shape": [0, 3], "datatype": "FP32", "data": []}
    outputs = [{"name": "y", "parameters": {"binary_data": True}}]
    if infer("identity_fp32", {"inputs": [empty], "outputs": outputs}) >= 500:
        present.add("zero-size-batch-binary-output")
    if infer("identity_fp32", {"inputs": [empty]}, {HEADER_LENGTH: "1" * 5000}) >= 500:
        present.add("header-length-digit-limit")
    event = {"httpMethod": "POST", "path": "/v2/models/iris/infer", "headers": {}, "body": "\ud800"}
    try:
        handle_event(service, event)
    except UnicodeEncodeError:
        present.add("apigw-lone-surrogate-body")
    path, body, headers = classification_amplification_example()
    with tracing():
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        service.handle("POST", path, headers, body)
        peak = tracemalloc.get_traced_memory()[1] - before
    if peak >= MEMORY_FACTOR * max(len(body), FUZZ_CAP):
        present.add("classification-amplification")
    return frozenset(present)


def classification_amplification_example() -> tuple[str, bytes, dict[str, str]]:
    """A request just under the fuzz cap: UINT8 [21771, 3] in binary (one byte per element), with
    the top 3 classes of each row asked for as a binary output: 65,313 strings from 65,313 bytes."""
    rows = (FUZZ_CAP - 223) // 3
    raw = b"\x01" * (rows * 3)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [rows, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"classification": 3, "binary_data": True}}],
        }
    )
    return "/v2/models/identity_uint8/infer", header + raw, {HEADER_LENGTH: str(len(header))}
