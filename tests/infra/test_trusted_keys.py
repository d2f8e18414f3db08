"""Signed models on Lambda: ``-c trusted_keys=ARN,...`` (infra/config.py, core/signing.py).

With key ARNs, the inference function gets ``MODELSHIP_TRUSTED_KEYS`` and its role kms:GetPublicKey on
exactly those keys; without, the template is what it was. Aliases, bare key ids, malformed ARNs and empty
entries are refused at synth, since the grant must name key ARNs. A canary release keeps its pre-traffic
hook as it was (the hook invokes the function, which resolves the keys with its own role).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Annotations, Match, Template
from modelship.core.settings import MAX_TRUSTED_KEY_ENTRIES, PRELOAD_ENV, TRUSTED_KEYS_ENV, Settings
from modelship.core.signing import trusted_key_entry_kind

from infra.config import (
    FUNCTION_OWN_ENVIRONMENT_BYTES,
    LAMBDA_ENVIRONMENT_BYTES,
    ConfigError,
    DeployConfig,
)
from infra.constructs import release
from tests.infra.conftest import OPERATIONS_CONTEXT, REPO_ROOT, SynthFactory, resources, template
from tests.infra.test_nag import findings

pytestmark = pytest.mark.infra

KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
MULTI_REGION_KEY_ARN = "arn:aws:kms:us-east-1:210987654321:key/mrk-0123456789abcdef0123456789abcdef"
INFERENCE_HANDLER = "inference.app.handler"
# Every option of the release on, signed: the hook must work as it does unsigned.
SIGNED_CONTEXT: dict[str, object] = {
    **OPERATIONS_CONTEXT,
    "stage": "prod",
    "trusted_keys": f"{KEY_ARN}, {MULTI_REGION_KEY_ARN}",
}
READ_TRUSTED_PUBLIC_KEYS = {
    "Sid": "ReadTrustedPublicKeys",
    "Effect": "Allow",
    "Action": "kms:GetPublicKey",
    "Resource": [KEY_ARN, MULTI_REGION_KEY_ARN],
}
# The longest stage infra/config.py accepts, and more than the longest AWS region name.
LONGEST_STAGE_CHARS = 16
REGION_CHARS_BOUND = 20


@pytest.fixture(scope="module")
def signed_app(make_app: SynthFactory) -> App:
    return make_app(**SIGNED_CONTEXT)


@pytest.fixture(scope="module")
def signed_template(signed_app: App) -> Template:
    return template(signed_app, "modelship-prod-api")


def properties(resource: dict[str, Any]) -> dict[str, Any]:
    props = resource["Properties"]
    assert isinstance(props, dict)
    return props


def function_by_handler(template_: Template, handler: str) -> dict[str, Any]:
    found = [
        properties(resource)
        for resource in resources(template_, "AWS::Lambda::Function").values()
        if properties(resource)["Handler"] == handler
    ]
    assert len(found) == 1, f"expected one function with handler {handler}, found {len(found)}"
    return found[0]


def role_statements(template_: Template, function: dict[str, Any]) -> list[dict[str, Any]]:
    role_id = function["Role"]["Fn::GetAtt"][0]
    policies = [
        properties(policy)
        for policy in resources(template_, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in properties(policy)["Roles"]
    ]
    assert len(policies) == 1
    statements = policies[0]["PolicyDocument"]["Statement"]
    assert isinstance(statements, list)
    return statements


def kms_statements(template_: Template) -> list[dict[str, Any]]:
    """Every statement of every policy and role in the template that names a KMS action."""
    documents = [
        properties(policy)["PolicyDocument"] for policy in resources(template_, "AWS::IAM::Policy").values()
    ]
    for role in resources(template_, "AWS::IAM::Role").values():
        documents += [inline["PolicyDocument"] for inline in properties(role).get("Policies", [])]
    return [
        statement
        for document in documents
        for statement in document["Statement"]
        if "kms:" in json.dumps(statement["Action"])
    ]


def environments(template_: Template) -> list[dict[str, Any]]:
    return [
        properties(function).get("Environment", {}).get("Variables", {})
        for function in resources(template_, "AWS::Lambda::Function").values()
    ]


# --- with trusted keys ----------------------------------------------------------------------------------


def test_the_function_is_told_the_key_arns_and_nothing_else_changes(
    signed_template: Template, api_template: Template
) -> None:
    signed = function_by_handler(signed_template, INFERENCE_HANDLER)["Environment"]["Variables"]
    unsigned = function_by_handler(api_template, INFERENCE_HANDLER)["Environment"]["Variables"]
    assert signed == {**unsigned, TRUSTED_KEYS_ENV: f"{KEY_ARN},{MULTI_REGION_KEY_ARN}"}
    # What the function's init reads back is the list given, in order.
    assert Settings.from_env({TRUSTED_KEYS_ENV: signed[TRUSTED_KEYS_ENV]}).trusted_keys == (
        KEY_ARN,
        MULTI_REGION_KEY_ARN,
    )


def test_the_role_may_read_exactly_those_public_keys(
    signed_template: Template, api_template: Template
) -> None:
    signed = role_statements(signed_template, function_by_handler(signed_template, INFERENCE_HANDLER))
    unsigned = role_statements(api_template, function_by_handler(api_template, INFERENCE_HANDLER))
    assert [statement for statement in signed if statement not in unsigned] == [READ_TRUSTED_PUBLIC_KEYS]
    assert [statement for statement in unsigned if statement not in signed] == []
    # No other role in the stack (the hook's, CodeDeploy's, API Gateway's) gains any KMS permission.
    assert kms_statements(signed_template) == [READ_TRUSTED_PUBLIC_KEYS]


def test_one_key_is_granted_alone(make_app: SynthFactory) -> None:
    template_ = template(make_app(trusted_keys=KEY_ARN), "modelship-prod-api")
    function = function_by_handler(template_, INFERENCE_HANDLER)
    assert function["Environment"]["Variables"][TRUSTED_KEYS_ENV] == KEY_ARN
    assert kms_statements(template_) == [{**READ_TRUSTED_PUBLIC_KEYS, "Resource": KEY_ARN}]


def test_the_pre_traffic_hook_is_unchanged_and_gains_no_kms(signed_template: Template) -> None:
    """The hook invokes the new version, whose init resolves the keys with the function's role: the hook
    needs nothing more. Its smoke model passes only if it is signed, as every model then must be."""
    hook = function_by_handler(signed_template, release.HOOK_HANDLER)
    variables = hook["Environment"]["Variables"]
    assert set(variables) == {release.TARGET_VERSION_ENV, release.SMOKE_MODEL_ENV}
    assert variables[release.SMOKE_MODEL_ENV] == "iris"
    hook_actions = [statement["Action"] for statement in role_statements(signed_template, hook)]
    assert hook_actions == [
        ["logs:CreateLogStream", "logs:PutLogEvents"],
        "lambda:InvokeFunction",
        "codedeploy:PutLifecycleEventHookExecutionStatus",
    ]
    group = next(iter(resources(signed_template, "AWS::CodeDeploy::DeploymentGroup").values()))
    assert properties(group)["DeploymentConfigName"] == "CodeDeployDefault.LambdaCanary10Percent5Minutes"
    alias = next(iter(resources(signed_template, "AWS::Lambda::Alias").values()))
    hook_id = next(
        logical_id
        for logical_id, resource in resources(signed_template, "AWS::Lambda::Function").items()
        if properties(resource)["Handler"] == release.HOOK_HANDLER
    )
    assert alias["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]["BeforeAllowTrafficHook"] == {"Ref": hook_id}


def test_cdk_nag_finds_nothing_unacknowledged_and_cdk_warns_of_nothing(signed_app: App) -> None:
    assert findings(signed_app) == {}
    for child in signed_app.node.children:
        if isinstance(child, Stack):
            annotations = Annotations.from_stack(child)
            assert annotations.find_error("*", Match.any_value()) == []
            assert annotations.find_warning("*", Match.any_value()) == []
    signed_app.synth()  # the registered packs pass too, or synthesis would raise


# --- without --------------------------------------------------------------------------------------------


def test_by_default_no_function_is_told_of_keys_and_no_role_touches_kms(api_template: Template) -> None:
    assert DeployConfig.from_context({}).trusted_keys == ()
    assert kms_statements(api_template) == []
    assert all(TRUSTED_KEYS_ENV not in variables for variables in environments(api_template))


def test_an_empty_value_is_the_default_template(make_app: SynthFactory, api_template: Template) -> None:
    """``-c trusted_keys=`` is today's template, byte for byte."""
    unset = template(make_app(trusted_keys=""), "modelship-prod-api")
    assert unset.to_json() == api_template.to_json()


# --- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        KEY_ARN,
        f" {KEY_ARN} , {MULTI_REGION_KEY_ARN} ",
        [KEY_ARN, MULTI_REGION_KEY_ARN],  # a list in cdk.json
        "arn:aws-cn:kms:cn-north-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-0123456789abcdef0123456789abcdef",
        "arn:aws-iso-b:kms:us-isob-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    ],
)
def test_key_arns_are_accepted_as_the_runtime_reads_them(value: object) -> None:
    keys = DeployConfig.from_context({"trusted_keys": value}).trusted_keys
    assert keys and all(key == key.strip() for key in keys)
    # Each is a KMS key to the runtime (kms:GetPublicKey), never taken for a PEM file's path.
    assert [trusted_key_entry_kind(key) for key in keys] == ["kms"] * len(keys)
    assert Settings.from_env({TRUSTED_KEYS_ENV: ",".join(keys)}).trusted_keys == keys


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("alias/modelship-signing", "entry 1 (alias/modelship-signing) is a KMS alias"),
        (
            f"{KEY_ARN},arn:aws:kms:eu-west-1:123456789012:alias/modelship-signing",
            "entry 2 (arn:aws:kms:eu-west-1:123456789012:alias/modelship-signing) is a KMS alias",
        ),
        ("alias/modelship-signing", "aws kms describe-key --key-id alias/modelship-signing"),
        ("1234abcd-12ab-34cd-56ef-1234567890ab", "is a key id without its ARN"),
        ("mrk-0123456789abcdef0123456789abcdef", "is a key id without its ARN"),
        ("arn:aws:s3:::modelship-models", "is not a KMS key ARN: arn:<partition>:kms:<region>:"),
        ("arn:aws:kms:eu-west-1:12345:key/1234abcd-12ab-34cd-56ef-1234567890ab", "is not a KMS key ARN"),
        ("arn:aws:kms:eu-west-1:123456789012:key/*", "is not a KMS key ARN"),
        ("arn:aws:kms:*:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab", "is not a KMS key ARN"),
        ("arn:aws:kms:eu-west-1:123456789012:key/not-a-key", "is not a KMS key ARN"),
        ("/etc/modelship/signer.pem", "is not a KMS key ARN"),
        ("-----BEGIN PUBLIC KEY-----MFkw", "is not a KMS key ARN"),
        (f"{KEY_ARN},,{MULTI_REGION_KEY_ARN}", "entry 2 is empty"),
        (f"{KEY_ARN},", "entry 2 is empty"),
        (f", {KEY_ARN}", "entry 1 is empty"),
        (",", "entry 1 is empty"),
        ([KEY_ARN, " "], "entry 2 is empty"),
        ([f"{KEY_ARN},{MULTI_REGION_KEY_ARN}"], "each item of the list must be one KMS key ARN"),
        (f"{KEY_ARN},{KEY_ARN}", f"entry 2 ({KEY_ARN}) is listed twice"),
        (
            ",".join([KEY_ARN] * (MAX_TRUSTED_KEY_ENTRIES + 1)),
            f"at most {MAX_TRUSTED_KEY_ENTRIES} keys, got 65",
        ),
        (3, "must be a comma-separated string or a list of strings"),
        (True, "must be a comma-separated string or a list of strings"),
    ],
)
def test_what_iam_cannot_grant_is_refused_with_the_reason(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        DeployConfig.from_context({"trusted_keys": value})
    assert f"trusted_keys={value!r}: " in str(raised.value)
    assert message in str(raised.value)


def test_every_bad_entry_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        DeployConfig.from_context({"trusted_keys": f"alias/a,{KEY_ARN},,kms-key"})
    text = str(raised.value)
    assert "entry 1 (alias/a) is a KMS alias" in text
    assert "entry 3 is empty" in text
    assert "entry 4 ('kms-key') is not a KMS key ARN" in text
    assert "entry 2" not in text


def distinct_key_arns(count: int) -> list[str]:
    return [
        f"arn:aws:kms:eu-west-1:123456789012:key/{number:08x}-12ab-34cd-56ef-1234567890ab"
        for number in range(count)
    ]


def test_keys_that_would_overflow_lambdas_environment_are_refused() -> None:
    """64 key ARNs are more than Lambda's 4 KB of environment holds: refused at synth, not at deploy."""
    room = LAMBDA_ENVIRONMENT_BYTES - FUNCTION_OWN_ENVIRONMENT_BYTES
    fitting = (room - len(TRUSTED_KEYS_ENV)) // (len(KEY_ARN) + 1)
    DeployConfig.from_context({"trusted_keys": distinct_key_arns(fitting)})
    with pytest.raises(ConfigError, match=r"trusted_keys and preload would make \d+ bytes of environment"):
        DeployConfig.from_context({"trusted_keys": distinct_key_arns(fitting + 1)})
    with pytest.raises(ConfigError, match="Lambda allows 4096 in all"):
        DeployConfig.from_context(
            {"trusted_keys": distinct_key_arns(fitting), "preload": ",".join(f"m{n}" for n in range(20))}
        )


def test_the_functions_own_variables_fit_in_the_reserve(signed_template: Template) -> None:
    """The reserve infra/config.py keeps for the function's own variables holds them, measured at their
    longest: a 16-character stage in the bucket's name, an account id, and a long region."""
    variables = function_by_handler(signed_template, INFERENCE_HANDLER)["Environment"]["Variables"]
    own = {name: value for name, value in variables.items() if name not in {TRUSTED_KEYS_ENV, PRELOAD_ENV}}

    def longest(value: object) -> int:
        if isinstance(value, str):
            return len(value)
        if isinstance(value, dict) and "Fn::Join" in value:
            return sum(longest(part) for part in value["Fn::Join"][1])
        assert value in ({"Ref": "AWS::AccountId"}, {"Ref": "AWS::Region"}), value
        return 12 if value == {"Ref": "AWS::AccountId"} else REGION_CHARS_BOUND

    size = sum(len(name) + longest(value) for name, value in own.items()) + LONGEST_STAGE_CHARS - len("prod")
    assert size <= FUNCTION_OWN_ENVIRONMENT_BYTES


def test_cdk_synth_exits_2_naming_the_alias(tmp_path: Path) -> None:
    """As the CDK CLI runs the app: a `modelship:` message and exit status 2, before anything is built."""
    context = {"trusted_keys": "alias/modelship-signing"}
    result = subprocess.run(
        [sys.executable, "-m", "infra.app"],
        cwd=REPO_ROOT,
        env={**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    # The last lines are ours (the jsii runtime may print its own notices first).
    assert "\nmodelship: invalid CDK context:\n" in f"\n{result.stderr}"
    assert "trusted_keys='alias/modelship-signing': entry 1 (alias/modelship-signing) is a KMS alias" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
