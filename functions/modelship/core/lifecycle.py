"""The model lifecycle: which versions exist, loading each verified model once, and remembering failures."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from modelship.core.errors import ModelshipError, ModelUnavailable, NotFound
from modelship.core.names import validate_model_name
from modelship.core.observer import Observer
from modelship.core.repository import ModelRepository
from modelship.core.sessions import LoadedModel, SessionCache, first_line, load_model
from modelship.core.settings import Settings

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """Why a model version could not be loaded, and when (on the lifecycle's clock)."""

    message: str
    at: float


@dataclass(frozen=True, slots=True)
class _KnownVersions:
    versions: tuple[int, ...]
    listed_at: float


class ModelLifecycle:
    """Resolves versions, loads verified models once, and remembers why a model failed to load.

    Threading: every request thread calls it concurrently. Loads of one (name, version) are serialised by
    a lock of their own, so concurrent first requests load a model once and share the session; loads of
    different models run in parallel. Memory: nothing is kept for a name the store does not hold.

    Lifecycle: a model's versions are listed from the store at most once per
    ``settings.version_poll_seconds`` (a store outage keeps the last listing); a loaded session stays in
    the ``SessionCache`` until evicted or unloaded; a failed load is answered from memory for
    ``settings.failure_retry_seconds`` before the store is tried again. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        repository: ModelRepository,
        settings: Settings,
        observer: Observer,
        clock: Clock = time.monotonic,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.observer = observer
        self.cache = SessionCache(settings.session_memory_bytes)
        self._clock = clock
        self._failures: dict[tuple[str, int], LoadFailure] = {}
        self._versions: dict[str, _KnownVersions] = {}
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def get(self, name: str, version: int | None) -> LoadedModel:
        if version is None:
            version = self.resolve_latest(name)
        model = self.cache.get(name, version)
        return model if model is not None else self._load(name, version)

    def versions(self, name: str) -> tuple[int, ...]:
        """The model's published versions, ascending: from memory within the poll window, else listed."""
        known = self._versions.get(name)
        now = self._clock()
        if known is not None and now - known.listed_at < self.settings.version_poll_seconds:
            return known.versions
        validate_model_name(name)
        try:
            versions = tuple(self.repository.versions(name))
        except ModelshipError:
            raise
        except Exception as error:
            if known is not None:
                # A store outage must not stop a warm server from serving what it already verified.
                logger.warning("cannot refresh the versions of %s, keeping %s: %s", name, known, error)
                return known.versions
            raise ModelUnavailable(f"cannot list versions of {name!r}: {first_line(error)}") from None
        if not versions:
            self._versions.pop(name, None)
            raise NotFound(f"model {name!r} is not in the store")
        self._versions[name] = _KnownVersions(versions, now)
        return versions

    def resolve_latest(self, name: str) -> int:
        return self.versions(name)[-1]

    def failure(self, name: str, version: int) -> LoadFailure | None:
        return self._failures.get((name, version))

    def loaded(self) -> list[LoadedModel]:
        return self.cache.loaded()

    def unload(self, name: str) -> int:
        """Drop every loaded version of ``name``; the next request loads it again. Returns how many."""
        validate_model_name(name)
        self._versions.pop(name, None)
        return len(self.cache.remove(name))

    def _load(self, name: str, version: int) -> LoadedModel:
        key = (name, version)
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            model = self.cache.get(name, version)
            if model is not None:
                return model
            failure = self._failures.get(key)
            if failure is not None and self._clock() - failure.at < self.settings.failure_retry_seconds:
                raise ModelUnavailable(failure.message)
            try:
                manifest = self.repository.read_manifest(name, version)
                data = self.repository.fetch_verified(manifest)
                model = load_model(manifest, data, self.settings.intra_op_threads)
            except ModelUnavailable as error:
                self._remember_failure(key, error.message)
                logger.error("model %s v%s unavailable: %s", name, version, error.message)
                raise
            except NotFound:
                # No lock is kept for what does not exist: requests for random names must not grow memory.
                with self._locks_guard:
                    self._locks.pop(key, None)
                raise
            except Exception as error:
                message = f"{name} version {version} cannot be loaded: {first_line(error)}"
                self._remember_failure(key, message)
                logger.exception("model %s v%s failed to load", name, version)
                raise ModelUnavailable(message) from None
            self._failures.pop(key, None)
            self.cache.put(model)
            self.observer.model_loaded(model)
            logger.info("loaded %s v%s in %.1f ms", name, version, model.load_seconds * 1000)
            return model

    def _remember_failure(self, key: tuple[str, int], message: str) -> None:
        self._failures[key] = LoadFailure(message, self._clock())
