"""The store view: a modelship store made of symlinks into the model components' artifact folders.

The nucleus puts each model component's ``model.onnx`` and ``manifest.json`` in a folder of its own
(``<root>/packages/artifacts/com.modelship.model.<name>/<v>.0.0/``), which is not the store layout the
core reads. Rather than copy the bytes (a model may be most of a small device's disk), the door builds
``{work}/store/models/<name>/<v>/{model.onnx,manifest.json}`` as symlinks. The core still verifies every
model's size and sha256 against its manifest before onnxruntime sees it, through the links.

The view is rebuilt at each start in a fresh folder and swapped in whole (``{work}/store`` is a symlink
replaced atomically), so a view never mixes two deployments' models.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson
from modelship.core.blobs import read_regular_file
from modelship.core.errors import ModelshipError
from modelship.core.manifest import MAX_MANIFEST_BYTES, Manifest
from modelship.core.names import MAX_VERSION, validate_model_name
from modelship.core.repository import MANIFEST_FILE, MODEL_FILE, MODELS_PREFIX
from modelship.core.signing import SIGNATURE_FILE

logger = logging.getLogger("edge_greengrass.store_view")

STORE_LINK: Final = "store"
_VIEW_PREFIX: Final = ".store-"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """One ``--model NAME=ARTIFACT_DIR``."""

    name: str
    folder: Path


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    version: int
    folder: Path


@dataclass(frozen=True, slots=True)
class StoreView:
    # What MODELSHIP_STORE names: a stable path whose target changes at each start.
    root: Path
    models: tuple[ServedModel, ...]
    # Model name -> why it is not served; logged once at start.
    refused: dict[str, str] = field(default_factory=dict)


def parse_model_source(text: str) -> ModelSource:
    """``NAME=ARTIFACT_DIR`` (``--model``); ``ValueError`` with a message fit for the command line."""
    name, separator, folder = text.partition("=")
    if not separator or not name or not folder:
        raise ValueError(f"expected NAME=ARTIFACT_DIR, got {text!r}")
    try:
        validate_model_name(name)
    except ModelshipError as error:
        raise ValueError(error.message) from None
    return ModelSource(name, Path(folder).expanduser().absolute())


def read_manifest(source: ModelSource) -> Manifest:
    """The artifact folder's manifest, checked to describe ``source.name``; its version is its own."""
    path = source.folder / MANIFEST_FILE
    try:
        raw = read_regular_file(path, MAX_MANIFEST_BYTES)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    if raw is None:
        raise ValueError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        # orjson, as the core parses manifests: its nesting limit makes a hostile one a ValueError.
        version = orjson.loads(raw).get("version")
    except (ValueError, AttributeError):
        raise ValueError(f"{path} is not a JSON object") from None
    if not isinstance(version, int) or isinstance(version, bool) or not 0 < version <= MAX_VERSION:
        raise ValueError(f"{path} has no valid version (a positive integer), got {version!r}")
    try:
        return Manifest.loads(raw, expected_name=source.name, expected_version=version)
    except ModelshipError as error:
        raise ValueError(f"{path}: {error.message}") from None


def build_store_view(work: Path, sources: Sequence[ModelSource]) -> StoreView:
    """Build ``{work}/store`` afresh for ``sources``. A model whose manifest cannot be read or describes
    another model is left out (and reported in ``refused``); the others are served."""
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=work, prefix=_VIEW_PREFIX))
    served: list[ServedModel] = []
    refused: dict[str, str] = {}
    try:
        named = Counter(source.name for source in sources)
        for source in sources:
            if named[source.name] > 1:
                refused[source.name] = "the model is named by more than one --model"
                continue
            try:
                manifest = read_manifest(source)
            except ValueError as error:
                refused[source.name] = str(error)
                continue
            version_folder = folder / MODELS_PREFIX / source.name / str(manifest.version)
            version_folder.mkdir(parents=True)
            for filename in (MODEL_FILE, MANIFEST_FILE):
                (version_folder / filename).symlink_to(source.folder / filename)
            # Only when the model component ships one: the core then refuses the version as unsigned.
            if (source.folder / SIGNATURE_FILE).is_file():
                (version_folder / SIGNATURE_FILE).symlink_to(source.folder / SIGNATURE_FILE)
            _check_model_file(source)
            served.append(ServedModel(source.name, manifest.version, source.folder))
        (folder / MODELS_PREFIX).mkdir(exist_ok=True)
        # Readable by any user, like the artifacts it points to; mkdtemp makes it private.
        folder.chmod(0o755)
        link = work / STORE_LINK
        _swap_link(link, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _remove_old_views(work, keep=folder)
    return StoreView(link, tuple(served), refused)


def _check_model_file(source: ModelSource) -> None:
    # Served anyway: the core answers 503 "missing" for it, which says more than a 404 would.
    path = source.folder / MODEL_FILE
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except OSError:
        regular = False
    if not regular:
        logger.warning("%s is missing or not a regular file: %s will answer 503", path, source.name)


def _swap_link(link: Path, target: Path) -> None:
    if link.is_dir() and not link.is_symlink():
        # Not a view this door made: a real folder cannot be replaced atomically by a link.
        shutil.rmtree(link)
    temporary = link.with_name(f".{link.name}-link-{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target.name)
    temporary.replace(link)


def _remove_old_views(work: Path, keep: Path) -> None:
    for old in work.glob(f"{_VIEW_PREFIX}*"):
        if old != keep and old.is_dir() and not old.is_symlink():
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
