"""The edge stack: the Greengrass v2 components of an edge package, the device role, and a deployment.

Built from the folder ``modelship edge package --out`` wrote (context ``edge_package``, ``build/edge`` by
default), so the recipes published here are the packaged ones. With ``-c thing_group_arn=...`` it also
deploys every component of the package, at its version, to that thing group; without, it publishes the
components and says the deployment was skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aws_cdk import Annotations, CfnOutput, Stack
from aws_cdk import aws_greengrassv2 as greengrass
from constructs import Construct

from edge_greengrass.packaging import Package, PackageError, read_package
from infra.config import ConfigError, DeployConfig
from infra.constructs.device_role import DeviceRole
from infra.constructs.greengrass_components import GreengrassComponents

# The deployment's policies (docs/edge.md). A failed update puts the previous configuration back.
FAILURE_HANDLING = "ROLLBACK"
# Components that subscribe to update notices may defer an update this long (the API's default, explicit).
COMPONENT_UPDATE_ACTION = "NOTIFY_COMPONENTS"
COMPONENT_UPDATE_TIMEOUT_SECONDS = 60
# The nucleus waits 20 s for configuration validation when the field is absent, the API says 30 s: say it.
CONFIGURATION_VALIDATION_TIMEOUT_SECONDS = 30
# Rollout: a few devices first, twice as many each time five succeed, never more than 50 a minute.
ROLLOUT_BASE_RATE_PER_MINUTE = 5
ROLLOUT_INCREMENT_FACTOR = 2.0
ROLLOUT_SUCCEEDED_THINGS_TO_INCREASE = 5
ROLLOUT_MAXIMUM_PER_MINUTE = 50
# Abort: once 10 devices have finished, cancel the rollout if more than 10 % failed or timed out.
ABORT_FAILURE_TYPES = ("FAILED", "TIMED_OUT")
ABORT_THRESHOLD_PERCENTAGE = 10.0
ABORT_MIN_EXECUTED_THINGS = 10
# A device's job times out after an hour: the Install step alone may take 20 minutes (a cold pip install
# of onnxruntime on a slow ARM device), plus the download of the models.
IN_PROGRESS_TIMEOUT_MINUTES = 60
DEPLOYMENT_SKIPPED = (
    "skipped: no thing_group_arn in the context; the components are published, deploy them with "
    "`cdk deploy -c thing_group_arn=arn:aws:iot:<region>:<account>:thinggroup/<name>`"
)


# An API Gateway default endpoint: https://{api id}.execute-api.{region}.amazonaws.com/{stage}[/...]
_EXECUTE_API_URL = re.compile(
    r"https://(?P<api>[a-z0-9]{10})\.execute-api\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/(?P<stage>[A-Za-z0-9_-]+)/?"
)


def cloud_invoke_arns(scope: Construct, package: Package) -> list[str]:
    """The execute-api ARNs the device role must be allowed to invoke: those of the cloud endpoint the
    package's devices sign for (``cloudAuth: sigv4``), its model routes only. A custom domain cannot be
    mapped to its API here: the stack says so, and the grant is the operator's."""
    defaults = package.inference.recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {})
    endpoint, auth = str(defaults.get("cloudEndpoint") or ""), defaults.get("cloudAuth")
    if auth != "sigv4" or not endpoint:
        return []
    match = _EXECUTE_API_URL.match(endpoint)
    if match is None:
        Annotations.of(scope).add_warning_v2(
            "modelship:cloud-endpoint-not-execute-api",
            f"cloudEndpoint {endpoint} is not an execute-api URL: grant the device role execute-api:Invoke "
            "on its API yourself, or devices' forwarded requests will be refused (403)",
        )
        return []
    stack = Stack.of(scope)
    api = (
        f"arn:{stack.partition}:execute-api:{match['region']}:{stack.account}:{match['api']}/{match['stage']}"
    )
    return [f"{api}/POST/v2/models/*", f"{api}/GET/v2/models/*"]


def read_edge_package(directory: Path) -> Package:
    """The package, checked; its problems are context problems (``modelship: ...``, exit 2)."""
    try:
        return read_package(directory)
    except PackageError as error:
        raise ConfigError(f"invalid edge package {directory}: {error}") from None


def deployment_policies() -> greengrass.CfnDeployment.DeploymentPoliciesProperty:
    return greengrass.CfnDeployment.DeploymentPoliciesProperty(
        failure_handling_policy=FAILURE_HANDLING,
        component_update_policy=greengrass.CfnDeployment.DeploymentComponentUpdatePolicyProperty(
            action=COMPONENT_UPDATE_ACTION, timeout_in_seconds=COMPONENT_UPDATE_TIMEOUT_SECONDS
        ),
        configuration_validation_policy=greengrass.CfnDeployment.DeploymentConfigurationValidationPolicyProperty(
            timeout_in_seconds=CONFIGURATION_VALIDATION_TIMEOUT_SECONDS
        ),
    )


def iot_job_configuration() -> greengrass.CfnDeployment.DeploymentIoTJobConfigurationProperty:
    return greengrass.CfnDeployment.DeploymentIoTJobConfigurationProperty(
        job_executions_rollout_config=greengrass.CfnDeployment.IoTJobExecutionsRolloutConfigProperty(
            exponential_rate=greengrass.CfnDeployment.IoTJobExponentialRolloutRateProperty(
                base_rate_per_minute=ROLLOUT_BASE_RATE_PER_MINUTE,
                increment_factor=ROLLOUT_INCREMENT_FACTOR,
                rate_increase_criteria={"NumberOfSucceededThings": ROLLOUT_SUCCEEDED_THINGS_TO_INCREASE},
            ),
            maximum_per_minute=ROLLOUT_MAXIMUM_PER_MINUTE,
        ),
        abort_config=greengrass.CfnDeployment.IoTJobAbortConfigProperty(
            criteria_list=[
                greengrass.CfnDeployment.IoTJobAbortCriteriaProperty(
                    action="CANCEL",
                    failure_type=failure_type,
                    min_number_of_executed_things=ABORT_MIN_EXECUTED_THINGS,
                    threshold_percentage=ABORT_THRESHOLD_PERCENTAGE,
                )
                for failure_type in ABORT_FAILURE_TYPES
            ]
        ),
        timeout_config=greengrass.CfnDeployment.IoTJobTimeoutConfigProperty(
            in_progress_timeout_in_minutes=IN_PROGRESS_TIMEOUT_MINUTES
        ),
    )


class EdgeStack(Stack):
    """Component versions, their uploaded artifact, the device role, and (with a thing group) a deployment."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: DeployConfig, package: Package, **kwargs: Any
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            description=f"modelship {config.stage}: Greengrass v2 components and their deployment",
            **kwargs,
        )
        self.package = package
        self.components = GreengrassComponents(self, "Components", package=package)
        self.device_role = DeviceRole(
            self,
            "DeviceRole",
            bucket=self.components.store_bucket,
            store_prefix=package.store_prefix,
            name_prefix=construct_id,
            invoke_api_arns=cloud_invoke_arns(self, package),
        )

        self.deployment: greengrass.CfnDeployment | None = None
        if config.thing_group_arn is not None:
            self.deployment = greengrass.CfnDeployment(
                self,
                "Deployment",
                target_arn=config.thing_group_arn,
                deployment_name=f"modelship-{config.stage}-edge",
                # Every component at its version: a deployment replaces the group's previous one, and any
                # component it does not list is removed from the devices.
                components={
                    component.name: greengrass.CfnDeployment.ComponentDeploymentSpecificationProperty(
                        component_version=component.version
                    )
                    for component in package.components
                },
                deployment_policies=deployment_policies(),
                iot_job_configuration=iot_job_configuration(),
            )
            for version in self.components.versions.values():
                self.deployment.node.add_dependency(version)
            CfnOutput(self, "DeploymentId", value=self.deployment.attr_deployment_id)
        else:
            Annotations.of(self).add_info(f"Greengrass deployment {DEPLOYMENT_SKIPPED}")
            CfnOutput(self, "Deployment", value=DEPLOYMENT_SKIPPED, description="The Greengrass deployment")

        CfnOutput(
            self,
            "RoleAliasName",
            value=self.device_role.role_alias_name,
            description="The nucleus's iotRoleAlias (aws.greengrass.Nucleus configuration)",
        )
        CfnOutput(
            self,
            "RoleAliasPolicyName",
            value=self.device_role.alias_policy.ref,
            description="Attach to each device certificate: it allows iot:AssumeRoleWithCertificate",
        )
        CfnOutput(self, "DeviceRoleArn", value=self.device_role.role.role_arn)
        CfnOutput(
            self,
            "InferenceComponent",
            value=f"{package.inference.name}={package.inference.version}",
            description="The inference component and its version",
        )
