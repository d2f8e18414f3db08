"""The Open Inference Protocol server, independent of any door.

A door hands over (method, path, lower-cased headers, body bytes) and gets a ``Response`` back.
Model loading is lazy and verified; loaded sessions are shared by every request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from modelship import SERVER_NAME, __version__
from modelship.config import Settings
from modelship.errors import (
    BadRequest,
    MethodNotAllowed,
    ModelshipError,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
)
from modelship.names import parse_version, validate_model_name
from modelship.protocol import (
    HEADER_LENGTH_HEADER,
    decode_infer_request,
    encode_infer_response,
    parse_header_length,
)
from modelship.repository import ModelRepository
from modelship.sessions import LoadedModel, SessionCache, first_line, load_model

logger = logging.getLogger(__name__)

EXTENSIONS: Final = ("binary_tensor_data", "model_repository", "classification")
PLATFORM: Final = "onnxruntime_onnx"
JSON: Final = "application/json"
OCTET_STREAM: Final = "application/octet-stream"
_INTERNAL_ERROR: Final = b'{"error":"internal server error"}'
# What onnxruntime raises for inputs that passed signature validation but that the graph cannot take
# (e.g. two dynamic "batch" dimensions given different sizes): the request's fault, not the server's.
_REJECTED_INPUT_ERRORS: Final = (InvalidArgument, RuntimeException, Fail)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    # Set when binary tensors follow a JSON header of this many bytes.
    header_length: int | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def is_binary(self) -> bool:
        return self.header_length is not None

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type, **self.extra_headers}
        if self.header_length is not None:
            headers["Inference-Header-Content-Length"] = str(self.header_length)
        return headers


def json_response(status: int, document: Any) -> Response:
    return Response(status, orjson.dumps(document))


def error_response(error: ModelshipError) -> Response:
    response = json_response(error.status, {"error": error.message})
    if isinstance(error, MethodNotAllowed):
        response.extra_headers["Allow"] = ", ".join(error.allowed)
    return response


class Observer(Protocol):
    """What a door wants to hear about, e.g. to publish metrics."""

    def model_loaded(self, model: LoadedModel) -> None: ...

    def inference_done(self, model: LoadedModel, seconds: float) -> None: ...


class NullObserver:
    def model_loaded(self, model: LoadedModel) -> None:
        pass

    def inference_done(self, model: LoadedModel, seconds: float) -> None:
        pass


class ModelManager:
    """Resolves versions, loads verified models once, and remembers why a model failed to load."""

    def __init__(self, repository: ModelRepository, settings: Settings, observer: Observer) -> None:
        self.repository = repository
        self.settings = settings
        self.observer = observer
        self.cache = SessionCache(settings.session_memory_bytes)
        self.failures: dict[tuple[str, int], str] = {}
        # When each failure happened: a broken model is retried at most this often, so a burst of
        # requests for it does not become a burst of store reads.
        self._failed_at: dict[tuple[str, int], float] = {}
        self._latest: dict[str, tuple[int, float]] = {}
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def get(self, name: str, version: int | None) -> LoadedModel:
        if version is None:
            version = self.resolve_latest(name)
        model = self.cache.get(name, version)
        return model if model is not None else self._load(name, version)

    def resolve_latest(self, name: str) -> int:
        known = self._latest.get(name)
        now = time.monotonic()
        if known is not None and now - known[1] < self.settings.version_poll_seconds:
            return known[0]
        validate_model_name(name)
        try:
            version = self.repository.latest_version(name)
        except ModelshipError:
            raise
        except Exception as error:
            if known is not None:
                # A store outage must not stop a warm server from serving what it already verified.
                logger.warning("cannot refresh latest version of %s, keeping v%s: %s", name, known[0], error)
                return known[0]
            raise ModelUnavailable(f"cannot list versions of {name!r}: {first_line(error)}") from None
        self._latest[name] = (version, now)
        return version

    def unload(self, name: str) -> int:
        """Drop every loaded version of ``name``; the next request loads it again. Returns how many."""
        validate_model_name(name)
        self._latest.pop(name, None)
        return len(self.cache.remove(name))

    def _load(self, name: str, version: int) -> LoadedModel:
        key = (name, version)
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            model = self.cache.get(name, version)
            if model is not None:
                return model
            failed_at = self._failed_at.get(key)
            if failed_at is not None and time.monotonic() - failed_at < self.settings.failure_retry_seconds:
                raise ModelUnavailable(self.failures[key])
            try:
                manifest = self.repository.read_manifest(name, version)
                data = self.repository.fetch_verified(manifest)
                model = load_model(manifest, data)
            except ModelUnavailable as error:
                self.failures[key] = error.message
                self._failed_at[key] = time.monotonic()
                logger.error("model %s v%s unavailable: %s", name, version, error.message)
                raise
            except NotFound:
                # No lock is kept for what does not exist: requests for random names must not grow memory.
                with self._locks_guard:
                    self._locks.pop(key, None)
                raise
            except Exception as error:
                message = f"{name} version {version} cannot be loaded: {first_line(error)}"
                self.failures[key] = message
                self._failed_at[key] = time.monotonic()
                logger.exception("model %s v%s failed to load", name, version)
                raise ModelUnavailable(message) from None
            self.failures.pop(key, None)
            self._failed_at.pop(key, None)
            self.cache.put(model)
            self.observer.model_loaded(model)
            logger.info("loaded %s v%s in %.1f ms", name, version, model.load_seconds * 1000)
            return model


class InferenceService:
    def __init__(
        self, repository: ModelRepository, settings: Settings, observer: Observer | None = None
    ) -> None:
        self.settings = settings
        self.observer: Observer = observer if observer is not None else NullObserver()
        self.models = ModelManager(repository, settings, self.observer)
        self.preload_errors: dict[str, str] = {}
        self._server_metadata = orjson.dumps(
            {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}
        )

    @classmethod
    def from_settings(cls, settings: Settings, observer: Observer | None = None) -> InferenceService:
        repository = ModelRepository.open(settings.store_uri, settings.cache_dir, settings.max_model_bytes)
        return cls(repository, settings, observer)

    def preload(self) -> None:
        """Load the configured models now (Lambda init, before a SnapStart snapshot). Failures are kept
        for /v2/health/ready rather than raised, so one bad model does not take the others down."""
        for name, version in self.settings.preload:
            label = name if version is None else f"{name}:{version}"
            try:
                self.models.get(name, version)
                self.preload_errors.pop(label, None)
            except ModelshipError as error:
                self.preload_errors[label] = error.message

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        try:
            return self._route(method, path, headers, body)
        except ModelshipError as error:
            return error_response(error)
        except Exception:
            logger.exception("unhandled error serving %s %s", method, path[:200])
            return Response(500, _INTERNAL_ERROR)

    def _route(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        parts = path.rstrip("/").split("/") if path != "/" else [""]
        if len(parts) < 2 or parts[0] or parts[1] != "v2":
            raise NotFound(f"no route for {path[:200]!r}; the API lives under /v2")
        rest = parts[2:]
        if not rest:
            _allow(method, "GET")
            return Response(200, self._server_metadata)
        head = rest[0]
        if head == "models" and len(rest) >= 2:
            return self._model_route(method, rest[1:], headers, body)
        if head == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            _allow(method, "GET")
            return self._health(rest[1])
        if head == "repository" and rest[1:] == ["index"]:
            _allow(method, "POST")
            return self._repository_index(body)
        if head == "repository" and len(rest) == 4 and rest[1] == "models" and rest[3] in ("load", "unload"):
            _allow(method, "POST")
            return self._repository_control(rest[2], rest[3])
        raise NotFound(f"no route for {path[:200]!r}")

    def _model_route(self, method: str, rest: list[str], headers: Mapping[str, str], body: bytes) -> Response:
        name = rest[0]
        version: int | None = None
        tail = rest[1:]
        if len(tail) >= 2 and tail[0] == "versions":
            version_text = tail[1]
            tail = tail[2:]
        elif tail and tail[0] == "versions":
            raise NotFound("a version path needs a version: /v2/models/{name}/versions/{version}")
        else:
            version_text = None
        if tail == ["infer"]:
            _allow(method, "POST")
            validate_model_name(name)
            if version_text is not None:
                version = parse_version(version_text)
            return self._infer(name, version, headers, body)
        if not tail or tail == ["ready"]:
            _allow(method, "GET")
            validate_model_name(name)
            if version_text is not None:
                version = parse_version(version_text)
            model = self.models.get(name, version)
            if tail:
                return json_response(200, {"name": name, "version": model.version_text, "ready": True})
            return self._model_metadata(model)
        raise NotFound(f"no route for model path {'/'.join(rest)[:200]!r}")

    def _infer(self, name: str, version: int | None, headers: Mapping[str, str], body: bytes) -> Response:
        if len(body) > self.settings.max_request_bytes:
            raise PayloadTooLarge(
                f"request body of {len(body)} bytes exceeds the {self.settings.max_request_bytes}-byte limit"
            )
        model = self.models.get(name, version)
        header_length = parse_header_length(headers.get(HEADER_LENGTH_HEADER), len(body))
        call = decode_infer_request(model, body, header_length)
        started = time.perf_counter()
        try:
            results = model.run(call.output_names, call.feeds)
        except _REJECTED_INPUT_ERRORS as error:
            logger.warning(
                "onnxruntime rejected a request for %s v%s: %s", name, model.version, first_line(error)
            )
            raise BadRequest(f"onnxruntime rejected the input: {first_line(error)}") from None
        self.observer.inference_done(model, time.perf_counter() - started)
        payload, json_length = encode_infer_response(model, call, results)
        if json_length is None:
            return Response(200, payload)
        return Response(200, payload, OCTET_STREAM, json_length)

    def _health(self, which: str) -> Response:
        if which == "ready" and self.preload_errors:
            # Retry what failed (at most once per failure_retry_seconds per model, see ModelManager), so a
            # store outage at init does not leave this server unready for good.
            self.preload()
        if which == "live" or not self.preload_errors:
            return json_response(200, {"live" if which == "live" else "ready": True})
        return json_response(503, {"ready": False, "error": f"models not loaded: {self.preload_errors}"})

    def _model_metadata(self, model: LoadedModel) -> Response:
        manifest = model.manifest
        try:
            versions = self.models.repository.versions(model.name)
        except Exception:
            versions = [model.version]
        document: dict[str, Any] = {
            "name": model.name,
            "versions": [str(version) for version in versions],
            "platform": PLATFORM,
            "inputs": [spec.to_json() for spec in manifest.inputs],
            "outputs": [spec.to_json() for spec in manifest.outputs],
        }
        if manifest.labels is not None:
            document["parameters"] = {"labels": list(manifest.labels)}
        return json_response(200, document)

    def _repository_control(self, name: str, action: str) -> Response:
        """Triton's model repository extension: load (the latest version) or unload a model."""
        if action == "load":
            self.models.get(name, None)
        else:
            self.models.unload(name)
        return json_response(200, {})

    def _repository_index(self, body: bytes) -> Response:
        ready_only = False
        if body.strip():
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError as error:
                raise BadRequest(f"request body is not valid JSON: {error}") from None
            if not isinstance(request, dict):
                raise BadRequest("request body must be a JSON object")
            ready_only = request.get("ready") is True
        loaded = {(model.name, model.version) for model in self.models.cache.loaded()}
        try:
            listing = self.models.repository.list_models()
        except Exception as error:
            raise ModelUnavailable(f"cannot list the model store: {first_line(error)}") from None
        entries = []
        for name, versions in listing.items():
            for version in versions:
                key = (name, version)
                if key in loaded:
                    entry = {"name": name, "version": str(version), "state": "READY", "reason": ""}
                else:
                    reason = self.models.failures.get(key, "not loaded")
                    entry = {"name": name, "version": str(version), "state": "UNAVAILABLE", "reason": reason}
                if not ready_only or entry["state"] == "READY":
                    entries.append(entry)
        return json_response(200, entries)


def _allow(method: str, allowed: str) -> None:
    # HEAD is GET without a body; the doors drop the body.
    if method != allowed and not (method == "HEAD" and allowed == "GET"):
        methods = ("GET", "HEAD") if allowed == "GET" else (allowed,)
        raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", methods)
