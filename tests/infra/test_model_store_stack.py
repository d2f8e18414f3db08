"""Template assertions on the model-store stack: a private, versioned, SSL-only, access-logged bucket."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Template

from tests.infra.conftest import resources, template

pytestmark = pytest.mark.infra

BLOCK_ALL = {
    "BlockPublicAcls": True,
    "BlockPublicPolicy": True,
    "IgnorePublicAcls": True,
    "RestrictPublicBuckets": True,
}


def buckets(store_template: Template) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """(model bucket, access-log bucket, their logical ids) told apart by versioning."""
    found = resources(store_template, "AWS::S3::Bucket")
    assert len(found) == 2
    models_id = next(
        rid for rid, bucket in found.items() if "VersioningConfiguration" in bucket["Properties"]
    )
    logs_id = next(rid for rid in found if rid != models_id)
    return found[models_id], found[logs_id], models_id, logs_id


def test_model_bucket_is_versioned_encrypted_private_and_named(store_template: Template) -> None:
    models, _, _, _ = buckets(store_template)
    props = models["Properties"]
    assert isinstance(props, dict)
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["BucketEncryption"] == {
        "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
    }
    assert props["PublicAccessBlockConfiguration"] == BLOCK_ALL
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert props["BucketName"] == {
        "Fn::Join": ["", ["modelship-prod-models-", {"Ref": "AWS::AccountId"}, "-", {"Ref": "AWS::Region"}]]
    }


def test_model_bucket_logs_to_the_access_log_bucket(store_template: Template) -> None:
    models, access_logs, _, logs_id = buckets(store_template)
    assert models["Properties"]["LoggingConfiguration"] == {
        "DestinationBucketName": {"Ref": logs_id},
        "LogFilePrefix": "model-bucket/",
    }
    assert access_logs["Properties"]["PublicAccessBlockConfiguration"] == BLOCK_ALL
    assert "LoggingConfiguration" not in access_logs["Properties"]


def test_noncurrent_model_versions_expire(store_template: Template) -> None:
    models, _, _, _ = buckets(store_template)
    rules = models["Properties"]["LifecycleConfiguration"]["Rules"]
    assert rules == [
        {
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
            "Id": "expire-noncurrent-model-versions",
            "NoncurrentVersionExpiration": {"NewerNoncurrentVersions": 3, "NoncurrentDays": 30},
            "Status": "Enabled",
        }
    ]


@pytest.mark.parametrize("which", ["models", "access_logs"])
def test_both_buckets_deny_insecure_transport(store_template: Template, which: str) -> None:
    _, _, models_id, logs_id = buckets(store_template)
    bucket_id = models_id if which == "models" else logs_id
    policies = [
        policy["Properties"]
        for policy in resources(store_template, "AWS::S3::BucketPolicy").values()
        if policy["Properties"]["Bucket"] == {"Ref": bucket_id}
    ]
    assert len(policies) == 1
    statements = policies[0]["PolicyDocument"]["Statement"]
    denies = [statement for statement in statements if statement["Effect"] == "Deny"]
    assert {"Bool": {"aws:SecureTransport": "false"}} in [deny["Condition"] for deny in denies]
    assert {"NumericLessThan": {"s3:TlsVersion": 1.2}} in [deny["Condition"] for deny in denies]
    for deny in denies:
        assert deny["Action"] == "s3:*"
        assert deny["Principal"] == {"AWS": "*"}


def test_buckets_are_retained_by_default(store_template: Template) -> None:
    for bucket in resources(store_template, "AWS::S3::Bucket").values():
        assert bucket["DeletionPolicy"] == "Retain"
        assert bucket["UpdateReplacePolicy"] == "Retain"


def test_throwaway_stage_deletes_buckets_without_an_auto_delete_function(alternate_app: App) -> None:
    store = template(alternate_app, "modelship-dev-store")
    for bucket in resources(store, "AWS::S3::Bucket").values():
        assert bucket["DeletionPolicy"] == "Delete"
    store.resource_count_is("AWS::Lambda::Function", 0)
    store.resource_count_is("Custom::S3AutoDeleteObjects", 0)


def test_store_outputs_the_bucket(store_template: Template) -> None:
    models_id = buckets(store_template)[2]
    store_template.has_output("ModelBucketName", {"Value": {"Ref": models_id}})
    store_template.has_output("ModelStoreUri", {"Value": {"Fn::Join": ["", ["s3://", {"Ref": models_id}]]}})
