"""The edge stack from a real package: components, their upload, the device role, and the deployment.

The package is made as an operator makes it: the bundled iris model pushed to an S3 store (moto, in
process), then ``edge_greengrass.packaging.package``. Digests are recomputed here from the packaged and
stored bytes, not taken from the package's own account of them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from aws_cdk import App
from aws_cdk.assertions import Annotations, Match, Template
from modelship.core.repository import ModelRepository
from moto import mock_aws

import infra.constructs.device_role
import infra.constructs.greengrass_components
from edge_greengrass.packaging import Package, package
from infra.config import ConfigError
from infra.stacks.edge_stack import DEPLOYMENT_SKIPPED
from tests.infra.conftest import SynthFactory, resources, stack, template
from tests.infra.test_cfn_lint import IGNORED_CHECKS
from tests.infra.test_nag import ACKNOWLEDGING_MODULES, acknowledgments, findings
from tests.support.models import write_model

pytestmark = pytest.mark.infra

BUCKET = "modelship-edge-test-store"
PREFIX = "fleet"
STORE = f"s3://{BUCKET}/{PREFIX}"
THING_GROUP_ARN = "arn:aws:iot:eu-west-1:123456789012:thinggroup/modelship-fleet"
EDGE_STACK = "modelship-prod-edge"
EDGE_MODULES = (infra.constructs.greengrass_components, infra.constructs.device_role)


@dataclass(frozen=True)
class EdgePackage:
    directory: Path
    package: Package
    store_objects: dict[str, bytes]  # key -> bytes, as pushed to the store


@pytest.fixture(scope="module")
def aws_environment() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            patch.setenv(key, value)
        for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
            patch.delenv(key, raising=False)
        yield


@pytest.fixture(scope="module")
def edge_package(
    aws_environment: None, tmp_path_factory: pytest.TempPathFactory, iris_model: tuple[bytes, list[str]]
) -> EdgePackage:
    directory = tmp_path_factory.mktemp("edge") / "package"
    scratch = tmp_path_factory.mktemp("edge-models")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        data, labels = iris_model
        ModelRepository.open(STORE).push(write_model(scratch, "iris", data), "iris", labels=labels)
        made = package(STORE, [("iris", None)], directory)
        store_objects = {
            item["Key"]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            for item in client.list_objects_v2(Bucket=BUCKET)["Contents"]
        }
    return EdgePackage(directory, made, store_objects)


@pytest.fixture(scope="module")
def edge_app(make_app: SynthFactory, edge_package: EdgePackage) -> App:
    return make_app(edge_package=str(edge_package.directory), thing_group_arn=THING_GROUP_ARN)


@pytest.fixture(scope="module")
def edge_template(edge_app: App) -> Template:
    return template(edge_app, EDGE_STACK)


@pytest.fixture(scope="module")
def undeployed_app(make_app: SynthFactory, edge_package: EdgePackage) -> App:
    return make_app(edge_package=str(edge_package.directory))


def greengrass_digest(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def flatten(value: Any) -> Any:
    """A template value with Fn::Join and the pseudo parameters resolved, for the aws partition."""
    if isinstance(value, dict) and "Fn::Join" in value:
        delimiter, parts = value["Fn::Join"]
        return str(delimiter).join(str(flatten(part)) for part in parts)
    if isinstance(value, dict) and value.get("Ref") == "AWS::Partition":
        return "aws"
    if isinstance(value, dict) and value.get("Ref") == "AWS::AccountId":
        return "ACCOUNT"
    if isinstance(value, list):
        return [flatten(item) for item in value]
    return value


def one(found: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    assert len(found) == 1, f"expected exactly one resource, found {sorted(found)}"
    return next(iter(found.items()))


def component_recipes(template_: Template) -> dict[str, dict[str, Any]]:
    """Inline recipes by component name, parsed back from the template's JSON."""
    recipes = {}
    for resource in resources(template_, "AWS::GreengrassV2::ComponentVersion").values():
        recipe = json.loads(resource["Properties"]["InlineRecipe"])
        recipes[recipe["ComponentName"]] = recipe
    return recipes


def logical_id(template_: Template, resource_type: str, component_name: str) -> str:
    for rid, resource in resources(template_, resource_type).items():
        if json.loads(resource["Properties"]["InlineRecipe"])["ComponentName"] == component_name:
            return rid
    raise AssertionError(f"no {resource_type} for {component_name}")


def device_role_id(template_: Template) -> str:
    rid, _ = one(
        {
            rid: role
            for rid, role in resources(template_, "AWS::IAM::Role").items()
            if role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
            == {"Service": "credentials.iot.amazonaws.com"}
        }
    )
    return rid


def policies_of(template_: Template, role_id: str) -> list[dict[str, Any]]:
    return [
        policy["Properties"]
        for policy in resources(template_, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
    ]


# --- the components -----------------------------------------------------------------------------------


def test_one_component_version_per_packaged_component(
    edge_template: Template, edge_package: EdgePackage
) -> None:
    packaged = {component.name: component for component in edge_package.package.components}
    assert set(packaged) == {"com.modelship.Inference", "com.modelship.model.iris"}
    edge_template.resource_count_is("AWS::GreengrassV2::ComponentVersion", len(packaged))
    recipes = component_recipes(edge_template)
    assert set(recipes) == set(packaged)
    for name, recipe in recipes.items():
        assert recipe == packaged[name].recipe
        assert recipe["ComponentVersion"] == packaged[name].version


def test_inline_recipes_are_the_recipe_files_the_package_wrote(
    edge_template: Template, edge_package: EdgePackage
) -> None:
    on_disk = {
        path.name: yaml.safe_load(path.read_bytes())
        for path in sorted((edge_package.directory / "recipes").glob("*.yaml"))
    }
    in_template = {
        f"{recipe['ComponentName']}-{recipe['ComponentVersion']}.yaml": recipe
        for recipe in component_recipes(edge_template).values()
    }
    assert in_template == on_disk
    for resource in resources(edge_template, "AWS::GreengrassV2::ComponentVersion").values():
        inline = resource["Properties"]["InlineRecipe"]
        assert inline == json.dumps(json.loads(inline), sort_keys=True)  # sorted JSON: stable diffs
        assert "LambdaFunction" not in resource["Properties"]


def test_artifact_digests_are_the_sha256_of_the_packaged_and_stored_bytes(
    edge_template: Template, edge_package: EdgePackage
) -> None:
    recipes = component_recipes(edge_template)
    inference = edge_package.package.inference
    zip_path = (
        edge_package.directory / "artifacts" / inference.name / inference.version / "modelship-edge.zip"
    )
    zip_uri = f"{STORE}/components/{inference.name}/{inference.version}/modelship-edge.zip"
    expected = {zip_uri: greengrass_digest(zip_path.read_bytes())}
    expected |= {
        f"s3://{BUCKET}/{key}": greengrass_digest(data) for key, data in edge_package.store_objects.items()
    }
    seen = set()
    for recipe in recipes.values():
        for manifest in recipe["Manifests"]:
            for artifact in manifest["Artifacts"]:
                assert artifact["Algorithm"] == "SHA-256"
                assert artifact["Digest"] == expected[artifact["Uri"]], artifact["Uri"]
                seen.add(artifact["Uri"])
    assert seen == {
        zip_uri,
        f"{STORE}/models/iris/1/model.onnx",
        f"{STORE}/models/iris/1/manifest.json",
    }


def test_the_zip_is_uploaded_to_the_key_its_recipe_names(
    edge_app: App, edge_template: Template, edge_package: EdgePackage
) -> None:
    inference = edge_package.package.inference
    _, upload = one(resources(edge_template, "Custom::CDKBucketDeployment"))
    props = upload["Properties"]
    assert props["DestinationBucketName"] == BUCKET
    assert props["DestinationBucketKeyPrefix"] == f"{PREFIX}/components/{inference.name}/{inference.version}/"
    assert props["Prune"] is False
    assert props["RetainOnDelete"] is True
    # The asset CDK uploads is the package's artifact folder: the zip and nothing else, same bytes.
    (asset_key,) = props["SourceObjectKeys"]
    assembly = Path(edge_app.synth().directory)
    assets = json.loads((assembly / f"{EDGE_STACK}.assets.json").read_text(encoding="utf-8"))["files"]
    (source,) = [
        asset["source"]
        for asset in assets.values()
        if any(target["objectKey"] == asset_key for target in asset["destinations"].values())
    ]
    assert source["packaging"] == "zip"  # a folder, zipped by CDK and unzipped by the upload
    staged = assembly / source["path"]
    packaged = edge_package.directory / "artifacts" / inference.name / inference.version
    assert sorted(path.name for path in staged.iterdir()) == ["modelship-edge.zip"]
    assert (staged / "modelship-edge.zip").read_bytes() == (packaged / "modelship-edge.zip").read_bytes()


def test_component_versions_wait_for_the_upload_and_their_dependencies(
    edge_template: Template,
) -> None:
    upload_id, _ = one(resources(edge_template, "Custom::CDKBucketDeployment"))
    versions = resources(edge_template, "AWS::GreengrassV2::ComponentVersion")
    inference_id = logical_id(edge_template, "AWS::GreengrassV2::ComponentVersion", "com.modelship.Inference")
    model_id = logical_id(edge_template, "AWS::GreengrassV2::ComponentVersion", "com.modelship.model.iris")
    assert upload_id in versions[inference_id]["DependsOn"]
    assert model_id in versions[inference_id]["DependsOn"]
    assert "DependsOn" not in versions[model_id]  # the store's own objects: nothing to upload


def test_the_upload_function_may_write_only_its_component_prefix(
    edge_template: Template, edge_package: EdgePackage
) -> None:
    inference = edge_package.package.inference
    _, function = one(resources(edge_template, "AWS::Lambda::Function"))
    role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
    role = resources(edge_template, "AWS::IAM::Role")[role_id]["Properties"]
    assert "ManagedPolicyArns" not in role
    (policy,) = policies_of(edge_template, role_id)
    statements = policy["PolicyDocument"]["Statement"]
    store_actions = {
        action
        for statement in statements
        for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
        if BUCKET in json.dumps(statement["Resource"])
    }
    assert store_actions == {"s3:ListBucket", "s3:PutObject", "s3:AbortMultipartUpload"}
    destination = f"{PREFIX}/components/{inference.name}/{inference.version}/"
    writes = [statement for statement in statements if "s3:PutObject" in statement["Action"]]
    assert [flatten(statement["Resource"]) for statement in writes] == [
        f"arn:aws:s3:::{BUCKET}/{destination}*"
    ]
    (listing,) = [statement for statement in statements if statement["Action"] == "s3:ListBucket"]
    assert listing["Condition"]["StringLike"] == {"s3:prefix": [f"{destination}*"]}


# --- the deployment -----------------------------------------------------------------------------------


def test_deployment_targets_the_thing_group_with_every_component_at_its_version(
    edge_template: Template, edge_package: EdgePackage
) -> None:
    deployment_id, deployment = one(resources(edge_template, "AWS::GreengrassV2::Deployment"))
    props = deployment["Properties"]
    assert props["TargetArn"] == THING_GROUP_ARN
    assert props["DeploymentName"] == "modelship-prod-edge"
    assert props["Components"] == {
        component.name: {"ComponentVersion": component.version}
        for component in edge_package.package.components
    }
    assert sorted(deployment["DependsOn"]) == sorted(
        resources(edge_template, "AWS::GreengrassV2::ComponentVersion")
    )
    edge_template.has_output("DeploymentId", {"Value": {"Fn::GetAtt": [deployment_id, "DeploymentId"]}})


def test_deployment_policies_roll_back_and_notify(edge_template: Template) -> None:
    _, deployment = one(resources(edge_template, "AWS::GreengrassV2::Deployment"))
    assert deployment["Properties"]["DeploymentPolicies"] == {
        "FailureHandlingPolicy": "ROLLBACK",
        "ComponentUpdatePolicy": {"Action": "NOTIFY_COMPONENTS", "TimeoutInSeconds": 60},
        "ConfigurationValidationPolicy": {"TimeoutInSeconds": 30},
    }


def test_deployment_rolls_out_gradually_and_aborts_on_failures(edge_template: Template) -> None:
    _, deployment = one(resources(edge_template, "AWS::GreengrassV2::Deployment"))
    assert deployment["Properties"]["IotJobConfiguration"] == {
        "JobExecutionsRolloutConfig": {
            "ExponentialRate": {
                "BaseRatePerMinute": 5,
                "IncrementFactor": 2,
                "RateIncreaseCriteria": {"NumberOfSucceededThings": 5},
            },
            "MaximumPerMinute": 50,
        },
        "AbortConfig": {
            "CriteriaList": [
                {
                    "Action": "CANCEL",
                    "FailureType": failure,
                    "MinNumberOfExecutedThings": 10,
                    "ThresholdPercentage": 10,
                }
                for failure in ("FAILED", "TIMED_OUT")
            ]
        },
        # Longer than the component's 20-minute Install step.
        "TimeoutConfig": {"InProgressTimeoutInMinutes": 60},
    }


def test_without_a_thing_group_the_components_are_published_and_the_deployment_skipped(
    undeployed_app: App, edge_package: EdgePackage
) -> None:
    template_ = template(undeployed_app, EDGE_STACK)
    template_.resource_count_is("AWS::GreengrassV2::Deployment", 0)
    template_.resource_count_is("AWS::GreengrassV2::ComponentVersion", len(edge_package.package.components))
    template_.resource_count_is("Custom::CDKBucketDeployment", 1)
    template_.has_output("Deployment", {"Value": DEPLOYMENT_SKIPPED})
    assert DEPLOYMENT_SKIPPED.startswith("skipped: no thing_group_arn")
    infos = Annotations.from_stack(stack(undeployed_app, EDGE_STACK)).find_info(
        f"/{EDGE_STACK}", Match.string_like_regexp("deployment skipped")
    )
    assert len(infos) == 1


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:iot:eu-west-1:123456789012:thing/modelship-fleet",  # a thing, not a group
        "arn:aws:iot:eu-west-1:12345:thinggroup/modelship-fleet",
        "arn:aws:sns:eu-west-1:123456789012:thinggroup/modelship-fleet",
        "arn:aws:iot:eu-west-1:123456789012:thinggroup/",
        "modelship-fleet",
    ],
)
def test_an_invalid_thing_group_arn_is_refused(
    make_app: SynthFactory, edge_package: EdgePackage, arn: str
) -> None:
    with pytest.raises(ConfigError, match=r"thing_group_arn=.*must be an IoT thing group ARN"):
        make_app(edge_package=str(edge_package.directory), thing_group_arn=arn)


# --- the device role ----------------------------------------------------------------------------------


def test_the_device_role_is_assumed_by_the_iot_credentials_provider(edge_template: Template) -> None:
    role = resources(edge_template, "AWS::IAM::Role")[device_role_id(edge_template)]["Properties"]
    assert role["AssumeRolePolicyDocument"] == {
        "Statement": [
            {
                "Action": "sts:AssumeRole",
                "Effect": "Allow",
                "Principal": {"Service": "credentials.iot.amazonaws.com"},
            }
        ],
        "Version": "2012-10-17",
    }
    assert "ManagedPolicyArns" not in role
    assert "Policies" not in role


def test_the_device_role_reads_only_the_model_and_component_prefixes(edge_template: Template) -> None:
    (policy,) = policies_of(edge_template, device_role_id(edge_template))
    statements = {
        statement["Sid"]: (statement["Action"], flatten(statement["Resource"]), statement["Effect"])
        for statement in policy["PolicyDocument"]["Statement"]
    }
    assert statements == {
        "LocateStoreBucket": ("s3:GetBucketLocation", f"arn:aws:s3:::{BUCKET}", "Allow"),
        "ReadComponentArtifacts": (
            "s3:GetObject",
            [f"arn:aws:s3:::{BUCKET}/{PREFIX}/components/*", f"arn:aws:s3:::{BUCKET}/{PREFIX}/models/*"],
            "Allow",
        ),
    }
    text = json.dumps(flatten(policy["PolicyDocument"]))
    assert "s3:::*" not in text and f"{BUCKET}/*" not in text  # no wildcard bucket, no whole-bucket read


def test_every_artifact_the_recipes_name_is_readable_by_the_device_role(edge_template: Template) -> None:
    (policy,) = policies_of(edge_template, device_role_id(edge_template))
    (reads,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Action"] == "s3:GetObject"]
    prefixes = [arn.removeprefix("arn:aws:s3:::").removesuffix("*") for arn in flatten(reads["Resource"])]
    for recipe in component_recipes(edge_template).values():
        for manifest in recipe["Manifests"]:
            for artifact in manifest["Artifacts"]:
                key = artifact["Uri"].removeprefix("s3://")
                assert any(key.startswith(prefix) for prefix in prefixes), artifact["Uri"]


def test_the_role_alias_and_its_iot_policy(edge_template: Template) -> None:
    alias_id, alias = one(resources(edge_template, "AWS::IoT::RoleAlias"))
    assert alias["Properties"]["RoleArn"] == {"Fn::GetAtt": [device_role_id(edge_template), "Arn"]}
    assert alias["Properties"]["RoleAlias"] == "modelship-prod-edge-TokenExchangeRoleAlias"
    assert alias["Properties"]["CredentialDurationSeconds"] == 3600
    edge_template.has_output("RoleAliasName", {"Value": {"Ref": alias_id}})
    _, iot_policy = one(resources(edge_template, "AWS::IoT::Policy"))
    assert iot_policy["Properties"]["PolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "iot:AssumeRoleWithCertificate",
            "Resource": {"Fn::GetAtt": [alias_id, "RoleAliasArn"]},
        }
    ]


# --- the app, cdk-nag and cfn-lint --------------------------------------------------------------------


def test_without_a_package_the_app_skips_the_edge_stack_and_says_how_to_make_one(
    make_app: SynthFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("infra.config.DeployConfig.has_edge_package", property(lambda self: False))
    app = make_app(edge_package="")  # the default, build/edge
    assert app.node.try_find_child(EDGE_STACK) is None
    err = capsys.readouterr().err
    assert "edge stack is skipped" in err
    assert "modelship edge package --store s3://BUCKET/PREFIX --model NAME --out build/edge" in err


def test_edge_package_off_leaves_the_edge_stack_out_silently(
    make_app: SynthFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(edge_package="off")
    assert app.node.try_find_child(EDGE_STACK) is None
    assert "edge" not in capsys.readouterr().err


def test_a_folder_that_is_not_a_package_is_a_context_error(make_app: SynthFactory, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid edge package .*modelship edge package"):
        make_app(edge_package=str(tmp_path))


def test_a_stray_file_next_to_the_packaged_zip_is_not_uploaded_unannounced(
    make_app: SynthFactory, edge_package: EdgePackage, tmp_path: Path
) -> None:
    copy = tmp_path / "package"
    shutil.copytree(edge_package.directory, copy)
    inference = edge_package.package.inference
    (copy / "artifacts" / inference.name / inference.version / "notes.txt").write_text("not in any recipe\n")
    with pytest.raises(ConfigError, match=r"holds \['modelship-edge.zip', 'notes.txt'\], but the recipe"):
        make_app(edge_package=str(copy))


def test_the_edge_stack_follows_the_store_stack(edge_app: App) -> None:
    assert stack(edge_app, "modelship-prod-store") in stack(edge_app, EDGE_STACK).dependencies


@pytest.mark.parametrize("app_fixture", ["edge_app", "undeployed_app"])
def test_no_unacknowledged_nag_findings(app_fixture: str, request: pytest.FixtureRequest) -> None:
    app: App = request.getfixturevalue(app_fixture)
    assert findings(app) == {}
    app.synth()  # the registered packs pass too, or synthesis would raise


@pytest.mark.parametrize("app_fixture", ["edge_app", "undeployed_app"])
def test_cdk_itself_reports_no_warnings_or_errors(app_fixture: str, request: pytest.FixtureRequest) -> None:
    annotations = Annotations.from_stack(stack(request.getfixturevalue(app_fixture), EDGE_STACK))
    assert annotations.find_error("*", Match.any_value()) == []
    assert annotations.find_warning("*", Match.any_value()) == []


def test_every_edge_acknowledgment_silences_a_real_finding(
    make_app: SynthFactory, edge_package: EdgePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = {"edge_package": str(edge_package.directory), "thing_group_arn": THING_GROUP_ARN}
    acknowledged = {
        rule: [(path, reason) for path, reason in places if path.startswith(f"{EDGE_STACK}/")]
        for rule, places in acknowledgments(make_app(**context)).items()
    }
    acknowledged = {rule: places for rule, places in acknowledged.items() if places}
    assert (
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::modelship-edge-test-store/fleet/models/*]"
        in (acknowledged)
    )
    for module in (*ACKNOWLEDGING_MODULES, *EDGE_MODULES):
        if hasattr(module, "acknowledge"):
            monkeypatch.setattr(module, "acknowledge", lambda *args, **kwargs: None)
    raw = findings(make_app(**context))
    raw_edge = {
        rule: {path for path in paths if path.startswith(f"{EDGE_STACK}/")} for rule, paths in raw.items()
    }
    raw_edge = {rule: paths for rule, paths in raw_edge.items() if paths}
    for rule_id, places in acknowledged.items():
        assert rule_id in raw_edge, f"{rule_id} is acknowledged but nothing triggers it"
        for path, reason in places:
            assert any(found == path or found.startswith(path + "/") for found in raw_edge[rule_id]), (
                rule_id,
                path,
            )
            assert len(reason) >= 40
    assert set(raw_edge) == set(acknowledged), "every raw finding is acknowledged with a reason"


def test_cfn_lint_passes_on_the_edge_template(edge_app: App) -> None:
    assembly = edge_app.synth()
    edge = Path(assembly.directory) / f"{EDGE_STACK}.template.json"
    assert edge.is_file()
    result = subprocess.run(
        [
            sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())",
            "--format", "parseable", "--ignore-checks", *IGNORED_CHECKS, "--", str(edge),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, f"cfn-lint found problems:\n{result.stdout}{result.stderr}"


def test_devices_that_sign_for_the_cloud_endpoint_may_invoke_its_model_routes_only(
    make_app: SynthFactory, edge_package: EdgePackage, edge_template: Template, tmp_path: Path
) -> None:
    endpoint = "https://abc123defg.execute-api.eu-west-1.amazonaws.com/prod"
    directory = tmp_path / "hybrid"
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        for key, body in edge_package.store_objects.items():
            client.put_object(Bucket=BUCKET, Key=key, Body=body)
        package(
            STORE,
            [("iris", None)],
            directory,
            configuration={"cloudEndpoint": endpoint, "cloudAuth": "sigv4"},
        )
    hybrid = template(make_app(edge_package=str(directory)), EDGE_STACK)
    statements = [
        statement
        for policy in policies_of(hybrid, device_role_id(hybrid))
        for statement in policy["PolicyDocument"]["Statement"]
        if statement["Action"] == "execute-api:Invoke"
    ]
    assert [sorted(flatten(statement["Resource"])) for statement in statements] == [
        [
            "arn:aws:execute-api:eu-west-1:ACCOUNT:abc123defg/prod/GET/v2/models/*",
            "arn:aws:execute-api:eu-west-1:ACCOUNT:abc123defg/prod/POST/v2/models/*",
        ]
    ]
    # Without the fallback (the module's package), the role invokes nothing.
    assert not [
        statement
        for policy in policies_of(edge_template, device_role_id(edge_template))
        for statement in policy["PolicyDocument"]["Statement"]
        if "execute-api" in str(statement["Action"])
    ]
