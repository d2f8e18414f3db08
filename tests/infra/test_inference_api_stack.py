"""Template assertions on the inference API stack: function, IAM, API Gateway, alarms, outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Template
from modelship.doors import compression

from infra.constructs import inference_api
from tests.infra.conftest import resources, stack

pytestmark = pytest.mark.infra

ACCOUNT_REGION_BUCKET = ["modelship-prod-models-", {"Ref": "AWS::AccountId"}, "-", {"Ref": "AWS::Region"}]


def cfn_join(*parts: object) -> dict[str, object]:
    """An Fn::Join as CDK renders it: adjacent literal strings merged."""
    merged: list[object] = []
    for part in parts:
        if part == "":
            continue
        if merged and isinstance(part, str) and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return {"Fn::Join": ["", merged]}


def bucket_arn(suffix: str = "") -> dict[str, object]:
    return cfn_join("arn:", {"Ref": "AWS::Partition"}, ":s3:::", *ACCOUNT_REGION_BUCKET, suffix)


def only(mapping: dict[str, Any]) -> tuple[str, Any]:
    assert len(mapping) == 1, f"expected exactly one resource, found {sorted(mapping)}"
    return next(iter(mapping.items()))


def properties(resource: dict[str, Any]) -> dict[str, Any]:
    props = resource["Properties"]
    assert isinstance(props, dict)
    return props


# --- the function -------------------------------------------------------------------------------------


def test_function_runtime_layers_architecture_memory_timeout_and_tracing(api_template: Template) -> None:
    layer_ids = sorted(resources(api_template, "AWS::Lambda::LayerVersion"))
    assert len(layer_ids) == 2
    _, function = only(dict(resources(api_template, "AWS::Lambda::Function")))
    props = properties(function)
    assert props["Runtime"] == "python3.13"
    assert props["Handler"] == "inference.app.handler"
    assert props["Architectures"] == ["arm64"]
    assert props["MemorySize"] == 2048
    assert isinstance(props["Timeout"], int) and props["Timeout"] < 29
    assert props["Timeout"] == 20
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert sorted(layer["Ref"] for layer in props["Layers"]) == layer_ids
    assert "ReservedConcurrentExecutions" not in props
    assert "SnapStart" not in props


def test_layers_are_python313_for_the_function_architecture(api_template: Template) -> None:
    for layer in resources(api_template, "AWS::Lambda::LayerVersion").values():
        props = properties(layer)
        assert props["CompatibleRuntimes"] == ["python3.13"]
        assert props["CompatibleArchitectures"] == ["arm64"]


def test_function_environment_points_at_the_model_store(api_template: Template) -> None:
    _, function = only(dict(resources(api_template, "AWS::Lambda::Function")))
    variables = properties(function)["Environment"]["Variables"]
    assert variables["MODELSHIP_STORE"] == cfn_join("s3://", *ACCOUNT_REGION_BUCKET)
    assert variables["POWERTOOLS_SERVICE_NAME"] == "modelship"
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "Modelship"
    assert variables["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false"
    assert variables["MODELSHIP_SESSION_MEMORY_MB"] == "1024"  # half of the default 2048 MB
    assert variables["MODELSHIP_INFERENCE_TIMEOUT_SECONDS"] == "10"  # half of the default 20 s timeout
    assert variables["MODELSHIP_LOAD_TIMEOUT_SECONDS"] == "10"
    assert "MODELSHIP_PRELOAD" not in variables


def test_function_logs_to_its_own_log_group_with_retention(api_template: Template) -> None:
    _, function = only(dict(resources(api_template, "AWS::Lambda::Function")))
    log_group_id = properties(function)["LoggingConfig"]["LogGroup"]["Ref"]
    log_group = resources(api_template, "AWS::Logs::LogGroup")[log_group_id]
    assert properties(log_group)["RetentionInDays"] == 30
    assert log_group["DeletionPolicy"] == "Retain"


def test_live_alias_points_at_the_published_version(api_template: Template) -> None:
    version_id, _ = only(dict(resources(api_template, "AWS::Lambda::Version")))
    api_template.has_resource_properties(
        "AWS::Lambda::Alias", {"Name": "live", "FunctionVersion": {"Fn::GetAtt": [version_id, "Version"]}}
    )


def test_alternate_options_reach_the_function(alternate_api_template: Template) -> None:
    _, function = only(dict(resources(alternate_api_template, "AWS::Lambda::Function")))
    props = properties(function)
    assert props["Architectures"] == ["x86_64"]
    assert props["MemorySize"] == 3008
    assert props["Timeout"] == 25
    assert props["ReservedConcurrentExecutions"] == 10
    assert props["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert props["Environment"]["Variables"]["MODELSHIP_PRELOAD"] == "iris,resnet:3"
    for layer in resources(alternate_api_template, "AWS::Lambda::LayerVersion").values():
        assert properties(layer)["CompatibleArchitectures"] == ["x86_64"]
    for log_group in resources(alternate_api_template, "AWS::Logs::LogGroup").values():
        assert properties(log_group)["RetentionInDays"] == 7
        assert log_group["DeletionPolicy"] == "Delete"


def test_function_asset_is_core_and_entry_with_python313_bytecode(default_app: App) -> None:
    """The function's code asset holds functions/ minus caches, egg-info and tests, plus one 3.13 .pyc per
    module: unchecked-hash (used whatever the zip's file times; /var/task is read-only, so a missing one
    would be compiled at every cold start), naming its source under /var/task."""
    api_stack = stack(default_app, "modelship-prod-api")
    assembly = default_app.synth()
    _, function = only(dict(resources(Template.from_stack(api_stack), "AWS::Lambda::Function")))
    s3_key = properties(function)["Code"]["S3Key"]
    asset_dir = Path(assembly.directory) / f"asset.{s3_key.removesuffix('.zip')}"
    assert asset_dir.is_dir(), f"the function asset {asset_dir} was not staged"
    files = [path.relative_to(asset_dir).as_posix() for path in asset_dir.rglob("*") if path.is_file()]
    assert files, "the function asset is empty"
    offenders = [name for name in files if ".egg-info" in name or "/tests/" in f"/{name}"]
    assert offenders == []
    top_level = {name.split("/")[0] for name in files}
    assert top_level <= {"modelship", "inference"}, top_level

    sources = sorted(name for name in files if name.endswith(".py"))
    compiled = {name for name in files if name.endswith(".pyc")}
    expected = {
        f"{directory}/__pycache__/{stem}.cpython-313.pyc"
        for directory, _, file_name in (source.rpartition("/") for source in sources)
        for stem in [file_name.removesuffix(".py")]
    }
    assert compiled == expected
    app_pyc = (asset_dir / "inference" / "__pycache__" / "app.cpython-313.pyc").read_bytes()
    assert int.from_bytes(app_pyc[4:8], "little") == 0b01  # PEP 552: hash-based, source not checked
    assert b"/var/task/inference/app.py" in app_pyc


# --- IAM ----------------------------------------------------------------------------------------------


def test_function_role_has_exactly_the_expected_statements(api_template: Template) -> None:
    _, function = only(dict(resources(api_template, "AWS::Lambda::Function")))
    role_id = properties(function)["Role"]["Fn::GetAtt"][0]
    role = properties(resources(api_template, "AWS::IAM::Role")[role_id])
    assert "ManagedPolicyArns" not in role
    assert "Policies" not in role
    policies = [
        properties(policy)
        for policy in resources(api_template, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in properties(policy)["Roles"]
    ]
    assert len(policies) == 1
    log_group_ref = properties(function)["LoggingConfig"]["LogGroup"]
    statements = policies[0]["PolicyDocument"]["Statement"]
    assert statements == [
        {
            "Sid": "WriteOwnLogGroup",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": {"Fn::GetAtt": [log_group_ref["Ref"], "Arn"]},
        },
        {
            "Sid": "ReadModels",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": bucket_arn("/models/*"),
            "Condition": {"StringEquals": {"s3:ResourceAccount": {"Ref": "AWS::AccountId"}}},
        },
        {
            "Sid": "ListModels",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn(),
            "Condition": {
                "StringLike": {"s3:prefix": ["models/*"]},
                "StringEquals": {"s3:ResourceAccount": {"Ref": "AWS::AccountId"}},
            },
        },
        {"Effect": "Allow", "Action": ["xray:PutTelemetryRecords", "xray:PutTraceSegments"], "Resource": "*"},
    ]


def test_no_s3_permission_anywhere_uses_a_wildcard_resource(api_template: Template) -> None:
    for policy in resources(api_template, "AWS::IAM::Policy").values():
        for statement in properties(policy)["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if any(action.startswith("s3:") for action in actions):
                assert statement["Resource"] != "*"
                assert not any(action in {"s3:*", "*"} for action in actions)


# --- API Gateway --------------------------------------------------------------------------------------


def test_rest_api_is_regional_and_treats_every_type_as_binary(api_template: Template) -> None:
    api_template.has_resource_properties(
        "AWS::ApiGateway::RestApi",
        {
            "BinaryMediaTypes": ["*/*", "application/octet-stream"],
            "EndpointConfiguration": {"Types": ["REGIONAL"]},
            # Unique per stage: API Gateway metrics, and so the alarms, are keyed by API name.
            "Name": "modelship-prod",
        },
    )


def test_rest_api_compresses_responses_over_the_doors_threshold(api_template: Template) -> None:
    """API Gateway compresses what the function did not (deflate-only clients, its own errors), from the
    same size on as the doors do; it skips a response the function marked with Content-Encoding."""
    assert inference_api.MIN_COMPRESSION_BYTES == compression.MIN_COMPRESSED_BYTES
    api_template.has_resource_properties(
        "AWS::ApiGateway::RestApi", {"MinimumCompressionSize": compression.MIN_COMPRESSED_BYTES}
    )


def test_v2_and_its_proxy_are_routed_to_the_live_alias(api_template: Template) -> None:
    api_id, _ = only(dict(resources(api_template, "AWS::ApiGateway::RestApi")))
    alias_id, _ = only(dict(resources(api_template, "AWS::Lambda::Alias")))
    api_resources = resources(api_template, "AWS::ApiGateway::Resource")
    by_path = {
        properties(resource)["PathPart"]: (rid, properties(resource))
        for rid, resource in api_resources.items()
    }
    assert set(by_path) == {"v2", "{proxy+}"}
    v2_id, v2 = by_path["v2"]
    assert v2["ParentId"] == {"Fn::GetAtt": [api_id, "RootResourceId"]}
    proxy_id, proxy = by_path["{proxy+}"]
    assert proxy["ParentId"] == {"Ref": v2_id}

    methods = [properties(method) for method in resources(api_template, "AWS::ApiGateway::Method").values()]
    assert sorted(method["ResourceId"]["Ref"] for method in methods) == sorted([v2_id, proxy_id])
    for method in methods:
        assert method["HttpMethod"] == "ANY"
        assert method["AuthorizationType"] == "AWS_IAM"
        assert method.get("ApiKeyRequired") in (None, False)
        integration = method["Integration"]
        assert integration["Type"] == "AWS_PROXY"
        assert integration["IntegrationHttpMethod"] == "POST"
        assert {"Ref": alias_id} in json.loads(json.dumps(integration["Uri"]))["Fn::Join"][1]

    permissions = [properties(p) for p in resources(api_template, "AWS::Lambda::Permission").values()]
    assert len(permissions) == 2, "one invoke permission per method, no test-invoke permissions"
    for permission in permissions:
        assert permission["FunctionName"] == {"Ref": alias_id}
        assert permission["Principal"] == "apigateway.amazonaws.com"


def test_stage_is_throttled_traced_and_access_logged_in_json(api_template: Template) -> None:
    _, stage = only(dict(resources(api_template, "AWS::ApiGateway::Stage")))
    props = properties(stage)
    assert props["StageName"] == "prod"
    assert props["TracingEnabled"] is True
    assert props["MethodSettings"] == [
        {
            "DataTraceEnabled": False,
            "HttpMethod": "*",
            "LoggingLevel": "ERROR",
            "MetricsEnabled": False,
            "ResourcePath": "/*",
            "ThrottlingBurstLimit": 200,
            "ThrottlingRateLimit": 100,
        }
    ]
    access_log = props["AccessLogSetting"]
    access_log_group = json.dumps(access_log["DestinationArn"])
    log_group_ids = [rid for rid in resources(api_template, "AWS::Logs::LogGroup") if rid in access_log_group]
    assert len(log_group_ids) == 1
    log_format = json.loads(access_log["Format"])
    assert log_format["requestId"] == "$context.requestId"
    assert log_format["status"] == "$context.status"
    assert log_format["integrationLatency"] == "$context.integrationLatency"
    assert log_format["caller"] == "$context.identity.caller"


def test_gateway_errors_use_the_protocol_error_body(api_template: Template) -> None:
    for response_type in ("DEFAULT_4XX", "DEFAULT_5XX"):
        api_template.has_resource_properties(
            "AWS::ApiGateway::GatewayResponse",
            {
                "ResponseType": response_type,
                "ResponseTemplates": {"application/json": '{"error": $context.error.messageString}'},
            },
        )


def test_iam_mode_creates_no_api_key(api_template: Template) -> None:
    api_template.resource_count_is("AWS::ApiGateway::ApiKey", 0)
    api_template.resource_count_is("AWS::ApiGateway::UsagePlan", 0)


def test_api_key_mode_requires_a_key_tied_to_a_throttled_usage_plan(alternate_api_template: Template) -> None:
    for method in resources(alternate_api_template, "AWS::ApiGateway::Method").values():
        assert properties(method)["AuthorizationType"] == "NONE"
        assert properties(method)["ApiKeyRequired"] is True
    key_id, _ = only(dict(resources(alternate_api_template, "AWS::ApiGateway::ApiKey")))
    plan_id, plan = only(dict(resources(alternate_api_template, "AWS::ApiGateway::UsagePlan")))
    assert properties(plan)["Throttle"] == {"BurstLimit": 40, "RateLimit": 20}
    assert len(properties(plan)["ApiStages"]) == 1
    alternate_api_template.has_resource_properties(
        "AWS::ApiGateway::UsagePlanKey", {"KeyId": {"Ref": key_id}, "UsagePlanId": {"Ref": plan_id}}
    )
    alternate_api_template.has_output("ApiKeyId", {"Value": {"Ref": key_id}})


def test_cloudwatch_role_is_optional(api_template: Template, alternate_api_template: Template) -> None:
    api_template.resource_count_is("AWS::ApiGateway::Account", 1)
    alternate_api_template.resource_count_is("AWS::ApiGateway::Account", 0)


# --- alarms -------------------------------------------------------------------------------------------


def alarms_by_metric(template_: Template) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for alarm in resources(template_, "AWS::CloudWatch::Alarm").values():
        props = properties(alarm)
        key = props.get("MetricName") or "+".join(
            sorted(
                metric["MetricStat"]["Metric"]["MetricName"]
                for metric in props["Metrics"]
                if "MetricStat" in metric
            )
        )
        assert isinstance(key, str)
        found[key] = props
    return found


def test_alarms_cover_errors_latency_and_throttles(api_template: Template) -> None:
    alarms = alarms_by_metric(api_template)
    assert set(alarms) == {
        "5XXError",
        "Latency",
        "ApiThrottledRequests",
        "Errors+Invocations",
        "Duration",
        "Throttles",
    }
    assert alarms["5XXError"]["Namespace"] == "AWS/ApiGateway"
    assert alarms["5XXError"]["Statistic"] == "Average"
    assert alarms["5XXError"]["Threshold"] == 0.05
    dimension_names = {d["Name"] for d in alarms["5XXError"]["Dimensions"]}
    assert dimension_names == {"ApiName", "Stage"}
    api_name = next(d["Value"] for d in alarms["5XXError"]["Dimensions"] if d["Name"] == "ApiName")
    assert api_name == "modelship-prod"
    assert alarms["Latency"]["ExtendedStatistic"] == "p99"
    assert alarms["Latency"]["Threshold"] == 3000
    assert alarms["Duration"]["ExtendedStatistic"] == "p99"
    assert alarms["Duration"]["Threshold"] == 16000  # 80 % of the 20 s timeout
    assert alarms["Throttles"]["Namespace"] == "AWS/Lambda"
    assert alarms["Throttles"]["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarms["ApiThrottledRequests"]["Namespace"] == "Modelship/prod"
    for props in alarms.values():
        assert props["TreatMissingData"] == "notBreaching"
        assert "AlarmActions" not in props


def test_api_throttle_metric_comes_from_429s_in_the_access_log(api_template: Template) -> None:
    _, metric_filter = only(dict(resources(api_template, "AWS::Logs::MetricFilter")))
    props = properties(metric_filter)
    assert props["FilterPattern"] == '{ $.status = "429" }'
    assert props["MetricTransformations"] == [
        {
            "DefaultValue": 0,
            "MetricName": "ApiThrottledRequests",
            "MetricNamespace": "Modelship/prod",
            "MetricValue": "1",
        }
    ]


def test_alarm_topic_receives_alarm_and_ok_actions(alternate_api_template: Template) -> None:
    topic = "arn:aws:sns:eu-west-1:123456789012:oncall"
    alarms = alarms_by_metric(alternate_api_template)
    assert len(alarms) == 6
    for props in alarms.values():
        assert props["AlarmActions"] == [topic]
        assert props["OKActions"] == [topic]
    assert alarms["Latency"]["Threshold"] == 1500


# --- outputs ------------------------------------------------------------------------------------------


def test_outputs_name_the_endpoint_api_and_bucket(api_template: Template) -> None:
    api_id, _ = only(dict(resources(api_template, "AWS::ApiGateway::RestApi")))
    api_template.has_output("RestApiId", {"Value": {"Ref": api_id}})
    api_template.has_output("ModelBucketName", {"Value": {"Fn::Join": ["", ACCOUNT_REGION_BUCKET]}})
    endpoint = api_template.find_outputs("EndpointUrl")["EndpointUrl"]["Value"]
    parts = endpoint["Fn::Join"][1]
    assert parts[0] == "https://"
    assert {"Ref": api_id} in parts
