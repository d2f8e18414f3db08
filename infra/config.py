"""Deployment configuration: read from CDK context, validated at synth time.

Every key has a default, so ``cdk synth`` needs no context at all. Override with ``-c key=value``
(values from the command line arrive as strings; values from ``cdk.json`` may be typed JSON).
All problems are collected and reported together, so one synth shows every mistake.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

Architecture = Literal["arm64", "x86_64"]
AuthMode = Literal["iam", "api_key"]
Removal = Literal["retain", "destroy"]

REPO_ROOT = Path(__file__).resolve().parent.parent

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
_STAGE_PATTERN = re.compile(r"^[a-z](?:[a-z0-9-]{0,14}[a-z0-9])?$")
# docs/contracts.md: MODELSHIP_PRELOAD is a comma-separated list of `name` or `name:version`.
_MODEL_REFERENCE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(:[0-9]{1,9})?$")
_SNS_TOPIC_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}$")
# Context keys that belong to CDK itself (feature flags, CLI settings, lookups) rather than to us.
_FOREIGN_KEY_PATTERN = re.compile(r"^(@|aws:|cdk|availability-zones:|hosted-zone:|ami:|ssm:|vpc-provider:)")


class ConfigError(ValueError):
    """The CDK context holds invalid values; the message lists every problem."""


@dataclass(frozen=True)
class DeployConfig:
    """Everything that varies between deployments of modelship."""

    stage: str = "prod"
    architecture: Architecture = "arm64"
    memory_mb: int = 2048
    timeout_seconds: int = 20
    preload: tuple[str, ...] = ()
    auth: AuthMode = "iam"
    throttle_rate: float = 100.0
    throttle_burst: int = 200
    reserved_concurrency: int | None = None
    snapstart: bool = False
    removal: Removal = "retain"
    log_retention_days: int = 30
    latency_alarm_ms: int = 3000
    alarm_topic_arn: str | None = None
    api_cloudwatch_role: bool = True
    onnx_layer_zip: Path | None = None
    deps_layer_zip: Path | None = None
    functions_dir: Path = field(default=REPO_ROOT / "functions")

    def stack_name(self, part: str) -> str:
        """CloudFormation stack name (also the CDK stack id): ``modelship-<stage>-<part>``."""
        return f"modelship-{self.stage}-{part}"

    @property
    def is_throwaway(self) -> bool:
        return self.removal == "destroy"

    @classmethod
    def from_context(cls, context: Mapping[str, object]) -> DeployConfig:
        """Parse and validate the CDK context; raise ConfigError listing every invalid key."""
        reader = _ContextReader(context)
        stage = reader.text("stage", cls.stage, _check_stage)
        config = cls(
            stage=stage,
            architecture=reader.choice("architecture", cls.architecture, ("arm64", "x86_64")),
            # Below 512 MB, numpy and onnxruntime alone leave no room for a model.
            memory_mb=reader.integer("memory", cls.memory_mb, low=512, high=10240),
            timeout_seconds=reader.integer(
                "timeout", cls.timeout_seconds, low=1, high=API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS - 1
            ),
            preload=reader.preload("preload"),
            auth=reader.choice("auth", cls.auth, ("iam", "api_key")),
            throttle_rate=reader.number("throttle_rate", cls.throttle_rate, low=1, high=10000),
            throttle_burst=reader.integer("throttle_burst", cls.throttle_burst, low=1, high=5000),
            reserved_concurrency=reader.optional_integer("reserved_concurrency", low=1, high=10000),
            snapstart=reader.boolean("snapstart", cls.snapstart),
            removal=reader.choice("removal", cls.removal, ("retain", "destroy")),
            log_retention_days=reader.integer_choice(
                "log_retention_days", cls.log_retention_days, tuple(LOG_RETENTION_NAMES)
            ),
            latency_alarm_ms=reader.integer("latency_alarm_ms", cls.latency_alarm_ms, low=1, high=29000),
            alarm_topic_arn=reader.optional_text("alarm_topic_arn", _check_topic_arn),
            api_cloudwatch_role=reader.boolean("api_cloudwatch_role", cls.api_cloudwatch_role),
            onnx_layer_zip=reader.optional_zip("onnx_layer_zip"),
            deps_layer_zip=reader.optional_zip("deps_layer_zip"),
        )
        if config.latency_alarm_ms > config.timeout_seconds * 1000:
            reader.errors.append(
                f"latency_alarm_ms={config.latency_alarm_ms} exceeds the function timeout "
                f"({config.timeout_seconds} s): the alarm could never fire"
            )
        if (config.onnx_layer_zip is None) != (config.deps_layer_zip is None):
            reader.errors.append("onnx_layer_zip and deps_layer_zip must be given together (or neither)")
        reader.reject_unknown_keys()
        if reader.errors:
            raise ConfigError("invalid CDK context:\n  - " + "\n  - ".join(reader.errors))
        return config


# The keys DeployConfig.from_context reads: anything else lower_snake_case is a typo.
KNOWN_KEYS = frozenset({
    "stage", "architecture", "memory", "timeout", "preload", "auth", "throttle_rate", "throttle_burst",
    "reserved_concurrency", "snapstart", "removal", "log_retention_days", "latency_alarm_ms",
    "alarm_topic_arn", "api_cloudwatch_role", "onnx_layer_zip", "deps_layer_zip",
})  # fmt: skip

_T = TypeVar("_T")


def _check_stage(value: str) -> str | None:
    if _STAGE_PATTERN.fullmatch(value):
        return None
    return (
        "must be 1-16 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-' "
        "(it names the stacks, the API stage and the model bucket)"
    )


def _check_topic_arn(value: str) -> str | None:
    return None if _SNS_TOPIC_ARN_PATTERN.fullmatch(value) else "must be an SNS topic ARN"


class _ContextReader:
    """Typed access to raw context values that records errors instead of stopping at the first one."""

    def __init__(self, context: Mapping[str, object]) -> None:
        self.context = context
        self.errors: list[str] = []

    def _raw(self, key: str) -> object | None:
        value = self.context.get(key)
        if isinstance(value, str) and value.strip() == "":
            return None  # `-c key=` means "use the default"
        return value

    def _fail(self, key: str, value: object, problem: str, fallback: _T) -> _T:
        self.errors.append(f"{key}={value!r}: {problem}")
        return fallback

    def text(self, key: str, default: str, check: Callable[[str], str | None]) -> str:
        value = self._raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            return self._fail(key, value, "must be a string", default)
        problem = check(value)
        return self._fail(key, value, problem, default) if problem else value

    def optional_text(self, key: str, check: Callable[[str], str | None]) -> str | None:
        value = self._raw(key)
        if value is None:
            return None
        if not isinstance(value, str):
            return self._fail(key, value, "must be a string", None)
        problem = check(value)
        return self._fail(key, value, problem, None) if problem else value

    def choice(self, key: str, default: _T, allowed: tuple[_T, ...]) -> _T:
        value = self._raw(key)
        if value is None:
            return default
        for option in allowed:
            if value == option:
                return option
        return self._fail(key, value, f"must be one of {', '.join(map(str, allowed))}", default)

    def _parse_integer(self, key: str, value: object) -> int | None:
        if isinstance(value, bool):  # bool is an int subclass; `true` is not a memory size
            return self._fail(key, value, "must be an integer", None)
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
            return int(value)
        return self._fail(key, value, "must be an integer", None)

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        value = self._raw(key)
        if value is None:
            return default
        parsed = self._parse_integer(key, value)
        if parsed is None:
            return default
        if not low <= parsed <= high:
            return self._fail(key, value, f"must be between {low} and {high}", default)
        return parsed

    def optional_integer(self, key: str, *, low: int, high: int) -> int | None:
        value = self._raw(key)
        if value is None or (isinstance(value, str) and value.lower() in {"none", "off"}):
            return None
        parsed = self._parse_integer(key, value)
        if parsed is not None and not low <= parsed <= high:
            return self._fail(key, value, f"must be between {low} and {high}", None)
        return parsed

    def integer_choice(self, key: str, default: int, allowed: tuple[int, ...]) -> int:
        parsed = self.integer(key, default, low=min(allowed), high=max(allowed))
        if parsed not in allowed:
            return self._fail(key, parsed, f"must be one of {', '.join(map(str, allowed))}", default)
        return parsed

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return self._fail(key, value, "must be a number", default)
        try:
            parsed = float(value)
        except ValueError:
            return self._fail(key, value, "must be a number", default)
        if not low <= parsed <= high:  # also rejects NaN
            return self._fail(key, value, f"must be between {low:g} and {high:g}", default)
        return parsed

    def boolean(self, key: str, default: bool) -> bool:
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0", "on", "off"}:
            return value.lower() in {"true", "yes", "1", "on"}
        return self._fail(key, value, "must be true or false", default)

    def preload(self, key: str) -> tuple[str, ...]:
        value = self._raw(key)
        if value is None:
            return ()
        if isinstance(value, str):
            items = [item.strip() for item in value.split(",") if item.strip()]
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            items = [item.strip() for item in value]
        else:
            return self._fail(key, value, "must be a comma-separated string or a list of strings", ())
        bad = [item for item in items if not _MODEL_REFERENCE_PATTERN.fullmatch(item) or ".." in item]
        if bad:
            return self._fail(
                key, value, f"invalid model reference(s) {bad}: expected name or name:version", ()
            )
        if len(set(items)) != len(items):
            return self._fail(key, value, "lists a model twice", ())
        return tuple(items)

    def optional_zip(self, key: str) -> Path | None:
        value = self._raw(key)
        if value is None:
            return None
        if not isinstance(value, str):
            return self._fail(key, value, "must be a path to a .zip file", None)
        path = Path(value)
        if not path.is_absolute():
            path = REPO_ROOT / path
        if path.suffix != ".zip" or not path.is_file():
            return self._fail(key, value, f"{path} is not an existing .zip file", None)
        return path

    def reject_unknown_keys(self) -> None:
        for key in sorted(self.context):
            if key in KNOWN_KEYS or _FOREIGN_KEY_PATTERN.match(key):
                continue
            if re.fullmatch(r"[a-z][a-z0-9_]*", key):
                self.errors.append(
                    f"unknown context key {key!r}; known keys: {', '.join(sorted(KNOWN_KEYS))}"
                )
