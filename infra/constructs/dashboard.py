"""One CloudWatch dashboard for a stage: the API, the models and the function's capacity, side by side.

The API's graphs use API Gateway's own metrics; the models' graphs, the EMF metrics the Lambda entry
(functions/inference/app.py) publishes in the ``Modelship`` namespace, found by SEARCH expressions so that
no model needs to be known at synth time; the capacity graphs, Lambda's metrics of the function and of
its ``live`` alias.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from constructs import Construct
from modelship.core.identity import METRICS_NAMESPACE, SERVICE_NAME

# The EMF metrics of functions/inference/app.py (PowertoolsObserver) and Powertools' cold-start metric,
# which carries the function_name and service dimensions (tests/infra/test_operations_options.py holds
# these names to the entry's source).
MODEL_LOAD_TIME: Final = "ModelLoadTime"
INFERENCE_LATENCY: Final = "InferenceLatency"
COLD_START: Final = "ColdStart"
# The second dimension set of the entry's metrics (functions/inference/app.py, MODEL_DIMENSION), beside
# service; the per-model graphs search for exactly that schema, so the service-only series of the same
# metric do not draw a second, all-models line.
MODEL_DIMENSION: Final = "model"
PERIOD: Final = Duration.minutes(1)
_FULL, _HALF, _THIRD = 24, 12, 8
_HEIGHT = 6


def search(metric_name: str, statistic: str, label: str) -> cloudwatch.SearchExpression:
    """Every per-model series of ``metric_name`` in modelship's namespace (the schema: namespace, model,
    service), one line per model, whatever models the function has loaded."""
    return cloudwatch.SearchExpression(
        expression=(
            f"SEARCH('{{{METRICS_NAMESPACE},{MODEL_DIMENSION},service}} MetricName=\"{metric_name}\"', "
            f"'{statistic}', {int(PERIOD.to_seconds())})"
        ),
        label=label,
        period=PERIOD,
    )


@dataclass(frozen=True)
class OperationsDashboardProps:
    dashboard_name: str
    stage: apigw.Stage
    function: lambda_.Function
    alias: lambda_.Alias
    has_provisioned_concurrency: bool


class OperationsDashboard(Construct):
    """Requests and errors, latency, model load time, cold starts, throttles and concurrency."""

    def __init__(self, scope: Construct, construct_id: str, *, props: OperationsDashboardProps) -> None:
        super().__init__(scope, construct_id)
        stage, function = props.stage, props.function
        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=props.dashboard_name, default_interval=Duration.hours(3)
        )
        self.dashboard.add_widgets(
            graph(
                "API requests, 4xx and 5xx (sum per minute)",
                [
                    stage.metric_count(statistic="Sum", period=PERIOD, label="requests"),
                    stage.metric_client_error(statistic="Sum", period=PERIOD, label="4xx"),
                    stage.metric_server_error(statistic="Sum", period=PERIOD, label="5xx"),
                ],
                width=_HALF,
            ),
            graph(
                "API latency (ms)",
                [
                    stage.metric_latency(statistic=statistic, period=PERIOD, label=f"latency {statistic}")
                    for statistic in ("p50", "p99")
                ]
                + [stage.metric_integration_latency(statistic="p99", period=PERIOD, label="integration p99")],
                width=_HALF,
            ),
        )
        self.dashboard.add_widgets(
            graph(
                "Inference latency per model (ms, p50 and p99)",
                [search(INFERENCE_LATENCY, statistic, statistic) for statistic in ("p50", "p99")],
                width=_THIRD,
            ),
            graph(
                # One latency value per inference run: its sample count is the model's inferences.
                "Inferences per model (count per minute)",
                [search(INFERENCE_LATENCY, "SampleCount", "inferences")],
                width=_THIRD,
            ),
            graph(
                "Model load time per model (ms, max)",
                [search(MODEL_LOAD_TIME, "Maximum", "load")],
                width=_THIRD,
            ),
        )
        cold_starts = cloudwatch.Metric(
            namespace=METRICS_NAMESPACE,
            metric_name=COLD_START,
            dimensions_map={"function_name": function.function_name, "service": SERVICE_NAME},
            statistic="Sum",
            period=PERIOD,
            label="cold starts",
        )
        concurrency: list[cloudwatch.IMetric] = [
            function.metric("ConcurrentExecutions", statistic="Maximum", period=PERIOD, label="concurrent")
        ]
        utilization: list[cloudwatch.IMetric] = []
        if props.has_provisioned_concurrency:
            concurrency += [
                props.alias.metric(
                    "ProvisionedConcurrentExecutions", statistic="Maximum", period=PERIOD, label="provisioned"
                ),
                props.alias.metric(
                    "ProvisionedConcurrencySpilloverInvocations",
                    statistic="Sum",
                    period=PERIOD,
                    label="spillover invocations",
                ),
            ]
            utilization.append(
                props.alias.metric(
                    "ProvisionedConcurrencyUtilization",
                    statistic="Maximum",
                    period=PERIOD,
                    label="utilization",
                )
            )
        self.dashboard.add_widgets(
            graph("Cold starts (sum per minute)", [cold_starts], width=_THIRD),
            graph(
                "Lambda throttles and errors (sum per minute)",
                [
                    function.metric_throttles(statistic="Sum", period=PERIOD, label="throttles"),
                    function.metric_errors(statistic="Sum", period=PERIOD, label="errors"),
                ],
                width=_THIRD,
            ),
            graph("Lambda concurrency (max)", concurrency, width=_THIRD, right=utilization),
        )


def graph(
    title: str,
    left: Sequence[cloudwatch.IMetric],
    *,
    width: int = _FULL,
    right: Sequence[cloudwatch.IMetric] = (),
) -> cloudwatch.GraphWidget:
    return cloudwatch.GraphWidget(
        title=title,
        left=list(left),
        right=list(right) or None,
        # Provisioned concurrency utilization is a share: 0 to 1.
        right_y_axis=cloudwatch.YAxisProps(min=0, max=1) if right else None,
        width=width,
        height=_HEIGHT,
    )
