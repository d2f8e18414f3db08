"""Our own check of a Greengrass v2 recipe, written from the recipe reference and the nucleus's recipe model.

A JSON Schema for the structure (required keys, their types and enums), then the rules a schema cannot
say: the forms of recipe variables, the Digest format, one of Run or Startup, unique artifact file names.
It is stricter than the nucleus where the nucleus is lenient about casing: Greengrass Lite is
case-sensitive, so only the documented casing passes.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from edge_greengrass.recipes import (
    COMPONENT_NAME_PATTERN,
    MAX_COMPONENT_NAME_LENGTH,
    MAX_SEMVER_PART,
    SEMVER_PATTERN,
)

_STEP_NAMES: Final = ("Install", "Run", "Startup", "Shutdown", "Recover", "Bootstrap", "Uninstall")
_STEP: Final[dict[str, Any]] = {
    "oneOf": [
        {"type": "string", "minLength": 1},
        {
            "type": "object",
            "required": ["Script"],
            "additionalProperties": False,
            "properties": {
                "Script": {"type": "string", "minLength": 1},
                "RequiresPrivilege": {"type": ["boolean", "string"]},
                "Skipif": {"type": "string", "pattern": r"^!?(onpath|exists) \S"},
                "Timeout": {"type": ["integer", "string"]},
                "Setenv": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    ]
}
_LIFECYCLE: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "Setenv": {"type": "object", "additionalProperties": {"type": "string"}},
        **dict.fromkeys(_STEP_NAMES, _STEP),
    },
}
_ARTIFACT: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["Uri"],
    "additionalProperties": False,
    "properties": {
        "Uri": {"type": "string", "pattern": r"^(s3|greengrass|docker):"},
        "Digest": {"type": "string"},
        "Algorithm": {"type": "string", "enum": ["SHA-256"]},
        "Unarchive": {"enum": ["NONE", "ZIP"]},
        "Permission": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "Read": {"enum": ["NONE", "OWNER", "ALL"]},
                "Execute": {"enum": ["NONE", "OWNER", "ALL"]},
            },
        },
    },
}
RECIPE_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        "RecipeFormatVersion",
        "ComponentName",
        "ComponentVersion",
        "ComponentPublisher",
        "Manifests",
    ],
    "additionalProperties": False,
    "properties": {
        "RecipeFormatVersion": {"const": "2020-01-25"},
        "ComponentName": {"type": "string", "maxLength": MAX_COMPONENT_NAME_LENGTH},
        "ComponentVersion": {"type": "string", "maxLength": 64},
        "ComponentType": {
            "enum": ["aws.greengrass.generic", "aws.greengrass.lambda", "aws.greengrass.plugin"]
        },
        "ComponentDescription": {"type": "string"},
        "ComponentPublisher": {"type": "string", "minLength": 1},
        "ComponentSource": {"type": "string"},
        "ComponentConfiguration": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"DefaultConfiguration": {"type": "object"}},
        },
        "ComponentDependencies": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["VersionRequirement"],
                "additionalProperties": False,
                "properties": {
                    "VersionRequirement": {"type": "string", "minLength": 1},
                    "DependencyType": {"enum": ["HARD", "SOFT"]},
                },
            },
        },
        "Manifests": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "Platform": {"type": "object", "additionalProperties": {"type": "string"}},
                    "Name": {"type": "string"},
                    "Lifecycle": _LIFECYCLE,
                    "Artifacts": {"type": "array", "items": _ARTIFACT},
                    "Selections": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "Lifecycle": {"type": "object"},
    },
}

# The nucleus's recipe variables (KernelConfigResolver): same-component ``{namespace:key}`` and
# cross-component ``{Component:namespace:key}``; anything else in braces is left as text by the nucleus,
# which in a script is almost always a typo.
_VARIABLE: Final = re.compile(r"\{([^{}]*)\}")
_SAME_COMPONENT: Final = re.compile(
    r"(artifacts:(path|decompressedPath)|work:path|kernel:rootPath|iot:thingName|configuration:/[^{}]*)"
)
_CROSS_COMPONENT: Final = re.compile(
    r"([a-zA-Z0-9_.-]+):(artifacts:(path|decompressedPath)|work:path|configuration:/[^{}]*)"
)
_DIGEST_BYTES: Final = 32


class RecipeError(ValueError):
    """A recipe breaks the recipe reference; ``problems`` lists every finding."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def recipe_problems(recipe: Any) -> list[str]:
    """Every way ``recipe`` breaks the recipe reference, or an empty list."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(RECIPE_SCHEMA)
    problems = [
        f"{'/'.join(str(part) for part in error.absolute_path) or 'recipe'}: {error.message}"
        for error in sorted(validator.iter_errors(recipe), key=lambda error: list(error.absolute_path))
    ]
    if problems or not isinstance(recipe, Mapping):
        return problems
    problems.extend(_name_and_version_problems(recipe))
    dependencies = set(recipe.get("ComponentDependencies") or {})
    for index, manifest in enumerate(recipe["Manifests"]):
        where = f"Manifests/{index}"
        lifecycle = manifest.get("Lifecycle") or {}
        if "Run" in lifecycle and "Startup" in lifecycle:
            problems.append(f"{where}/Lifecycle: Run and Startup cannot both be set")
        for path, text in _lifecycle_strings(lifecycle, f"{where}/Lifecycle"):
            problems.extend(_variable_problems(path, text, dependencies))
        problems.extend(_artifact_problems(manifest.get("Artifacts") or [], where))
    return problems


def check_recipe(recipe: Any) -> None:
    problems = recipe_problems(recipe)
    if problems:
        raise RecipeError(problems)


def _name_and_version_problems(recipe: Mapping[str, Any]) -> Iterator[str]:
    if not COMPONENT_NAME_PATTERN.fullmatch(recipe["ComponentName"]):
        yield "ComponentName: only A-Z a-z 0-9 . _ - are allowed"
    match = SEMVER_PATTERN.fullmatch(recipe["ComponentVersion"])
    if match is None or any(int(part) > MAX_SEMVER_PART for part in match.groups()):
        yield f"ComponentVersion: must be MAJOR.MINOR.PATCH with each part at most {MAX_SEMVER_PART}"


def _lifecycle_strings(lifecycle: Mapping[str, Any], where: str) -> Iterator[tuple[str, str]]:
    for key, value in lifecycle.items():
        if isinstance(value, str):
            yield f"{where}/{key}", value
        elif isinstance(value, Mapping):
            for inner_key, inner in value.items():
                if isinstance(inner, str):
                    yield f"{where}/{key}/{inner_key}", inner
                elif isinstance(inner, Mapping):
                    for env_key, env_value in inner.items():
                        if isinstance(env_value, str):
                            yield f"{where}/{key}/{inner_key}/{env_key}", env_value


def _variable_problems(path: str, text: str, dependencies: set[str]) -> Iterator[str]:
    for match in _VARIABLE.finditer(text):
        inner = match.group(1)
        if _SAME_COMPONENT.fullmatch(inner):
            continue
        cross = _CROSS_COMPONENT.fullmatch(inner)
        if cross is not None:
            if cross.group(1) not in dependencies:
                # The nucleus resolves cross-component variables for direct dependencies only.
                yield f"{path}: {match.group(0)} names {cross.group(1)}, which is not a dependency"
            continue
        yield f"{path}: {match.group(0)} is not a recipe variable"


def _artifact_problems(artifacts: list[Mapping[str, Any]], where: str) -> Iterator[str]:
    seen: set[str] = set()
    for index, artifact in enumerate(artifacts):
        path = f"{where}/Artifacts/{index}"
        uri = str(artifact["Uri"])
        file_name = uri.rstrip("/").rsplit("/", 1)[-1]
        if uri.startswith("s3://") and (uri.count("/") < 3 or not file_name):
            yield f"{path}/Uri: an s3:// URI names a bucket and a key"
        if file_name in seen:
            yield f"{path}/Uri: {file_name} is the name of another artifact of this manifest"
        seen.add(file_name)
        digest = artifact.get("Digest")
        if digest is not None:
            if "Algorithm" not in artifact:
                yield f"{path}: a Digest needs its Algorithm (the nucleus refuses it otherwise)"
            if not _is_sha256_digest(str(digest)):
                yield f"{path}/Digest: must be the base64 (standard, padded) of a 32-byte SHA-256"


def _is_sha256_digest(digest: str) -> bool:
    try:
        raw = base64.b64decode(digest, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == _DIGEST_BYTES and base64.b64encode(raw).decode("ascii") == digest
