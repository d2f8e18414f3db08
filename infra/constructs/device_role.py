"""The Greengrass devices' token-exchange role: read the components' artifacts, and nothing else.

A nucleus gets AWS credentials from the AWS IoT credentials provider, which assumes this role through a
role alias (``iotRoleAlias`` in the nucleus's configuration) for a device whose certificate may
``iot:AssumeRoleWithCertificate`` on that alias. With those credentials the nucleus downloads artifacts:
``s3:GetBucketLocation`` on the bucket first (a 403 there fails the deployment at once), then
``s3:GetObject``. The role may read the store's ``models/`` (the model components' artifacts, the store's
own objects) and ``components/`` (the packaged inference zip) prefixes, and no other key of the bucket.

The role grants no CloudWatch Logs or IoT data-plane access: the component serves offline and needs no
AWS call of its own; a fleet that ships its logs adds ``aws.greengrass.LogManager`` and its permissions.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.constructs.greengrass_components import components_key_prefix, models_key_prefix
from infra.nag import acknowledge, nag_resource_id

IOT_CREDENTIALS_PRINCIPAL = "credentials.iot.amazonaws.com"
# One hour, the role's default maximum session: the nucleus renews credentials before they expire.
CREDENTIAL_DURATION_SECONDS = 3600


class DeviceRole(Construct):
    """The role, its role alias, and the IoT policy that lets a device certificate use the alias."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        bucket: s3.IBucket,
        store_prefix: str,
        name_prefix: str,
        invoke_api_arns: Sequence[str] = (),
    ) -> None:
        """``invoke_api_arns``: execute-api ARNs the devices call with SigV4 (the hybrid fallback)."""
        super().__init__(scope, construct_id)
        self.artifact_objects = [
            bucket.arn_for_objects(f"{models_key_prefix(store_prefix)}*"),
            bucket.arn_for_objects(f"{components_key_prefix(store_prefix)}*"),
        ]
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal(IOT_CREDENTIALS_PRINCIPAL),
            description="modelship Greengrass devices (token exchange): read the components' artifacts",
        )
        # The bucket is named, not owned: s3:ResourceAccount keeps devices from reading a bucket of the
        # same name in another account, should ours ever be deleted and its name taken.
        same_account = {"StringEquals": {"s3:ResourceAccount": Stack.of(self).account}}
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="LocateStoreBucket",
                actions=["s3:GetBucketLocation"],
                resources=[bucket.bucket_arn],
                conditions=same_account,
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadComponentArtifacts",
                actions=["s3:GetObject"],
                resources=self.artifact_objects,
                conditions=same_account,
            )
        )
        if invoke_api_arns:
            self.role.add_to_policy(
                iam.PolicyStatement(
                    sid="InvokeCloudInferenceApi",
                    actions=["execute-api:Invoke"],
                    resources=list(invoke_api_arns),
                )
            )
        self.role_alias = iot.CfnRoleAlias(
            self,
            "RoleAlias",
            role_alias=f"{name_prefix}-TokenExchangeRoleAlias",
            role_arn=self.role.role_arn,
            credential_duration_seconds=CREDENTIAL_DURATION_SECONDS,
        )
        # Attach to each device's certificate (with its usual Greengrass IoT policy): without it, the
        # credentials provider refuses the device.
        self.alias_policy = iot.CfnPolicy(
            self,
            "RoleAliasPolicy",
            policy_name=f"{name_prefix}-TokenExchangeRoleAliasPolicy",
            policy_document={
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "iot:AssumeRoleWithCertificate",
                        "Resource": self.role_alias.attr_role_alias_arn,
                    }
                ],
            },
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM5",
            "Read-only access to the component artifacts: s3:GetObject on the store's models/ and "
            "components/ prefixes, exactly the keys the recipes name (object keys hold versions).",
            applies_to=[f"Resource::{nag_resource_id(self, arn)}" for arn in self.artifact_objects],
        )
        if invoke_api_arns:
            acknowledge(
                self.role,
                "AwsSolutions-IAM5",
                "The hybrid fallback: devices invoke the cloud API's model routes (GET and POST under "
                "/v2/models/ of its one stage), whose model names the path holds.",
                applies_to=[f"Resource::{nag_resource_id(self, arn)}" for arn in invoke_api_arns],
            )

    @property
    def role_alias_name(self) -> str:
        return self.role_alias.ref
