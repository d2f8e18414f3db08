"""onnxruntime sessions: creation, the per-model tables the hot path needs, and an LRU with a budget."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from modelship.core.cpu import intra_op_threads, is_cpu_constrained
from modelship.core.datatypes import BYTES, NUMPY_DTYPE_BY_DATATYPE
from modelship.core.deadlines import DEADLINE, RunWatchdog
from modelship.core.errors import BadRequest, DeadlineExceeded, ModelUnavailable
from modelship.core.manifest import Manifest, TensorSpec
from modelship.core.memory import resident_bytes
from modelship.core.model_checks import ModelRefused, refuse_unsafe_model, unranked_tensors
from modelship.core.signature import tensor_specs

logger = logging.getLogger(__name__)

# Graph, arena and kernels cost more than the file; twice its size where it cannot be measured.
MEMORY_FACTOR = 2
# An absolute path of two or more components, or a file:// URI: what an error must not show a client.
# An endpoint URL (botocore's errors name the store's endpoint and bucket).
_URL = re.compile(r"\b(?:https?|s3)://\S+")
_FILE_PATH = re.compile(r"(?:file://|(?<![\w.:/]))/(?:[\w.@+~-]+/)+[\w.@+~-]*")
# What onnxruntime raises for inputs that passed signature validation but that the graph cannot take
# (e.g. two dynamic "batch" dimensions given different sizes): the request's fault, not the server's.
_REJECTED_INPUT_ERRORS = (InvalidArgument, RuntimeException, Fail)


@dataclass(frozen=True, slots=True)
class InputBinding:
    """Everything request validation needs about one input, computed once at load."""

    name: str
    datatype: str
    dtype: np.dtype[Any]
    # None: a tensor of any rank.
    shape: tuple[int, ...] | None
    itemsize: int
    # (min, max) for integer datatypes: JSON values are range-checked before the cast.
    int_limits: tuple[int, int] | None


def create_session(model_bytes: bytes, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session tuned for serving; ``threads`` None sizes the intra-op pool from the CPU share.

    The only way modelship hands bytes to onnxruntime: a model that reaches outside itself (external
    data) raises ``ModelRefused`` before onnxruntime opens it.
    """
    refuse_unsafe_model(model_bytes)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if is_cpu_constrained():
        # Spinning workers burn the quota that the next request needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


class LoadedModel:
    """A verified, warmed-up session and the tables that keep per-request work to dictionary lookups.

    Immutable once built and shared by every request thread; ``run`` may be called concurrently.
    """

    __slots__ = (
        "_run_session",
        "all_output_names",
        "inputs",
        "load_seconds",
        "manifest",
        "memory_estimate",
        "name",
        "output_datatypes",
        "required_inputs",
        "run_timeout",
        "runs_in_flight",
        "session",
        "version",
        "version_text",
        "watchdog",
    )

    def __init__(
        self,
        manifest: Manifest,
        session: ort.InferenceSession,
        watchdog: RunWatchdog,
        run_timeout: float,
        memory_estimate: int | None = None,
    ) -> None:
        self.manifest = manifest
        self.watchdog = watchdog
        self.run_timeout = run_timeout
        # Runs using this session now: a session leaving the cache is freed only after the last one.
        # The watchdog counts them, under its lock.
        self.runs_in_flight = 0
        self.name = manifest.name
        self.version = manifest.version
        self.version_text = str(manifest.version)
        self.session = session
        self._run_session = _native_run(session)
        self.load_seconds = 0.0
        # What the session really costs once created and warmed up, measured by load_model; twice the
        # file's size where it cannot be measured.
        self.memory_estimate = (
            memory_estimate if memory_estimate is not None else manifest.size * MEMORY_FACTOR
        )
        self.inputs = {
            spec.name: InputBinding(
                name=spec.name,
                datatype=spec.datatype,
                dtype=NUMPY_DTYPE_BY_DATATYPE[spec.datatype],
                shape=spec.shape,
                itemsize=NUMPY_DTYPE_BY_DATATYPE[spec.datatype].itemsize,
                int_limits=_int_limits(NUMPY_DTYPE_BY_DATATYPE[spec.datatype]),
            )
            for spec in manifest.inputs
        }
        self.required_inputs = frozenset(self.inputs)
        self.output_datatypes = {spec.name: spec.datatype for spec in manifest.outputs}
        self.all_output_names = [spec.name for spec in manifest.outputs]

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the session within ``run_timeout``. A run past it is stopped (``DeadlineExceeded``, 504);
        one cancelled by shutdown is a 503; an input that onnxruntime refuses is a ``BadRequest``.

        ``output_names`` must name outputs and ``feeds`` hold every input as a numpy array: the core's
        request decoding ensures both, which is what lets this call skip onnxruntime's Python checks."""
        watchdog = self.watchdog
        ticket = watchdog.start(self.run_timeout, self)
        try:
            results: list[np.ndarray] = self._run_session(output_names, feeds, ticket.options)
        except _REJECTED_INPUT_ERRORS as error:
            raise self._refusal(ticket.reason, error) from None
        finally:
            watchdog.finish(ticket)
        return results

    def _refusal(self, reason: str | None, error: Exception) -> Exception:
        if reason == DEADLINE:
            logger.error("%s v%s ran past its %g s deadline", self.name, self.version, self.run_timeout)
            return DeadlineExceeded(
                f"{self.name} version {self.version} ran past its {self.run_timeout:g} s deadline and was "
                "stopped"
            )
        if reason is not None:
            return ModelUnavailable(f"{self.name} version {self.version}: {reason}")
        logger.warning(
            "onnxruntime rejected a request for %s v%s: %s", self.name, self.version, first_line(error)
        )
        return BadRequest(f"onnxruntime rejected the input: {first_line(error)}")


RunSession = Callable[[list[str], dict[str, np.ndarray], ort.RunOptions], list[np.ndarray]]


def _native_run(session: ort.InferenceSession) -> RunSession:
    """The session's compiled ``run``, without the Python wrapper's per-call checks.

    ``InferenceSession.run`` checks, in Python on every call, that no WebGPU graph capture is on, that
    every required input is fed, that OrtValues belong to the session, fills in the output names, and
    retries on another execution provider after an EP failure. A CPU-only session fed numpy arrays that
    the core has validated needs none of it, and it costs about a fifth of a tiny model's run. Where the
    compiled session is not where onnxruntime 1.x keeps it, the public ``run`` serves.
    """
    compiled = getattr(session, "_sess", None)
    run = getattr(compiled, "run", None)
    if callable(run) and session.get_providers() == ["CPUExecutionProvider"]:
        return run  # type: ignore[no-any-return]
    return session.run  # type: ignore[no-any-return]


def _int_limits(dtype: np.dtype[Any]) -> tuple[int, int] | None:
    if dtype.kind not in "iu":
        return None
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def read_signature(
    session: ort.InferenceSession, model_bytes: bytes
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs a client sees. A model with no input could never be called: refused."""
    unranked = unranked_tensors(model_bytes)
    inputs = tensor_specs(session.get_inputs(), unranked)
    if not inputs:
        raise ModelRefused("the model has no inputs, so no inference request could call it")
    return inputs, tensor_specs(session.get_outputs(), unranked)


def load_model(
    manifest: Manifest,
    verified_bytes: bytes,
    watchdog: RunWatchdog,
    run_timeout: float,
    threads: int | None = None,
) -> LoadedModel:
    """Create a session from bytes whose sha256 has already been checked, warm it up, and measure what
    it costs in memory (a 400-byte model can constant-fold into hundreds of megabytes)."""
    where = f"{manifest.name} version {manifest.version}"
    started = time.perf_counter()
    resident_before = resident_bytes()
    try:
        session = create_session(verified_bytes, threads)
        signature = read_signature(session, verified_bytes)
    except ModelRefused as error:
        raise ModelUnavailable(f"{where} is refused: {error}") from None
    except Exception as error:  # onnxruntime raises several unrelated exception types
        raise ModelUnavailable(f"{where} cannot be loaded by onnxruntime: {first_line(error)}") from None
    if (manifest.inputs, manifest.outputs) != signature:
        raise ModelUnavailable(f"{where}: the graph's signature differs from its manifest")
    model = LoadedModel(manifest, session, watchdog, run_timeout)
    warm_up(model)
    resident_after = resident_bytes()
    if resident_before is not None and resident_after is not None:
        # Other threads allocate meanwhile, so this is an estimate; never below the file's own size.
        model.memory_estimate = max(resident_after - resident_before, manifest.size)
    model.load_seconds = time.perf_counter() - started
    return model


def warm_up_feeds(inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """All-zero (or empty-string) inputs of the smallest shape the signature allows."""
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = (1,) if spec.shape is None else tuple(1 if dim < 0 else dim for dim in spec.shape)
        if spec.datatype == BYTES:
            feeds[spec.name] = np.full(shape, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPE_BY_DATATYPE[spec.datatype])
    return feeds


def warm_up(model: LoadedModel) -> None:
    """One run at load so the first request does not pay for lazy kernel and arena setup."""
    feeds = warm_up_feeds(model.manifest.inputs)
    try:
        model.run(model.all_output_names, feeds)
    except (DeadlineExceeded, ModelUnavailable) as error:
        # A model that cannot finish one run on zeros within the deadline is not served.
        raise ModelUnavailable(f"warm-up: {error.message}") from None
    except Exception as error:  # a model may legitimately reject all-zero input
        logger.warning("warm-up of %s v%s skipped: %s", model.name, model.version, first_line(error))


def first_line(error: BaseException) -> str:
    """An exception's first line for a client: at most 500 characters, with the machine's file paths
    (onnxruntime's source files, the store's root, the working directory) replaced by ``<path>`` and
    endpoint URLs by ``<url>``."""
    text = str(error).strip().splitlines()
    if not text:
        return type(error).__name__
    return _FILE_PATH.sub("<path>", _URL.sub("<url>", text[0]))[:500]


class SessionCache:
    """Least-recently-used loaded models within a memory budget. The newest entry is never evicted.

    Thread-safe. An evicted or unloaded model leaves the cache at once, but its session lives on while
    runs still use it: it stays *retired* and counts against the budget until its last run ends, so
    unload and load during long runs cannot hold several copies of a model beyond the budget.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._retired: list[LoadedModel] = []
        self._lock = threading.Lock()

    def get(self, name: str, version: int) -> LoadedModel | None:
        key = (name, version)
        model = self._models.get(key)
        if model is not None:
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
        return model

    def put(self, model: LoadedModel) -> list[LoadedModel]:
        """Insert and return the models evicted to stay within budget."""
        evicted: list[LoadedModel] = []
        with self._lock:
            self._models[(model.name, model.version)] = model
            self._models.move_to_end((model.name, model.version))
            while len(self._models) > 1 and self.used_bytes() > self.budget_bytes:
                _, oldest = self._models.popitem(last=False)
                evicted.append(oldest)
            self._retire(evicted)
        for old in evicted:
            logger.info("evicted %s v%s to stay within the session memory budget", old.name, old.version)
        return evicted

    def remove(self, name: str) -> list[LoadedModel]:
        with self._lock:
            removed = [model for key, model in self._models.items() if key[0] == name]
            for model in removed:
                del self._models[(model.name, model.version)]
            self._retire(removed)
        return removed

    def used_bytes(self) -> int:
        """What the cached sessions and the retired ones still running cost."""
        cached = sum(model.memory_estimate for model in self._models.values())
        return cached + self.retired_bytes()

    def retired_bytes(self) -> int:
        """What sessions that left the cache but still have runs in flight cost."""
        self._retired = [model for model in self._retired if model.runs_in_flight]
        return sum(model.memory_estimate for model in self._retired)

    def _retire(self, models: list[LoadedModel]) -> None:
        self._retired.extend(model for model in models if model.runs_in_flight)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())
