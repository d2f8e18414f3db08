"""The operating options: canary releases (canary), capacity (provisioned_concurrency*) and the dashboard.

Each is off by default and leaves the default template as it was; each, when on, adds its resources
with the properties that make it work. cdk-nag and cfn-lint run over every option at once in test_nag.py
and test_cfn_lint.py (the ``operations`` variant).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk import aws_codedeploy as codedeploy
from aws_cdk.assertions import Template
from pretraffic import hook

from infra.config import DEFAULT_CANARY, LAMBDA_DEPLOYMENT_CONFIGS, ConfigError, DeployConfig
from infra.constructs import dashboard, release
from tests.infra.conftest import REPO_ROOT, SynthFactory, resources, template

pytestmark = pytest.mark.infra

RELEASE_TYPES = (
    "AWS::CodeDeploy::Application",
    "AWS::CodeDeploy::DeploymentGroup",
)
SCALING_TYPES = ("AWS::ApplicationAutoScaling::ScalableTarget", "AWS::ApplicationAutoScaling::ScalingPolicy")


def only(template_: Template, resource_type: str) -> tuple[str, dict[str, Any]]:
    found = resources(template_, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    logical_id, resource = next(iter(found.items()))
    return logical_id, resource


def properties(resource: dict[str, Any]) -> dict[str, Any]:
    props = resource["Properties"]
    assert isinstance(props, dict)
    return props


def functions_by_handler(template_: Template) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        properties(resource)["Handler"]: (logical_id, resource)
        for logical_id, resource in resources(template_, "AWS::Lambda::Function").items()
    }


def alarm_ids(template_: Template, *names: str) -> list[str]:
    ids = sorted(resources(template_, "AWS::CloudWatch::Alarm"))
    return [
        next(logical_id for logical_id in ids if logical_id.startswith(f"Alarms{name}")) for name in names
    ]


def token(part: dict[str, Any]) -> str:
    """A CloudFormation token inside the dashboard's body, as a placeholder: ${Id} or ${Id.Attribute}."""
    if "Ref" in part:
        return f"${{{part['Ref']}}}"
    return "${" + ".".join(part["Fn::GetAtt"]) + "}"


def dashboard_graphs(template_: Template) -> dict[str, list[list[Any]]]:
    """The dashboard's graphs: title (up to its parenthesis) -> its metric rows."""
    _, board = only(template_, "AWS::CloudWatch::Dashboard")
    parts = properties(board)["DashboardBody"]["Fn::Join"][1]
    body = json.loads("".join(part if isinstance(part, str) else token(part) for part in parts))
    return {
        widget["properties"]["title"].split(" (")[0]: widget["properties"]["metrics"]
        for widget in body["widgets"]
    }


def named(rows: list[list[Any]]) -> list[tuple[str, str, str]]:
    """(namespace, metric, statistic) of each plain metric row."""
    return [(row[0], row[1], row[-1]["stat"]) for row in rows if isinstance(row[0], str)]


def searches(rows: list[list[Any]]) -> list[str]:
    return [row[0]["expression"] for row in rows if isinstance(row[0], dict)]


# --- defaults ---------------------------------------------------------------------------------------


def test_by_default_there_is_no_release_no_scaling_and_no_dashboard(api_template: Template) -> None:
    for resource_type in (*RELEASE_TYPES, *SCALING_TYPES, "AWS::CloudWatch::Dashboard"):
        assert resources(api_template, resource_type) == {}, resource_type
    assert list(functions_by_handler(api_template)) == ["inference.app.handler"]
    _, alias = only(api_template, "AWS::Lambda::Alias")
    assert "UpdatePolicy" not in alias
    assert "ProvisionedConcurrencyConfig" not in properties(alias)


def test_by_default_the_api_alarms_name_the_stage_by_reference(api_template: Template) -> None:
    """The default template is what it was before these options: the stage is a Ref, as ever."""
    for logical_id in alarm_ids(api_template, "ApiServerErrorRate", "ApiLatencyP99"):
        dimensions = properties(resources(api_template, "AWS::CloudWatch::Alarm")[logical_id])["Dimensions"]
        stage = next(dimension["Value"] for dimension in dimensions if dimension["Name"] == "Stage")
        assert isinstance(stage, dict) and "Ref" in stage


def test_the_defaults_of_the_new_keys() -> None:
    config = DeployConfig.from_context({})
    assert config.canary is None
    assert config.canary_smoke_model == "iris"
    assert (config.provisioned_concurrency, config.provisioned_concurrency_max) == (None, None)
    assert config.provisioned_concurrency_target == 0.7
    assert config.dashboard is False


# --- releases ---------------------------------------------------------------------------------------


def test_canary_shifts_the_live_alias_through_codedeploy(operations_api_template: Template) -> None:
    template_ = operations_api_template
    application_id, application = only(template_, "AWS::CodeDeploy::Application")
    assert properties(application)["ComputePlatform"] == "Lambda"
    group_id, group = only(template_, "AWS::CodeDeploy::DeploymentGroup")
    props = properties(group)
    assert props["DeploymentConfigName"] == f"CodeDeployDefault.{DEFAULT_CANARY}"
    assert props["DeploymentStyle"] == {
        "DeploymentOption": "WITH_TRAFFIC_CONTROL",
        "DeploymentType": "BLUE_GREEN",
    }
    assert props["AutoRollbackConfiguration"] == {
        "Enabled": True,
        "Events": ["DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM"],
    }
    server_errors, latency = alarm_ids(template_, "ApiServerErrorRate", "ApiLatencyP99")
    assert props["AlarmConfiguration"] == {
        "Alarms": [{"Name": {"Ref": server_errors}}, {"Name": {"Ref": latency}}],
        "Enabled": True,
    }
    hook_id, _ = functions_by_handler(template_)[release.HOOK_HANDLER]
    _, alias = only(template_, "AWS::Lambda::Alias")
    assert alias["UpdatePolicy"] == {
        "CodeDeployLambdaAliasUpdate": {
            "ApplicationName": {"Ref": application_id},
            "DeploymentGroupName": {"Ref": group_id},
            "BeforeAllowTrafficHook": {"Ref": hook_id},
        }
    }


def test_gating_alarms_name_the_stage_literally_so_there_is_no_cycle(
    operations_api_template: Template,
) -> None:
    """alias -(UpdatePolicy)-> group -> alarms; a Ref to the stage would lead back to the alias."""
    for logical_id in alarm_ids(operations_api_template, "ApiServerErrorRate", "ApiLatencyP99"):
        dimensions = properties(resources(operations_api_template, "AWS::CloudWatch::Alarm")[logical_id])[
            "Dimensions"
        ]
        assert {"Name": "Stage", "Value": "ops"} in dimensions
        assert {"Name": "ApiName", "Value": "modelship-ops"} in dimensions


def test_the_hook_smoke_tests_the_new_version(operations_api_template: Template) -> None:
    template_ = operations_api_template
    _, hook_function = functions_by_handler(template_)[release.HOOK_HANDLER]
    props = properties(hook_function)
    _, alias = only(template_, "AWS::Lambda::Alias")
    version_id = properties(alias)["FunctionVersion"]["Fn::GetAtt"][0]
    assert props["Runtime"] == "python3.14"
    assert props["Timeout"] == 60
    assert props["Environment"]["Variables"] == {
        hook.TARGET_VERSION_ENV: {"Ref": version_id},
        hook.SMOKE_MODEL_ENV: "iris",
    }
    # infra spells the two names itself (the CDK app must not need the hook importable); they agree.
    assert (release.TARGET_VERSION_ENV, release.SMOKE_MODEL_ENV) == (
        hook.TARGET_VERSION_ENV,
        hook.SMOKE_MODEL_ENV,
    )


def test_the_hook_role_may_invoke_the_new_version_and_report_and_nothing_else(
    operations_api_template: Template,
) -> None:
    template_ = operations_api_template
    _, hook_function = functions_by_handler(template_)[release.HOOK_HANDLER]
    role_id = properties(hook_function)["Role"]["Fn::GetAtt"][0]
    role = properties(resources(template_, "AWS::IAM::Role")[role_id])
    assert "ManagedPolicyArns" not in role
    policies = [
        properties(policy)
        for policy in resources(template_, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in properties(policy)["Roles"]
    ]
    assert len(policies) == 1
    _, alias = only(template_, "AWS::Lambda::Alias")
    version_id = properties(alias)["FunctionVersion"]["Fn::GetAtt"][0]
    application_id, _ = only(template_, "AWS::CodeDeploy::Application")
    group_id, _ = only(template_, "AWS::CodeDeploy::DeploymentGroup")
    log_group = properties(hook_function)["LoggingConfig"]["LogGroup"]["Ref"]
    assert policies[0]["PolicyDocument"]["Statement"] == [
        {
            "Sid": "WriteOwnLogGroup",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": {"Fn::GetAtt": [log_group, "Arn"]},
        },
        {
            "Sid": "InvokeTheNewVersion",
            "Effect": "Allow",
            "Action": "lambda:InvokeFunction",
            "Resource": {"Ref": version_id},
        },
        {
            "Effect": "Allow",
            "Action": "codedeploy:PutLifecycleEventHookExecutionStatus",
            "Resource": {
                "Fn::Join": [
                    "",
                    [
                        "arn:",
                        {"Ref": "AWS::Partition"},
                        ":codedeploy:",
                        {"Ref": "AWS::Region"},
                        ":",
                        {"Ref": "AWS::AccountId"},
                        ":deploymentgroup:",
                        {"Ref": application_id},
                        "/",
                        {"Ref": group_id},
                    ],
                ]
            },
        },
    ]


def asset_files(app: App, stack_name: str, handler: str) -> set[str]:
    assembly = app.synth()
    _, function = functions_by_handler(template(app, stack_name))[handler]
    asset_dir = (
        Path(assembly.directory) / f"asset.{properties(function)['Code']['S3Key'].removesuffix('.zip')}"
    )
    return {path.relative_to(asset_dir).as_posix() for path in asset_dir.rglob("*") if path.is_file()}


def test_the_hook_ships_alone_and_the_function_ships_without_it(operations_app: App) -> None:
    assert asset_files(operations_app, "modelship-ops-api", release.HOOK_HANDLER) == {
        "__init__.py",
        "hook.py",
    }
    function_files = asset_files(operations_app, "modelship-ops-api", "inference.app.handler")
    assert {name.split("/")[0] for name in function_files} == {"modelship", "inference"}


def test_a_named_configuration_without_a_smoke_model(make_app: SynthFactory) -> None:
    template_ = template(
        make_app(canary="LambdaLinear10PercentEvery1Minute", canary_smoke_model="off"), "modelship-prod-api"
    )
    _, group = only(template_, "AWS::CodeDeploy::DeploymentGroup")
    assert properties(group)["DeploymentConfigName"] == "CodeDeployDefault.LambdaLinear10PercentEvery1Minute"
    assert list(functions_by_handler(template_)) == ["inference.app.handler"]
    _, alias = only(template_, "AWS::Lambda::Alias")
    assert "BeforeAllowTrafficHook" not in alias["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
    assert "ProvisionedConcurrencyConfig" not in properties(alias)


@pytest.mark.parametrize("name", sorted(LAMBDA_DEPLOYMENT_CONFIGS))
def test_every_accepted_name_is_the_codedeploy_configuration_of_that_name(name: str) -> None:
    assert DeployConfig.from_context({"canary": name}).canary == name
    assert DeployConfig.from_context({"canary": f"CodeDeployDefault.{name}"}).canary == name
    assert DeployConfig.from_context({"canary": name.lower()}).canary == name
    config = release.lambda_deployment_config(name)
    assert config.deployment_config_name == f"CodeDeployDefault.{name}"


def test_every_predefined_lambda_configuration_is_accepted() -> None:
    """CDK's list of predefined Lambda configurations and ours are the same."""
    predefined = {
        attribute
        for attribute in dir(codedeploy.LambdaDeploymentConfig)
        if re.fullmatch(r"(ALL_AT_ONCE|CANARY_[0-9A-Z_]+|LINEAR_[0-9A-Z_]+)", attribute)
    }
    assert predefined == set(LAMBDA_DEPLOYMENT_CONFIGS.values())


@pytest.mark.parametrize(
    ("value", "expected"), [("true", DEFAULT_CANARY), (True, DEFAULT_CANARY), ("off", None), (False, None)]
)
def test_canary_true_is_ten_percent_for_five_minutes(value: object, expected: str | None) -> None:
    assert DeployConfig.from_context({"canary": value}).canary == expected


# --- capacity ---------------------------------------------------------------------------------------


def test_provisioned_concurrency_scales_on_utilization(operations_api_template: Template) -> None:
    template_ = operations_api_template
    alias_id, alias = only(template_, "AWS::Lambda::Alias")
    assert properties(alias)["ProvisionedConcurrencyConfig"] == {"ProvisionedConcurrentExecutions": 2}
    target_id, target = only(template_, "AWS::ApplicationAutoScaling::ScalableTarget")
    props = properties(target)
    assert (props["MinCapacity"], props["MaxCapacity"]) == (2, 10)
    assert props["ScalableDimension"] == "lambda:function:ProvisionedConcurrency"
    assert props["ServiceNamespace"] == "lambda"
    alias_name = {"Fn::Select": [6, {"Fn::Split": [":", {"Ref": alias_id}]}]}  # the function's name
    assert props["ResourceId"] == {"Fn::Join": ["", ["function:", alias_name, ":live"]]}
    _, policy = only(template_, "AWS::ApplicationAutoScaling::ScalingPolicy")
    assert properties(policy)["ScalingTargetId"] == {"Ref": target_id}
    assert properties(policy)["TargetTrackingScalingPolicyConfiguration"] == {
        "PredefinedMetricSpecification": {"PredefinedMetricType": "LambdaProvisionedConcurrencyUtilization"},
        "TargetValue": 0.6,
    }
    _, function = functions_by_handler(template_)["inference.app.handler"]
    assert properties(function)["ReservedConcurrentExecutions"] == 20


def test_provisioned_concurrency_alone_does_not_scale(make_app: SynthFactory) -> None:
    template_ = template(make_app(provisioned_concurrency="3"), "modelship-prod-api")
    _, alias = only(template_, "AWS::Lambda::Alias")
    assert properties(alias)["ProvisionedConcurrencyConfig"] == {"ProvisionedConcurrentExecutions": 3}
    for resource_type in (*SCALING_TYPES, *RELEASE_TYPES, "AWS::CloudWatch::Dashboard"):
        assert resources(template_, resource_type) == {}, resource_type


# --- the dashboard ----------------------------------------------------------------------------------


def test_the_dashboard_graphs_the_api_the_models_and_capacity(operations_api_template: Template) -> None:
    graphs = dashboard_graphs(operations_api_template)
    function_id, _ = functions_by_handler(operations_api_template)["inference.app.handler"]
    api, lambda_ = "AWS/ApiGateway", "AWS/Lambda"
    assert list(graphs) == [
        "API requests, 4xx and 5xx",
        "API latency",
        "Inference latency per model",
        "Inferences per model",
        "Model load time per model",
        "Cold starts",
        "Lambda throttles and errors",
        "Lambda concurrency",
    ]
    assert named(graphs["API requests, 4xx and 5xx"]) == [
        (api, "Count", "Sum"),
        (api, "4XXError", "Sum"),
        (api, "5XXError", "Sum"),
    ]
    assert named(graphs["API latency"]) == [
        (api, "Latency", "p50"),
        (api, "Latency", "p99"),
        (api, "IntegrationLatency", "p99"),
    ]
    assert searches(graphs["Inference latency per model"]) == [
        f"""SEARCH('{{Modelship,model,service}} MetricName="InferenceLatency"', '{statistic}', 60)"""
        for statistic in ("p50", "p99")
    ]
    assert searches(graphs["Inferences per model"]) == [
        """SEARCH('{Modelship,model,service} MetricName="InferenceLatency"', 'SampleCount', 60)"""
    ]
    assert searches(graphs["Model load time per model"]) == [
        """SEARCH('{Modelship,model,service} MetricName="ModelLoadTime"', 'Maximum', 60)"""
    ]
    [cold_starts] = graphs["Cold starts"]
    assert cold_starts[:6] == [
        "Modelship",
        "ColdStart",
        "function_name",
        f"${{{function_id}}}",
        "service",
        "modelship",
    ]
    assert named(graphs["Lambda throttles and errors"]) == [
        (lambda_, "Throttles", "Sum"),
        (lambda_, "Errors", "Sum"),
    ]
    concurrency = graphs["Lambda concurrency"]
    assert named(concurrency) == [
        (lambda_, "ConcurrentExecutions", "Maximum"),
        (lambda_, "ProvisionedConcurrentExecutions", "Maximum"),
        (lambda_, "ProvisionedConcurrencySpilloverInvocations", "Sum"),
        (lambda_, "ProvisionedConcurrencyUtilization", "Maximum"),
    ]
    for row in concurrency[1:]:  # the alias's metrics: function name and Resource <function>:live
        assert row[2:6] == ["FunctionName", f"${{{function_id}}}", "Resource", f"${{{function_id}}}:live"]
    assert concurrency[-1][-1]["yAxis"] == "right"


def test_the_dashboard_without_provisioned_concurrency_leaves_its_metrics_out(make_app: SynthFactory) -> None:
    template_ = template(make_app(dashboard="true"), "modelship-prod-api")
    graphs = dashboard_graphs(template_)
    assert named(graphs["Lambda concurrency"]) == [("AWS/Lambda", "ConcurrentExecutions", "Maximum")]
    _, board = only(template_, "AWS::CloudWatch::Dashboard")
    assert properties(board)["DashboardName"] == "modelship-prod-operations"


def test_the_searched_metrics_are_the_ones_the_lambda_entry_publishes() -> None:
    """The entry publishes its metrics by literal name (functions/inference/app.py); the dashboard must
    search for exactly those, and for Powertools' ColdStart."""
    entry = (REPO_ROOT / "functions" / "inference" / "app.py").read_text(encoding="utf-8")
    for name in (dashboard.MODEL_LOAD_TIME, dashboard.INFERENCE_LATENCY):
        assert f'_record("{name}"' in entry, name
    assert f'MODEL_DIMENSION: Final = "{dashboard.MODEL_DIMENSION}"' in entry
    assert "add_cold_start_metric" in entry
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf import cloudwatch as emf

    source = Path(emf.__file__).read_text(encoding="utf-8")
    assert f'name="{dashboard.COLD_START}"' in source
    assert 'add_dimension(name="function_name"' in source


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"canary": "LambdaCanary50Percent"}, "one of CodeDeploy's predefined Lambda configurations"),
        ({"canary": "maybe"}, "LambdaAllAtOnce"),
        ({"canary": 3}, "must be true"),
        ({"canary": "true", "canary_smoke_model": "iris,resnet"}, "one model reference"),
        ({"canary": "true", "canary_smoke_model": "../etc"}, "invalid model name"),
        ({"canary_smoke_model": "iris"}, "canary_smoke_model is the pre-traffic check of a canary release"),
        ({"provisioned_concurrency": "0"}, "between 1 and 10000"),
        ({"provisioned_concurrency": "two"}, "must be an integer"),
        ({"provisioned_concurrency_max": "5"}, "provisioned_concurrency_max needs provisioned_concurrency"),
        (
            {"provisioned_concurrency": "5", "provisioned_concurrency_max": "4"},
            "provisioned_concurrency_max=4 is below provisioned_concurrency=5",
        ),
        (
            {
                "provisioned_concurrency": "2",
                "provisioned_concurrency_max": "4",
                "provisioned_concurrency_target": "1",
            },
            "provisioned_concurrency_target='1': must be between 0.1 and 0.9",
        ),
        (
            {
                "provisioned_concurrency": "2",
                "provisioned_concurrency_max": "4",
                "provisioned_concurrency_target": "0",
            },
            "must be between 0.1 and 0.9",
        ),
        (
            {
                "provisioned_concurrency": "2",
                "provisioned_concurrency_max": "4",
                "provisioned_concurrency_target": "x",
            },
            "must be a number",
        ),
        (
            {"provisioned_concurrency": "2", "provisioned_concurrency_target": "0.5"},
            "provisioned_concurrency_target needs provisioned_concurrency_max",
        ),
        (
            {"provisioned_concurrency_target": "0.5"},
            "provisioned_concurrency_target needs provisioned_concurrency",
        ),
        (
            {"provisioned_concurrency": "8", "reserved_concurrency": "5"},
            "provisioned_concurrency=8 exceeds reserved_concurrency=5",
        ),
        (
            {"provisioned_concurrency": "2", "provisioned_concurrency_max": "8", "reserved_concurrency": "5"},
            "provisioned_concurrency_max=8 exceeds reserved_concurrency=5",
        ),
        ({"dashboard": "sometimes"}, "true or false"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(context: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        DeployConfig.from_context(context)
    assert message in str(raised.value)


def test_provisioned_equal_to_reserved_is_accepted() -> None:
    config = DeployConfig.from_context(
        {"reserved_concurrency": "5", "provisioned_concurrency": "5", "provisioned_concurrency_max": "5"}
    )
    assert (config.provisioned_concurrency, config.provisioned_concurrency_max) == (5, 5)


def test_every_context_key_is_in_the_table_of_docs_deploy_md() -> None:
    table = (REPO_ROOT / "docs" / "deploy.md").read_text(encoding="utf-8").split("### Context options")[1]
    documented = set(re.findall(r"^\| `([a-z_]+)`(?: / `([a-z_]+)`)?", table, re.M))
    keys = {key for pair in documented for key in pair if key}
    assert set(DeployConfig.fields_by_key()) - keys == set()
