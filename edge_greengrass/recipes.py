"""Greengrass v2 recipes for the inference component and its model components (docs/edge.md).

One function per recipe, and one renderer, so that ``modelship edge package`` and the CDK edge stack
publish the very same recipes. Everything here is pure: no I/O, no clock, no randomness, so the same
inputs always give byte-identical recipes.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml
from modelship import __version__
from modelship.core.errors import BadRequest
from modelship.core.repository import MANIFEST_FILE, MODEL_FILE, manifest_key, model_key, signature_key
from modelship.core.settings import TRUSTED_KEYS_ENV

from edge_greengrass.settings import (
    ACCESS_CONTROL_KEY,
    AUTH_SIGV4,
    CLOUD_API_KEY_KEY,
    CLOUD_AUTH_KEY,
    CLOUD_ENVIRONMENT,
    DEFAULT_CONFIGURATION,
    TRUSTED_KEYS_KEY,
    EdgeConfigurationError,
    access_control_policy,
    parse_cloud_configuration,
    parse_configuration,
)

RECIPE_FORMAT_VERSION: Final = "2020-01-25"
INFERENCE_COMPONENT_NAME: Final = "com.modelship.Inference"
MODEL_COMPONENT_PREFIX: Final = "com.modelship.model."
COMPONENT_PUBLISHER: Final = "modelship"
# Under the store's prefix, next to models/: the device role may read these two prefixes and no other.
COMPONENTS_PREFIX: Final = "components"
ZIP_STEM: Final = "modelship-edge"
ZIP_NAME: Final = f"{ZIP_STEM}.zip"
# The public component that gives a component AWS credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI); the
# developer guide's own example depends on it this way.
TOKEN_EXCHANGE_SERVICE: Final = "aws.greengrass.TokenExchangeService"  # noqa: S105 (a name)
TOKEN_EXCHANGE_SERVICE_REQUIREMENT: Final = "^2.0.0"  # noqa: S105 (a version range)
ARTIFACT_ALGORITHM: Final = "SHA-256"
# A cold pip install of onnxruntime and numpy on a slow ARM device with a slow link; the nucleus's
# default of 120 s is the classic cause of failed ML component installs.
INSTALL_TIMEOUT_SECONDS: Final = 1200
# Greengrass limits (aws-greengrass-component-common ComponentRecipe): names and semver parts.
MAX_COMPONENT_NAME_LENGTH: Final = 128
MAX_SEMVER_PART: Final = 999999
COMPONENT_NAME_PATTERN: Final = re.compile(r"[a-zA-Z0-9_.-]+")
SEMVER_PATTERN: Final = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
# Linux on x86-64 and 64-bit ARM: the platforms with onnxruntime and awscrt wheels (32-bit ARM has
# neither, and building them on a device is what makes such installs time out). ``runtime: "*"`` makes
# Greengrass Lite take the manifest too; the Java nucleus never sets ``runtime`` and matches ``*``.
PLATFORMS: Final = (
    {"os": "linux", "architecture": "amd64", "runtime": "*"},
    {"os": "linux", "architecture": "aarch64", "runtime": "*"},
)


def greengrass_digest(data: bytes) -> str:
    """A recipe's ``Digest``: the raw SHA-256 in padded standard base64 (the nucleus's ArtifactDownloader)."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def digest_from_sha256_hex(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


def validate_component_name(name: str) -> str:
    if not COMPONENT_NAME_PATTERN.fullmatch(name) or len(name) > MAX_COMPONENT_NAME_LENGTH:
        raise BadRequest(
            f"component name {name!r} is not valid in Greengrass: at most {MAX_COMPONENT_NAME_LENGTH} "
            "characters from A-Z a-z 0-9 . _ -"
        )
    if name.lower().startswith("aws.greengrass"):
        raise BadRequest(f"component name {name!r} would override a public AWS component")
    return name


def validate_component_version(version: str) -> str:
    match = SEMVER_PATTERN.fullmatch(version)
    if match is None or any(int(part) > MAX_SEMVER_PART for part in match.groups()):
        raise BadRequest(
            f"component version {version!r} must be MAJOR.MINOR.PATCH, each part at most {MAX_SEMVER_PART}"
        )
    return version


def model_component_name(model: str) -> str:
    name = f"{MODEL_COMPONENT_PREFIX}{model}"
    if len(name) > MAX_COMPONENT_NAME_LENGTH:
        raise BadRequest(
            f"model name {model!r} is too long for the edge: its component name {name[:40]}... would pass "
            f"Greengrass's {MAX_COMPONENT_NAME_LENGTH} characters (at most "
            f"{MAX_COMPONENT_NAME_LENGTH - len(MODEL_COMPONENT_PREFIX)} for a model name)"
        )
    return validate_component_name(name)


def model_component_version(version: int) -> str:
    if not 1 <= version <= MAX_SEMVER_PART:
        raise BadRequest(
            f"model version {version} cannot be a Greengrass component version: a semver part is at most "
            f"{MAX_SEMVER_PART}"
        )
    return f"{version}.0.0"


def s3_uri(bucket: str, prefix: str, key: str) -> str:
    return f"s3://{bucket}/{prefix}/{key}" if prefix else f"s3://{bucket}/{key}"


def component_artifact_key(component: str, version: str, file_name: str) -> str:
    """The artifact's key relative to the store's prefix."""
    return f"{COMPONENTS_PREFIX}/{component}/{version}/{file_name}"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """One model version in the store, as its component names it: both objects by URI and digest."""

    name: str
    version: int
    model_uri: str
    model_digest: str
    manifest_uri: str
    manifest_digest: str
    # The manifest's signature (manifest.sig.json), when the version has one.
    signature_uri: str | None = None
    signature_digest: str | None = None

    @classmethod
    def from_store(
        cls,
        bucket: str,
        prefix: str,
        name: str,
        version: int,
        model_sha256_hex: str,
        manifest_bytes: bytes,
        signature_bytes: bytes | None = None,
    ) -> ModelSource:
        signed = signature_bytes is not None
        return cls(
            name=name,
            version=version,
            model_uri=s3_uri(bucket, prefix, model_key(name, version)),
            model_digest=digest_from_sha256_hex(model_sha256_hex),
            manifest_uri=s3_uri(bucket, prefix, manifest_key(name, version)),
            manifest_digest=greengrass_digest(manifest_bytes),
            signature_uri=s3_uri(bucket, prefix, signature_key(name, version)) if signed else None,
            signature_digest=greengrass_digest(signature_bytes) if signature_bytes is not None else None,
        )

    @property
    def component_name(self) -> str:
        return model_component_name(self.name)

    @property
    def component_version(self) -> str:
        return model_component_version(self.version)


def _artifact(uri: str, digest: str, *, unarchive: str, read: str) -> dict[str, Any]:
    return {
        "Uri": uri,
        "Digest": digest,
        "Algorithm": ARTIFACT_ALGORITHM,
        "Unarchive": unarchive,
        "Permission": {"Read": read, "Execute": "NONE"},
    }


def model_recipe(source: ModelSource) -> dict[str, Any]:
    """A model component: the store's two objects and no lifecycle, so the nucleus marks it FINISHED at
    once (which satisfies a HARD dependency). ``Read: ALL``: the inference component, another component,
    reads them (the developer guide's rule for a dependency's artifacts)."""
    artifacts = [
        _artifact(source.model_uri, source.model_digest, unarchive="NONE", read="ALL"),
        _artifact(source.manifest_uri, source.manifest_digest, unarchive="NONE", read="ALL"),
    ]
    if source.signature_uri is not None and source.signature_digest is not None:
        artifacts.append(
            _artifact(source.signature_uri, source.signature_digest, unarchive="NONE", read="ALL")
        )
    return {
        "RecipeFormatVersion": RECIPE_FORMAT_VERSION,
        "ComponentName": source.component_name,
        "ComponentVersion": source.component_version,
        "ComponentType": "aws.greengrass.generic",
        "ComponentDescription": (
            f"modelship model {source.name} version {source.version}: {MODEL_FILE} and {MANIFEST_FILE}, "
            "verified against their digests"
        ),
        "ComponentPublisher": COMPONENT_PUBLISHER,
        # A copy per manifest: YAML would otherwise write the shared list once, as an alias.
        "Manifests": [
            {"Platform": dict(platform), "Artifacts": copy.deepcopy(artifacts)} for platform in PLATFORMS
        ],
    }


def run_script(venv_dir: str, models: Sequence[ModelSource]) -> str:
    """Only host and port are interpolated: the Java nucleus restarts a component whose interpolated
    lifecycle changes, which they need anyway (the socket rebinds); what can change in place is read over
    IPC instead. ``exec`` so that the nucleus's SIGTERM reaches Python, not only ``sh``."""
    model_arguments = " ".join(
        f"--model '{source.name}={{{source.component_name}:artifacts:path}}'" for source in models
    )
    return (
        f"exec '{{work:path}}/{venv_dir}/bin/python' -m edge_greengrass"
        " --host '{configuration:/host}' --port '{configuration:/port}' --work '{work:path}' "
        f"{model_arguments}"
    )


def cloud_setenv() -> dict[str, str]:
    """The Run step's environment: each cloud key, interpolated from the configuration. Setenv rather than
    the command line: no value passes through ``sh``, and the API key stays out of ``ps``."""
    return {name: f"{{configuration:/{key}}}" for key, name in CLOUD_ENVIRONMENT.items()}


def needs_token_exchange(configuration: Mapping[str, Any]) -> bool:
    """True when the recipe's configuration signs cloud requests with SigV4: only then does the component
    depend on the token exchange service. A device without the fallback (or with an API key) gets no
    dependency that would hand it the device role's AWS credentials, nor one on the role alias's setup."""
    raw = configuration.get(CLOUD_AUTH_KEY)
    return isinstance(raw, str) and raw.strip().lower() == AUTH_SIGV4


def _check_cloud_configuration(configuration: Mapping[str, Any]) -> None:
    if str(configuration.get(CLOUD_API_KEY_KEY) or "").strip():
        raise BadRequest(
            f"{CLOUD_API_KEY_KEY} must not be in a recipe (anyone who can read the component can read it): "
            "set it in the deployment's configuration merge"
        )
    try:
        parse_cloud_configuration(
            {key: value for key, value in configuration.items() if key != CLOUD_API_KEY_KEY}
        )
    except EdgeConfigurationError as error:
        if CLOUD_API_KEY_KEY not in str(error):
            raise BadRequest(f"the cloud fallback's configuration: {error}") from None


def install_script() -> str:
    unpacked = f"{{artifacts:decompressedPath}}/{ZIP_STEM}"
    return (
        f"python3 -I '{unpacked}/edge_greengrass/install.py' --work '{{work:path}}' "
        f"--requirements '{unpacked}/requirements.txt'"
    )


def inference_recipe(
    *,
    component_name: str,
    component_version: str,
    models: Sequence[ModelSource],
    zip_uri: str,
    zip_digest: str,
    venv_dir: str,
    configuration: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    validate_component_name(component_name)
    validate_component_version(component_version)
    if not models:
        raise BadRequest("the inference component needs at least one model")
    defaults: dict[str, Any] = dict(DEFAULT_CONFIGURATION)
    defaults.update(configuration or {})
    _check_cloud_configuration(defaults)
    try:
        settings = parse_configuration(defaults)
    except EdgeConfigurationError as error:
        raise BadRequest(f"the component's configuration: {error}") from None
    defaults[ACCESS_CONTROL_KEY] = access_control_policy(
        component_name, settings.request_topic_prefix, settings.reply_topic_prefix, settings.metrics_topic
    )
    lifecycle = {
        "Setenv": {
            "PYTHONPATH": f"{{artifacts:decompressedPath}}/{ZIP_STEM}",
            # The artifact folders may be read-only to the component's user.
            "PYTHONPYCACHEPREFIX": "{work:path}/pycache",
            "PYTHONUNBUFFERED": "1",
        },
        "Install": {"Script": install_script(), "Timeout": INSTALL_TIMEOUT_SECONDS},
        "Run": {
            "Script": run_script(venv_dir, models),
            # The door refuses a value it cannot use offline (edge_greengrass.settings).
            "Setenv": {**cloud_setenv(), TRUSTED_KEYS_ENV: f"{{configuration:/{TRUSTED_KEYS_KEY}}}"},
        },
    }
    artifact = _artifact(zip_uri, zip_digest, unarchive="ZIP", read="OWNER")
    dependencies: dict[str, dict[str, str]] = {
        source.component_name: {
            "VersionRequirement": f"={source.component_version}",
            "DependencyType": "HARD",
        }
        for source in models
    }
    if needs_token_exchange(defaults):
        # HARD: the nucleus starts the component only once TES runs, so the variable is already set.
        dependencies[TOKEN_EXCHANGE_SERVICE] = {
            "VersionRequirement": TOKEN_EXCHANGE_SERVICE_REQUIREMENT,
            "DependencyType": "HARD",
        }
    return {
        "RecipeFormatVersion": RECIPE_FORMAT_VERSION,
        "ComponentName": component_name,
        "ComponentVersion": component_version,
        "ComponentType": "aws.greengrass.generic",
        "ComponentDescription": (
            f"modelship {__version__}: the Open Inference Protocol over HTTP and Greengrass IPC, serving "
            + ", ".join(f"{source.name} v{source.version}" for source in models)
        ),
        "ComponentPublisher": COMPONENT_PUBLISHER,
        "ComponentConfiguration": {"DefaultConfiguration": defaults},
        "ComponentDependencies": dependencies,
        "Manifests": [
            {
                "Platform": dict(platform),
                "Lifecycle": copy.deepcopy(lifecycle),
                "Artifacts": [copy.deepcopy(artifact)],
            }
            for platform in PLATFORMS
        ],
    }


def derived_component_version(content_digest: bytes) -> str:
    """``<modelship major>.<minor>.<n>``, ``n`` in 1..999999 from the digest of the component's content:
    the same content keeps its version; other content gets another one (a collision is caught when the
    artifact is published, and by Greengrass's ConflictException)."""
    major, minor = __version__.split(".")[:2]
    patch = int.from_bytes(hashlib.sha256(content_digest).digest()[:8], "big") % MAX_SEMVER_PART + 1
    return f"{int(major)}.{int(minor)}.{patch}"


def render_recipe(recipe: Mapping[str, Any]) -> bytes:
    """Block style, keys in the order written: a recipe a person can read and diff."""
    text: str = yaml.safe_dump(
        dict(recipe),
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=False,
        width=4096,
    )
    return text.encode("ascii")


def recipe_file_name(recipe: Mapping[str, Any]) -> str:
    return f"{recipe['ComponentName']}-{recipe['ComponentVersion']}.yaml"
