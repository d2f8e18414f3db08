"""The model-store stack: the S3 bucket models are pushed to and served from."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from constructs import Construct

from infra.config import DeployConfig
from infra.constructs.model_bucket import ModelBucket, model_bucket_name


class ModelStoreStack(Stack):
    """Kept apart from the API so the models (stateful, RETAINed) outlive any API redeployment."""

    def __init__(self, scope: Construct, construct_id: str, *, config: DeployConfig, **kwargs: Any) -> None:
        super().__init__(
            scope,
            construct_id,
            description=f"modelship {config.stage}: S3 model store",
            **kwargs,
        )
        removal_policy = RemovalPolicy.DESTROY if config.is_throwaway else RemovalPolicy.RETAIN
        self.model_bucket = ModelBucket(
            self, "ModelStore", bucket_name=model_bucket_name(config.stage), removal_policy=removal_policy
        )
        self.bucket = self.model_bucket.bucket
        CfnOutput(self, "ModelBucketName", value=self.bucket.bucket_name, description="The model bucket")
        CfnOutput(
            self,
            "ModelStoreUri",
            value=f"s3://{self.bucket.bucket_name}",
            description="Pass to `modelship push --store` and `modelship list --store`",
        )
