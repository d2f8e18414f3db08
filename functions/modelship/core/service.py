"""The Open Inference Protocol router: a request in, a ``Response`` out, independent of any door.

A door hands over (method, path, lower-cased headers, body bytes) and gets a ``Response`` back. Model
versions, loading and failures belong to ``ModelLifecycle``; decoding and encoding to ``protocol``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

from modelship import __version__
from modelship.core.errors import MethodNotAllowed, ModelshipError, ModelUnavailable, NotFound
from modelship.core.identity import SERVER_NAME
from modelship.core.lifecycle import Clock, ModelLifecycle
from modelship.core.messages import (
    HEADER_LENGTH_HEADER,
    INTERNAL_ERROR_BODY,
    OCTET_STREAM,
    Response,
    check_request_size,
    error_response,
    json_response,
)
from modelship.core.names import parse_version, validate_model_name
from modelship.core.observer import NullObserver, Observer
from modelship.core.protocol import (
    decode_infer_request,
    encode_infer_response,
    parse_header_length,
    parse_json_object,
)
from modelship.core.repository import ModelRepository
from modelship.core.sessions import LoadedModel, first_line
from modelship.core.settings import Settings

logger = logging.getLogger(__name__)

EXTENSIONS: Final = ("binary_tensor_data", "model_repository", "classification")
PLATFORM: Final = "onnxruntime_onnx"
# How long a readiness probe waits for its retry of failed preloads before answering "still loading".
READY_RETRY_WAIT_SECONDS: Final = 1.0
# How many distinct inference paths keep their parsed (name, version): enough for every model a server
# holds, bounded because paths come from clients.
MAX_CACHED_ROUTES: Final = 1024


class InferenceService:
    """The Open Inference Protocol server behind every door.

    Threading: ``handle`` is called from many request threads at once and is safe to; the shared state
    (sessions, versions, failures) lives in ``ModelLifecycle``, which serialises what must be. A session
    may run several requests at once (onnxruntime's ``run`` is thread-safe).

    Lifecycle: build one per process (``from_settings``), call ``preload`` once (Lambda init, before a
    SnapStart snapshot), then ``handle`` for each request until the process ends. ``handle`` never
    raises: an anticipated failure is a JSON ``{"error": ...}`` with its status, anything else a 500.
    """

    def __init__(
        self,
        repository: ModelRepository,
        settings: Settings,
        observer: Observer | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.observer: Observer = observer if observer is not None else NullObserver()
        self.lifecycle = ModelLifecycle(repository, settings, self.observer, clock)
        self.preload_errors: dict[str, str] = {}
        # Models a background preload has still to try; readiness reports them.
        self._loading: set[str] = set()
        self._preloader: threading.Thread | None = None
        self._preload_guard = threading.Lock()
        self._preload_lock = threading.Lock()
        self._server_metadata = orjson.dumps(
            {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}
        )
        # Inference paths already parsed and validated by _route: path -> (model name, version or None).
        # A path's meaning never changes, so a repeated one skips the parsing, not any check of the request.
        self._infer_routes: dict[str, tuple[str, int | None]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, observer: Observer | None = None) -> InferenceService:
        """``TrustedKeysError`` (a ``ValueError``) for trusted keys that cannot be used: the start fails."""
        trusted_keys = None
        if settings.trusted_keys:
            from modelship.core.signing import TrustedKeys

            trusted_keys = TrustedKeys.load(settings.trusted_keys)
            logger.info(
                "serving only versions signed by: %s", "; ".join(key.description for key in trusted_keys)
            )
        repository = ModelRepository.open(
            settings.store_uri, settings.cache_dir, settings.max_model_bytes, trusted_keys
        )
        return cls(repository, settings, observer)

    def preload(self) -> None:
        """Load the configured models now (Lambda init, before a SnapStart snapshot). Failures are kept
        for /v2/health/ready rather than raised, so one bad model does not take the others down."""
        with self._preload_lock:
            for name, version in self.settings.preload:
                label = name if version is None else f"{name}:{version}"
                try:
                    self.lifecycle.get(name, version)
                    self.preload_errors.pop(label, None)
                except ModelshipError as error:
                    self.preload_errors[label] = error.message
                    logger.warning("could not preload %s: %s", label, error.message)
                finally:
                    self._loading.discard(label)

    def start_preload(self) -> threading.Thread:
        """``preload`` in the background, so that a door can listen at once while a slow or unreachable
        store is tried; until it is done, readiness says which models are still loading."""
        with self._preload_guard:
            if self._preloader is None or not self._preloader.is_alive():
                self._loading.update(self.preload_errors.keys() or self._preload_labels())
                self._preloader = threading.Thread(target=self.preload, name="modelship-preload", daemon=True)
                self._preloader.start()
            return self._preloader

    def _preload_labels(self) -> set[str]:
        return {name if version is None else f"{name}:{version}" for name, version in self.settings.preload}

    def cancel_runs(self) -> int:
        """Stop every onnxruntime run in flight and refuse later ones (503): for a graceful shutdown, so
        that no thread is inside onnxruntime when the process exits. Returns how many were running."""
        return self.lifecycle.cancel_runs()

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        try:
            # Before routing, on every route: a door that could not check earlier gets the same 413.
            check_request_size(len(body), self.settings.max_request_bytes)
            route = self._infer_routes.get(path)
            if route is not None:
                _allow(method, "POST")
                return self._infer(route[0], route[1], headers, body)
            return self._route(method, path, headers, body)
        except ModelshipError as error:
            return error_response(error)
        except Exception:
            logger.exception("unhandled error serving %s %s", method, path[:200])
            return Response(500, INTERNAL_ERROR_BODY)

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
            return self._model_route(method, path, rest[1:], headers, body)
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

    def _model_route(
        self, method: str, path: str, rest: list[str], headers: Mapping[str, str], body: bytes
    ) -> Response:
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
            if len(self._infer_routes) < MAX_CACHED_ROUTES:
                self._infer_routes[path] = (name, version)
            return self._infer(name, version, headers, body)
        if not tail or tail == ["ready"]:
            _allow(method, "GET")
            validate_model_name(name)
            if version_text is not None:
                version = parse_version(version_text)
            model = self.lifecycle.get(name, version)
            if tail:
                return json_response(200, {"name": name, "version": model.version_text, "ready": True})
            return self._model_metadata(model)
        raise NotFound(f"no route for model path {'/'.join(rest)[:200]!r}")

    def _infer(self, name: str, version: int | None, headers: Mapping[str, str], body: bytes) -> Response:
        model = self.lifecycle.get(name, version)
        header_length = parse_header_length(headers.get(HEADER_LENGTH_HEADER), len(body))
        call = decode_infer_request(model, body, header_length)
        started = time.perf_counter()
        results = model.run(call.output_names, call.feeds)
        self.observer.inference_done(model, time.perf_counter() - started)
        payload, json_length = encode_infer_response(model, call, results, self.settings.max_response_bytes)
        if json_length is None:
            return Response(200, payload)
        return Response(200, payload, OCTET_STREAM, json_length)

    def _health(self, which: str) -> Response:
        if which == "live":
            return json_response(200, {"live": True})
        if self.preload_errors and not self._loading:
            # Retry what failed (at most once per failure_retry_seconds per model, see ModelLifecycle), so
            # a store outage at init does not leave this server unready for good. In the background: a
            # hanging store must not hang the probe; a quick retry still answers this very request.
            self.start_preload().join(READY_RETRY_WAIT_SECONDS)
        loading = sorted(self._loading)
        if loading:
            return json_response(503, {"ready": False, "error": f"models still loading: {loading}"})
        if self.preload_errors:
            return json_response(503, {"ready": False, "error": f"models not loaded: {self.preload_errors}"})
        return json_response(200, {"ready": True})

    def _model_metadata(self, model: LoadedModel) -> Response:
        manifest = model.manifest
        try:
            versions = set(self.lifecycle.versions(model.name))
        except ModelshipError:
            versions = set()
        # A version loaded by number may be newer than the last listing.
        versions.add(model.version)
        document: dict[str, Any] = {
            "name": model.name,
            "versions": [str(version) for version in sorted(versions)],
            "platform": PLATFORM,
            "inputs": [spec.to_metadata() for spec in manifest.inputs],
            "outputs": [spec.to_metadata() for spec in manifest.outputs],
        }
        parameters: dict[str, Any] = {}
        if manifest.labels is not None:
            parameters["labels"] = list(manifest.labels)
        if manifest.preprocessing is not None:
            # How a client turns an image into this model's input (modelship infer --image).
            parameters["preprocessing"] = manifest.preprocessing.to_json()
        if parameters:
            document["parameters"] = parameters
        return json_response(200, document)

    def _repository_control(self, name: str, action: str) -> Response:
        """Triton's model repository extension: load (the latest version) or unload a model."""
        if action == "load":
            self.lifecycle.load_latest(name)
        else:
            self.lifecycle.unload(name)
        return json_response(200, {})

    def _repository_index(self, body: bytes) -> Response:
        ready_only = False
        if body.strip():
            request = parse_json_object(body, "a JSON object")
            ready_only = request.get("ready") is True
        loaded = {(model.name, model.version) for model in self.lifecycle.loaded()}
        try:
            listing = self.lifecycle.repository.list_models()
        except Exception as error:
            raise ModelUnavailable(f"cannot list the model store: {first_line(error)}") from None
        entries = []
        for name, versions in listing.items():
            for version in versions:
                key = (name, version)
                if key in loaded:
                    entry = {"name": name, "version": str(version), "state": "READY", "reason": ""}
                else:
                    failure = self.lifecycle.failure(name, version)
                    reason = failure.message if failure is not None else "not loaded"
                    entry = {"name": name, "version": str(version), "state": "UNAVAILABLE", "reason": reason}
                if not ready_only or entry["state"] == "READY":
                    entries.append(entry)
        return json_response(200, entries)


def _allow(method: str, allowed: str) -> None:
    # HEAD is GET without a body; the doors drop the body.
    if method != allowed and not (method == "HEAD" and allowed == "GET"):
        methods = ("GET", "HEAD") if allowed == "GET" else (allowed,)
        raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", methods)
