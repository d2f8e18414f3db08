"""The inference API stack: layers, the function behind a ``live`` alias, the REST API and alarms."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.config import LOG_RETENTION_NAMES, DeployConfig
from infra.constructs.alarms import InferenceAlarms, InferenceAlarmsProps
from infra.constructs.dashboard import OperationsDashboard, OperationsDashboardProps
from infra.constructs.inference_api import InferenceApi, InferenceApiProps
from infra.constructs.inference_function import InferenceFunction, InferenceFunctionProps
from infra.constructs.model_bucket import model_bucket_name
from infra.constructs.prebuilt_layer import PrebuiltLayer
from infra.constructs.release import CanaryRelease, CanaryReleaseProps


@dataclass(frozen=True)
class LayerZips:
    """The two layer archives built by ``layers/build_layer.py`` for the configured architecture."""

    onnx: Path
    deps: Path


class InferenceApiStack(Stack):
    """Everything that serves requests; stateless, so it can be replaced freely."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeployConfig,
        layer_zips: LayerZips,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            description=f"modelship {config.stage}: inference function and REST API",
            **kwargs,
        )
        # The bucket belongs to the model-store stack: its name is derived, not exported (model_bucket_name).
        model_bucket = s3.Bucket.from_bucket_name(self, "ModelBucket", model_bucket_name(config.stage))
        # Logs are throwaway with the stage; in a kept stage they outlive a stack replacement.
        removal_policy = RemovalPolicy.DESTROY if config.is_throwaway else RemovalPolicy.RETAIN
        log_retention = logs.RetentionDays[LOG_RETENTION_NAMES[config.log_retention_days]]

        onnx_layer = PrebuiltLayer(
            self,
            "OnnxLayer",
            zip_path=layer_zips.onnx,
            architecture=config.architecture,
            purpose="onnxruntime+numpy",
        )
        deps_layer = PrebuiltLayer(
            self,
            "DepsLayer",
            zip_path=layer_zips.deps,
            architecture=config.architecture,
            purpose="runtime deps",
        )
        self.inference = InferenceFunction(
            self,
            "Inference",
            props=InferenceFunctionProps(
                functions_dir=config.functions_dir,
                layers=[onnx_layer.layer_version, deps_layer.layer_version],
                model_bucket=model_bucket,
                architecture=config.architecture,
                memory_mb=config.memory_mb,
                timeout_seconds=config.timeout_seconds,
                preload=config.preload,
                reserved_concurrency=config.reserved_concurrency,
                snapstart=config.snapstart,
                log_retention=log_retention,
                removal_policy=removal_policy,
                provisioned_concurrency=config.provisioned_concurrency,
                provisioned_concurrency_max=config.provisioned_concurrency_max,
                provisioned_concurrency_target=config.provisioned_concurrency_target,
                trusted_keys=config.trusted_keys,
            ),
        )
        self.api = InferenceApi(
            self,
            "Api",
            props=InferenceApiProps(
                target=self.inference.alias,
                stage_name=config.stage,
                auth=config.auth,
                throttle_rate=config.throttle_rate,
                throttle_burst=config.throttle_burst,
                log_retention=log_retention,
                removal_policy=removal_policy,
                create_cloudwatch_role=config.api_cloudwatch_role,
            ),
        )
        self.alarms = InferenceAlarms(
            self,
            "Alarms",
            props=InferenceAlarmsProps(
                function=self.inference.function,
                stage=self.api.stage,
                access_logs=self.api.access_logs,
                stage_name=config.stage,
                timeout_seconds=config.timeout_seconds,
                latency_alarm_ms=config.latency_alarm_ms,
                alarm_topic_arn=config.alarm_topic_arn,
                gates_release=config.canary is not None,
            ),
        )
        if config.canary is not None:
            self.release = CanaryRelease(
                self,
                "Release",
                props=CanaryReleaseProps(
                    inference=self.inference,
                    deployment_config=config.canary,
                    alarms=self.alarms.release_alarms,
                    smoke_model=config.canary_smoke_model,
                    functions_dir=config.functions_dir,
                    architecture=config.architecture,
                    log_retention=log_retention,
                    removal_policy=removal_policy,
                ),
            )
        if config.dashboard:
            OperationsDashboard(
                self,
                "Operations",
                props=OperationsDashboardProps(
                    dashboard_name=config.stack_name("operations"),
                    stage=self.api.stage,
                    function=self.inference.function,
                    alias=self.inference.alias,
                    has_provisioned_concurrency=config.provisioned_concurrency is not None,
                ),
            )

        CfnOutput(
            self, "EndpointUrl", value=self.api.rest_api.url, description="Base URL; the API is under v2/"
        )
        CfnOutput(self, "RestApiId", value=self.api.rest_api.rest_api_id, description="REST API id")
        CfnOutput(
            self, "ModelBucketName", value=model_bucket.bucket_name, description="Where models are pushed"
        )
        CfnOutput(self, "FunctionName", value=self.inference.function.function_name)
        CfnOutput(self, "LiveAliasArn", value=self.inference.alias.function_arn)
        if self.api.api_key is not None:
            CfnOutput(
                self,
                "ApiKeyId",
                value=self.api.api_key.key_id,
                description="aws apigateway get-api-key --include-value --api-key <id> shows the key",
            )
