"""The Lambda door: an API Gateway REST proxy event in, a proxy result out.

Everything that is not Lambda glue lives in ``modelship.core`` (the inference core) and
``modelship.doors.apigw`` (the event translation, which the local door shares). Module-level init builds
the service and preloads ``MODELSHIP_PRELOAD`` once per execution environment (and before a
SnapStart snapshot).

The glue around each invocation is what Powertools' ``inject_lambda_context`` and ``log_metrics``
decorators do, written for this handler so that a warm request does only the work that changes between
invocations: the same log keys and correlation id on every line, the same EMF document printed before
the invocation returns, the same ColdStart metric. Anything out of the ordinary (metrics disabled, extra
dimensions or metadata, a custom timestamp) goes through Powertools' own flush; no metrics, no flush (and
no "No application metrics to publish" warning).

Each document carries two dimension sets: ``service`` (the metrics as they always were) and ``service`` with
``model``, the loaded model the metrics are about (a name from the store, never from a request path),
which the dashboard's per-model graphs search for.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Final, NamedTuple

import orjson
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.metrics.provider import cold_start as metrics_cold_start
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.constants import MAX_METRICS
from aws_lambda_powertools.shared.functions import extract_event_from_common_models, is_durable_context
from aws_lambda_powertools.utilities.typing import LambdaContext
from modelship.core.identity import METRICS_NAMESPACE, SERVICE_NAME
from modelship.core.service import InferenceService
from modelship.core.sessions import LoadedModel
from modelship.core.settings import Settings
from modelship.doors.apigw import handle_event

# Defaults so a function deployed without the POWERTOOLS_* variables still logs and publishes metrics.
logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME") or SERVICE_NAME)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or METRICS_NAMESPACE)
# The core logs through the standard "modelship" loggers; give them Powertools' JSON format, so their
# lines carry the request's correlation id too.
copy_config_to_registered_loggers(source_logger=logger, include={"modelship"})


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes", "on")


def _tracing_enabled() -> bool:
    # Tracer() imports the X-Ray SDK and opens its UDP emitter even when disabled, which costs cold
    # start; build it only where it will trace (mirrors Powertools' own rule).
    in_lambda = bool(os.environ.get("LAMBDA_TASK_ROOT")) and not os.environ.get("AWS_SAM_LOCAL")
    return in_lambda and not _env_flag("POWERTOOLS_TRACE_DISABLED")


tracer = Tracer() if _tracing_enabled() else None

# Lambda's environment does not change under a running function: read it once, as the decorators
# read their own switches once when they wrap the handler.
_METRICS_DISABLED: Final = is_metrics_disabled()
# Powertools writes the ColdStart metric even with POWERTOOLS_METRICS_DISABLED; so does this door.
_CAPTURE_COLD_START: Final = not _env_flag("POWERTOOLS_METRICS_DISABLED")
_LOG_EVENT: Final = _env_flag("POWERTOOLS_LOGGER_LOG_EVENT")
_MILLISECONDS: Final = MetricUnit.Milliseconds.value
_STANDARD_RESOLUTION: Final = 60
# As Powertools' logger decides: a provisioned environment has no cold start, any other has one.
_cold_start = os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") != "provisioned-concurrency"


def _record(name: str, milliseconds: float) -> None:
    """``metrics.add_metric(name, Milliseconds, value)`` for this door's own, valid, metric names: a
    metric's first value this invocation goes straight into the set that Powertools serializes; anything
    else (a second value, a set near Powertools' limit of 100) takes Powertools' own path."""
    metric_set = metrics.metric_set
    if name in metric_set or len(metric_set) >= MAX_METRICS - 1:
        metrics.add_metric(name=name, unit=MetricUnit.Milliseconds, value=milliseconds)
    else:
        metric_set[name] = {
            "Unit": _MILLISECONDS,
            "StorageResolution": _STANDARD_RESOLUTION,
            "Value": [milliseconds],
        }


# The model the buffered metrics are about: they are published under a second dimension set, service and
# model, beside the service-only one (Powertools' add_dimensions; one EMF document, no extra write). An
# invocation serves one model; only a preload of several models at init meets a second one, and then the
# first one's metrics are flushed before the second's are recorded.
_metrics_model: str | None = None
MODEL_DIMENSION: Final = "model"


def _about(model: LoadedModel) -> None:
    global _metrics_model
    if _metrics_model != model.name:
        if _metrics_model is not None and metrics.metric_set:
            flush_metrics()
        _metrics_model = model.name


class PowertoolsObserver:
    def model_loaded(self, model: LoadedModel) -> None:
        _about(model)
        _record("ModelLoadTime", model.load_seconds * 1000)

    def inference_done(self, model: LoadedModel, seconds: float) -> None:
        _about(model)
        _record("InferenceLatency", seconds * 1000)


class _Layout(NamedTuple):
    directives: list[dict[str, Any]]
    dimensions: dict[str, str]


# The EMF document's fixed part (namespace, dimension sets, metric definitions) for each combination met:
# a warm function meets the same few on every invocation. Bounded: model names come from the store.
_layouts: dict[tuple[Any, ...], _Layout] = {}
_MAX_LAYOUTS: Final = 256


def _layout(
    namespace: str, service_name: str | None, model: str | None, metric_set: dict[str, Any]
) -> _Layout:
    key = (
        namespace,
        service_name,
        model,
        *[
            (name, metric.get("Unit", ""), metric.get("StorageResolution"))
            for name, metric in metric_set.items()
        ],
    )
    layout = _layouts.get(key)
    if layout is not None:
        return layout
    definitions = []
    for name, metric in metric_set.items():
        definition = {"Name": name, "Unit": metric.get("Unit", "")}
        if metric.get("StorageResolution", _STANDARD_RESOLUTION) == 1:
            definition["StorageResolution"] = 1
        definitions.append(definition)
    dimensions = {"service": service_name} if service_name else {}
    dimension_sets = [list(dimensions)]
    if model is not None:
        dimensions[MODEL_DIMENSION] = model
        dimension_sets.append(list(dimensions))
    layout = _Layout(
        [{"Namespace": namespace, "Dimensions": dimension_sets, "Metrics": definitions}], dimensions
    )
    if len(_layouts) >= _MAX_LAYOUTS:
        _layouts.clear()
    _layouts[key] = layout
    return layout


def flush_metrics() -> None:
    """Print the invocation's EMF document and clear the metric set, as ``metrics.flush_metrics()``
    does, in one orjson write. The fast path covers the state this door leaves (its metrics, the service
    dimension, the model's dimension set); any other state is Powertools' to serialize, validate and
    warn about."""
    global _metrics_model
    provider = metrics.provider
    metric_set = provider.metric_set
    model = _metrics_model
    _metrics_model = None
    if not metric_set:
        # Nothing to publish (a health check, metadata, an error before a run): Powertools would only
        # warn "No application metrics to publish", once per environment, and change nothing.
        return
    if (
        _METRICS_DISABLED
        or provider.dimension_set
        or provider.dimension_sets
        or provider.metadata_set
        or provider.default_dimensions
        or provider.timestamp
        or not provider.namespace
    ):
        if model is not None and not _METRICS_DISABLED:
            model_set = {MODEL_DIMENSION: model}
            if provider.service:
                model_set = {"service": provider.service, **model_set}
            metrics.add_dimensions(**model_set)
        metrics.flush_metrics()
        return
    values = {name: metric.get("Value", 0) for name, metric in metric_set.items()}
    layout = _layout(provider.namespace, provider.service, model, metric_set)
    document = {
        "_aws": {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": layout.directives},
        **layout.dimensions,
        **values,
    }
    # One write of the whole line: what print(json.dumps(...)) writes in two.
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE).decode())
    metric_set.clear()


service = InferenceService.from_settings(Settings.from_env(), PowertoolsObserver())
service.preload()
if service.settings.preload and os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
    # Publish the preload's ModelLoadTime now, once: left buffered, it would be inside the snapshot and
    # every restored environment would publish it again.
    flush_metrics()


def _invoke(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """What ``metrics.log_metrics(capture_cold_start_metric=...)`` wraps around the handler."""
    try:
        response = handle_event(service, event)
        if _CAPTURE_COLD_START and metrics_cold_start.is_cold_start:
            metrics.provider.add_cold_start_metric(context=_lambda_context(context))
            metrics_cold_start.is_cold_start = False
    finally:
        flush_metrics()
    return response


_traced = tracer.capture_lambda_handler(capture_response=False)(_invoke) if tracer is not None else _invoke


def _lambda_context(context: Any) -> Any:
    """The Lambda context itself, also when a durable function's context wraps it."""
    return context.lambda_context if is_durable_context(context) else context


def _correlation_id(event: Any) -> Any:
    """The API Gateway request id: what ``correlation_paths.API_GATEWAY_REST`` finds, without JMESPath."""
    if isinstance(event, dict):
        request_context = event.get("requestContext")
        if isinstance(request_context, dict):
            return request_context.get("requestId")
    return None


# The logger's formatter, found once: Logger.registered_formatter looks it up through its handler on
# every access.
_formatter = logger.registered_formatter


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The Lambda entry: the keys ``logger.inject_lambda_context`` appends, set in one update, so every
    line this request logs (the core's too) carries them and the correlation id."""
    global _cold_start
    cold_start = _cold_start
    _cold_start = False
    lambda_context = _lambda_context(context)
    # Logger.append_keys, without its trip through the properties that find the formatter twice.
    _formatter.append_keys(
        cold_start=cold_start,
        function_name=lambda_context.function_name,
        function_memory_size=lambda_context.memory_limit_in_mb,
        function_arn=lambda_context.invoked_function_arn,
        function_request_id=lambda_context.aws_request_id,
        correlation_id=_correlation_id(event),
    )
    if _LOG_EVENT:
        logger.info(extract_event_from_common_models(event))
    if logger.sampling_rate and not cold_start:
        logger.refresh_sample_rate_calculation()
    return _traced(event, context)


# The service behind this handler, for a local door that runs it (the edge door): its /metrics reports the
# models this service has loaded, as for ``apigw.proxy_handler``'s handlers.
handler.service = service  # type: ignore[attr-defined]
