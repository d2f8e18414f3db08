"""The REST API in front of the inference function: ``/v2`` and ``/v2/{proxy+}``, Lambda proxy."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aws_cdk import RemovalPolicy, Size
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.nag import acknowledge

# "*/*": API Gateway decides whether to return a Lambda proxy response as raw bytes from the request's
# first Accept header. Triton binary-extension clients do not send an Accept header naming our binary
# type, so with a narrower list their binary outputs would come back as base64 text. With "*/*" every
# response the function marks isBase64Encoded is returned raw, and JSON responses pass unchanged.
# The cost: request bodies (JSON too, which may arrive with no Content-Type at all) reach the function
# base64-encoded, so the core decodes on isBase64Encoded (pybase64: microseconds), and Lambda's 6 MB
# invoke payload caps a raw request body at about 4.4 MB.
# application/octet-stream is named as well, though "*/*" covers it on AWS: LocalStack skips wildcard
# entries when it matches binary media types, and would return binary responses as base64 text.
BINARY_MEDIA_TYPES = ("*/*", "application/octet-stream")

# API Gateway compresses (gzip or deflate) a response of at least this many bytes for a client whose
# Accept-Encoding takes it, unless the function already did and said so with Content-Encoding: the same
# threshold as the doors' (modelship.doors.compression.MIN_COMPRESSED_BYTES; infra may not import a door,
# so tests/infra holds the two equal). It also covers API Gateway's own error responses.
MIN_COMPRESSION_BYTES = 1024

# One JSON object per request. Every value is quoted: API Gateway writes "-" for a missing number, and
# the format itself must parse as JSON (cdk-nag's structured-logging check does exactly that).
ACCESS_LOG_FORMAT = json.dumps(
    {
        "requestId": "$context.requestId",
        "extendedRequestId": "$context.extendedRequestId",
        "requestTime": "$context.requestTimeEpoch",
        "ip": "$context.identity.sourceIp",
        "caller": "$context.identity.caller",
        "userArn": "$context.identity.userArn",
        "apiKeyId": "$context.identity.apiKeyId",
        "userAgent": "$context.identity.userAgent",
        "httpMethod": "$context.httpMethod",
        "path": "$context.path",
        "resourcePath": "$context.resourcePath",
        "protocol": "$context.protocol",
        "status": "$context.status",
        "responseLength": "$context.responseLength",
        "responseLatency": "$context.responseLatency",
        "integrationLatency": "$context.integrationLatency",
        "integrationStatus": "$context.integrationStatus",
        "errorType": "$context.error.responseType",
        "errorMessage": "$context.error.message",
        "xrayTraceId": "$context.xrayTraceId",
    },
    separators=(",", ":"),
)

# API Gateway's own errors (throttled, unauthorised, unknown route) use the Open Inference Protocol's
# error body, like the function's: clients parse one shape.
GATEWAY_ERROR_TEMPLATE = {"application/json": '{"error": $context.error.messageString}'}


@dataclass(frozen=True)
class InferenceApiProps:
    """How the API is exposed."""

    target: lambda_.IFunction  # the ``live`` alias
    stage_name: str
    auth: str  # "iam" | "api_key"
    throttle_rate: float
    throttle_burst: int
    log_retention: logs.RetentionDays
    removal_policy: RemovalPolicy
    create_cloudwatch_role: bool


class InferenceApi(Construct):
    """REST API, access-logged in JSON, traced, throttled, with IAM (default) or API-key auth."""

    def __init__(self, scope: Construct, construct_id: str, *, props: InferenceApiProps) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = logs.LogGroup(
            self, "AccessLogs", retention=props.log_retention, removal_policy=props.removal_policy
        )
        if props.auth == "iam":
            method_options = apigw.MethodOptions(authorization_type=apigw.AuthorizationType.IAM)
        else:
            method_options = apigw.MethodOptions(
                authorization_type=apigw.AuthorizationType.NONE, api_key_required=True
            )

        self.rest_api = apigw.RestApi(
            self,
            "RestApi",
            # API Gateway metrics (and so the alarms) are keyed by API name: it must be unique per stage.
            rest_api_name=f"modelship-{props.stage_name}",
            description="modelship: Open Inference Protocol (KServe v2) over HTTPS",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            binary_media_types=list(BINARY_MEDIA_TYPES),
            min_compression_size=Size.bytes(MIN_COMPRESSION_BYTES),
            # API Gateway writes execution and access logs through one role per account and region.
            cloud_watch_role=props.create_cloudwatch_role,
            # Retained: other APIs in the account and region rely on the same account-level setting.
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN if props.create_cloudwatch_role else None,
            default_method_options=method_options,
            deploy_options=apigw.StageOptions(
                stage_name=props.stage_name,
                throttling_rate_limit=props.throttle_rate,
                throttling_burst_limit=props.throttle_burst,
                tracing_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # full request logging would copy tensors into CloudWatch
                metrics_enabled=False,  # per-method metrics add cost; the stage metrics feed the alarms
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=apigw.AccessLogFormat.custom(ACCESS_LOG_FORMAT),
            ),
        )
        for response_type in (apigw.ResponseType.DEFAULT_4_XX, apigw.ResponseType.DEFAULT_5_XX):
            self.rest_api.add_gateway_response(
                f"Gateway{response_type.response_type}", type=response_type, templates=GATEWAY_ERROR_TEMPLATE
            )

        # The test-invoke permission would let the console's "Test" button call the function too.
        integration = apigw.LambdaIntegration(props.target, proxy=True, allow_test_invoke=False)
        self.v2 = self.rest_api.root.add_resource("v2")
        self.v2.add_method("ANY", integration)
        self.proxy = self.v2.add_proxy(default_integration=integration, any_method=True)

        self.api_key: apigw.IApiKey | None = None
        if props.auth == "api_key":
            self.api_key = self.rest_api.add_api_key("ApiKey", description="modelship inference client key")
            usage_plan = self.rest_api.add_usage_plan(
                "UsagePlan",
                description="modelship inference clients",
                throttle=apigw.ThrottleSettings(
                    rate_limit=props.throttle_rate, burst_limit=props.throttle_burst
                ),
            )
            usage_plan.add_api_key(self.api_key)
            usage_plan.add_api_stage(stage=self.rest_api.deployment_stage)

        self._acknowledge_findings(props)

    @property
    def stage(self) -> apigw.Stage:
        return self.rest_api.deployment_stage

    def _acknowledge_findings(self, props: InferenceApiProps) -> None:
        acknowledge(
            self.rest_api,
            "AwsSolutions-APIG2",
            "Bodies are Open Inference Protocol JSON or Triton binary tensors; API Gateway models cannot "
            "describe the binary form, so the function validates every request and answers 4xx itself.",
        )
        acknowledge(
            self.rest_api,
            "AwsSolutions-APIG3",
            "No WAF web ACL is created here: callers are authenticated (SigV4 or API key) and throttled per "
            "stage; attach the organisation's WAF (e.g. via Firewall Manager) where one is mandated.",
        )
        if props.auth == "iam":
            acknowledge(
                self.rest_api,
                "AwsSolutions-COG4",
                "Methods use AWS_IAM (SigV4) authorization: callers are AWS principals (services, CI, the "
                "modelship CLI with --sigv4), not end users of a Cognito user pool.",
            )
        else:
            api_key_reason = (
                "auth=api_key was chosen explicitly for clients that cannot sign requests: every method "
                "requires an API key tied to a throttled usage plan instead of an authorizer."
            )
            acknowledge(self.rest_api, "AwsSolutions-APIG4", api_key_reason)
            acknowledge(self.rest_api, "AwsSolutions-COG4", api_key_reason)
        if props.create_cloudwatch_role:
            acknowledge(
                self.rest_api,
                "AwsSolutions-IAM4",
                "API Gateway's account-level logging role uses the AWS managed policy made for exactly that "
                "purpose (AmazonAPIGatewayPushToCloudWatchLogs); it grants nothing beyond writing logs.",
                applies_to=[
                    "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
                ],
            )
