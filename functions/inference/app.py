"""The Lambda door: an API Gateway REST proxy event in, a proxy result out.

Everything that is not Lambda glue lives in ``modelship.core`` (the inference core) and
``modelship.doors.apigw`` (the event translation, which the local door shares). Module-level init builds
the service and preloads ``MODELSHIP_PRELOAD`` once per execution environment (and before a
SnapStart snapshot).
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
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


class PowertoolsObserver:
    def model_loaded(self, model: LoadedModel) -> None:
        metrics.add_metric(
            name="ModelLoadTime", unit=MetricUnit.Milliseconds, value=model.load_seconds * 1000
        )

    def inference_done(self, model: LoadedModel, seconds: float) -> None:
        metrics.add_metric(name="InferenceLatency", unit=MetricUnit.Milliseconds, value=seconds * 1000)


service = InferenceService.from_settings(Settings.from_env(), PowertoolsObserver())
service.preload()
if service.settings.preload and os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
    # Publish the preload's ModelLoadTime now, once: left buffered, it would be inside the snapshot and
    # every restored environment would publish it again.
    metrics.flush_metrics()


# Powertools writes the ColdStart metric even with POWERTOOLS_METRICS_DISABLED.
@metrics.log_metrics(capture_cold_start_metric=not _env_flag("POWERTOOLS_METRICS_DISABLED"))
def _handle(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle_event(service, event)


if tracer is not None:
    _handle = tracer.capture_lambda_handler(capture_response=False)(_handle)

handler = logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)(_handle)
