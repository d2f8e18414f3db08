"""CloudWatch alarms on what an on-call engineer acts on: errors, tail latency and throttling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from constructs import Construct
from modelship.core.identity import METRICS_NAMESPACE

ERROR_RATE_THRESHOLD = 0.05  # 5 % of requests over a minute
# Alarm when 3 of the last 5 one-minute periods breach: one bad minute (a deploy, a cold burst) is noise.
PERIOD = Duration.minutes(1)
EVALUATION_PERIODS = 5
DATAPOINTS_TO_ALARM = 3
# The function's p99 alarms at this share of its timeout: beyond it, requests are about to time out.
DURATION_SHARE_OF_TIMEOUT = 0.8


@dataclass(frozen=True)
class InferenceAlarmsProps:
    function: lambda_.Function
    stage: apigw.Stage
    access_logs: logs.ILogGroup
    stage_name: str
    timeout_seconds: int
    latency_alarm_ms: int
    alarm_topic_arn: str | None
    # The API alarms gate CodeDeploy releases (infra/constructs/release.py).
    gates_release: bool = False


def api_metric_options(stage: apigw.Stage, stage_name: str, *, by_name: bool) -> dict[str, Any]:
    """One-minute options of a stage metric. ``by_name`` names the stage by its (known) name instead of a
    Ref: CodeDeploy's alias UpdatePolicy refers to the deployment group, which refers to the alarms that
    gate a release, and a Ref to the stage (stage -> deployment -> methods -> the alias) would close a
    dependency cycle."""
    options: dict[str, Any] = {"period": PERIOD}
    if by_name:
        options["dimensions_map"] = {"ApiName": stage.rest_api.rest_api_name, "Stage": stage_name}
    return options


class InferenceAlarms(Construct):
    """API 5xx rate and p99 latency, function error rate, p99 duration and throttles, API throttles."""

    def __init__(self, scope: Construct, construct_id: str, *, props: InferenceAlarmsProps) -> None:
        super().__init__(scope, construct_id)
        self.alarms: list[cloudwatch.Alarm] = []
        stage, function = props.stage, props.function
        api_metric = api_metric_options(props.stage, props.stage_name, by_name=props.gates_release)

        server_errors = self._alarm(
            "ApiServerErrorRate",
            stage.metric_server_error(statistic="Average", **api_metric),  # 5XXError is 0/1 per request
            threshold=ERROR_RATE_THRESHOLD,
            description="More than 5 % of API requests answered 5xx (function errors, timeouts, throttling)",
        )
        latency = self._alarm(
            "ApiLatencyP99",
            stage.metric_latency(statistic="p99", **api_metric),
            threshold=props.latency_alarm_ms,
            description=f"API p99 latency above {props.latency_alarm_ms} ms",
        )
        # What a client sees of a bad release: the alarms that stop a canary and roll it back.
        self.release_alarms = (server_errors, latency)
        # API Gateway publishes no throttle metric; the access log's status 429 is the exact signal.
        throttled = logs.MetricFilter(
            self,
            "ApiThrottledFilter",
            log_group=props.access_logs,
            filter_pattern=logs.FilterPattern.string_value("$.status", "=", "429"),
            metric_namespace=f"{METRICS_NAMESPACE}/{props.stage_name}",
            metric_name="ApiThrottledRequests",
            metric_value="1",
            default_value=0,
        )
        self._alarm(
            "ApiThrottles",
            throttled.metric(statistic="Sum", period=PERIOD),
            threshold=1,
            description="API Gateway throttled requests (429): raise the stage or usage-plan limits",
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        )
        errors = function.metric_errors(statistic="Sum", period=PERIOD)
        invocations = function.metric_invocations(statistic="Sum", period=PERIOD)
        self._alarm(
            "FunctionErrorRate",
            cloudwatch.MathExpression(
                expression="errors / MAX([errors, invocations])",  # MAX avoids dividing by zero
                using_metrics={"errors": errors, "invocations": invocations},
                label="Function error rate",
                period=PERIOD,
            ),
            threshold=ERROR_RATE_THRESHOLD,
            description="More than 5 % of invocations failed with an unhandled error",
        )
        duration_threshold_ms = props.timeout_seconds * 1000 * DURATION_SHARE_OF_TIMEOUT
        self._alarm(
            "FunctionDurationP99",
            function.metric_duration(statistic="p99", period=PERIOD),
            threshold=duration_threshold_ms,
            description=f"Function p99 duration above {duration_threshold_ms:.0f} ms, near its timeout",
        )
        self._alarm(
            "FunctionThrottles",
            function.metric_throttles(statistic="Sum", period=PERIOD),
            threshold=1,
            description="Lambda throttled invocations: concurrency (reserved or account) is exhausted",
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        )

        if props.alarm_topic_arn:
            topic = sns.Topic.from_topic_arn(self, "AlarmTopic", props.alarm_topic_arn)
            for alarm in self.alarms:
                alarm.add_alarm_action(cloudwatch_actions.SnsAction(topic))
                alarm.add_ok_action(cloudwatch_actions.SnsAction(topic))

    def _alarm(
        self,
        construct_id: str,
        metric: cloudwatch.IMetric,
        *,
        threshold: float,
        description: str,
        comparison: cloudwatch.ComparisonOperator = cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
    ) -> cloudwatch.Alarm:
        alarm = cloudwatch.Alarm(
            self,
            construct_id,
            metric=metric,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=EVALUATION_PERIODS,
            datapoints_to_alarm=DATAPOINTS_TO_ALARM,
            # No traffic is not an incident.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        self.alarms.append(alarm)
        return alarm
