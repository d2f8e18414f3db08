"""What the local HTTP door counts, and ``GET /metrics`` in Prometheus' text format.

``ServerMetrics`` counts requests per (model, endpoint, status) with their latency in fixed buckets, the
requests in flight, and reads the load time of each loaded model from the service when asked. Counting
is plain Python under one lock (about a microsecond a request), so the request path never touches
prometheus-client; that package renders the figures only when ``/metrics`` is scraped, through a
registry of this server's own (never the process-wide default), and is imported then, so the Lambda
path never imports it. ``snapshot`` gives the same figures as a JSON-able dict (the edge door publishes
it over Greengrass IPC).

Labels come from request paths, which clients choose, so they are bounded: ``model`` is the path's model
name only when it is a valid name the server did not answer 404, for at most ``MAX_MODEL_LABELS`` names;
any other model path counts as ``_other``, and a path that names no model has ``model=""``.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left as _bisect
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from modelship.core.names import is_valid_model_name
from modelship.doors.compression import VARY_HEADER, encode_body

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

METRICS_PATH: Final = "/metrics"
# Upper bounds of the latency buckets, in seconds (+Inf is implied), from a tiny model's ~0.3 ms to a
# deadline's 10 s.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
MAX_MODEL_LABELS: Final = 64
OTHER_MODEL: Final = "_other"
# Distinct (path, status) pairs whose series is remembered (paths come from clients: bounded).
MAX_CACHED_PATHS: Final = 1024
_PREFIX: Final = "modelship_"
_JSON: Final = "application/json"


class LoadedModelFigures(Protocol):
    """What /metrics reads of a loaded model (``core.sessions.LoadedModel`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def load_seconds(self) -> float: ...


LoadedModels = Callable[[], Iterable[LoadedModelFigures]]


def _route(path: str) -> tuple[str, str]:
    """(model name or "", endpoint) of a request path, before its status is known."""
    parts = path.split("/")
    if path == METRICS_PATH:
        return "", "metrics"
    if len(parts) < 2 or parts[0] or parts[1] != "v2":
        return "", "other"
    if len(parts) == 2 or (len(parts) == 3 and not parts[2]):
        return "", "server_metadata"
    head = parts[2]
    if head == "health":
        return "", "health"
    if head == "repository":
        return "", "repository"
    if head != "models" or len(parts) < 4:
        return "", "other"
    name = parts[3]
    tail = [part for part in parts[4:] if part]
    if len(tail) >= 2 and tail[0] == "versions":
        tail = tail[2:]
    if tail == ["infer"]:
        endpoint = "infer"
    elif tail == ["ready"]:
        endpoint = "model_ready"
    elif not tail:
        endpoint = "model_metadata"
    else:
        return "", "other"
    return (name if is_valid_model_name(name) else OTHER_MODEL), endpoint


class _Series:
    __slots__ = ("buckets", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        # Per bucket, not cumulative; the last one is +Inf.
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)


class ServerMetrics:
    """The figures of one server. ``request_started`` and ``request_done`` are called from request
    threads; ``answer`` and ``snapshot`` from any thread."""

    def __init__(
        self, loaded_models: LoadedModels | None = None, open_connections: Callable[[], int] | None = None
    ) -> None:
        self._loaded_models = loaded_models
        self._open_connections = open_connections
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, int], _Series] = {}
        # (path, status) -> its series: paths come from clients, so at most MAX_CACHED_PATHS of them.
        self._by_path: dict[tuple[str, int], _Series] = {}
        self._model_labels: set[str] = set()
        self._in_flight = 0
        self._started = time.time()
        self._registry: CollectorRegistry | None = None

    def request_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def request_done(self, path: str, status: int, seconds: float, *, in_flight: bool = True) -> None:
        """Count one answered request; ``in_flight=False`` for one ``request_started`` never counted (a
        refusal before the handler, a scrape of /metrics)."""
        bucket = _bisect(LATENCY_BUCKETS, seconds)
        with self._lock:
            if in_flight:
                self._in_flight -= 1
            # The common case: a (path, status) seen before, straight to its series.
            series = self._by_path.get((path, status))
            if series is None:
                series = self._series_for(path, status)
            series.count += 1
            series.seconds += seconds
            series.buckets[bucket] += 1

    def _series_for(self, path: str, status: int) -> _Series:
        """The series of a (path, status) not seen before; under ``_lock``."""
        model, endpoint = _route(path)
        if model and status == 404:
            model = OTHER_MODEL
        if model and model != OTHER_MODEL and model not in self._model_labels:
            if len(self._model_labels) >= MAX_MODEL_LABELS:
                model = OTHER_MODEL
            else:
                self._model_labels.add(model)
        key = (model, endpoint, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        if len(self._by_path) < MAX_CACHED_PATHS:
            self._by_path[(path, status)] = series
        return series

    # --- reading ----------------------------------------------------------------------------------

    def _requests(self) -> tuple[list[tuple[tuple[str, str, int], int, float, list[int]]], int]:
        """A consistent copy of the request series (cumulative buckets) and the requests in flight."""
        with self._lock:
            copied = [
                (key, series.count, series.seconds, list(series.buckets))
                for key, series in self._series.items()
            ]
            in_flight = self._in_flight
        rows = []
        for key, count, seconds, buckets in sorted(copied):
            cumulative = []
            running = 0
            for value in buckets:
                running += value
                cumulative.append(running)
            rows.append((key, count, seconds, cumulative))
        return rows, in_flight

    def _models(self) -> list[LoadedModelFigures]:
        if self._loaded_models is None:
            return []
        return sorted(self._loaded_models(), key=lambda model: (model.name, model.version))

    def snapshot(self) -> dict[str, Any]:
        """The figures /metrics reports, as a JSON-able dict (no process or platform figures)."""
        rows, in_flight = self._requests()
        bounds = [str(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]
        return {
            "timestamp": time.time(),
            "uptime_seconds": time.time() - self._started,
            "in_flight": in_flight,
            "connections_open": self._open_connections() if self._open_connections is not None else None,
            "requests": [
                {
                    "model": model,
                    "endpoint": endpoint,
                    "status": status,
                    "count": count,
                    "seconds_sum": seconds,
                    "buckets": dict(zip(bounds, cumulative, strict=True)),
                }
                for (model, endpoint, status), count, seconds, cumulative in rows
            ],
            "models": [
                {"name": model.name, "version": model.version, "load_seconds": model.load_seconds}
                for model in self._models()
            ],
        }

    def collect(self) -> Iterator[Any]:
        """The figures as prometheus-client metric families (this object is the registry's collector)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        rows, in_flight = self._requests()
        labels = ["model", "endpoint", "status"]
        requests = CounterMetricFamily(
            f"{_PREFIX}http_requests", "HTTP requests answered, by model, endpoint and status.", labels=labels
        )
        latency = HistogramMetricFamily(
            f"{_PREFIX}http_request_duration_seconds",
            "From a request's first byte to its answer ready to send, by model, endpoint and status.",
            labels=labels,
        )
        bounds = [repr(float(bound)) for bound in LATENCY_BUCKETS] + ["+Inf"]
        for (model, endpoint, status), count, seconds, cumulative in rows:
            values = [model, endpoint, str(status)]
            requests.add_metric(values, count)
            latency.add_metric(values, list(zip(bounds, cumulative, strict=True)), seconds)
        yield requests
        yield latency
        yield GaugeMetricFamily(
            f"{_PREFIX}http_requests_in_flight", "Requests being handled now.", value=in_flight
        )
        if self._open_connections is not None:
            yield GaugeMetricFamily(
                f"{_PREFIX}http_connections_open",
                "Client connections open now.",
                value=self._open_connections(),
            )
        models = self._models()
        load = GaugeMetricFamily(
            f"{_PREFIX}model_load_seconds",
            "How long each loaded model took to load: fetch, verify, session and warm-up.",
            labels=["model", "version"],
        )
        for loaded in models:
            load.add_metric([loaded.name, str(loaded.version)], loaded.load_seconds)
        yield load
        yield GaugeMetricFamily(f"{_PREFIX}models_loaded", "Model versions loaded now.", value=len(models))

    def _registry_or_none(self) -> CollectorRegistry | None:
        if self._registry is not None:
            return self._registry
        try:
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
            from prometheus_client.registry import CollectorRegistry
        except ImportError:
            return None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self._registry = registry
        return registry

    def answer(
        self, method: str, accept: str | None, accept_encoding: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        """The answer to ``method /metrics``: (status, headers, body)."""
        if method not in ("GET", "HEAD"):
            body = orjson.dumps({"error": f"{method} is not allowed on /metrics; use GET"})
            return 405, {"Content-Type": _JSON, "Allow": "GET, HEAD"}, body
        registry = self._registry_or_none()
        if registry is None:
            body = orjson.dumps(
                {"error": "/metrics needs prometheus-client: pip install 'modelship[metrics]'"}
            )
            return 501, {"Content-Type": _JSON}, body
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        text = encoder(registry)
        headers = {"Content-Type": content_type, **VARY_HEADER}
        text, coding = encode_body(text, accept_encoding)
        if coding is not None:
            headers["Content-Encoding"] = coding
        return 200, headers, text
