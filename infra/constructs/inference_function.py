"""The inference Lambda function: the shared core plus its thin entry, behind a ``live`` alias."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import jsii
from aws_cdk import Annotations, BundlingOptions, DockerImage, Duration, ILocalBundling, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct
from modelship.core.identity import METRICS_NAMESPACE, SERVICE_NAME
from modelship.core.settings import PRELOAD_ENV, TRUSTED_KEYS_ENV

from infra.constructs.model_bucket import MODELS_PREFIX
from infra.constructs.prebuilt_layer import LAMBDA_RUNTIME, lambda_architecture
from infra.nag import acknowledge, nag_resource_id
from layers.function_asset import ASSET_EXCLUDES, python313_or_reason, stage_function_code

HANDLER = "inference.app.handler"  # docs/contracts.md
LIVE_ALIAS_NAME = "live"


def role_writing_only_to(
    scope: Construct, construct_id: str, log_group: logs.ILogGroup, *, description: str
) -> iam.Role:
    """A Lambda execution role with no managed policies: it may write to ``log_group`` and nothing else
    until the caller grants more."""
    role = iam.Role(
        scope, construct_id, assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"), description=description
    )
    role.add_to_policy(
        iam.PolicyStatement(
            sid="WriteOwnLogGroup",
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[log_group.log_group_arn],
        )
    )
    return role


@jsii.implements(ILocalBundling)
class CompiledFunctionCode:
    """Stages functions/ with python3.13 bytecode (layers/function_asset.py), here, without Docker. CDK
    bundles once per source fingerprint, however many stacks use the asset."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.without_bytecode_because = ""

    def try_bundle(self, output_dir: str, options: BundlingOptions) -> bool:
        python313, self.without_bytecode_because = python313_or_reason()
        stage_function_code(self.source, Path(output_dir), python313)
        return True


@dataclass(frozen=True)
class InferenceFunctionProps:
    """What the function needs from the rest of the app."""

    functions_dir: Path
    layers: Sequence[lambda_.ILayerVersion]
    model_bucket: s3.IBucket
    architecture: str
    memory_mb: int
    timeout_seconds: int
    preload: Sequence[str]
    reserved_concurrency: int | None
    snapstart: bool
    log_retention: logs.RetentionDays
    removal_policy: RemovalPolicy
    # Warm environments on the live alias; with a max, Application Auto Scaling tracks their utilization.
    provisioned_concurrency: int | None = None
    provisioned_concurrency_max: int | None = None
    provisioned_concurrency_target: float = 0.7
    # KMS key ARNs a version's manifest must be signed by; empty: signatures are not required.
    trusted_keys: Sequence[str] = ()


class InferenceFunction(Construct):
    """The function, its log group, its least-privilege role, and a ``live`` alias on the current version."""

    def __init__(self, scope: Construct, construct_id: str, *, props: InferenceFunctionProps) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self, "Logs", retention=props.log_retention, removal_policy=props.removal_policy
        )
        self.role = self._least_privilege_role(props.model_bucket, props.trusted_keys)

        environment = {
            "MODELSHIP_STORE": f"s3://{props.model_bucket.bucket_name}",
            # Half the function's memory for loaded sessions; the rest is the runtime, numpy, onnxruntime's
            # arenas and request/response copies. The cache evicts before Lambda runs out of memory.
            "MODELSHIP_SESSION_MEMORY_MB": str(props.memory_mb // 2),
            # Half the function's timeout for one onnxruntime run: a runaway model is stopped with a 504
            # from the function, leaving the other half for fetching and loading the model first.
            "MODELSHIP_INFERENCE_TIMEOUT_SECONDS": str(max(1, props.timeout_seconds // 2)),
            "MODELSHIP_LOAD_TIMEOUT_SECONDS": str(max(1, props.timeout_seconds // 2)),
            "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            "POWERTOOLS_LOG_LEVEL": "INFO",
            # Requests and responses carry tensors (megabytes): never copy them into logs or X-Ray
            # metadata (64 KB per segment).
            "POWERTOOLS_LOGGER_LOG_EVENT": "false",
            "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
            "POWERTOOLS_TRACER_CAPTURE_ERROR": "true",
        }
        if props.preload:
            # Loaded during init, so with SnapStart the models are inside the snapshot.
            environment[PRELOAD_ENV] = ",".join(props.preload)
        if props.trusted_keys:
            # Resolved once, during init, through kms:GetPublicKey: an unreachable or unusable key fails
            # the init (and with a canary, the pre-traffic hook), never a request.
            environment[TRUSTED_KEYS_ENV] = ",".join(props.trusted_keys)

        bundler = CompiledFunctionCode(props.functions_dir)
        self.function = lambda_.Function(
            self,
            "Function",
            description="modelship inference (Open Inference Protocol over ONNX Runtime)",
            runtime=LAMBDA_RUNTIME,
            architecture=lambda_architecture(props.architecture),
            handler=HANDLER,
            code=self._compiled_code(bundler),
            layers=list(props.layers),
            memory_size=props.memory_mb,
            timeout=Duration.seconds(props.timeout_seconds),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            role=self.role,
            environment=environment,
            reserved_concurrent_executions=props.reserved_concurrency,
            snap_start=lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS if props.snapstart else None,
        )
        if bundler.without_bytecode_because:  # bundled just now, when the function bound its code
            Annotations.of(self.function).add_warning_v2(
                "modelship:functionBytecode",
                "the function's code ships without .pyc files, so Lambda compiles modelship at every cold "
                f"start: {bundler.without_bytecode_because}",
            )
        self.version = self.function.current_version
        self.alias = lambda_.Alias(
            self,
            "LiveAlias",
            alias_name=LIVE_ALIAS_NAME,
            version=self.version,
            provisioned_concurrent_executions=props.provisioned_concurrency,
        )
        if props.provisioned_concurrency is not None and props.provisioned_concurrency_max is not None:
            # Between the provisioned floor and the max, keeping ProvisionedConcurrencyUtilization near
            # the target; Application Auto Scaling's service-linked role does the scaling.
            scaling = self.alias.add_auto_scaling(
                min_capacity=props.provisioned_concurrency, max_capacity=props.provisioned_concurrency_max
            )
            scaling.scale_on_utilization(utilization_target=props.provisioned_concurrency_target)
        if props.snapstart:
            # CDK warns because SnapStart applies only to published versions: we publish one on every
            # change (current_version) and API Gateway calls it through the alias, never $LATEST.
            Annotations.of(self.function).acknowledge_warning(
                "@aws-cdk/aws-lambda:snapStartRequirePublish",
                "current_version publishes a version on every deployment and the live alias targets it",
            )

        self._acknowledge_findings(props.model_bucket)

    @staticmethod
    def _compiled_code(bundler: CompiledFunctionCode) -> lambda_.Code:
        return lambda_.Code.from_asset(
            str(bundler.source),
            exclude=list(ASSET_EXCLUDES),
            # Never pulled: local bundling always succeeds, and no Docker engine is needed.
            bundling=BundlingOptions(
                image=DockerImage.from_registry("local-bundling-only"),
                # jsii's stub spells the options as keywords, but the kernel passes them as one struct.
                local=cast(ILocalBundling, bundler),
            ),
        )

    def _acknowledge_findings(self, bucket: s3.IBucket) -> None:
        acknowledge(
            self.function,
            "Serverless-LambdaDLQ",
            "Invoked only synchronously by API Gateway: the caller receives every error as an HTTP "
            "response, so there is no asynchronous event to dead-letter.",
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM5",
            "X-Ray PutTraceSegments/PutTelemetryRecords (added by active tracing) support no resource-level "
            "permissions, so AWS requires Resource '*' for them.",
            applies_to=["Resource::*"],
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM5",
            "Read-only access to every model object: s3:GetObject on the model bucket's models/ prefix, "
            "which is exactly the store layout of docs/contracts.md (models/<name>/<version>/...).",
            applies_to=[f"Resource::{nag_resource_id(self, self.models_objects_arn(bucket))}"],
        )
        for rule in ("AwsSolutions-L1", "Serverless-LambdaLatestVersion"):
            acknowledge(
                self.function,
                rule,
                "The runtime is pinned to python3.13 on purpose: the ONNX layer is built and smoke-tested "
                "for the cp313 ABI with 3.13 .pyc files; moving to 3.14 is a deliberate, re-tested change.",
            )

    @staticmethod
    def models_objects_arn(bucket: s3.IBucket) -> str:
        return bucket.arn_for_objects(f"{MODELS_PREFIX}*")

    def _least_privilege_role(self, bucket: s3.IBucket, trusted_keys: Sequence[str]) -> iam.Role:
        """A role with no managed policies: its own log group, models/ read-only, X-Ray (from tracing), and
        the public keys of the trusted signing keys when there are any."""
        role = role_writing_only_to(
            self,
            "Role",
            self.log_group,
            description="modelship inference: read models/ in the model bucket, write its own logs",
        )
        # The bucket is named, not owned: should a retained bucket be deleted and its name taken by
        # another account, s3:ResourceAccount keeps the function from reading that account's "models".
        same_account = {"s3:ResourceAccount": Stack.of(self).account}
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadModels",
                actions=["s3:GetObject"],
                resources=[self.models_objects_arn(bucket)],
                conditions={"StringEquals": same_account},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListModels",
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                # Listing is allowed only for keys under models/ (resolving "latest", `modelship list`).
                conditions={"StringLike": {"s3:prefix": [f"{MODELS_PREFIX}*"]}, "StringEquals": same_account},
            )
        )
        if trusted_keys:
            # The public half only, of exactly these keys (ARNs, never aliases: infra/config.py).
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="ReadTrustedPublicKeys", actions=["kms:GetPublicKey"], resources=list(trusted_keys)
                )
            )
        return role
