"""The S3 model store: a versioned, private, SSL-only bucket, with server access logs kept apart."""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

# docs/contracts.md: models live under <prefix>/models/<name>/<version>/; we deploy with no prefix.
MODELS_PREFIX = "models/"
# Old object versions are kept long enough to roll a model back after a bad push, then expire.
NONCURRENT_VERSION_DAYS = 30
NONCURRENT_VERSIONS_KEPT = 3
ACCESS_LOG_RETENTION_DAYS = 365


def model_bucket_name(stage: str) -> str:
    """The model bucket's name, known to every stack without a cross-stack export.

    ``modelship-<stage>-models-<account>-<region>``: unique per stage, account and region, readable in
    the console, and at most 61 characters for a 16-character stage (S3 allows 63). Because the inference
    stack derives the same name, its IAM policy names the exact bucket ARN and the two stacks can be
    deployed, updated and torn down without export locks.
    """
    return f"modelship-{stage}-models-{Aws.ACCOUNT_ID}-{Aws.REGION}"


class ModelBucket(Construct):
    """The model bucket and the bucket that receives its server access logs.

    Encryption is SSE-S3 (S3-managed keys), chosen over SSE-KMS: every cold start fetches a model, and
    SSE-KMS would add a KMS Decrypt call per GET (latency, request cost, a shared KMS request quota) and
    a key policy to manage. What SSE-KMS would buy is a second grant (kms:Decrypt) and audited key use;
    access here is already limited by IAM to the function's read-only grant on models/. A team whose
    models are confidential should switch to a customer-managed key. The access-log bucket must be
    SSE-S3 in any case: S3 server access logging cannot deliver to an SSE-KMS bucket.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, bucket_name: str, removal_policy: RemovalPolicy
    ) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = _private_bucket(
            self,
            "AccessLogs",
            removal_policy=removal_policy,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(ACCESS_LOG_RETENTION_DAYS))
            ],
        )
        self.bucket = _private_bucket(
            self,
            "Models",
            bucket_name=bucket_name,
            removal_policy=removal_policy,
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-noncurrent-model-versions",
                    noncurrent_version_expiration=Duration.days(NONCURRENT_VERSION_DAYS),
                    noncurrent_versions_to_retain=NONCURRENT_VERSIONS_KEPT,
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                )
            ],
        )


def _private_bucket(
    scope: Construct,
    construct_id: str,
    *,
    removal_policy: RemovalPolicy,
    lifecycle_rules: list[s3.LifecycleRule],
    bucket_name: str | None = None,
    versioned: bool = False,
    server_access_logs_bucket: s3.IBucket | None = None,
) -> s3.Bucket:
    """A bucket nobody outside the account can read, reachable over TLS 1.2+ only."""
    return s3.Bucket(
        scope,
        construct_id,
        bucket_name=bucket_name,
        encryption=s3.BucketEncryption.S3_MANAGED,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        enforce_ssl=True,
        minimum_tls_version=1.2,
        versioned=versioned,
        server_access_logs_bucket=server_access_logs_bucket,
        server_access_logs_prefix="model-bucket/" if server_access_logs_bucket else None,
        lifecycle_rules=lifecycle_rules,
        # A throwaway stage is deleted with its data. No auto-delete custom resource (a Lambda function of
        # its own) is added, so teardown also works where only our function can run (LocalStack).
        removal_policy=removal_policy,
    )
