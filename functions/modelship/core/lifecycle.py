"""The model lifecycle: which versions exist, loading each verified model once, and remembering failures."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from modelship.core.deadlines import RunWatchdog
from modelship.core.errors import ModelshipError, ModelUnavailable, NotFound
from modelship.core.isolation import probe_model
from modelship.core.manifest import Manifest
from modelship.core.memory import mebibytes
from modelship.core.names import validate_model_name
from modelship.core.observer import Observer
from modelship.core.repository import ModelRepository
from modelship.core.sessions import LoadedModel, SessionCache, first_line, load_model
from modelship.core.settings import Settings

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
# How many names whose listing failed are remembered (and answered from memory) at once.
MAX_REMEMBERED_LISTING_FAILURES = 1024
# How long a request waits for a stale listing's refresh before answering from what is known.
REFRESH_WAIT_SECONDS = 0.2


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
        self.watchdog = RunWatchdog()
        self._clock = clock
        self._failures: dict[tuple[str, int], LoadFailure] = {}
        self._versions: dict[str, _KnownVersions] = {}
        # One background refresh of a model's listing at a time; only names the store holds get one.
        self._refreshers: dict[str, threading.Thread] = {}
        self._listing_failures: dict[str, LoadFailure] = {}
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def get(self, name: str, version: int | None) -> LoadedModel:
        """A loaded model: ``version``, or the latest. A newest version that cannot be loaded does not
        replace a good one already serving: the newest loaded older version answers meanwhile."""
        if version is not None:
            model = self.cache.get(name, version)
            return model if model is not None else self._load(name, version)
        newest = self.resolve_latest(name)
        model = self.cache.get(name, newest)
        if model is not None:
            return model
        try:
            return self._load(name, newest)
        except ModelUnavailable:
            fallback = self._newest_loaded(name, below=newest)
            if fallback is None:
                raise
            logger.warning("%s v%s is unavailable; v%s keeps serving", name, newest, fallback.version)
            return fallback

    def load_latest(self, name: str) -> LoadedModel:
        """An explicit load (the repository extension): list the store now, and load its newest version,
        with no fallback: the caller asked for that version and learns why it failed."""
        validate_model_name(name)
        self._versions.pop(name, None)
        newest = self.resolve_latest(name)
        model = self.cache.get(name, newest)
        return model if model is not None else self._load(name, newest)

    def versions(self, name: str) -> tuple[int, ...]:
        """The model's published versions, ascending: from memory within the poll window, else listed.

        When the listing is stale, one background thread lists the store; requests wait for it at most
        ``REFRESH_WAIT_SECONDS`` and otherwise answer from what is known. A failed listing keeps what is
        known and is retried after ``failure_retry_seconds``: an unreachable store costs no request more
        than that short wait, and the store one call per model per retry period.
        """
        known = self._versions.get(name)
        now = self._clock()
        if known is not None and now - known.listed_at < self.settings.version_poll_seconds:
            return known.versions
        validate_model_name(name)
        if known is None:
            return self._list_versions(name, None)
        with self._locks_guard:
            refresher = self._refreshers.get(name)
            if refresher is None or not refresher.is_alive():
                refresher = threading.Thread(
                    target=self._refresh, args=(name, known), name=f"modelship-refresh-{name}", daemon=True
                )
                self._refreshers[name] = refresher
                refresher.start()
        refresher.join(REFRESH_WAIT_SECONDS)
        current = self._versions.get(name)
        return current.versions if current is not None else known.versions

    def _refresh(self, name: str, known: _KnownVersions) -> None:
        try:
            self._list_versions(name, known)
        except ModelshipError as error:
            logger.warning("cannot refresh the versions of %s: %s", name, error.message)

    def _list_versions(self, name: str, known: _KnownVersions | None) -> tuple[int, ...]:
        failed = self._listing_failures.get(name)
        if (
            known is None
            and failed is not None
            and self._clock() - failed.at < self.settings.failure_retry_seconds
        ):
            raise ModelUnavailable(failed.message)
        try:
            versions = tuple(self.repository.versions(name))
        except ModelshipError:
            raise
        except Exception as error:
            now = self._clock()
            if known is not None:
                # A store outage must not stop a warm server from serving what it already verified.
                logger.warning(
                    "cannot refresh the versions of %s, keeping %s: %s", name, known.versions, error
                )
                retry_at = now - self.settings.version_poll_seconds + self.settings.failure_retry_seconds
                self._versions[name] = _KnownVersions(known.versions, retry_at)
                return known.versions
            message = f"cannot list versions of {name!r}: {first_line(error)}"
            if len(self._listing_failures) >= MAX_REMEMBERED_LISTING_FAILURES:
                # Random names during an outage must not grow memory without bound.
                self._listing_failures.clear()
            self._listing_failures[name] = LoadFailure(message, now)
            raise ModelUnavailable(message) from None
        self._listing_failures.pop(name, None)
        if not versions:
            self._versions.pop(name, None)
            raise NotFound(f"model {name!r} is not in the store")
        self._versions[name] = _KnownVersions(versions, self._clock())
        return versions

    def resolve_latest(self, name: str) -> int:
        return self.versions(name)[-1]

    def _newest_loaded(self, name: str, below: int) -> LoadedModel | None:
        older = [model for model in self.cache.loaded() if model.name == name and model.version < below]
        return max(older, key=lambda model: model.version, default=None)

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
                measured = self._probe(manifest, data) if self.settings.isolate_loads else None
                model = load_model(
                    manifest,
                    data,
                    self.watchdog,
                    self.settings.inference_timeout_seconds,
                    self.settings.intra_op_threads,
                )
                if measured is not None:
                    # Measured alone in the child (and checked against the budget there), so no other
                    # thread's allocations are counted in it.
                    model.memory_estimate = measured
                else:
                    self._refuse_over_budget(model.name, model.version, model.memory_estimate)
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

    def _probe(self, manifest: Manifest, data: bytes) -> int:
        """Load the model in a child process first (``isolation``); what its session costs, in bytes."""
        report = probe_model(
            data,
            where=f"{manifest.name} version {manifest.version}",
            memory_limit_bytes=self.cache.budget_bytes,
            timeout_seconds=self.settings.load_timeout_seconds,
            run_timeout=self.settings.inference_timeout_seconds,
            threads=self.settings.intra_op_threads,
        )
        measured = max(report.session_bytes, manifest.size)
        self._refuse_over_budget(manifest.name, manifest.version, measured)
        return measured

    def _refuse_over_budget(self, name: str, version: int, size: int) -> None:
        budget = self.cache.budget_bytes
        if size > budget:
            raise ModelUnavailable(
                f"{name} version {version} needs about {mebibytes(size)} MiB once loaded, over the session "
                f"memory budget of {mebibytes(budget)} MiB"
            )
        retired = self.cache.retired_bytes()
        if retired + size > budget:
            # Unloaded or evicted sessions still finishing their runs hold the memory: a load now would
            # put a second copy beside them, past the budget.
            raise ModelUnavailable(
                f"{name} version {version} cannot be loaded yet: {mebibytes(retired)} MiB of the "
                f"{mebibytes(budget)} MiB session budget is held by sessions still finishing runs; "
                "try again soon"
            )

    def cancel_runs(self) -> int:
        """Stop every onnxruntime run in flight, and any later one (shutdown). Returns how many ran."""
        return self.watchdog.cancel_all()

    def _remember_failure(self, key: tuple[str, int], message: str) -> None:
        self._failures[key] = LoadFailure(message, self._clock())
