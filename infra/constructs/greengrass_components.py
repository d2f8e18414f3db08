"""Greengrass v2 component versions from a ``modelship edge package`` directory, and their upload.

The recipes are the packaged ones, byte for byte in meaning: each ``CfnComponentVersion`` takes the
package's recipe as its inline recipe (JSON, which Greengrass accepts as well as YAML), so what the edge
stack publishes is what ``modelship edge package`` wrote and checked. The inference component's zip is
copied from the package into the store bucket under ``<prefix>/components/<name>/<version>/``, the key its
recipe names; the model components name the store's own objects under ``<prefix>/models/`` and upload
nothing. The device role (device_role.py) may read exactly those two prefixes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path, PurePosixPath

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_greengrassv2 as greengrass
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_s3_deployment as s3_deployment
from constructs import Construct

from edge_greengrass.packaging import Component, Package
from edge_greengrass.recipes import COMPONENTS_PREFIX
from infra.config import ConfigError
from infra.constructs.model_bucket import MODELS_PREFIX
from infra.nag import acknowledge, nag_resource_id

# BucketDeployment's limit on its destination prefix.
MAX_DESTINATION_PREFIX_LENGTH = 104
UPLOAD_LOG_RETENTION = logs.RetentionDays.ONE_MONTH


def store_key(prefix: str, key: str) -> str:
    """A key under the store's prefix (the store may have none)."""
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def models_key_prefix(prefix: str) -> str:
    """``<prefix>/models/``: the model components' artifacts, the store's own objects."""
    return store_key(prefix, MODELS_PREFIX)


def components_key_prefix(prefix: str) -> str:
    """``<prefix>/components/``: the artifacts packaged with a component (the inference zip)."""
    return store_key(prefix, f"{COMPONENTS_PREFIX}/")


def _split_s3_uri(uri: str) -> tuple[str, str] | None:
    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class GreengrassComponents(Construct):
    """One ``AWS::GreengrassV2::ComponentVersion`` per packaged component, after its artifacts' upload.

    ``self.versions`` maps each component name to its resource. Every artifact must be an object of the
    package's store bucket under ``models/`` or ``components/`` (the prefixes the device role may read),
    and every packaged file must sit at the key its recipe names: otherwise synthesis stops with the
    reason, instead of a device failing its download with a 403 or a digest mismatch.
    """

    def __init__(self, scope: Construct, construct_id: str, *, package: Package) -> None:
        super().__init__(scope, construct_id)
        self.package = package
        self.store_bucket = s3.Bucket.from_bucket_name(self, "StoreBucket", package.store_bucket)
        self.versions: dict[str, greengrass.CfnComponentVersion] = {}
        self.uploads: dict[str, list[s3_deployment.BucketDeployment]] = {}
        self._upload_logs: logs.LogGroup | None = None
        self._upload_role: iam.Role | None = None
        self._upload_objects: list[str] = []

        for component in package.components:
            self._check_artifacts(component)
            uploads = self._upload(component)
            version = greengrass.CfnComponentVersion(
                self,
                component.name,
                inline_recipe=json.dumps(component.recipe, sort_keys=True),
            )
            for upload in uploads:
                version.node.add_dependency(upload)
            self.versions[component.name] = version
            self.uploads[component.name] = uploads

        # The inference component's HARD dependencies are published first, so a deployment never names a
        # component whose dependency is still being created.
        inference = self.versions[package.inference.name]
        for name, version in self.versions.items():
            if name != package.inference.name:
                inference.node.add_dependency(version)
        self._acknowledge_findings()

    @property
    def inference(self) -> greengrass.CfnComponentVersion:
        return self.versions[self.package.inference.name]

    def _check_artifacts(self, component: Component) -> None:
        allowed = (
            models_key_prefix(self.package.store_prefix),
            components_key_prefix(self.package.store_prefix),
        )
        for artifact in component.artifacts:
            location = _split_s3_uri(artifact.uri)
            if location is None:
                continue  # greengrass: or docker: artifacts need no store access
            bucket, key = location
            if bucket != self.package.store_bucket or not key.startswith(allowed):
                raise ConfigError(
                    f"edge package: {component.name} {component.version} names {artifact.uri}, outside "
                    f"s3://{self.package.store_bucket}/{allowed[0]} and .../{allowed[1]}: the device role "
                    "could not read it"
                )
            if artifact.local_path is not None and not key.startswith(allowed[1]):
                raise ConfigError(
                    f"edge package: the packaged file {artifact.local_path} would be uploaded to "
                    f"{artifact.uri}, outside s3://{self.package.store_bucket}/{allowed[1]}"
                )

    def _upload(self, component: Component) -> list[s3_deployment.BucketDeployment]:
        """One BucketDeployment per folder of packaged files: its files land at the keys the recipe names."""
        folders: dict[tuple[Path, str], set[str]] = defaultdict(set)
        for artifact in component.artifacts:
            location = _split_s3_uri(artifact.uri)
            if artifact.local_path is None or location is None:
                continue
            key = PurePosixPath(location[1])
            if key.name != artifact.local_path.name:
                raise ConfigError(
                    f"edge package: {artifact.local_path} is named {artifact.uri} in the recipe of "
                    f"{component.name}: the file names differ"
                )
            folders[(artifact.local_path.parent, f"{key.parent}/")].add(key.name)

        uploads = []
        for index, ((folder, destination), names) in enumerate(sorted(folders.items())):
            # The folder is uploaded whole: anything else in it would land in the store unannounced.
            present = {path.name for path in folder.iterdir()}
            if present != names:
                raise ConfigError(
                    f"edge package: {folder} holds {sorted(present)}, but the recipe of {component.name} "
                    f"names {sorted(names)}; repackage with `modelship edge package`"
                )
            if len(destination) > MAX_DESTINATION_PREFIX_LENGTH:
                raise ConfigError(
                    f"edge package: the artifact prefix {destination!r} is longer than the "
                    f"{MAX_DESTINATION_PREFIX_LENGTH} characters BucketDeployment accepts"
                )
            construct_id = f"Upload{component.name}{index or ''}"
            # A folder asset: CDK zips it and the upload unzips it, so each file arrives with its own bytes
            # (a .zip file given directly would be unpacked instead).
            asset = s3_assets.Asset(self, f"{construct_id}Asset", path=str(folder))
            self._allow_upload(asset, destination)
            uploads.append(
                s3_deployment.BucketDeployment(
                    self,
                    construct_id,
                    sources=[s3_deployment.Source.bucket(asset.bucket, asset.s3_object_key)],
                    destination_bucket=self.store_bucket,
                    destination_key_prefix=destination,
                    # Other versions' artifacts stay: devices being rolled back may still download them.
                    prune=False,
                    retain_on_delete=True,
                    log_group=self.upload_logs,
                    role=self.upload_role.without_policy_updates(),
                )
            )
        return uploads

    @property
    def upload_role(self) -> iam.Role:
        """The upload function's role, shared by every upload (BucketDeployment's function is one per stack).

        BucketDeployment would grant its function read-write on the whole destination bucket, deletes
        included: the model store. It gets this role without policy updates instead, which may read its
        own asset object, list and write the artifact prefixes it uploads to, and write its own logs.
        """
        if self._upload_role is None:
            self._upload_role = iam.Role(
                self,
                "UploadRole",
                assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                description="modelship edge: copy the packaged component artifacts into the model store",
            )
            self._upload_role.add_to_policy(
                iam.PolicyStatement(
                    sid="WriteOwnLogGroup",
                    actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                    resources=[self.upload_logs.log_group_arn],
                )
            )
        return self._upload_role

    @property
    def upload_logs(self) -> logs.LogGroup:
        if self._upload_logs is None:
            self._upload_logs = logs.LogGroup(
                self, "UploadLogs", retention=UPLOAD_LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY
            )
        return self._upload_logs

    def _allow_upload(self, asset: s3_assets.Asset, destination: str) -> None:
        """``aws s3 cp`` of the asset zip, then ``aws s3 sync`` of its files to ``destination``."""
        same_account = {"s3:ResourceAccount": Stack.of(self).account}
        objects = self.store_bucket.arn_for_objects(f"{destination}*")
        self.upload_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"], resources=[asset.bucket.arn_for_objects(asset.s3_object_key)]
            )
        )
        self.upload_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self.store_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{destination}*"]}, "StringEquals": same_account},
            )
        )
        self.upload_role.add_to_policy(
            iam.PolicyStatement(
                # Multipart uploads (files above 8 MB) are PutObject too; a failed one is aborted.
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[objects],
                conditions={"StringEquals": same_account},
            )
        )
        self._upload_objects.append(objects)

    def _acknowledge_findings(self) -> None:
        if self._upload_role is None:
            return
        acknowledge(
            self._upload_role,
            "AwsSolutions-IAM5",
            "The upload writes the packaged files of one component version under its own prefix "
            "(components/<name>/<version>/), whose file names come from the package: no other key.",
            applies_to=[f"Resource::{nag_resource_id(self, arn)}" for arn in self._upload_objects],
        )
        # BucketDeployment's function is a singleton at the stack's top level, created with the first upload.
        for child in Stack.of(self).node.children:
            if not child.node.id.startswith("Custom::CDKBucketDeployment"):
                continue
            acknowledge(
                child,
                "Serverless-LambdaDLQ",
                "BucketDeployment's function is invoked only by CloudFormation as a custom resource: a "
                "failure fails the stack operation and is reported there, there is no event to dead-letter.",
            )
            acknowledge(
                child,
                "Serverless-LambdaTracing",
                "BucketDeployment's function copies one packaged zip during a deployment, called only by "
                "CloudFormation; its logs (30 days) trace it, and CDK offers no tracing option for it.",
            )
            for rule in ("AwsSolutions-L1", "Serverless-LambdaLatestVersion"):
                acknowledge(
                    child,
                    rule,
                    "The runtime of BucketDeployment's function is chosen by aws-cdk-lib with the AWS CLI "
                    "layer it bundles; it moves with CDK upgrades and cannot be set from here.",
                )
