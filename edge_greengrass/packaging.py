"""``modelship edge package``: the inference component's zip and every component's recipe, reproducibly.

The output folder has the layout of the Greengrass Development Kit's ``greengrass-build``:
``recipes/<ComponentName>-<ComponentVersion>.yaml`` and
``artifacts/<ComponentName>/<ComponentVersion>/<file>``
(only the inference component has local artifacts: the model components name the store's own objects).
The same inputs give byte-identical files; nothing here reads a clock.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from modelship.core.blobs import BlobNotFound, BlobTooLarge, S3BlobStore, open_blob_store
from modelship.core.errors import BadRequest, ModelshipError
from modelship.core.manifest import MAX_MANIFEST_BYTES, Manifest
from modelship.core.repository import ModelRepository, manifest_key, model_key, signature_key

from edge_greengrass.install import venv_dir_name
from edge_greengrass.recipe_schema import RecipeError, check_recipe
from edge_greengrass.recipes import (
    INFERENCE_COMPONENT_NAME,
    MODEL_COMPONENT_PREFIX,
    ZIP_NAME,
    ModelSource,
    component_artifact_key,
    derived_component_version,
    greengrass_digest,
    inference_recipe,
    model_recipe,
    recipe_file_name,
    render_recipe,
    s3_uri,
    validate_component_name,
    validate_component_version,
)

Progress = Callable[[str], None]

# The Greengrass API takes inline recipes of up to 16 MB; ours are a few KB.
MAX_RECIPE_BYTES: Final = 1024 * 1024
RECIPES_DIR: Final = "recipes"
ARTIFACTS_DIR: Final = "artifacts"
REQUIREMENTS_FILE: Final = "requirements.txt"
_ZIP_EPOCH: Final = (1980, 1, 1, 0, 0, 0)
_ZIP_FILE_MODE: Final = 0o644
_ZIP_COMPRESSION_LEVEL: Final = 9
# What the device needs from each source package: the CLI and the client stay home.
_LEFT_OUT: Final = ("modelship/tools/", "edge_greengrass/gdk-config.json")
_SHIPPED_SUFFIXES: Final = frozenset({".py", ".typed", ".csv", ".txt"})


class PackageError(ModelshipError):
    """A package cannot be made or read; the message says what to change."""

    status = 400


@dataclass(frozen=True, slots=True)
class Artifact:
    uri: str
    digest: str
    # Set for the files packaged into DIR/artifacts; None for the store's own objects.
    local_path: Path | None


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    version: str
    recipe: dict[str, Any]
    artifacts: tuple[Artifact, ...]

    @property
    def is_model(self) -> bool:
        return self.name.startswith(MODEL_COMPONENT_PREFIX)


@dataclass(frozen=True, slots=True)
class Package:
    components: tuple[Component, ...]
    inference: Component
    store_bucket: str
    store_prefix: str

    @property
    def store_uri(self) -> str:
        return (
            f"s3://{self.store_bucket}/{self.store_prefix}"
            if self.store_prefix
            else f"s3://{self.store_bucket}"
        )

    def summary(self) -> str:
        """A table of components, versions, artifacts and digests, for people."""
        rows = [("COMPONENT", "VERSION", "ARTIFACT", "DIGEST (SHA-256, base64)")]
        for component in self.components:
            for artifact in component.artifacts:
                rows.append((component.name, component.version, artifact.uri, artifact.digest))
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        return "\n".join(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}" for row in rows
        )


def split_store_uri(store_uri: str) -> tuple[str, str]:
    """(bucket, prefix) of an ``s3://`` store: a recipe can only name S3 objects."""
    if not store_uri.startswith("s3://"):
        raise PackageError(
            f"--store must be an s3:// store (got {store_uri!r}): devices download the models from S3"
        )
    bucket, _, prefix = store_uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise PackageError(f"store URI {store_uri!r} names no bucket")
    return bucket, prefix.strip("/")


def source_files() -> Iterator[tuple[str, Path]]:
    """(name in the zip, file) for the core, the Lambda handler module and the edge door, sorted."""
    roots = {package: _package_dir(package) for package in ("modelship", "inference", "edge_greengrass")}
    found: list[tuple[str, Path]] = []
    for package, root in roots.items():
        for path in root.rglob("*"):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix not in _SHIPPED_SUFFIXES:
                continue
            name = f"{package}/{path.relative_to(root).as_posix()}"
            if not name.startswith(_LEFT_OUT):
                found.append((name, path))
    return iter(sorted(found))


def _package_dir(package: str) -> Path:
    # find_spec rather than import: importing the Lambda handler module would start a service.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise PackageError(f"cannot find the {package} package to put into the component")
    return Path(spec.origin).parent


def build_zip() -> tuple[bytes, bytes]:
    """The inference component's zip and its requirements: sorted entries, fixed timestamps and modes."""
    requirements = (_package_dir("edge_greengrass") / REQUIREMENTS_FILE).read_bytes()
    entries = [(name, path.read_bytes()) for name, path in source_files()]
    entries.append((REQUIREMENTS_FILE, requirements))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.create_system = 3  # Unix, so external_attr holds POSIX permissions
            info.external_attr = (stat.S_IFREG | _ZIP_FILE_MODE) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=_ZIP_COMPRESSION_LEVEL)
    return buffer.getvalue(), requirements


def read_model_sources(
    store_uri: str, models: Sequence[tuple[str, int | None]], progress: Progress
) -> list[ModelSource]:
    bucket, prefix = split_store_uri(store_uri)
    names = [name for name, _ in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PackageError(
            f"--model {', '.join(duplicates)} given twice: a device runs one version of each model"
        )
    repository = ModelRepository.open(store_uri)
    sources = []
    for name, version in sorted(models):
        resolved = version if version is not None else repository.latest_version(name)
        progress(f"reading the manifest of {name} version {resolved} from {repository.uri}")
        raw = _read_manifest_bytes(repository, name, resolved)
        manifest = Manifest.loads(raw, expected_name=name, expected_version=resolved)
        # Shipped as it is, when the version has one: the device checks it against its trustedKeys.
        signature = repository.read_signature(name, resolved)
        sources.append(
            ModelSource.from_store(bucket, prefix, name, resolved, manifest.sha256, raw, signature)
        )
    return sources


def _read_manifest_bytes(repository: ModelRepository, name: str, version: int) -> bytes:
    # The manifest's own bytes: its digest is taken from exactly what the device will download.
    try:
        return repository.blobs.read(manifest_key(name, version), MAX_MANIFEST_BYTES)
    except BlobNotFound:
        raise PackageError(f"model {name} version {version} is not in {repository.uri}") from None
    except BlobTooLarge:
        raise PackageError(f"the manifest of {name} version {version} is too large") from None


def build_components(
    store_uri: str,
    sources: Sequence[ModelSource],
    *,
    component_name: str = INFERENCE_COMPONENT_NAME,
    component_version: str | None = None,
    configuration: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], bytes]:
    """(model recipes, inference recipe, inference zip). Pure apart from reading our own sources."""
    bucket, prefix = split_store_uri(store_uri)
    validate_component_name(component_name)
    if component_version is not None:
        validate_component_version(component_version)
    zip_bytes, requirements = build_zip()
    zip_digest = greengrass_digest(zip_bytes)

    def recipe_at(version: str) -> dict[str, Any]:
        return inference_recipe(
            component_name=component_name,
            component_version=version,
            models=sources,
            zip_uri=s3_uri(bucket, prefix, component_artifact_key(component_name, version, ZIP_NAME)),
            zip_digest=zip_digest,
            venv_dir=venv_dir_name(requirements),
            configuration=configuration,
        )

    model_recipes = [model_recipe(source) for source in sources]
    if component_version is None:
        # Everything the component is made of, its own version aside: its zip (by digest), its recipe,
        # and the model components it depends on, down to their bytes' digests.
        content = b"".join(render_recipe(recipe) for recipe in (recipe_at("0.0.0"), *model_recipes))
        component_version = derived_component_version(content)
    return model_recipes, recipe_at(component_version), zip_bytes


def package(
    store_uri: str,
    models: Sequence[tuple[str, int | None]],
    out_dir: Path,
    *,
    component_name: str = INFERENCE_COMPONENT_NAME,
    component_version: str | None = None,
    configuration: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> Package:
    """Write the package into ``out_dir`` and return it as ``read_package`` reads it back.
    ``configuration`` overrides the recipe's DefaultConfiguration (``cloudAuth: sigv4`` adds the
    dependency on the token exchange service)."""
    say = progress or (lambda message: None)
    if not models:
        raise PackageError("name at least one --model to package")
    _check_out_dir(out_dir)
    sources = read_model_sources(store_uri, models, say)
    say("building the inference component's zip (the core, the Lambda handler, the edge door)")
    model_recipes, inference, zip_bytes = build_components(
        store_uri,
        sources,
        component_name=component_name,
        component_version=component_version,
        configuration=configuration,
    )
    for recipe in (*model_recipes, inference):
        try:
            check_recipe(recipe)
        except RecipeError as error:
            raise PackageError(f"recipe {recipe_file_name(recipe)} is invalid: {error}") from None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Built aside and swapped in whole: an interrupted run never leaves a mix of two packages.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        recipes_dir = staging / RECIPES_DIR
        recipes_dir.mkdir()
        for recipe in (*model_recipes, inference):
            (recipes_dir / recipe_file_name(recipe)).write_bytes(render_recipe(recipe))
        zip_dir = staging / ARTIFACTS_DIR / inference["ComponentName"] / inference["ComponentVersion"]
        zip_dir.mkdir(parents=True)
        (zip_dir / ZIP_NAME).write_bytes(zip_bytes)
        say(f"writing {len(model_recipes) + 1} recipes and {ZIP_NAME} ({len(zip_bytes)} bytes) to {out_dir}")
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_package(out_dir)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise PackageError(f"--out {out_dir} is a file, not a folder")
    if out_dir.is_dir():
        strangers = sorted(
            path.name for path in out_dir.iterdir() if path.name not in {RECIPES_DIR, ARTIFACTS_DIR}
        )
        if strangers:
            raise PackageError(
                f"--out {out_dir} holds other files ({', '.join(strangers[:3])}): packaging replaces its "
                f"{RECIPES_DIR}/ and {ARTIFACTS_DIR}/, so give it an empty or new folder"
            )


def _swap_in(staging: Path, out_dir: Path) -> None:
    out_dir.mkdir(exist_ok=True)
    for part in (RECIPES_DIR, ARTIFACTS_DIR):
        target = out_dir / part
        if target.exists():
            shutil.rmtree(target)
        (staging / part).rename(target)


def read_package(directory: Path) -> Package:
    """Parse and check a package folder: every recipe against the recipe reference, every local artifact
    against its recipe's digest. ``PackageError`` says what is wrong."""
    recipes_dir = directory / RECIPES_DIR
    paths = sorted(recipes_dir.glob("*.yaml")) if recipes_dir.is_dir() else []
    if not paths:
        raise PackageError(f"{directory} holds no {RECIPES_DIR}/*.yaml: run `modelship edge package` first")
    components = [_read_component(directory, path) for path in paths]
    inferences = [component for component in components if not component.is_model]
    if len(inferences) != 1:
        raise PackageError(f"{directory} must hold exactly one inference component, found {len(inferences)}")
    inference = inferences[0]
    zips = [artifact for artifact in inference.artifacts if artifact.local_path is not None]
    if not zips:
        raise PackageError(f"{directory} lacks the artifact of {inference.name} {inference.version}")
    bucket, prefix = _store_of(zips[0].uri, inference)
    for component in components:
        _check_artifact_places(component, bucket, prefix)
    return Package(tuple(components), inference, bucket, prefix)


def _check_artifact_places(component: Component, bucket: str, prefix: str) -> None:
    """Each artifact must be where modelship puts it: publish writes the local ones to their URIs, so a
    tampered recipe must not be able to plant an object anywhere else in the store (a model under models/,
    say, which every door would then serve)."""
    if component.is_model:
        name = component.name.removeprefix(MODEL_COMPONENT_PREFIX)
        major, _, rest = component.version.partition(".")
        if rest != "0.0" or not major.isdigit():
            raise PackageError(f"{component.name} {component.version}: a model component's version is N.0.0")
        version = int(major)
        keys = (model_key(name, version), manifest_key(name, version), signature_key(name, version))
        expected = {s3_uri(bucket, prefix, key) for key in keys}
    else:
        expected = {
            s3_uri(bucket, prefix, component_artifact_key(component.name, component.version, file_name))
            for file_name in (artifact.uri.rsplit("/", 1)[-1] for artifact in component.artifacts)
        }
    for artifact in component.artifacts:
        if artifact.uri not in expected:
            raise PackageError(
                f"{component.name} {component.version} names {artifact.uri[:200]}, which is not where "
                "modelship puts its artifacts in this store: the recipe was edited; package again"
            )
        if component.is_model and artifact.local_path is not None:
            raise PackageError(
                f"{component.name} {component.version} has a local artifact: model components name the "
                "store's own objects, and publish never uploads them"
            )


def load_recipe_yaml(raw: bytes, name: str) -> Any:
    """A recipe file's YAML, bounded: no larger than ``MAX_RECIPE_BYTES``, and no aliases (a recipe never
    needs one, and a few nested aliases expand to gigabytes)."""
    if len(raw) > MAX_RECIPE_BYTES:
        raise PackageError(f"{name} is {len(raw)} bytes; a recipe is at most {MAX_RECIPE_BYTES}")
    try:
        for event in yaml.parse(raw, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise PackageError(f"{name} uses a YAML alias; recipes must spell every value out")
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise PackageError(f"{name} is not valid YAML: {str(error)[:300]}") from None


def _read_component(directory: Path, path: Path) -> Component:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise PackageError(f"cannot read {path.name}: {error.strerror}") from None
    if size > MAX_RECIPE_BYTES:
        raise PackageError(f"{path.name} is {size} bytes; a recipe is at most {MAX_RECIPE_BYTES}")
    recipe = load_recipe_yaml(path.read_bytes(), path.name)
    try:
        check_recipe(recipe)
    except RecipeError as error:
        problems = "; ".join(problem[:300] for problem in error.problems[:10])
        raise PackageError(f"{path.name} is not a valid recipe: {problems}") from None
    name, version = recipe["ComponentName"], recipe["ComponentVersion"]
    if path.name != recipe_file_name(recipe):
        raise PackageError(
            f"{path.name} holds {name} {version}: its file name must be {recipe_file_name(recipe)}"
        )
    artifacts: dict[str, Artifact] = {}
    for manifest in recipe["Manifests"]:
        for entry in manifest.get("Artifacts") or []:
            uri = entry["Uri"]
            local = directory / ARTIFACTS_DIR / name / version / uri.rsplit("/", 1)[-1]
            local_path = local if local.is_file() else None
            if local_path is not None and greengrass_digest(local_path.read_bytes()) != entry.get("Digest"):
                raise PackageError(
                    f"{local} does not match the digest in {path.name}: the package was changed after "
                    "it was made; package again"
                )
            artifacts.setdefault(uri, Artifact(uri, str(entry.get("Digest", "")), local_path))
    return Component(name, version, recipe, tuple(artifacts.values()))


def _store_of(zip_uri: str, inference: Component) -> tuple[str, str]:
    """The store that the package was made for, from the inference artifact's URI."""
    key_tail = "/" + component_artifact_key(inference.name, inference.version, zip_uri.rsplit("/", 1)[-1])
    if not zip_uri.startswith("s3://") or not zip_uri.endswith(key_tail):
        raise PackageError(f"{zip_uri} is not where modelship puts {inference.name} {inference.version}")
    bucket, _, prefix = zip_uri.removeprefix("s3://").removesuffix(key_tail).partition("/")
    return bucket, prefix


def store_client(store_uri: str) -> tuple[Any, str, str]:
    """(boto3 S3 client, bucket, prefix) for an ``s3://`` store, with modelship's timeouts and retries."""
    bucket, prefix = split_store_uri(store_uri)
    blobs = open_blob_store(store_uri)
    if not isinstance(blobs, S3BlobStore):
        raise BadRequest(f"{store_uri} is not an S3 store")
    return blobs.client, bucket, prefix
