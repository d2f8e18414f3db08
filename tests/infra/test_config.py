"""Context validation: defaults, parsing of command-line strings, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aws_cdk import App
from modelship.core.errors import BadRequest
from modelship.core.names import parse_model_reference

from infra.config import REPO_ROOT, ConfigError, DeployConfig

pytestmark = pytest.mark.infra

# What the CDK CLI (2.1148) puts in the app's context on its own, next to cdk.json's feature flags.
CDK_CLI_CONTEXT: dict[str, object] = {
    "@aws-cdk/core:failSynthOnValidationErrors": True,
    "aws:cdk:bundling-stacks": ["**"],
    "aws:cdk:enable-asset-metadata": True,
    "aws:cdk:enable-path-metadata": True,
    "aws:cdk:version-reporting": True,
}


def runtime_message(reference: str) -> str:
    """What the runtime says of ``reference`` (MODELSHIP_PRELOAD, the routes, the CLI)."""
    with pytest.raises(BadRequest) as raised:
        parse_model_reference(reference)
    return raised.value.message


def test_defaults_need_no_context() -> None:
    config = DeployConfig.from_context({})
    assert config.stage == "prod"
    assert config.architecture == "arm64"
    assert config.memory_mb == 2048
    assert config.timeout_seconds == 20
    assert config.preload == ()
    assert config.auth == "iam"
    assert config.snapstart is False
    assert config.removal == "retain"
    assert config.reserved_concurrency is None
    assert config.trusted_keys == ()
    assert config.stack_name("api") == "modelship-prod-api"


def test_command_line_strings_are_parsed() -> None:
    config = DeployConfig.from_context(
        {
            "stage": "local",
            "architecture": "x86_64",
            "memory": "1024",
            "timeout": "28",
            "preload": " iris , resnet:2 ",
            "auth": "api_key",
            "throttle_rate": "12.5",
            "throttle_burst": "25",
            "reserved_concurrency": "5",
            "snapstart": "yes",
            "removal": "destroy",
            "log_retention_days": "90",
        }
    )
    assert (config.stage, config.architecture, config.memory_mb, config.timeout_seconds) == (
        "local",
        "x86_64",
        1024,
        28,
    )
    assert config.preload == ("iris", "resnet:2")
    assert config.auth == "api_key"
    assert (config.throttle_rate, config.throttle_burst) == (12.5, 25)
    assert config.reserved_concurrency == 5
    assert config.snapstart is True
    assert config.is_throwaway


def test_typed_json_values_from_cdk_json_are_accepted() -> None:
    config = DeployConfig.from_context({"memory": 4096, "snapstart": True, "preload": ["iris"]})
    assert (config.memory_mb, config.snapstart, config.preload) == (4096, True, ("iris",))


def test_cdk_keys_and_feature_flags_are_ignored() -> None:
    DeployConfig.from_context(
        {
            "@aws-cdk/core:checkSecretUsage": True,
            "aws:cdk:enable-path-metadata": True,
            "acknowledged-issue-numbers": [12345],
            "cli-telemetry": False,
            "availability-zones:account=123456789012:region=eu-west-1": ["eu-west-1a"],
        }
    )


def test_the_context_the_cdk_cli_passes_is_accepted() -> None:
    app = App(context={**CDK_CLI_CONTEXT, "memory": "4096"})
    assert DeployConfig.from_context(app.node.get_all_context()).memory_mb == 4096


def test_empty_values_mean_the_default() -> None:
    config = DeployConfig.from_context({"memory": "", "stage": " ", "reserved_concurrency": "off"})
    assert (config.memory_mb, config.stage, config.reserved_concurrency) == (2048, "prod", None)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("architecture", "aarch64", "must be one of arm64, x86_64"),
        ("timeout", "29", "between 1 and 28"),
        ("timeout", "0", "between 1 and 28"),
        ("memory", "256", "between 512 and 10240"),
        ("memory", "lots", "must be an integer"),
        ("memory", True, "must be an integer"),
        ("auth", "cognito", "must be one of iam, api_key"),
        ("stage", "Prod", "1-16 characters"),
        ("stage", "a-very-long-stage-name", "1-16 characters"),
        ("stage", "dev-", "1-16 characters"),
        ("preload", "iris,../etc", "invalid model name '../etc'"),
        ("preload", "iris,iris", "twice"),
        ("preload", "iris:latest", "invalid model version 'latest'"),
        ("preload", 3, "comma-separated string or a list of strings"),
        ("snapstart", "maybe", "true or false"),
        ("snapstart", "Y", "true or false"),
        ("api_cloudwatch_role", 1, "true or false"),
        ("preload", ["iris", ""], "one model reference"),
        ("preload", ["iris, resnet"], "one model reference"),
        ("cdkmemory", "4096", "unknown context key 'cdkmemory'"),
        ("removal", "snapshot", "must be one of retain, destroy"),
        ("log_retention_days", "31", "must be one of"),
        ("throttle_rate", "nan", "between 1 and 10000"),
        ("reserved_concurrency", "0", "between 1 and 10000"),
        ("alarm_topic_arn", "arn:aws:sqs:eu-west-1:123456789012:q", "SNS topic ARN"),
        ("onnx_layer_zip", "/nonexistent/layer.zip", "not an existing .zip"),
        ("archtecture", "x86_64", "unknown context key 'archtecture' (did you mean 'architecture'?)"),
        ("memroy", "4096", "unknown context key 'memroy' (did you mean 'memory'?)"),
        ("Memory", "4096", "unknown context key 'Memory' (did you mean 'memory'?)"),
        ("log-retention-days", "7", "unknown context key 'log-retention-days' (did you mean"),
        ("memory_mb", "4096", "unknown context key 'memory_mb'"),  # a field name, not a context key
        ("functions_dir", "/tmp", "unknown context key 'functions_dir'"),
        ("thing_group_arn", "arn:aws:iot:eu-west-1:123456789012:thing/fleet", "IoT thing group ARN"),
        ("thing_group_arn", "arn:aws:iot:eu-west-1:12345:thinggroup/fleet", "IoT thing group ARN"),
        ("thing_group_arn", "arn:aws:iot:eu-west-1:123456789012:thinggroup/a b", "IoT thing group ARN"),
        ("thing_group_arn", "fleet", "IoT thing group ARN"),
        ("thing_group", "fleet", "unknown context key 'thing_group' (did you mean 'thing_group_arn'?)"),
        ("edge_package", "/nonexistent/edge", "is not an existing directory"),
        ("edge_package", 3, "must be a path to a directory"),
        ("trusted_keys", "alias/modelship-signing", "is a KMS alias"),
        ("trusted_keys", "arn:aws:kms:eu-west-1:123456789012:key/", "is not a KMS key ARN"),
        ("trusted_keys", ",", "entry 1 is empty"),
        ("trusted_key", "alias/x", "unknown context key 'trusted_key' (did you mean 'trusted_keys'?)"),
    ],
)
def test_invalid_values_are_rejected_with_the_key_and_the_reason(
    key: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        DeployConfig.from_context({key: value})
    assert key in str(raised.value)
    assert message in str(raised.value)


@pytest.mark.parametrize("reference", ["iris:0", "iris:01", "iris:", "iris:-1", "iris:2147483648"])
def test_preload_is_checked_by_the_runtime_grammar(reference: str) -> None:
    """A preload that synthesizes but that every Lambda init would reject is refused at synth."""
    with pytest.raises(ConfigError) as raised:
        DeployConfig.from_context({"preload": f"resnet:2,{reference}"})
    assert f"preload='resnet:2,{reference}': {runtime_message(reference)}" in str(raised.value)


def test_preload_is_stored_normalised() -> None:
    config = DeployConfig.from_context({"preload": ["iris", " resnet : 2 "]})
    assert config.preload == ("iris", "resnet:2")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        DeployConfig.from_context({"architecture": "mips", "timeout": "60", "auth": "none"})
    text = str(raised.value)
    assert "architecture='mips'" in text
    assert "timeout='60'" in text
    assert "auth='none'" in text


def test_latency_alarm_must_fit_within_the_timeout() -> None:
    with pytest.raises(ConfigError, match="latency_alarm_ms=25000 exceeds the function timeout"):
        DeployConfig.from_context({"latency_alarm_ms": "25000"})


def test_layer_zips_come_in_pairs(tmp_path: Path) -> None:
    zip_path = tmp_path / "onnx-layer.zip"
    zip_path.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(ConfigError, match="must be given together"):
        DeployConfig.from_context({"onnx_layer_zip": str(zip_path)})
    config = DeployConfig.from_context({"onnx_layer_zip": str(zip_path), "deps_layer_zip": str(zip_path)})
    assert config.onnx_layer_zip == zip_path


def test_synth_reports_bad_context_before_building_anything() -> None:
    from infra.app import build_app

    with pytest.raises(ConfigError, match="architecture"):
        build_app({"architecture": "sparc"})


def test_cdk_synth_exits_2_with_the_runtime_message(tmp_path: Path) -> None:
    """`cdk synth -c preload=iris:0` runs the app as the CLI does: it stops before building any layer."""
    context = {**CDK_CLI_CONTEXT, "preload": "iris:0"}
    result = subprocess.run(
        [sys.executable, "-m", "infra.app"],
        cwd=REPO_ROOT,
        env={**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"preload='iris:0': {runtime_message('iris:0')}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_layer_built_for_the_other_architecture_is_refused(
    tmp_path: Path, make_app: Callable[..., object]
) -> None:
    """An x86_64 layer on an arm64 function deploys fine and fails every cold start: refuse it at synth."""
    import zipfile

    x86_layer = tmp_path / "onnx-x86_64.zip"
    elf_header = b"\x7fELF\x02\x01\x01" + b"\0" * 11 + (62).to_bytes(2, "little") + b"\0" * 44
    with zipfile.ZipFile(x86_layer, "w") as archive:
        archive.writestr("python/onnxruntime/capi/onnxruntime_pybind11_state.so", elf_header)
    with pytest.raises(ConfigError, match=r"holds \['x86_64'\] code, but the function is arm64"):
        make_app(architecture="arm64", onnx_layer_zip=str(x86_layer))
    make_app(architecture="x86_64", onnx_layer_zip=str(x86_layer))


# --- the edge stack's keys ----------------------------------------------------------------------------


def test_the_edge_package_defaults_to_build_edge_and_the_thing_group_to_none() -> None:
    config = DeployConfig.from_context({})
    assert config.edge_package == REPO_ROOT / "build" / "edge"
    assert config.thing_group_arn is None


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:iot:eu-west-1:123456789012:thinggroup/modelship-fleet",
        "arn:aws-cn:iot:cn-north-1:123456789012:thinggroup/fleet_1",
        "arn:aws-us-gov:iot:us-gov-west-1:123456789012:thinggroup/fleet:east",
    ],
)
def test_a_thing_group_arn_with_an_edge_package_is_accepted(tmp_path: Path, arn: str) -> None:
    config = DeployConfig.from_context({"edge_package": str(tmp_path), "thing_group_arn": arn})
    assert (config.edge_package, config.thing_group_arn, config.has_edge_package) == (tmp_path, arn, True)


@pytest.mark.parametrize("value", ["off", "none", "OFF"])
def test_edge_package_off_leaves_the_edge_stack_out(value: str) -> None:
    config = DeployConfig.from_context({"edge_package": value})
    assert (config.edge_package, config.has_edge_package) == (None, False)
    with pytest.raises(ConfigError, match="thing_group_arn needs an edge package"):
        DeployConfig.from_context(
            {"edge_package": value, "thing_group_arn": "arn:aws:iot:eu-west-1:123456789012:thinggroup/fleet"}
        )


def test_a_relative_edge_package_is_relative_to_the_repository() -> None:
    config = DeployConfig.from_context({"edge_package": "infra"})
    assert config.edge_package == REPO_ROOT / "infra"


def test_a_thing_group_without_an_edge_package_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the default package may be absent; a deployment of nothing is a mistake, said at synth."""
    monkeypatch.setattr(DeployConfig, "has_edge_package", property(lambda self: False))
    with pytest.raises(ConfigError, match=r"thing_group_arn needs an edge package.*modelship edge package"):
        DeployConfig.from_context({"thing_group_arn": "arn:aws:iot:eu-west-1:123456789012:thinggroup/fleet"})
