"""A simulated AWS IoT Greengrass v2 nucleus: the device in our edge tests.

No real nucleus (Java or Lite) can run on our machines (team notes, greengrass.md section 6), so this
harness *is* the nucleus in tests. It follows the Java nucleus's rules as the notes record them, with
their sources (NUC = aws-greengrass-nucleus, CC = aws-greengrass-component-common):

- a "cloud" registry that takes recipes the way CreateComponentVersion does: it validates them, computes
  every S3 artifact's ``Digest``/``Algorithm`` itself (overwriting what the recipe says, as the cloud does)
  and refuses a different recipe under an existing name and version (ConflictException);
- deployments: npm-style dependency resolution, the first manifest whose ``Platform`` matches, artifact
  download with boto3 against the real S3 API (GetBucketLocation, HeadObject, ranged GetObject) using the
  nucleus's own credentials, digest check (base64 of the raw SHA-256), ZIP unarchiving with the zip-slip
  check, artifact permissions, configuration merge/reset, recipe-variable interpolation;
- lifecycles as real ``sh -c`` subprocesses in their own process group, with the nucleus's states, error
  counting (3 errors from one state -> BROKEN), restarts on lifecycle changes, and SIGTERM, 5 s, SIGKILL;
- each lifecycle process gets its component's token as ``SVCUID`` and ``AWS_CONTAINER_AUTHORIZATION_TOKEN``
  (NUC lifecyclemanager/ShellRunner.java);
- the token exchange service, ``aws.greengrass.TokenExchangeService`` (NUC tes/): a public component the
  cloud always has, which the nucleus runs as a built-in service. On start it refuses an empty
  ``iotRoleAlias`` (ERRORED), serves ``GET /2016-11-01/credentialprovider/`` on 127.0.0.1 at the
  configured ``port`` (0: any free one), sets the nucleus-wide ``setenv``
  ``AWS_CONTAINER_CREDENTIALS_FULL_URI=http://localhost:<port>/2016-11-01/credentialprovider/`` (so only
  processes started after it see it; a HARD dependency guarantees that), then reports RUNNING. A request
  needs the ``Authorization`` header to hold a component's token (else 403; the default policy lets
  every component get credentials), another path is a 400, another method a 405. It answers the
  credentials the AWS IoT credentials provider would (``tes_credentials``: fake test values) in the AWS
  SDK's container format, ``{AccessKeyId, SecretAccessKey, Token, Expiration}``.

What it deliberately leaves out (each is refused clearly or documented where it would matter):
IPC (no socket and no ``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT``: a component's IPC is off),
the IoT credentials provider behind TES (the credentials are given), ``Bootstrap``, ``Uninstall``,
running as another POSIX user (``posixUser``/``RequiresPrivilege``: every step runs as the test's user),
rollback of a failed deployment, global ``Lifecycle`` with ``Selections``, docker/greengrass URIs,
pre-release versions and the rarer npm range forms, disk-space guards, and the cloud's asynchronous
component states (a registered version is DEPLOYABLE at once).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import http.server
import json
import logging
import os
import platform as host_platform
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config as BotoConfig

logger = logging.getLogger("tests.edge.nucleus")

# --- States (NUC dependency/State.java) -----------------------------------------------------------------

NEW = "NEW"
INSTALLED = "INSTALLED"
STARTING = "STARTING"
RUNNING = "RUNNING"
STOPPING = "STOPPING"
FINISHED = "FINISHED"
ERRORED = "ERRORED"
BROKEN = "BROKEN"
STATES = (NEW, INSTALLED, STARTING, RUNNING, STOPPING, FINISHED, ERRORED, BROKEN)
#: A HARD dependency is ready to let a dependent start (NUC GreengrassService.java:528-541).
READY = frozenset({RUNNING, FINISHED})
#: States a dependent tolerates in a HARD dependency while it runs (STOPPING counts as ready).
STILL_READY = frozenset({RUNNING, FINISHED, STOPPING})
#: Where a deployment settles (a deployment waits for these, NUC DeploymentConfigMerger).
SETTLED = frozenset({RUNNING, FINISHED, BROKEN})
#: Only errors from these states count towards BROKEN (NUC Lifecycle.java STATES_TO_ERRORED).
COUNTED_ERROR_STATES = frozenset({NEW, STARTING, RUNNING})
MAXIMUM_CONTINUAL_ERROR = 3

# --- Timeouts (NUC Lifecycle.java:74-78, util/Exec.java:94) --------------------------------------------

DEFAULT_INSTALL_TIMEOUT = 120.0
DEFAULT_STARTUP_TIMEOUT = 120.0
DEFAULT_SHUTDOWN_TIMEOUT = 15.0
DEFAULT_RECOVER_TIMEOUT = 60.0
GRACEFUL_SHUTDOWN_SECONDS = 5.0
DEFAULT_ERROR_RESET_SECONDS = 3600.0

# --- Recipe rules (CC) -----------------------------------------------------------------------------------

RECIPE_FORMAT_VERSION = "2020-01-25"
COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9\-_.]+$")
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?$"
)
MAX_VERSION_PART = 999_999
PERMISSION_TYPES = ("NONE", "OWNER", "ALL")

# --- Recipe variables (NUC KernelConfigResolver.java:83-91, the notes' regexes) -------------------------

SAME_COMPONENT_VARIABLE = re.compile(r"\{([.\w-]+):([^:}]*)\}")
CROSS_COMPONENT_VARIABLE = re.compile(r"\{([.\w-]+):([.\w-]+):([^:}]*)\}")

# --- Skipif (NUC GenericExternalService.java SKIP_COMMAND_REGEX) ----------------------------------------

SKIPIF = re.compile(r"(exists|onpath) +(.+)")

#: The PATH of a device's nucleus service: the system's, never this test run's virtualenv.
DEVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Variables a component must never see from this harness (the nucleus's own credentials, IPC).
FORBIDDEN_ENVIRONMENT = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
)

# --- The token exchange service (NUC tes/TokenExchangeService.java, HttpServerImpl.java,
# CredentialRequestHandler.java; lifecyclemanager/ShellRunner.java) ------------------------------------

TOKEN_EXCHANGE_SERVICE = "aws.greengrass.TokenExchangeService"
TES_VERSION = "2.0.3"
TES_URI_ENV = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
TES_TOKEN_ENV = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
TES_PATH = "/2016-11-01/credentialprovider/"
#: The installer's default role alias name; a nucleus without one cannot start TES.
DEFAULT_IOT_ROLE_ALIAS = "GreengrassV2TokenExchangeRoleAlias"
#: What the public component's recipe says of itself (DG token-exchange-service-component.md).
TES_RECIPE: dict[str, Any] = {
    "RecipeFormatVersion": "2020-01-25",
    "ComponentName": TOKEN_EXCHANGE_SERVICE,
    "ComponentVersion": TES_VERSION,
    "ComponentType": "aws.greengrass.generic",
    "ComponentDescription": "Provides AWS credentials to components that depend on it",
    "ComponentPublisher": "AWS",
    "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": {}}],
}


# --- Errors -----------------------------------------------------------------------------------------------


class NucleusError(Exception):
    """Base of the harness's errors."""


class RecipeError(NucleusError):
    """The cloud refuses the recipe (CreateComponentVersion's validation)."""


class ConflictError(NucleusError):
    """A different recipe already exists under this name and version (CreateComponentVersion's
    ConflictException)."""


class DeploymentError(NucleusError):
    """The deployment failed before anything on the device changed (resolution or preparation)."""

    def __init__(self, message: str, code: str = "DEPLOYMENT_FAILED") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ChecksumMismatch(DeploymentError):
    """ArtifactChecksumMismatchException: the downloaded bytes do not match the recipe's digest."""


class UnsupportedByHarness(DeploymentError):
    """A recipe feature this simulated nucleus does not implement: refused, never silently ignored."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "NOT_SIMULATED")


# --- Small helpers ----------------------------------------------------------------------------------------


def ci_get(mapping: Any, key: str, default: Any = None) -> Any:
    """The Java nucleus reads recipe and config keys case-insensitively (NUC config/Topics.java)."""
    if not isinstance(mapping, Mapping):
        return default
    if key in mapping:
        return mapping[key]
    lowered = key.lower()
    for candidate, value in mapping.items():
        if isinstance(candidate, str) and candidate.lower() == lowered:
            return value
    return default


def greengrass_digest(data: bytes) -> str:
    """The recipe's ``Digest``: base64 (standard, padded) of the raw SHA-256 (NUC ArtifactDownloader)."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


def parse_recipe(recipe: Mapping[str, Any] | str | bytes) -> dict[str, Any]:
    """A recipe as the cloud takes it: a dict, or JSON/YAML text (YAML is a superset of JSON)."""
    if isinstance(recipe, Mapping):
        return copy.deepcopy(dict(recipe))
    loaded = yaml.safe_load(recipe)
    if not isinstance(loaded, dict):
        raise RecipeError("the recipe must be a JSON or YAML object")
    return loaded


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        match = SEMVER.match(str(text).strip())
        if match is None:
            raise RecipeError(f"{text!r} is not a semantic version")
        if match.group(4) or match.group(5):
            raise UnsupportedByHarness(f"pre-release/build versions ({text!r}) are not simulated")
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


_COMPARATOR = re.compile(r"^(>=|<=|>|<|=|\^|~)?v?(\d+)\.(\d+)\.(\d+)$")


def parse_requirement(text: str) -> Callable[[Version], bool]:
    """An npm-style ``VersionRequirement`` (CC DependencyProperties uses ``Requirement.buildNPM``).

    Implemented: ``*``/empty, ``X.Y.Z`` and ``=X.Y.Z``, ``>``, ``>=``, ``<``, ``<=``, ``^``, ``~``, several
    comparators separated by spaces (all must hold) and ``||`` alternatives. Refused clearly: x-ranges
    (``1.x``, ``1``), hyphen ranges and pre-release tags.
    """
    alternatives: list[list[Callable[[Version], bool]]] = []
    for alternative in str(text).split("||"):
        comparators: list[Callable[[Version], bool]] = []
        tokens = alternative.split()
        if " - " in alternative:
            raise UnsupportedByHarness(f"hyphen ranges ({text!r}) are not simulated")
        for token in tokens:
            if token in ("*", "x", "X"):
                continue
            match = _COMPARATOR.match(token)
            if match is None:
                raise UnsupportedByHarness(f"the version requirement {text!r} is not simulated")
            operator = match.group(1) or "="
            bound = Version(int(match.group(2)), int(match.group(3)), int(match.group(4)))
            comparators.extend(_comparators(operator, bound))
        alternatives.append(comparators)

    def satisfied(version: Version) -> bool:
        return any(all(check(version) for check in alternative) for alternative in alternatives)

    return satisfied


def _comparators(operator: str, bound: Version) -> list[Callable[[Version], bool]]:
    if operator == "=":
        return [lambda v: v == bound]
    if operator == ">":
        return [lambda v: v > bound]
    if operator == ">=":
        return [lambda v: v >= bound]
    if operator == "<":
        return [lambda v: v < bound]
    if operator == "<=":
        return [lambda v: v <= bound]
    if operator == "~":
        upper = Version(bound.major, bound.minor + 1, 0)
    elif bound.major > 0:  # "^"
        upper = Version(bound.major + 1, 0, 0)
    elif bound.minor > 0:
        upper = Version(0, bound.minor + 1, 0)
    else:
        upper = Version(0, 0, bound.patch + 1)
    return [lambda v: v >= bound, lambda v: v < upper]


def device_platform() -> dict[str, str]:
    """What the Java nucleus detects (NUC config/PlatformResolver.java): no ``runtime`` key, ever."""
    machine = host_platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        architecture = "amd64"
    elif machine in ("aarch64", "arm64"):
        architecture = "aarch64"
    elif "arm" in machine:
        architecture = "arm"
    elif machine in ("i386", "i686", "x86"):
        architecture = "x86"
    else:
        architecture = machine
    detected = {"os": "linux", "architecture": architecture}
    if architecture == "arm":
        detected["architecture.detail"] = machine
    return detected


def platform_matches(wanted: Any, device: Mapping[str, str]) -> bool:
    """One manifest's ``Platform`` against the device's (CC PlatformHelper): an empty or missing platform
    matches everything; ``*`` matches anything, a missing device key included; ``all``/``any`` are
    wildcards for ``os`` and ``architecture``; ``/regex/`` must match the whole value; anything else must be
    equal. A key the device does not have (``runtime`` on the Java nucleus) matches only ``*``."""
    if not wanted:
        return True
    if not isinstance(wanted, Mapping):
        raise RecipeError(f"Platform must be an object, got {wanted!r}")
    for key, raw in wanted.items():
        value = str(raw)
        if value == "*":
            continue
        if key in ("os", "architecture") and value in ("all", "any"):
            continue
        have = device.get(key)
        if have is None:
            return False
        if len(value) >= 2 and value.startswith("/") and value.endswith("/"):
            if re.fullmatch(value[1:-1], have) is None:
                return False
        elif value != have:
            return False
    return True


def json_pointer_get(document: Any, pointer: str) -> tuple[bool, Any]:
    """RFC 6901 (Jackson ``JsonNode.at``): (found, value)."""
    if pointer == "":
        return True, document
    if not pointer.startswith("/"):
        return False, None
    node = document
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False, None
    return True, node


def json_text(value: Any) -> str:
    """Jackson's ``asText`` for a value node, ``toString`` (compact JSON) for a container."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def deep_merge(base: dict[str, Any], update: Mapping[str, Any], *, existing_wins: bool) -> dict[str, Any]:
    """Merge ``update`` into ``base`` in place. Objects merge key by key; anything else is a leaf. With
    ``existing_wins`` (the recipe defaults, merged at timestamp 1) a value already there stays."""
    for key, value in update.items():
        current = base.get(key)
        if isinstance(value, Mapping):
            if isinstance(current, dict):
                deep_merge(current, value, existing_wins=existing_wins)
            elif key not in base or not existing_wins:
                base[key] = deep_merge({}, value, existing_wins=existing_wins)
        elif key not in base or not existing_wins:
            base[key] = copy.deepcopy(value)
    return base


def reset_pointer(document: dict[str, Any], pointer: str) -> dict[str, Any]:
    """Remove a path before the defaults are merged back in (NUC removeKeysFromConfigWhichAreReset)."""
    if pointer == "":
        return {}
    if not pointer.startswith("/"):
        logger.error("reset pointer %r is not a JSON pointer: ignored", pointer)
        return document
    tokens = [raw.replace("~1", "/").replace("~0", "~") for raw in pointer[1:].split("/")]
    node: Any = document
    for token in tokens[:-1]:
        if not isinstance(node, dict) or token not in node:
            return document
        node = node[token]
    if isinstance(node, dict):
        node.pop(tokens[-1], None)
    else:
        logger.error("reset pointer %r points into an array: not supported by the nucleus either", pointer)
    return document


def file_mode(read: str, execute: str) -> int:
    """NUC componentmanager/models/Permission.java + util/Permissions.setArtifactPermission.

    The owner always reads; ``Execute: OWNER|ALL`` gives the owner execute; ``Read: ALL`` gives group and
    others read; ``Execute: ALL`` gives group and others execute. A nucleus not running as root also
    gives the owner write, so the file can be deleted at cleanup.

    (The notes summarise this as "OWNER maps to group bits"; the code gives group bits only for ALL.)
    """
    mode = 0o400
    if execute in ("OWNER", "ALL"):
        mode |= 0o100
    if read == "ALL":
        mode |= 0o044
    if execute == "ALL":
        mode |= 0o011
    if os.geteuid() != 0:
        mode |= 0o200
    return mode


def set_artifact_permission(path: Path, mode: int) -> None:
    """Directories get rwxr-xr-x, files ``mode``, recursively (NUC util/Permissions.java)."""
    if path.is_dir() and not path.is_symlink():
        path.chmod(0o755)
        for child in path.iterdir():
            set_artifact_permission(child, mode)
    elif path.exists():
        path.chmod(mode)


def _zip_slip(entry: str) -> OSError:
    return OSError(f"Entry is outside of the target dir: {entry}")


def unzip(archive: Path, destination: Path) -> None:
    """NUC componentmanager/Unarchiver.java: refuse entries outside ``destination`` (zip-slip), skip files
    that already exist with the entry's size, and on any failure delete what was extracted."""
    try:
        with zipfile.ZipFile(archive) as handle:
            base = os.path.realpath(destination)
            for entry in handle.infolist():
                target = Path(destination, entry.filename)
                resolved = os.path.realpath(target)
                if not resolved.startswith(base + os.sep):
                    raise _zip_slip(entry.filename)
                if entry.is_dir():
                    Path(resolved).mkdir(parents=True, exist_ok=True)
                    continue
                Path(resolved).parent.mkdir(parents=True, exist_ok=True)
                if Path(resolved).exists() and Path(resolved).stat().st_size == entry.file_size:
                    continue
                if Path(resolved).exists():
                    Path(resolved).chmod(0o600)
                with handle.open(entry) as source, open(resolved, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 16)
    except (OSError, zipfile.BadZipFile):
        shutil.rmtree(destination, ignore_errors=True)
        raise


# --- Recipes and the cloud --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentId:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def _validate_recipe(recipe: Mapping[str, Any]) -> ComponentId:
    for key in ("RecipeFormatVersion", "ComponentName", "ComponentVersion", "Manifests"):
        if ci_get(recipe, key) is None:
            raise RecipeError(f"the recipe has no {key}")
    if str(ci_get(recipe, "RecipeFormatVersion")) != RECIPE_FORMAT_VERSION:
        raise RecipeError(f"RecipeFormatVersion must be {RECIPE_FORMAT_VERSION}")
    name = str(ci_get(recipe, "ComponentName"))
    if not COMPONENT_NAME.match(name) or len(name) > 128:
        raise RecipeError(f"invalid ComponentName {name!r}")
    version_text = str(ci_get(recipe, "ComponentVersion"))
    if len(version_text) > 64:
        raise RecipeError(f"ComponentVersion {version_text!r} is longer than 64 characters")
    version = Version.parse(version_text)
    if max(version.major, version.minor, version.patch) > MAX_VERSION_PART:
        raise RecipeError(f"ComponentVersion {version_text!r} has a part above {MAX_VERSION_PART}")
    manifests = ci_get(recipe, "Manifests")
    if not isinstance(manifests, list):
        raise RecipeError("Manifests must be a list")
    for manifest in manifests:
        names: set[str] = set()
        for artifact in ci_get(manifest, "Artifacts") or []:
            uri = ci_get(artifact, "Uri")
            if not uri:
                raise RecipeError(f"{name}: an artifact has no Uri")
            unarchive = str(ci_get(artifact, "Unarchive") or "NONE").upper()
            if unarchive not in ("NONE", "ZIP"):
                raise RecipeError(f"{name}: Unarchive must be NONE or ZIP, got {unarchive!r}")
            permission = ci_get(artifact, "Permission") or {}
            for key in ("Read", "Execute"):
                value = ci_get(permission, key)
                if value is not None and str(value).upper() not in PERMISSION_TYPES:
                    raise RecipeError(f"{name}: Permission.{key} must be one of {PERMISSION_TYPES}")
            file_name = str(uri).rstrip("/").rsplit("/", 1)[-1]
            if file_name in names:
                raise RecipeError(f"{name}: two artifacts of one manifest are both named {file_name!r}")
            names.add(file_name)
        lifecycle = ci_get(manifest, "Lifecycle") or {}
        if ci_get(lifecycle, "Run") is not None and ci_get(lifecycle, "Startup") is not None:
            raise RecipeError(f"{name}: a lifecycle has either Run or Startup, not both")
    for dependency, properties in (ci_get(recipe, "ComponentDependencies") or {}).items():
        dependency_type = str(ci_get(properties, "DependencyType") or "HARD").upper()
        if dependency_type not in ("HARD", "SOFT"):
            raise RecipeError(f"{name}: DependencyType of {dependency} must be HARD or SOFT")
    return ComponentId(name, str(version))


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise UnsupportedByHarness(f"only s3:// artifact URIs are simulated, got {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise DeploymentError(f"invalid S3 artifact URI {uri!r}", "INVALID_ARTIFACT_URI")
    return bucket, key


class CloudRegistry:
    """The Greengrass cloud's component registry (CreateComponentVersion), for one test account.

    Like the cloud, it computes each S3 artifact's digest from the object's bytes when the version is
    created and overwrites whatever ``Digest``/``Algorithm`` the recipe carried (DG: they are read-only);
    ``digest_overrides`` lists every place where the submitted digest differed. ``compute_digests=False``
    keeps the recipe as written, like a local deployment of a recipe from disk.
    """

    def __init__(self, s3_client: Callable[[], Any]) -> None:
        self._s3_client = s3_client
        self._submitted: dict[ComponentId, dict[str, Any]] = {}
        self._recipes: dict[ComponentId, dict[str, Any]] = {}
        self.digest_overrides: list[tuple[ComponentId, str, str | None, str]] = []
        self._lock = threading.Lock()
        # Public AWS components every account can deploy.
        public = ComponentId(TOKEN_EXCHANGE_SERVICE, TES_VERSION)
        self._submitted[public] = copy.deepcopy(TES_RECIPE)
        self._recipes[public] = copy.deepcopy(TES_RECIPE)

    def create_component_version(
        self, recipe: Mapping[str, Any] | str | bytes, *, compute_digests: bool = True
    ) -> ComponentId:
        submitted = parse_recipe(recipe)
        component = _validate_recipe(submitted)
        with self._lock:
            if component in self._submitted:
                if self._submitted[component] != submitted:
                    raise ConflictError(f"component version {component} already exists with another recipe")
                return component
        stored = copy.deepcopy(submitted)
        if compute_digests:
            client = self._s3_client()
            for manifest in ci_get(stored, "Manifests") or []:
                for artifact in ci_get(manifest, "Artifacts") or []:
                    uri = str(ci_get(artifact, "Uri"))
                    if not uri.startswith("s3://"):
                        continue
                    bucket, key = split_s3_uri(uri)
                    try:
                        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                    except Exception as error:
                        raise RecipeError(f"{component}: cannot read artifact {uri}: {error}") from error
                    digest = greengrass_digest(body)
                    previous = ci_get(artifact, "Digest")
                    if previous != digest:
                        self.digest_overrides.append((component, uri, previous, digest))
                    for stale in [k for k in artifact if k.lower() in ("digest", "algorithm")]:
                        del artifact[stale]
                    artifact["Digest"] = digest
                    artifact["Algorithm"] = "SHA-256"
        with self._lock:
            self._submitted[component] = submitted
            self._recipes[component] = stored
        return component

    def recipe(self, component: ComponentId) -> dict[str, Any]:
        try:
            return copy.deepcopy(self._recipes[component])
        except KeyError:
            raise DeploymentError(f"{component} is not registered", "COMPONENT_VERSION_NOT_FOUND") from None

    def versions(self, name: str) -> list[Version]:
        return sorted(Version.parse(c.version) for c in self._recipes if c.name == name)


# --- Service configuration (what the nucleus keeps in its config store) ---------------------------------


@dataclass
class ServiceConfig:
    name: str
    version: str
    lifecycle: dict[str, Any]  # interpolated
    dependencies: dict[str, str]  # direct dependency -> HARD | SOFT
    configuration: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "lifecycle": self.lifecycle,
            "dependencies": self.dependencies,
            "configuration": self.configuration,
        }

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> ServiceConfig:
        return cls(
            name,
            str(data["version"]),
            dict(data["lifecycle"]),
            dict(data["dependencies"]),
            dict(data["configuration"]),
        )


@dataclass(frozen=True)
class Step:
    name: str
    script: str | None
    setenv: dict[str, str]
    timeout: float | None
    skipif: str | None
    requires_privilege: bool


def lifecycle_step(lifecycle: Mapping[str, Any], name: str) -> Step | None:
    raw = ci_get(lifecycle, name)
    if raw is None:
        return None
    if isinstance(raw, str):
        return Step(name, raw, {}, None, None, False)
    if not isinstance(raw, Mapping):
        raise DeploymentError(f"lifecycle step {name} must be a string or an object", "INVALID_RECIPE")
    script = ci_get(raw, "Script")
    timeout = ci_get(raw, "Timeout")
    skipif = ci_get(raw, "Skipif")
    setenv = ci_get(raw, "Setenv") or {}
    return Step(
        name,
        None if script is None else str(script),
        {str(k): json_text(v) for k, v in setenv.items()},
        None if timeout is None else float(timeout),
        None if skipif is None else str(skipif),
        str(ci_get(raw, "RequiresPrivilege", False)).lower() == "true",
    )


def lifecycle_changes(old: ServiceConfig, new: ServiceConfig) -> str | None:
    """What a config change asks of a running service (NUC GenericExternalService.java:118-160):
    "reinstall" for the version or the Install step, "restart" for any other lifecycle change (Shutdown
    excepted) or Setenv, None for configuration-only changes."""
    if old.version != new.version or ci_get(old.lifecycle, "Install") != ci_get(new.lifecycle, "Install"):
        return "reinstall"

    def comparable(lifecycle: Mapping[str, Any]) -> dict[str, Any]:
        return {k.lower(): v for k, v in lifecycle.items() if k.lower() != "shutdown"}

    if comparable(old.lifecycle) != comparable(new.lifecycle):
        return "restart"
    return None


# --- Running services -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessEnd:
    """How one lifecycle process ended: ``how`` is "exited" (on its own), "SIGTERM" (ended within the
    grace period after SIGTERM) or "SIGKILL"; ``duration`` is from its start to its end, in seconds."""

    step: str
    how: str
    exit_code: int | None
    seconds_after_signal: float | None
    duration: float = 0.0


@dataclass
class _Proc:
    step: str
    popen: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    recorded: bool = False


class _StopRequested(Exception):
    pass


class Service:
    """One component's lifecycle thread (NUC lifecyclemanager/Lifecycle.java, kept simple)."""

    def __init__(self, nucleus: Nucleus, config: ServiceConfig) -> None:
        self.nucleus = nucleus
        self.config = config
        self.name = config.name
        self.state = NEW
        self.history: list[str] = []
        self.status: list[str] = []
        self.process_ends: list[ProcessEnd] = []
        self._errors: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: list[_Proc] = []
        self._procs_lock = threading.Lock()

    # -- control, from the nucleus ----------------------------------------------------------------------

    def start(self, from_state: str) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise NucleusError(f"{self.name} is already running")
        if from_state == NEW:
            self._errors.clear()
        self._stop = threading.Event()
        self._report(from_state, "launch")
        self._thread = threading.Thread(target=self._main, name=f"{self.name}-lifecycle", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """requestStop: STOPPING (Shutdown step, then every process: SIGTERM, 5 s, SIGKILL), FINISHED."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise NucleusError(f"{self.name}: lifecycle thread did not stop within {timeout} s")
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the lifecycle -----------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._transitions()
        except _StopRequested:
            pass
        except Exception:  # a harness bug must show up in the logs, not vanish with the thread
            logger.exception("%s: lifecycle thread failed", self.name)
            self.nucleus.log(f"{self.name}: lifecycle thread failed (harness bug)")
        finally:
            self._shutdown()

    def _transitions(self) -> None:
        while True:
            self._check_stop()
            state = self.state
            if state == NEW:
                outcome = self._run_blocking("Install", DEFAULT_INSTALL_TIMEOUT)
                if outcome == "ok":
                    self._report(INSTALLED)
                elif self._errored(outcome):
                    self._report(NEW, "retry install")
            elif state == INSTALLED:
                self._wait_for_dependencies()
                self._report(STARTING)
            elif state == STARTING:
                self._start_and_run()
            elif state == BROKEN:
                self._stop_processes()
                self._stop.wait()
                self._check_stop()
            elif state == FINISHED:
                self._stop.wait()
                self._check_stop()
            else:  # pragma: no cover - states are only set by this thread
                raise NucleusError(f"{self.name}: unexpected state {state}")

    def _start_and_run(self) -> None:
        lifecycle = self.config.lifecycle
        startup = lifecycle_step(lifecycle, "Startup")
        if startup is not None:
            outcome = self._run_blocking("Startup", DEFAULT_STARTUP_TIMEOUT)
            if outcome == "ok":
                self._report(RUNNING)
                self._watch_running(None)
            elif self._errored(outcome):
                self._restart_after_error()
            return
        run = lifecycle_step(lifecycle, "Run")
        if run is None:
            # No Run/Startup: FINISHED at once (NUC GenericExternalService.java:524-527).
            self._report(FINISHED, "nothing to run")
            return
        proc = self._spawn(run)
        if proc == "error":
            if self._errored("script error"):
                self._restart_after_error()
            return
        # RUNNING as soon as the process is spawned (or the step is skipped).
        self._report(RUNNING)
        self._watch_running(proc if isinstance(proc, _Proc) else None, run.timeout)

    def _watch_running(self, proc: _Proc | None, timeout: float | None = None) -> None:
        marks = {dependency: len(service.history) for dependency, service in self._hard_dependencies()}
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._stop.wait(0.05):
                raise _StopRequested
            if proc is not None:
                code = proc.popen.poll()
                if code is not None:
                    self._record_end(proc, "exited", code, None)
                    self._log_marker(f"{proc.step} exited with {code}")
                    if code == 0:
                        # Exit 0: requestStop, then FINISHED.
                        self._report(STOPPING, "run exited 0")
                        self._stop_processes()
                        self._report(FINISHED)
                    elif self._errored(f"RUN_ERROR exit {code}"):
                        self._restart_after_error()
                    return
                if deadline is not None and time.monotonic() > deadline:
                    self._log_marker("Run timed out")
                    if self._errored("RUN_TIMEOUT"):
                        self._restart_after_error()
                    return
            for dependency, service in self._hard_dependencies():
                seen = service.history[marks.get(dependency, 0) :]
                if any(state not in STILL_READY for state in seen):
                    self.nucleus.log(
                        f"{self.name}: HARD dependency {dependency} left RUNNING/FINISHED: restart"
                    )
                    self._report(STOPPING, f"dependency {dependency} restarted")
                    self._stop_processes()
                    self._report(INSTALLED)
                    return

    def _restart_after_error(self) -> None:
        """From ERRORED: Recover, then STOPPING -> INSTALLED (retry) unless BROKEN."""
        self._report(STOPPING, "retry after error")
        self._stop_processes()
        self._report(INSTALLED)

    def _errored(self, reason: str) -> bool:
        """Report ERRORED from the current state; True if the service should retry, False if BROKEN."""
        current = self.state
        if current in COUNTED_ERROR_STATES:
            now = time.monotonic()
            errors = self._errors.setdefault(current, [])
            if errors and now - errors[-1] >= self.nucleus.error_reset_seconds:
                errors.clear()
            errors.append(now)
            if len(errors) >= MAXIMUM_CONTINUAL_ERROR:
                self._report(BROKEN, reason)
                self._stop_processes()
                return False
        self._report(ERRORED, reason)
        recover = lifecycle_step(self.config.lifecycle, "Recover")
        if recover is not None:
            self._run_blocking("Recover", DEFAULT_RECOVER_TIMEOUT)
        return True

    def _wait_for_dependencies(self) -> None:
        while True:
            not_ready = [name for name, service in self._hard_dependencies() if service.state not in READY]
            missing = [
                name
                for name, kind in self.config.dependencies.items()
                if kind == "HARD" and name not in self.nucleus.services
            ]
            if not not_ready and not missing:
                return
            if self._stop.wait(0.05):
                raise _StopRequested

    def _hard_dependencies(self) -> list[tuple[str, Service]]:
        found = []
        for name, kind in self.config.dependencies.items():
            service = self.nucleus.services.get(name)
            if kind == "HARD" and service is not None:
                found.append((name, service))
        return found

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _StopRequested

    def _shutdown(self) -> None:
        """STOPPING (the Shutdown step, then every process closed), then FINISHED. A BROKEN service only
        has its processes closed and stays BROKEN; a FINISHED one has nothing left to stop."""
        if self.state in (BROKEN, FINISHED):
            self._stop_processes()
            return
        if self.state in (STARTING, RUNNING):
            self._report(STOPPING, "stop requested")
            if lifecycle_step(self.config.lifecycle, "Shutdown") is not None:
                with contextlib.suppress(Exception):
                    self._run_blocking("Shutdown", DEFAULT_SHUTDOWN_TIMEOUT, stoppable=False)
        self._stop_processes()
        self._report(FINISHED, "stopped")

    # -- processes --------------------------------------------------------------------------------------

    def _run_blocking(self, step_name: str, default_timeout: float, *, stoppable: bool = True) -> str:
        """Run a step to its end: "ok" (exit 0, skipped or absent), "error", or "timeout"."""
        step = lifecycle_step(self.config.lifecycle, step_name)
        if step is None:
            return "ok"
        proc = self._spawn(step)
        if proc == "error":
            return "error"
        if proc == "skipped":
            return "ok"
        assert isinstance(proc, _Proc)
        timeout = step.timeout if step.timeout is not None else default_timeout
        deadline = proc.started + timeout
        while True:
            code = proc.popen.poll()
            if code is not None:
                self._record_end(proc, "exited", code, None)
                self._log_marker(f"{step_name} exited with {code}")
                return "ok" if code == 0 else "error"
            if time.monotonic() > deadline:
                self._log_marker(f"{step_name} timed out after {timeout:g} s")
                self._terminate(proc)
                return "timeout"
            if stoppable and self._stop.wait(0.05):
                self._terminate(proc)
                raise _StopRequested
            if not stoppable:
                time.sleep(0.05)

    def _spawn(self, step: Step) -> _Proc | str:
        """Start a step: a _Proc, "skipped" (Skipif held) or "error" (invalid step)."""
        if step.skipif is not None:
            try:
                skip = self._should_skip(step.skipif)
            except ValueError as error:
                self._log_marker(f"{step.name}: {error}")
                return "error"
            if skip:
                self._log_marker(f"{step.name} skipped ({step.skipif})")
                return "skipped"
        if step.script is None:
            self._log_marker(f"{step.name}: missing Script")
            return "error"
        if step.requires_privilege:
            self.nucleus.log(f"{self.name}: {step.name} RequiresPrivilege: runs as the test's user here")
        work = self.nucleus.work_path(self.name)
        work.mkdir(parents=True, exist_ok=True)
        environment = self.nucleus.environment(self.config, step)
        log = self.nucleus.component_log(self.name)
        self._log_marker(f"{step.name} starting")
        with log.open("ab") as sink:
            popen = subprocess.Popen(
                ["sh", "-c", step.script],
                cwd=work,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = _Proc(step.name, popen)
        with self._procs_lock:
            self._procs.append(proc)
        return proc

    def _should_skip(self, expression: str) -> bool:
        text = expression.strip()
        negate = text.startswith("!")
        if negate:
            text = text[1:].strip()
        match = SKIPIF.fullmatch(text)
        if match is None:
            raise ValueError(f"Invalid format for skipif: {expression!r}")
        operator, argument = match.group(1), match.group(2)
        if operator == "onpath":
            found = shutil.which(argument, path=self.nucleus.path) is not None
        else:
            found = Path(os.path.expanduser(argument)).exists()
        return found != negate

    def _terminate(self, proc: _Proc) -> None:
        """SIGTERM to the process group, wait up to 5 s, then SIGKILL (NUC UnixExec/UnixPlatform)."""
        popen = proc.popen
        if popen.poll() is not None:
            self._record_end(proc, "exited", popen.returncode, None)
            self._kill_group(popen.pid, signal.SIGKILL)
            return
        signalled = time.monotonic()
        self._kill_group(popen.pid, signal.SIGTERM)
        try:
            code = popen.wait(self.nucleus.graceful_shutdown_seconds)
            self._record_end(proc, "SIGTERM", code, time.monotonic() - signalled)
        except subprocess.TimeoutExpired:
            self._kill_group(popen.pid, signal.SIGKILL)
            code = popen.wait()
            self._record_end(proc, "SIGKILL", code, time.monotonic() - signalled)
        self._log_marker(f"{proc.step} closed: {self.process_ends[-1].how}, exit {code}")
        # Whatever the group left behind must not outlive the component.
        self._kill_group(popen.pid, signal.SIGKILL)

    @staticmethod
    def _kill_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def _stop_processes(self) -> None:
        with self._procs_lock:
            procs, self._procs = self._procs, []
        for proc in procs:
            self._terminate(proc)

    def _record_end(self, proc: _Proc, how: str, code: int | None, after: float | None) -> None:
        with self._procs_lock:
            if proc in self._procs:
                self._procs.remove(proc)
            if proc.recorded:
                return
            proc.recorded = True
        duration = time.monotonic() - proc.started
        self.process_ends.append(ProcessEnd(proc.step, how, code, after, duration))

    # -- state -------------------------------------------------------------------------------------------

    def _report(self, state: str, reason: str = "") -> None:
        with self.nucleus.changed:
            previous = self.state
            if state not in (ERRORED, BROKEN):
                # A non-ERRORED report from a state resets that state's error count.
                self._errors.pop(previous, None)
            self.state = state
            self.history.append(state)
            self.status.append(reason)
            self.nucleus.changed.notify_all()
        self.nucleus.log(f"{self.name}: {previous} -> {state}{f' ({reason})' if reason else ''}")

    def _log_marker(self, text: str) -> None:
        path = self.nucleus.component_log(self.name)
        with path.open("ab+") as sink:
            sink.seek(0, os.SEEK_END)
            separator = b""
            if sink.tell() > 0:
                sink.seek(-1, os.SEEK_END)
                separator = b"" if sink.read(1) == b"\n" else b"\n"
            sink.write(separator + f"[nucleus] {self.name}: {text}\n".encode())


class TokenExchangeService(Service):
    """``aws.greengrass.TokenExchangeService``: a built-in service of the nucleus, not a process. Starting
    refuses an empty ``iotRoleAlias`` (ERRORED, so three starts make it BROKEN), then serves credentials and
    sets the nucleus-wide ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` before reporting RUNNING."""

    def __init__(self, nucleus: Nucleus, config: ServiceConfig) -> None:
        super().__init__(nucleus, config)
        self._server: http.server.ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None

    def _start_and_run(self) -> None:
        if not self.nucleus.iot_role_alias.strip():
            self.nucleus.log(f"{self.name}: iotRoleAlias parameter is either empty or not configured for TES")
            if self._errored("iotRoleAlias is empty"):
                self._restart_after_error()
            return
        port = int(str(ci_get(self.config.configuration, "port", 0) or 0))
        nucleus = self.nucleus

        class Handler(_CredentialRequestHandler):
            pass

        Handler.nucleus = nucleus
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        self._server = server
        self._server_thread = threading.Thread(
            target=server.serve_forever, name="tes-http", kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._server_thread.start()
        active = server.server_address[1]
        self.config.configuration["activePort"] = active
        nucleus.nucleus_setenv[TES_URI_ENV] = f"http://localhost:{active}{TES_PATH}"
        nucleus.log(f"{self.name}: started server at port {active}")
        self._report(RUNNING)
        self._watch_running(None)

    def _stop_processes(self) -> None:
        super()._stop_processes()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self.nucleus.log(f"{self.name}: stopped server")


class _CredentialRequestHandler(http.server.BaseHTTPRequestHandler):
    """NUC CredentialRequestHandler.handle: GET only (405), the one path (400), a component's token in
    ``Authorization`` (403), then the credentials."""

    nucleus: Nucleus
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path != TES_PATH:
            self._answer(400)
            return
        principal = self.nucleus.authenticate(self.headers.get("Authorization"))
        if principal is None:
            self.nucleus.log("TokenExchangeService: request denied due to invalid token")
            self._answer(403)
            return
        self.nucleus.tes_requests.append(principal)
        body = json.dumps(self.nucleus.tes_credentials).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse_method(self) -> None:
        self._answer(405)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _refuse_method  # noqa: N815

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("TES: " + format, *args)


def make_service(nucleus: Nucleus, config: ServiceConfig) -> Service:
    """The nucleus's built-in services are classes of its own (``@ImplementsService``), not processes."""
    if config.name == TOKEN_EXCHANGE_SERVICE:
        return TokenExchangeService(nucleus, config)
    return Service(nucleus, config)


# --- The nucleus ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentResult:
    status: str  # SUCCEEDED | FAILED (a component went BROKEN; no rollback is simulated)
    components: dict[str, str]  # every resolved component -> version
    states: dict[str, str]


@dataclass
class ConfigurationUpdate:
    merge: Mapping[str, Any] | str | None = None
    reset: Sequence[str] = ()


class Nucleus:
    """The simulated nucleus, rooted at ``root`` (``/greengrass/v2`` on a device).

    ``s3_endpoint``: the S3 API the nucleus downloads artifacts from, with its *own* credentials
    (``access_key``/``secret_key``, fake test values), which no component ever sees.
    ``nucleus_setenv``: the nucleus-wide ``setenv`` every lifecycle step gets first.
    ``download_attempts``/``download_retry_seconds``: the checksum-mismatch retry (10 x 1 min on a device).
    ``iot_role_alias``: the nucleus's ``iotRoleAlias`` (TES refuses to start without one);
    ``tes_credentials``: what the AWS IoT credentials provider would vend through it.
    """

    def __init__(
        self,
        root: Path,
        s3_endpoint: str,
        *,
        region: str = "us-east-1",
        thing_name: str = "modelship-test-thing",
        nucleus_setenv: Mapping[str, str] | None = None,
        access_key: str = "testing",
        secret_key: str = "testing",
        cloud: CloudRegistry | None = None,
        download_attempts: int = 3,
        download_retry_seconds: float = 0.2,
        graceful_shutdown_seconds: float = GRACEFUL_SHUTDOWN_SECONDS,
        error_reset_seconds: float = DEFAULT_ERROR_RESET_SECONDS,
        path: str = DEVICE_PATH,
        home: Path | None = None,
        platform: Mapping[str, str] | None = None,
        iot_role_alias: str = DEFAULT_IOT_ROLE_ALIAS,
        tes_credentials: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.s3_endpoint = s3_endpoint
        self.region = region
        self.thing_name = thing_name
        self.nucleus_setenv = dict(nucleus_setenv or {})
        self._access_key = access_key
        self._secret_key = secret_key
        self.download_attempts = download_attempts
        self.download_retry_seconds = download_retry_seconds
        self.graceful_shutdown_seconds = graceful_shutdown_seconds
        self.error_reset_seconds = error_reset_seconds
        self.path = path
        self.home = Path(home) if home is not None else self.root / "home"
        self.platform = dict(platform) if platform is not None else device_platform()
        self.cloud = cloud if cloud is not None else CloudRegistry(lambda: self.s3_client(record=False))
        self.services: dict[str, Service] = {}
        self.iot_role_alias = iot_role_alias
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        self.tes_credentials = dict(
            tes_credentials
            or {
                "AccessKeyId": "ASIATESTDEVICEROLE01",
                "SecretAccessKey": "tes-device-role-secret-testing",
                "Token": "tes-device-role-session-token-testing",
                "Expiration": expiration,
            }
        )
        #: The component behind each successful credentials request, in order.
        self.tes_requests: list[str] = []
        self._tokens: dict[str, str] = {}
        self._tokens_lock = threading.Lock()
        self.changed = threading.Condition()
        self.s3_calls: list[str] = []
        self._deploy_lock = threading.RLock()
        self._log_lock = threading.Lock()
        for folder in ("config", "work", "logs", "packages/recipes", "packages/artifacts"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        (self.root / "packages/artifacts-unarchived").mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.root_ca_path.write_text("# placeholder: the simulated nucleus has no AWS IoT connection\n")

    # -- paths (NUC util/NucleusPaths.java) ---------------------------------------------------------------

    @property
    def root_ca_path(self) -> Path:
        return self.root / "rootCA.pem"

    def artifacts_path(self, name: str, version: str) -> Path:
        return self.root / "packages" / "artifacts" / name / version

    def decompressed_path(self, name: str, version: str) -> Path:
        return self.root / "packages" / "artifacts-unarchived" / name / version

    def work_path(self, name: str) -> Path:
        return self.root / "work" / name

    def component_log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    @property
    def nucleus_log_path(self) -> Path:
        return self.root / "logs" / "greengrass.log"

    @property
    def config_path(self) -> Path:
        return self.root / "config" / "effective-config.json"

    # -- S3, with the nucleus's own credentials ------------------------------------------------------------

    def s3_client(self, region: str | None = None, *, record: bool = True) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            region_name=region or self.region,
        )
        client = session.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            config=BotoConfig(
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=2,
                read_timeout=30,
                s3={"addressing_style": "path"},
            ),
        )
        if record:
            client.meta.events.register("before-call.s3", self._record_s3_call)
        return client

    def _record_s3_call(self, model: Any, **_: Any) -> None:
        self.s3_calls.append(str(model.name))

    # -- logs ---------------------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self._log_lock, self.nucleus_log_path.open("a") as sink:
            sink.write(f"{stamp} {text}\n")
        logger.info("%s", text)

    def logs(self, name: str) -> str:
        path = self.component_log(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def nucleus_log(self) -> str:
        return self.nucleus_log_path.read_text() if self.nucleus_log_path.exists() else ""

    # -- the cloud --------------------------------------------------------------------------------------

    def register(
        self, recipe: Mapping[str, Any] | str | bytes, *, compute_digests: bool = True
    ) -> ComponentId:
        return self.cloud.create_component_version(recipe, compute_digests=compute_digests)

    # -- deployments ------------------------------------------------------------------------------------

    def deploy(
        self,
        components: Mapping[str, str],
        *,
        configuration: Mapping[str, ConfigurationUpdate | Mapping[str, Any]] | None = None,
        timeout: float = 300.0,
        wait: bool = True,
    ) -> DeploymentResult:
        """A deployment to this device: the target's full component list (a component not listed is
        removed, as a new deployment replaces the previous one). ``configuration`` maps a root component
        to its ``configurationUpdate`` (``merge`` as an object or JSON text, ``reset`` as JSON pointers).

        Raises DeploymentError if resolution or preparation fails (the device is left unchanged). Returns
        once every component is RUNNING, FINISHED or BROKEN (status FAILED if any is BROKEN)."""
        with self._deploy_lock:
            updates = {name: _configuration_update(value) for name, value in (configuration or {}).items()}
            for name in updates:
                if name not in components:
                    raise DeploymentError(f"{name} has a configurationUpdate but is not a root component")
            resolved = self._resolve(components)
            recipes = {
                name: self.cloud.recipe(ComponentId(name, version)) for name, version in resolved.items()
            }
            manifests = {name: self._select_manifest(recipe) for name, recipe in recipes.items()}
            for name, version in resolved.items():
                self._save_recipe(recipes[name], name, version)
                self._prepare_artifacts(name, version, manifests[name])
            new_configs = self._build_configs(resolved, recipes, manifests, updates)
            self._activate(new_configs)
            self._persist()
        if not wait:
            return DeploymentResult("IN_PROGRESS", dict(resolved), self.states())
        self.wait_settled(list(resolved), timeout)
        states = self.states()
        status = "FAILED" if any(states[name] == BROKEN for name in resolved) else "SUCCEEDED"
        self.log(f"deployment {status}: {resolved}")
        return DeploymentResult(status, dict(resolved), states)

    def _resolve(self, targets: Mapping[str, str]) -> dict[str, str]:
        pinned = {name: str(Version.parse(version)) for name, version in targets.items()}
        chosen: dict[str, str] = dict(pinned)
        for _ in range(50):
            requirements: dict[str, list[tuple[str, str]]] = {}
            closure: dict[str, str] = {}
            queue = list(pinned)
            while queue:
                name = queue.pop(0)
                if name in closure:
                    continue
                closure[name] = chosen[name]
                recipe = self.cloud.recipe(ComponentId(name, chosen[name]))
                for dependency, properties in (ci_get(recipe, "ComponentDependencies") or {}).items():
                    requirement = str(ci_get(properties, "VersionRequirement") or "*")
                    requirements.setdefault(dependency, []).append((name, requirement))
                    if dependency not in chosen:
                        chosen[dependency] = self._choose_version(dependency, requirements[dependency])
                    queue.append(dependency)
            changed = False
            for dependency, needs in requirements.items():
                checks = [parse_requirement(text) for _, text in needs]
                version = Version.parse(chosen[dependency])
                if all(check(version) for check in checks):
                    continue
                if dependency in pinned:
                    raise DeploymentError(
                        f"{dependency} {pinned[dependency]} does not satisfy {needs}", "NO_AVAILABLE_VERSION"
                    )
                chosen[dependency] = self._choose_version(dependency, needs)
                changed = True
            if not changed:
                return closure
        raise DeploymentError("dependency resolution did not converge", "NO_AVAILABLE_VERSION")

    def _choose_version(self, name: str, needs: list[tuple[str, str]]) -> str:
        """The active version if it satisfies every requirement, else the newest registered one that does
        (NUC ComponentManager: local active version first, then the cloud's candidates)."""
        checks = [parse_requirement(text) for _, text in needs]
        active = self.services.get(name)
        if active is not None and all(check(Version.parse(active.config.version)) for check in checks):
            return active.config.version
        for version in reversed(self.cloud.versions(name)):
            if all(check(version) for check in checks):
                return str(version)
        raise DeploymentError(f"no version of {name} satisfies {needs}", "NO_AVAILABLE_VERSION")

    def _select_manifest(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        name = ci_get(recipe, "ComponentName")
        for manifest in ci_get(recipe, "Manifests") or []:
            if platform_matches(ci_get(manifest, "Platform"), self.platform):
                if ci_get(manifest, "Lifecycle") is None and ci_get(recipe, "Lifecycle") is not None:
                    raise UnsupportedByHarness(f"{name}: a global Lifecycle with Selections is not simulated")
                return dict(manifest)
        raise DeploymentError(
            f"{name}: no manifest matches the platform {self.platform}", "NO_MATCHING_PLATFORM"
        )

    def _save_recipe(self, recipe: Mapping[str, Any], name: str, version: str) -> None:
        path = self.root / "packages" / "recipes" / f"{name}@{version}.recipe.json"
        path.write_text(json.dumps(recipe, indent=2, sort_keys=True))

    # -- artifacts (NUC ComponentManager.prepareArtifacts, ArtifactDownloader, S3Downloader) ---------------

    def _prepare_artifacts(self, name: str, version: str, manifest: Mapping[str, Any]) -> None:
        directory = self.artifacts_path(name, version)
        directory.mkdir(parents=True, exist_ok=True)
        for artifact in ci_get(manifest, "Artifacts") or []:
            uri = str(ci_get(artifact, "Uri"))
            bucket, key = split_s3_uri(uri)
            target = directory / key.rsplit("/", 1)[-1]
            algorithm = ci_get(artifact, "Algorithm")
            digest = ci_get(artifact, "Digest")
            if self._download_required(target, algorithm, digest):
                self._download(name, version, uri, bucket, key, target, algorithm, digest)
            permission = ci_get(artifact, "Permission") or {}
            mode = file_mode(
                str(ci_get(permission, "Read") or "OWNER").upper(),
                str(ci_get(permission, "Execute") or "NONE").upper(),
            )
            set_artifact_permission(target, mode)
            if str(ci_get(artifact, "Unarchive") or "NONE").upper() == "ZIP":
                stem = target.name[: target.name.rindex(".")] if target.name.find(".") > 0 else target.name
                destination = self.decompressed_path(name, version) / stem
                try:
                    unzip(target, destination)
                except (OSError, zipfile.BadZipFile) as error:
                    raise DeploymentError(
                        f"Failed to unarchive component {name}-{version} artifact {uri}: {error}",
                        "UNARCHIVE_FAILED",
                    ) from error
                set_artifact_permission(destination, mode)

    @staticmethod
    def _download_required(target: Path, algorithm: Any, digest: Any) -> bool:
        if not target.exists():
            return True
        if not algorithm or not digest:
            return False  # a local recipe without a digest uses the file already there
        if str(algorithm) != "SHA-256":
            return True
        return bool(file_digest(target) != digest)

    def _download(
        self,
        name: str,
        version: str,
        uri: str,
        bucket: str,
        key: str,
        target: Path,
        algorithm: Any,
        digest: Any,
    ) -> None:
        if algorithm is None:
            raise ChecksumMismatch(
                f"{name}-{version} artifact {uri}: Algorithm missing from artifact",
                "RECIPE_MISSING_ARTIFACT_HASH_ALGORITHM",
            )
        if str(algorithm) != "SHA-256":
            raise UnsupportedByHarness(f"{name}-{version} artifact {uri}: only SHA-256 is simulated")
        try:
            location = self.s3_client().get_bucket_location(Bucket=bucket).get("LocationConstraint")
            client = self.s3_client(location or "us-east-1")
            size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except Exception as error:
            raise DeploymentError(
                f"Failed to download component {name}-{version} artifact {uri}: {error}", "S3_DOWNLOAD_FAILED"
            ) from error
        if target.exists() and target.stat().st_size > size:
            target.unlink()
        for attempt in range(1, self.download_attempts + 1):
            hasher = hashlib.sha256()
            offset = 0
            if target.exists():
                target.chmod(0o600)
                with target.open("rb") as existing:
                    for chunk in iter(lambda: existing.read(1 << 20), b""):
                        hasher.update(chunk)
                offset = target.stat().st_size
            try:
                while offset < size:
                    response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{size - 1}")
                    with target.open("ab") as sink:
                        for chunk in response["Body"].iter_chunks(1 << 20):
                            sink.write(chunk)
                            hasher.update(chunk)
                            offset += len(chunk)
            except Exception as error:
                raise DeploymentError(
                    f"Failed to download component {name}-{version} artifact {uri}: {error}",
                    "S3_DOWNLOAD_FAILED",
                ) from error
            if not target.exists():
                target.touch()
            if base64.b64encode(hasher.digest()).decode() == digest:
                self.log(f"{name}-{version}: downloaded {uri} (attempt {attempt})")
                return
            target.unlink()
            self.log(f"{name}-{version}: checksum mismatch for {uri} (attempt {attempt}); file deleted")
            if attempt < self.download_attempts:
                time.sleep(self.download_retry_seconds)
        raise ChecksumMismatch(
            f"{name}-{version} artifact {uri}: Integrity check for downloaded artifact failed. "
            "Artifact contents may have changed after component version was created",
            "ARTIFACT_CHECKSUM_MISMATCH",
        )

    # -- configuration and interpolation (NUC KernelConfigResolver) --------------------------------------

    def _build_configs(
        self,
        resolved: Mapping[str, str],
        recipes: Mapping[str, Mapping[str, Any]],
        manifests: Mapping[str, Mapping[str, Any]],
        updates: Mapping[str, ConfigurationUpdate],
    ) -> dict[str, ServiceConfig]:
        configs: dict[str, ServiceConfig] = {}
        for name, version in resolved.items():
            recipe = recipes[name]
            existing = self.services.get(name)
            configuration = copy.deepcopy(existing.config.configuration) if existing is not None else {}
            update = updates.get(name)
            if update is not None:
                for pointer in update.reset:
                    configuration = reset_pointer(configuration, pointer)
            defaults = ci_get(ci_get(recipe, "ComponentConfiguration") or {}, "DefaultConfiguration") or {}
            # The defaults are merged with timestamp 1: values the device already holds win.
            deep_merge(configuration, defaults, existing_wins=True)
            if update is not None and update.merge:
                merge = json.loads(update.merge) if isinstance(update.merge, str) else update.merge
                deep_merge(configuration, merge, existing_wins=False)
            lifecycle = copy.deepcopy(dict(ci_get(manifests[name], "Lifecycle") or {}))
            for step in ("Bootstrap",):
                if ci_get(lifecycle, step) is not None:
                    raise UnsupportedByHarness(f"{name}: the {step} step is not simulated")
            dependencies = {
                dependency: str(ci_get(properties, "DependencyType") or "HARD").upper()
                for dependency, properties in (ci_get(recipe, "ComponentDependencies") or {}).items()
            }
            configs[name] = ServiceConfig(name, version, lifecycle, dependencies, configuration)
        for config in configs.values():
            config.lifecycle = self._interpolate(config.lifecycle, config, configs)
            self.work_path(config.name).mkdir(parents=True, exist_ok=True)
        return configs

    def _interpolate(self, value: Any, config: ServiceConfig, configs: Mapping[str, ServiceConfig]) -> Any:
        if isinstance(value, str):
            return self._replace(value, config, configs)
        if isinstance(value, Mapping):
            return {key: self._interpolate(child, config, configs) for key, child in value.items()}
        return value  # lists are outlawed under Lifecycle

    def _system_parameter(self, name: str, version: str, namespace: str, key: str) -> str | None:
        if namespace == "artifacts" and key == "path":
            return str(self.artifacts_path(name, version))
        if namespace == "artifacts" and key == "decompressedPath":
            return str(self.decompressed_path(name, version))
        if namespace == "work" and key == "path":
            return str(self.work_path(name))
        if namespace == "kernel" and key == "rootPath":
            return str(self.root)
        if namespace == "iot" and key == "thingName":
            return self.thing_name
        return None

    def _configuration_value(self, config: ServiceConfig, pointer: str) -> str | None:
        found, value = json_pointer_get(config.configuration, pointer)
        if not found:
            self.log(f"{config.name}: Failed to interpolate configuration: missing value node at {pointer!r}")
            return None
        return json_text(value)

    def _replace(self, text: str, config: ServiceConfig, configs: Mapping[str, ServiceConfig]) -> str:
        for match in list(SAME_COMPONENT_VARIABLE.finditer(text)):
            namespace, key = match.group(1), match.group(2)
            if namespace == "configuration":
                replacement = self._configuration_value(config, key)
            elif namespace in ("artifacts", "work", "kernel", "iot"):
                replacement = self._system_parameter(config.name, config.version, namespace, key)
            else:
                self.log(f"{config.name}: unrecognized namespace in {match.group(0)!r}: left as is")
                continue
            if replacement is not None:
                text = text.replace(match.group(0), replacement)
        for match in list(CROSS_COMPONENT_VARIABLE.finditer(text)):
            target, namespace, key = match.group(1), match.group(2), match.group(3)
            if target not in config.dependencies:
                self.log(
                    f"{config.name}: {match.group(0)!r}: {target} is not a direct dependency: left as is"
                )
                continue
            other = configs.get(target)
            if other is None:
                self.log(f"{config.name}: {match.group(0)!r}: {target} is not resolved: left as is")
                continue
            if namespace == "configuration":
                replacement = self._configuration_value(other, key)
            elif namespace in ("artifacts", "work", "kernel", "iot"):
                replacement = self._system_parameter(target, other.version, namespace, key)
            else:
                self.log(f"{config.name}: unrecognized namespace in {match.group(0)!r}: left as is")
                continue
            if replacement is not None:
                text = text.replace(match.group(0), replacement)
        return text

    # -- activation -------------------------------------------------------------------------------------

    def _activate(self, configs: Mapping[str, ServiceConfig]) -> None:
        """Stop what is removed or changed (dependents first), then start in dependency order."""
        order = _dependency_order(configs)
        actions: dict[str, str] = {}
        for name in order:
            existing = self.services.get(name)
            if existing is None or not existing.alive:
                actions[name] = "install"
                continue
            change = lifecycle_changes(existing.config, configs[name])
            if change is None and existing.state == BROKEN:
                change = "reinstall"  # a new deployment gives a BROKEN component a new chance
            if change is None:
                existing.config = configs[name]  # configuration-only: no restart
            else:
                actions[name] = change
        # Unchanged services with a HARD dependency on a (re)started one restart too.
        for name in order:
            if name in actions or name not in self.services:
                continue
            if any(kind == "HARD" and dep in actions for dep, kind in configs[name].dependencies.items()):
                actions[name] = "restart"
        removed = [name for name in self.services if name not in configs]
        for name in reversed(_dependency_order({n: s.config for n, s in self.services.items()})):
            if name in removed or name in actions:
                self.log(f"{name}: {'removed' if name in removed else actions[name]}")
                self.services[name].stop()
        for name in removed:
            del self.services[name]
        for name in order:
            action = actions.get(name)
            if action is None:
                continue
            service = self.services.get(name)
            if service is None:
                service = make_service(self, configs[name])
                self.services[name] = service
            service.config = configs[name]
            service.start(INSTALLED if action == "restart" else NEW)

    def _persist(self) -> None:
        data = {"services": {name: service.config.to_json() for name, service in self.services.items()}}
        self.config_path.write_text(json.dumps(data, indent=2, sort_keys=True))

    # -- launching and stopping the nucleus --------------------------------------------------------------

    def launch(self, timeout: float = 300.0) -> dict[str, str]:
        """Start the nucleus from its local config (an offline-capable launch: no cloud, no S3): every
        component runs Install again, then Run (NUC: Install runs each time the nucleus launches)."""
        with self._deploy_lock:
            if any(service.alive for service in self.services.values()):
                raise NucleusError("the nucleus is already running")
            if not self.config_path.exists():
                return {}
            data = json.loads(self.config_path.read_text())
            configs = {
                name: ServiceConfig.from_json(name, value) for name, value in data.get("services", {}).items()
            }
            self.services = {name: make_service(self, config) for name, config in configs.items()}
            self.log("nucleus launched from the local config")
            for name in _dependency_order(configs):
                self.services[name].start(NEW)
        self.wait_settled(list(configs), timeout)
        return self.states()

    def stop_all(self) -> None:
        with self._deploy_lock:
            order = _dependency_order({name: service.config for name, service in self.services.items()})
            for name in reversed(order):
                self.services[name].stop()

    def restart_nucleus(self, timeout: float = 300.0) -> dict[str, str]:
        """Stop every component, then launch again from the local config and component store."""
        self.stop_all()
        self.log("nucleus restart")
        return self.launch(timeout)

    def restart_component(self, name: str, timeout: float = 120.0) -> str:
        """``greengrass-cli component restart``: STOPPING, then INSTALLED -> STARTING -> RUNNING."""
        with self._deploy_lock:
            service = self.services[name]
            service.stop()
            service.start(INSTALLED)
        self.wait_settled([name], timeout)
        return service.state

    def __enter__(self) -> Nucleus:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()

    # -- environment -------------------------------------------------------------------------------------

    def environment(self, config: ServiceConfig, step: Step) -> dict[str, str]:
        """A lifecycle process's environment: a minimal base (the nucleus's service has little more),
        the device variables the nucleus always sets and the component's token, then Setenv layered
        nucleus-wide (where TES puts its URI), lifecycle, step (NUC ShellRunner,
        GenericExternalService.addEnv). No AWS credentials, and no IPC socket variable: with no IPC server
        here, a component that checks for it runs with IPC off."""
        environment = {
            "PATH": self.path,
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_IOT_THING_NAME": self.thing_name,
            "GG_ROOT_CA_PATH": str(self.root_ca_path),
            # The component's identity, for IPC and for TES (ShellRunner sets both to the same token).
            "SVCUID": self.token(config.name),
            TES_TOKEN_ENV: self.token(config.name),
        }
        environment.update(self.nucleus_setenv)
        lifecycle_setenv = ci_get(config.lifecycle, "Setenv") or {}
        environment.update({str(k): json_text(v) for k, v in lifecycle_setenv.items()})
        environment.update(step.setenv)
        return environment

    # -- identity (NUC ipc/AuthenticationHandler) -------------------------------------------------------

    def token(self, name: str) -> str:
        with self._tokens_lock:
            return self._tokens.setdefault(name, uuid.uuid4().hex)

    def authenticate(self, token: str | None) -> str | None:
        """The component a token belongs to, or None (unknown, missing, or its component is gone)."""
        if not token:
            return None
        with self._tokens_lock:
            names = [name for name, known in self._tokens.items() if known == token]
        return names[0] if names and names[0] in self.services else None

    # -- observing ---------------------------------------------------------------------------------------

    def state(self, name: str) -> str | None:
        service = self.services.get(name)
        return None if service is None else service.state

    def states(self) -> dict[str, str]:
        return {name: service.state for name, service in self.services.items()}

    def history(self, name: str) -> list[str]:
        return list(self.services[name].history)

    def process_ends(self, name: str) -> list[ProcessEnd]:
        return list(self.services[name].process_ends)

    def configuration(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.services[name].config.configuration)

    def lifecycle(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.services[name].config.lifecycle)

    def wait_for(self, name: str, states: Iterable[str], timeout: float) -> str:
        wanted = frozenset(states)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                current = self.state(name)
                if current in wanted:
                    return current
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{name} is {current}, not {sorted(wanted)}, after {timeout} s\n"
                        f"history: {self.services[name].history if name in self.services else None}\n"
                        f"log:\n{self.logs(name)[-4000:]}"
                    )
                self.changed.wait(min(remaining, 0.2))

    def wait_until_running(self, name: str, timeout: float = 60.0) -> None:
        state = self.wait_for(name, (RUNNING, BROKEN, FINISHED), timeout)
        if state != RUNNING:
            raise AssertionError(f"{name} is {state}, not RUNNING:\n{self.logs(name)[-4000:]}")

    def wait_until_finished(self, name: str, timeout: float = 60.0) -> None:
        state = self.wait_for(name, (FINISHED, BROKEN), timeout)
        if state != FINISHED:
            raise AssertionError(f"{name} is {state}, not FINISHED:\n{self.logs(name)[-4000:]}")

    def wait_settled(self, names: Sequence[str], timeout: float) -> None:
        for name in names:
            self.wait_for(name, SETTLED, timeout)


def _configuration_update(value: ConfigurationUpdate | Mapping[str, Any]) -> ConfigurationUpdate:
    if isinstance(value, ConfigurationUpdate):
        return value
    return ConfigurationUpdate(merge=ci_get(value, "merge"), reset=tuple(ci_get(value, "reset") or ()))


def _dependency_order(configs: Mapping[str, ServiceConfig]) -> list[str]:
    """Dependencies before their dependents (ties in name order)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name not in configs:
            return
        if name in visiting:
            raise DeploymentError(f"dependency cycle through {name}", "CIRCULAR_DEPENDENCY")
        visiting.add(name)
        for dependency in sorted(configs[name].dependencies):
            visit(dependency)
        visiting.discard(name)
        order.append(name)

    for name in sorted(configs):
        visit(name)
    return order


@contextlib.contextmanager
def running_nucleus(root: Path, s3_endpoint: str, **options: Any) -> Iterator[Nucleus]:
    """A nucleus that always stops every component on the way out."""
    nucleus = Nucleus(root, s3_endpoint, **options)
    try:
        yield nucleus
    finally:
        nucleus.stop_all()


__all__ = [
    "BROKEN",
    "ERRORED",
    "FINISHED",
    "INSTALLED",
    "NEW",
    "RUNNING",
    "STARTING",
    "STOPPING",
    "TES_PATH",
    "TOKEN_EXCHANGE_SERVICE",
    "ChecksumMismatch",
    "CloudRegistry",
    "ComponentId",
    "ConfigurationUpdate",
    "ConflictError",
    "DeploymentError",
    "DeploymentResult",
    "Nucleus",
    "ProcessEnd",
    "RecipeError",
    "UnsupportedByHarness",
    "greengrass_digest",
    "running_nucleus",
]
