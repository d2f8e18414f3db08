"""Canary releases of the ``live`` alias through CodeDeploy, rolled back by the alarms a client would feel.

Every deployment publishes a new version; with a release, CloudFormation hands the alias update to
CodeDeploy (the alias's ``CodeDeployLambdaAliasUpdate`` policy). CodeDeploy first runs the pre-traffic
hook (``functions/pretraffic/hook.py``: one smoke inference on the new version), then shifts traffic by
the chosen configuration, and rolls the alias back if the hook fails or a gating alarm fires meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_codedeploy as codedeploy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.config import LAMBDA_DEPLOYMENT_CONFIGS
from infra.constructs.inference_function import InferenceFunction, role_writing_only_to
from infra.constructs.prebuilt_layer import lambda_architecture
from infra.nag import acknowledge, nag_resource_id
from layers.function_asset import ASSET_EXCLUDES

# The hook's folder under functions/: its own asset, left out of the inference function's.
PRETRAFFIC_DIR = "pretraffic"
HOOK_HANDLER = "hook.handler"
# The hook needs boto3 and the standard library only (what every runtime ships): the newest runtime.
HOOK_RUNTIME = lambda_.Runtime.PYTHON_3_14
# One invoke of the new version (its timeout is at most 28 s, plus a cold start) and one report.
HOOK_TIMEOUT = Duration.seconds(60)
# The environment the hook reads (functions/pretraffic/hook.py; tests/infra hold the two equal).
TARGET_VERSION_ENV = "MODELSHIP_TARGET_VERSION_ARN"
SMOKE_MODEL_ENV = "MODELSHIP_SMOKE_MODEL"
# The managed policy CDK gives the deployment group's service role.
CODEDEPLOY_LAMBDA_POLICY = "AWSCodeDeployRoleForLambdaLimited"


def lambda_deployment_config(name: str) -> codedeploy.ILambdaDeploymentConfig:
    """CodeDeploy's predefined Lambda configuration ``CodeDeployDefault.<name>`` (infra/config.py)."""
    config: codedeploy.ILambdaDeploymentConfig = getattr(
        codedeploy.LambdaDeploymentConfig, LAMBDA_DEPLOYMENT_CONFIGS[name]
    )
    return config


@dataclass(frozen=True)
class CanaryReleaseProps:
    inference: InferenceFunction
    deployment_config: str
    alarms: Sequence[cloudwatch.IAlarm]
    # The bundled iris classifier's name (or name:version) in the store; None: no pre-traffic hook.
    smoke_model: str | None
    functions_dir: Path
    architecture: str
    log_retention: logs.RetentionDays
    removal_policy: RemovalPolicy


class CanaryRelease(Construct):
    """A CodeDeploy application and deployment group for the ``live`` alias, and the pre-traffic hook."""

    def __init__(self, scope: Construct, construct_id: str, *, props: CanaryReleaseProps) -> None:
        super().__init__(scope, construct_id)
        self.hook = self._hook(props) if props.smoke_model is not None else None
        self.deployment_group = codedeploy.LambdaDeploymentGroup(
            self,
            "DeploymentGroup",
            alias=props.inference.alias,
            deployment_config=lambda_deployment_config(props.deployment_config),
            alarms=list(props.alarms),
            auto_rollback=codedeploy.AutoRollbackConfig(failed_deployment=True, deployment_in_alarm=True),
            # Grants the hook codedeploy:PutLifecycleEventHookExecutionStatus on this group alone, and
            # CodeDeploy's role lambda:InvokeFunction on the hook alone.
            pre_hook=self.hook,
        )
        acknowledge(
            self.deployment_group.role,
            "AwsSolutions-IAM4",
            "AWSCodeDeployRoleForLambdaLimited is AWS's own policy for CodeDeploy's Lambda releases, its "
            "narrow variant (update aliases, read alarms and provisioned concurrency); CDK attaches it to "
            "the group's service role, and AWS keeps it in step with what CodeDeploy needs.",
            applies_to=[
                f"Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/{CODEDEPLOY_LAMBDA_POLICY}"
            ],
        )
        if self.hook is not None:
            self._acknowledge_findings(self.hook)

    def _acknowledge_findings(self, hook: lambda_.Function) -> None:
        acknowledge(
            self.deployment_group.role,
            "AwsSolutions-IAM5",
            "CDK's grant to CodeDeploy's role of lambda:InvokeFunction on the pre-traffic hook covers the "
            "hook's qualified ARNs (<hook>:*) too: one function, the hook, and nothing else.",
            applies_to=[f"Resource::{nag_resource_id(self, f'{hook.function_arn}:*')}"],
        )
        acknowledge(
            hook,
            "Serverless-LambdaDLQ",
            "CodeDeploy waits for the hook's verdict and fails the release (rolling the alias back) when "
            "none comes within its timeout, so a lost invocation cannot let a version through; a "
            "dead-lettered lifecycle event could not be replayed once the release has ended.",
        )
        acknowledge(
            hook,
            "Serverless-LambdaTracing",
            "The hook runs once per release and logs its whole verdict (version, answer, status); the "
            "function it calls is traced itself, so tracing the hook would only add X-Ray's wildcard grant.",
        )

    def _hook(self, props: CanaryReleaseProps) -> lambda_.Function:
        log_group = logs.LogGroup(
            self, "HookLogs", retention=props.log_retention, removal_policy=props.removal_policy
        )
        role = role_writing_only_to(
            self,
            "HookRole",
            log_group,
            description="modelship pre-traffic hook: invoke the new version, report to CodeDeploy",
        )
        version = props.inference.version
        # The version being released, not the function: the hook may call nothing else.
        role.add_to_policy(
            iam.PolicyStatement(
                sid="InvokeTheNewVersion", actions=["lambda:InvokeFunction"], resources=[version.function_arn]
            )
        )
        return lambda_.Function(
            self,
            "PreTrafficHook",
            description="modelship pre-traffic hook: one smoke inference on the new version",
            runtime=HOOK_RUNTIME,
            architecture=lambda_architecture(props.architecture),
            handler=HOOK_HANDLER,
            code=lambda_.Code.from_asset(
                str(props.functions_dir / PRETRAFFIC_DIR), exclude=list(ASSET_EXCLUDES)
            ),
            memory_size=256,
            timeout=HOOK_TIMEOUT,
            log_group=log_group,
            role=role,
            environment={TARGET_VERSION_ENV: version.function_arn, SMOKE_MODEL_ENV: str(props.smoke_model)},
        )
