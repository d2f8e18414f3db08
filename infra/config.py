"""Deployment configuration: read from CDK context, validated at synth time.

Every context key is a field of ``DeployConfig`` (under its alias where the names differ), and every key
has a default, so ``cdk synth`` needs no context at all. Override with ``-c key=value``: values from the
command line arrive as strings, values from ``cdk.json`` may be typed JSON, and an empty value means the
default. Any other key, however spelt (``Memory``, ``log-retention-days``), is an error; only CDK's own
keys pass. Every invalid value is reported at once, so one synth shows every mistake; the checks between
values (the latency alarm against the timeout, the two layer zips, provisioned against reserved
concurrency, options that need another, what fits in the function's environment) follow once each
value is valid.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

from modelship.core.errors import BadRequest
from modelship.core.names import parse_model_references
from modelship.core.settings import (
    FALSE_WORDS,
    MAX_TRUSTED_KEY_ENTRIES,
    PRELOAD_ENV,
    TRUE_WORDS,
    TRUSTED_KEYS_ENV,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

Architecture = Literal["arm64", "x86_64"]
AuthMode = Literal["iam", "api_key"]
Removal = Literal["retain", "destroy"]

REPO_ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = REPO_ROOT / "functions"

# API Gateway's REST integration timeout is 29 s: the function must give up first, so the client gets
# the function's own error (and the logs show why) instead of an opaque 504 from the gateway.
API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS = 29
# Retention periods CloudWatch Logs accepts, in days, and their aws_logs.RetentionDays member names.
LOG_RETENTION_NAMES = {
    1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS", 30: "ONE_MONTH",
    60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS", 150: "FIVE_MONTHS", 180: "SIX_MONTHS",
    365: "ONE_YEAR", 400: "THIRTEEN_MONTHS", 545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS", 1096: "THREE_YEARS",
    1827: "FIVE_YEARS", 2192: "SIX_YEARS", 2557: "SEVEN_YEARS", 2922: "EIGHT_YEARS", 3288: "NINE_YEARS",
    3653: "TEN_YEARS",
}  # fmt: skip

# At most 16 characters: the stage is part of the model bucket name, which S3 caps at 63.
_STAGE_PATTERN = re.compile(r"[a-z](?:[a-z0-9-]{0,14}[a-z0-9])?")
_SNS_TOPIC_ARN_PATTERN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}")
# A Greengrass deployment targets a thing group by ARN (thing group names: 1-128 of [a-zA-Z0-9:_-]).
_THING_GROUP_ARN_PATTERN = re.compile(
    r"arn:aws[a-z-]*:iot:[a-z]{2}(?:-[a-z]+)+-[0-9]:[0-9]{12}:thinggroup/[a-zA-Z0-9:_-]{1,128}"
)
# A KMS key by ARN, as IAM names it in a policy's Resource: a key id (UUID) or a multi-Region key id.
_KMS_KEY_ARN_PATTERN = re.compile(
    r"arn:aws(?:-[a-z]+)*:kms:[a-z]{2}(?:-[a-z]+)+-[0-9]:[0-9]{12}:key/"
    r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
)
_KMS_ALIAS_PATTERN = re.compile(r"(?:arn:[^:]*:kms:[^:]*:[^:]*:)?alias/.*")
_KMS_BARE_KEY_ID_PATTERN = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}"
)
KMS_KEY_ARN_FORM: Final = "arn:<partition>:kms:<region>:<12-digit account>:key/<key id>"
# Lambda refuses a function whose environment variables (names and values) exceed 4 KB in all. The
# values the context sets (trusted_keys, preload) get what the function's own variables leave; those
# stay under the reserve (tests/infra/test_trusted_keys.py measures them).
LAMBDA_ENVIRONMENT_BYTES: Final = 4096
FUNCTION_OWN_ENVIRONMENT_BYTES: Final = 1024
# Where `modelship edge package --out` writes by default; the edge stack is built from it when it exists.
DEFAULT_EDGE_PACKAGE = REPO_ROOT / "build" / "edge"
EDGE_PACKAGE_COMMAND = "modelship edge package --store s3://BUCKET/PREFIX --model NAME --out build/edge"
# Context keys that belong to CDK itself rather than to us: feature flags (`@aws-cdk/...`), CLI settings
# (`aws:cdk:...`, acknowledged notices, telemetry) and cached lookups (`availability-zones:...`, `ssm:...`:
# every lookup key holds a colon, which none of ours does).
_FOREIGN_KEY_PATTERN = re.compile(r"^(?:@|aws:|acknowledged-issue-numbers$|cli-telemetry$)|:")
_BULLET = "\n  - "
# CodeDeploy's predefined Lambda deployment configurations (CodeDeployDefault.<name>), each with the name
# of its aws_codedeploy.LambdaDeploymentConfig constant. `-c canary=true` means the first canary.
LAMBDA_DEPLOYMENT_CONFIGS: Final = {
    "LambdaCanary10Percent5Minutes": "CANARY_10_PERCENT_5_MINUTES",
    "LambdaCanary10Percent10Minutes": "CANARY_10_PERCENT_10_MINUTES",
    "LambdaCanary10Percent15Minutes": "CANARY_10_PERCENT_15_MINUTES",
    "LambdaCanary10Percent30Minutes": "CANARY_10_PERCENT_30_MINUTES",
    "LambdaLinear10PercentEvery1Minute": "LINEAR_10_PERCENT_EVERY_1_MINUTE",
    "LambdaLinear10PercentEvery2Minutes": "LINEAR_10_PERCENT_EVERY_2_MINUTES",
    "LambdaLinear10PercentEvery3Minutes": "LINEAR_10_PERCENT_EVERY_3_MINUTES",
    "LambdaLinear10PercentEvery10Minutes": "LINEAR_10_PERCENT_EVERY_10_MINUTES",
    "LambdaAllAtOnce": "ALL_AT_ONCE",
}
DEFAULT_CANARY: Final = "LambdaCanary10Percent5Minutes"
_CODEDEPLOY_DEFAULT_PREFIX = "CodeDeployDefault."
# Application Auto Scaling's target tracking on ProvisionedConcurrencyUtilization accepts 0.1 to 0.9.
PROVISIONED_UTILIZATION_RANGE: Final = (0.1, 0.9)


class ConfigError(ValueError):
    """The CDK context holds invalid values; the message lists every problem."""


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("context", "{message}", {"message": message})


def _integer(value: object) -> object:
    """An int from cdk.json or digits from ``-c``; never a bool (``true`` is not a memory size)."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _problem("must be an integer")


def _optional_integer(value: object) -> object:
    return None if isinstance(value, str) and value.lower() in {"none", "off"} else _integer(value)


def _number(value: object) -> float:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    raise _problem("must be a number")


def _check(accepts: Callable[[Any], object], problem: str) -> AfterValidator:
    """Fail with ``problem`` unless ``accepts(value)`` is truthy; an unset optional (None) passes."""

    def check(value: object) -> object:
        if value is not None and not accepts(value):
            raise _problem(problem)
        return value

    return AfterValidator(check)


def _between(low: float, high: float) -> AfterValidator:
    return _check(lambda value: low <= value <= high, f"must be between {low:g} and {high:g}")  # NaN fails


def _one_of(options: Iterable[object]) -> AfterValidator:
    allowed = tuple(options)
    return _check(lambda value: value in allowed, f"must be one of {', '.join(map(str, allowed))}")


def _boolean(value: object) -> bool:
    """true/false from cdk.json, or one of a few unambiguous words from ``-c``; nothing looser."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS | FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise _problem("must be true or false")


def _preload(value: object) -> tuple[str, ...]:
    """Parsed by the runtime's own parser of ``MODELSHIP_PRELOAD``: what synthesizes, every init accepts."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        # Each item is one reference: a blank item or one holding a comma is a mistake, not a list.
        if any("," in item or not item.strip() for item in value):
            raise _problem("each item of the list must be one model reference: name or name:version")
        value = ",".join(value)
    if not isinstance(value, str):
        raise _problem("must be a comma-separated string or a list of strings")
    try:
        references = parse_model_references(value)
    except BadRequest as error:
        raise _problem(error.message) from None
    return tuple(name if version is None else f"{name}:{version}" for name, version in references)


def _canary(value: object) -> str | None:
    """true/false, or a predefined CodeDeploy Lambda configuration by name (``CodeDeployDefault.`` optional,
    any case): the configuration's short name, or None for no CodeDeploy at all."""
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in TRUE_WORDS | FALSE_WORDS):
        return DEFAULT_CANARY if _boolean(value) else None
    if isinstance(value, str):
        wanted = value.strip().removeprefix(_CODEDEPLOY_DEFAULT_PREFIX).lower()
        for name in LAMBDA_DEPLOYMENT_CONFIGS:
            if name.lower() == wanted:
                return name
    raise _problem(
        "must be true (CodeDeployDefault." + DEFAULT_CANARY + "), false, or one of CodeDeploy's predefined "
        "Lambda configurations: " + ", ".join(LAMBDA_DEPLOYMENT_CONFIGS)
    )


def _smoke_model(value: object) -> str | None:
    """One model reference (name or name:version), by the runtime's grammar; off (or none): no hook."""
    if isinstance(value, str) and value.strip().lower() in {"none", "off"}:
        return None
    references = _preload(value) if isinstance(value, str) else ()
    if len(references) != 1:
        raise _problem("must be one model reference (name or name:version), or off")
    return references[0]


def _trusted_keys(value: object) -> tuple[str, ...]:
    """KMS key ARNs, comma-separated (or a list in cdk.json): the function's ``MODELSHIP_TRUSTED_KEYS``
    and the resources of its kms:GetPublicKey grant, so each must be a key ARN, which IAM can name
    (never an alias or a bare key id, which the runtime would accept but no policy could grant)."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        if any("," in item for item in value):
            raise _problem("each item of the list must be one KMS key ARN")
        entries = [item.strip() for item in value]
    elif isinstance(value, str):
        entries = [item.strip() for item in value.split(",")]
    else:
        raise _problem("must be a comma-separated string or a list of strings (KMS key ARNs)")
    if len(entries) > MAX_TRUSTED_KEY_ENTRIES:
        raise _problem(f"at most {MAX_TRUSTED_KEY_ENTRIES} keys, got {len(entries)}")
    problems = [
        problem
        for number, entry in enumerate(entries, start=1)
        if (problem := _trusted_key_problem(number, entry, entries[: number - 1]))
    ]
    if problems:
        raise _problem("; ".join(problems))
    return tuple(entries)


def _trusted_key_problem(number: int, entry: str, earlier: list[str]) -> str | None:
    where = f"entry {number}"
    if not entry:
        return f"{where} is empty (a doubled, leading or trailing comma?)"
    if _KMS_KEY_ARN_PATTERN.fullmatch(entry):
        return f"{where} ({entry}) is listed twice" if entry in earlier else None
    if _KMS_ALIAS_PATTERN.fullmatch(entry):
        return (
            f"{where} ({entry}) is a KMS alias: the function's role is granted kms:GetPublicKey on key "
            "ARNs, and an alias may be pointed at another key; give the key's ARN "
            f"(aws kms describe-key --key-id {entry} --query KeyMetadata.Arn)"
        )
    if _KMS_BARE_KEY_ID_PATTERN.fullmatch(entry):
        return f"{where} ({entry}) is a key id without its ARN: give the key ARN, {KMS_KEY_ARN_FORM}"
    return f"{where} ({entry[:120]!r}) is not a KMS key ARN: {KMS_KEY_ARN_FORM}"


def _zip_file(value: object) -> Path:
    if not isinstance(value, str):
        raise _problem("must be a path to a .zip file")
    path = REPO_ROOT / value  # relative to the repository; an absolute path stays as it is
    if path.suffix != ".zip" or not path.is_file():
        raise _problem(f"{path} is not an existing .zip file")
    return path


def _edge_package(value: object) -> Path | None:
    """Given explicitly, the package must exist; only the default may be absent (no edge stack then).
    ``off`` (or ``none``) leaves the edge stack out even when the default package exists."""
    if isinstance(value, str) and value.strip().lower() in {"none", "off"}:
        return None
    if not isinstance(value, str):
        raise _problem("must be a path to a directory made by `modelship edge package --out`")
    path = REPO_ROOT / value  # relative to the repository; an absolute path stays as it is
    if not path.is_dir():
        raise _problem(f"{path} is not an existing directory (make it with `modelship edge package --out`)")
    return path


Integer = BeforeValidator(_integer)
OptionalInteger = BeforeValidator(_optional_integer)
Boolean = BeforeValidator(_boolean)
ZipFile = BeforeValidator(_zip_file)
StageName = _check(
    _STAGE_PATTERN.fullmatch,
    "must be 1-16 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-' "
    "(it names the stacks, the API stage and the model bucket)",
)
TopicArn = _check(_SNS_TOPIC_ARN_PATTERN.fullmatch, "must be an SNS topic ARN")
ThingGroupArn = _check(
    _THING_GROUP_ARN_PATTERN.fullmatch,
    "must be an IoT thing group ARN: arn:aws:iot:<region>:<12-digit account>:thinggroup/<name>",
)


class DeployConfig(BaseModel):
    """Everything that varies between deployments of modelship: one field per context key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: Annotated[str, StageName] = "prod"
    architecture: Architecture = "arm64"
    # Below 512 MB, numpy and onnxruntime alone leave no room for a model.
    memory_mb: Annotated[int, Integer, _between(512, 10240)] = Field(2048, alias="memory")
    timeout_seconds: Annotated[int, Integer, _between(1, API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS - 1)] = (
        Field(20, alias="timeout")
    )
    preload: Annotated[tuple[str, ...], BeforeValidator(_preload)] = ()
    auth: AuthMode = "iam"
    throttle_rate: Annotated[float, BeforeValidator(_number), _between(1, 10000)] = 100.0
    throttle_burst: Annotated[int, Integer, _between(1, 5000)] = 200
    reserved_concurrency: Annotated[int | None, OptionalInteger, _between(1, 10000)] = None
    # Warm environments on the live alias, and Application Auto Scaling of them up to the max.
    provisioned_concurrency: Annotated[int | None, OptionalInteger, _between(1, 10000)] = None
    provisioned_concurrency_max: Annotated[int | None, OptionalInteger, _between(1, 10000)] = None
    provisioned_concurrency_target: Annotated[
        float, BeforeValidator(_number), _between(*PROVISIONED_UTILIZATION_RANGE)
    ] = 0.7
    # Releases through CodeDeploy (the configuration's short name), smoke-tested first on this model.
    canary: Annotated[str | None, BeforeValidator(_canary)] = None
    canary_smoke_model: Annotated[str | None, BeforeValidator(_smoke_model)] = "iris"
    # Signed models: the function serves only versions one of these KMS keys signed (core/signing.py).
    trusted_keys: Annotated[tuple[str, ...], BeforeValidator(_trusted_keys)] = ()
    dashboard: Annotated[bool, Boolean] = False
    snapstart: Annotated[bool, Boolean] = False
    removal: Removal = "retain"
    log_retention_days: Annotated[int, Integer, _one_of(LOG_RETENTION_NAMES)] = 30
    latency_alarm_ms: Annotated[int, Integer, _between(1, 29000)] = 3000
    alarm_topic_arn: Annotated[str | None, TopicArn] = None
    api_cloudwatch_role: Annotated[bool, Boolean] = True
    onnx_layer_zip: Annotated[Path | None, ZipFile] = None
    deps_layer_zip: Annotated[Path | None, ZipFile] = None
    # The edge stack: the Greengrass components of this package, deployed to this thing group (if set).
    edge_package: Annotated[Path | None, BeforeValidator(_edge_package)] = DEFAULT_EDGE_PACKAGE
    thing_group_arn: Annotated[str | None, ThingGroupArn] = None

    @model_validator(mode="after")
    def _consistent(self) -> DeployConfig:
        problems = []
        if self.latency_alarm_ms > self.timeout_seconds * 1000:
            problems.append(
                f"latency_alarm_ms={self.latency_alarm_ms} exceeds the function timeout "
                f"({self.timeout_seconds} s): the alarm could never fire"
            )
        if (self.onnx_layer_zip is None) != (self.deps_layer_zip is None):
            problems.append("onnx_layer_zip and deps_layer_zip must be given together (or neither)")
        if self.thing_group_arn is not None and not self.has_edge_package:
            missing = "edge_package is off" if self.edge_package is None else f"{self.edge_package} is absent"
            problems.append(
                f"thing_group_arn needs an edge package, but {missing}: "
                f"make one with `{EDGE_PACKAGE_COMMAND}`"
            )
        problems += self._capacity_problems()
        problems += self._environment_problems()
        if self.canary is None and "canary_smoke_model" in self.model_fields_set:
            problems.append(
                "canary_smoke_model is the pre-traffic check of a canary release: it needs canary"
            )
        if problems:
            raise _problem(_BULLET.join(problems))
        return self

    def _capacity_problems(self) -> list[str]:
        provisioned, most, reserved = (
            self.provisioned_concurrency,
            self.provisioned_concurrency_max,
            self.reserved_concurrency,
        )
        problems = []
        if provisioned is None:
            if most is not None:
                problems.append("provisioned_concurrency_max needs provisioned_concurrency (the minimum)")
            if "provisioned_concurrency_target" in self.model_fields_set:
                problems.append("provisioned_concurrency_target needs provisioned_concurrency and its max")
            return problems
        if most is None and "provisioned_concurrency_target" in self.model_fields_set:
            problems.append(
                "provisioned_concurrency_target needs provisioned_concurrency_max: without it nothing scales"
            )
        if most is not None and most < provisioned:
            problems.append(
                f"provisioned_concurrency_max={most} is below provisioned_concurrency={provisioned}"
            )
        if reserved is not None:
            problems += [
                f"{key}={value} exceeds reserved_concurrency={reserved}: Lambda cannot provision more "
                "environments than the function may ever run"
                for key, value in (
                    ("provisioned_concurrency", provisioned),
                    ("provisioned_concurrency_max", most),
                )
                if value is not None and value > reserved
            ]
        return problems

    def _environment_problems(self) -> list[str]:
        """The context's variables must fit in what Lambda allows beside the function's own."""
        variables = {TRUSTED_KEYS_ENV: ",".join(self.trusted_keys), PRELOAD_ENV: ",".join(self.preload)}
        size = sum(len(name) + len(value) for name, value in variables.items() if value)
        room = LAMBDA_ENVIRONMENT_BYTES - FUNCTION_OWN_ENVIRONMENT_BYTES
        if size <= room:
            return []
        return [
            f"trusted_keys and preload would make {size} bytes of environment variables, but Lambda allows "
            f"{LAMBDA_ENVIRONMENT_BYTES} in all and the function's own take up to "
            f"{FUNCTION_OWN_ENVIRONMENT_BYTES}: name fewer keys or models (at most {room} bytes)"
        ]

    @property
    def functions_dir(self) -> Path:
        return FUNCTIONS_DIR

    @property
    def has_edge_package(self) -> bool:
        return self.edge_package is not None and self.edge_package.is_dir()

    @property
    def is_throwaway(self) -> bool:
        return self.removal == "destroy"

    def stack_name(self, part: str) -> str:
        """CloudFormation stack name (also the CDK stack id): ``modelship-<stage>-<part>``."""
        return f"modelship-{self.stage}-{part}"

    @classmethod
    def fields_by_key(cls) -> dict[str, FieldInfo]:
        """The fields by context key: the alias where one is set."""
        return {field.alias or name: field for name, field in cls.model_fields.items()}

    @classmethod
    def from_context(cls, context: Mapping[str, object]) -> DeployConfig:
        """Parse and validate the CDK context; raise ConfigError listing every problem."""
        fields = cls.fields_by_key()
        ours = {
            key: value
            for key, value in context.items()
            if not _FOREIGN_KEY_PATTERN.search(key)
            # `-c key=` (or null in cdk.json) means "use the default".
            and not (key in fields and (value is None or (isinstance(value, str) and not value.strip())))
        }
        try:
            return cls.model_validate(ours)
        except ValidationError as error:
            problems = [_describe(details, ours, fields) for details in error.errors(include_url=False)]
            raise ConfigError("invalid CDK context:" + "".join(_BULLET + item for item in problems)) from None


_MESSAGES = {
    "string_type": "must be a string",
}


def _describe(details: ErrorDetails, context: Mapping[str, object], fields: Mapping[str, FieldInfo]) -> str:
    """``key=value: problem``, in the context's own key names and without pydantic's jargon."""
    if not details["loc"]:
        return details["msg"]
    key = str(details["loc"][0])
    if details["type"] == "extra_forbidden":
        guess = difflib.get_close_matches(key.lower().replace("-", "_"), list(fields), n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        return f"unknown context key {key!r}{hint}; known keys: {', '.join(sorted(fields))}"
    if details["type"] == "literal_error":
        problem = f"must be one of {', '.join(map(str, get_args(fields[key].annotation)))}"
    else:
        problem = _MESSAGES.get(details["type"], details["msg"])
    return f"{key}={context[key]!r}: {problem}"
