"""The versioned model store: push, list, and fetching artifacts verified against their manifests."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from modelship.core.blobs import (
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    BlobUnreadable,
    open_blob_store,
    read_regular_file,
)
from modelship.core.errors import Conflict, IntegrityError, InvalidModel, ModelUnavailable, NotFound
from modelship.core.manifest import MAX_MANIFEST_BYTES, Manifest, Optimization, Preprocessing
from modelship.core.names import MAX_VERSION, is_valid_model_name, validate_model_name, version_from_text
from modelship.core.settings import DEFAULT_MAX_MODEL_BYTES
from modelship.core.signing import MAX_SIGNATURE_DOCUMENT_BYTES, SIGNATURE_FILE

if TYPE_CHECKING:
    from modelship.core.conversion import Converted
    from modelship.core.signing import TrustedKeys

logger = logging.getLogger(__name__)

MODELS_PREFIX: Final = "models"
MODEL_FILE: Final = "model.onnx"
MANIFEST_FILE: Final = "manifest.json"
PUSH_ATTEMPTS: Final = 5

# push --sign: a manifest's exact bytes in, its signature document's bytes out (core.signing).
Signer = Callable[[bytes], bytes]


def model_key(name: str, version: int) -> str:
    return f"{MODELS_PREFIX}/{name}/{version}/{MODEL_FILE}"


def manifest_key(name: str, version: int) -> str:
    return f"{MODELS_PREFIX}/{name}/{version}/{MANIFEST_FILE}"


def signature_key(name: str, version: int) -> str:
    return f"{MODELS_PREFIX}/{name}/{version}/{SIGNATURE_FILE}"


class ModelRepository:
    """The versioned model store: ``models/<name>/<version>/model.onnx``, then its ``manifest.json``.

    A version exists once its manifest does, and is immutable: ``push`` writes both exclusively, manifest
    last. Reads hand out bytes only after their size and sha256 match the manifest (fail closed).

    Threading: stateless apart from the on-disk cache of remote models, whose writes are atomic renames;
    safe to share between request threads. It does no caching of listings: ``ModelLifecycle`` does.
    """

    def __init__(
        self,
        blobs: BlobStore,
        cache_dir: Path | None = None,
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        trusted_keys: TrustedKeys | None = None,
    ) -> None:
        self.blobs = blobs
        # A local store is its own cache; a remote one is cached by sha256 so a re-push of identical
        # bytes under a new version costs no download.
        self.cache_dir = cache_dir
        self.max_model_bytes = max_model_bytes
        # When set, a version is read only if one of these keys signed its manifest (core.signing).
        self.trusted_keys = trusted_keys

    @classmethod
    def open(
        cls,
        uri: str,
        cache_dir: Path | None = None,
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        trusted_keys: TrustedKeys | None = None,
    ) -> ModelRepository:
        blobs = open_blob_store(uri)
        remote = not uri.startswith("file://") and "://" in uri
        return cls(blobs, cache_dir if remote else None, max_model_bytes, trusted_keys)

    @property
    def uri(self) -> str:
        return self.blobs.uri

    def list_models(self) -> dict[str, list[int]]:
        """Every model with the versions that have a manifest, i.e. that are complete."""
        found: dict[str, list[int]] = {}
        for key in self.blobs.list_keys(f"{MODELS_PREFIX}/"):
            parts = key.split("/")
            if len(parts) != 4 or parts[3] != MANIFEST_FILE:
                continue
            version = version_from_text(parts[2])
            name = parts[1]
            if version is not None and is_valid_model_name(name):
                found.setdefault(name, []).append(version)
        return {name: sorted(versions) for name, versions in sorted(found.items())}

    def versions(self, name: str) -> list[int]:
        validate_model_name(name)
        versions = []
        for key in self.blobs.list_keys(f"{MODELS_PREFIX}/{name}/"):
            parts = key.split("/")
            if len(parts) == 4 and parts[1] == name and parts[3] == MANIFEST_FILE:
                version = version_from_text(parts[2])
                if version is not None:
                    versions.append(version)
        return sorted(versions)

    def latest_version(self, name: str) -> int:
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"model {name!r} is not in the store")
        return versions[-1]

    def read_manifest(self, name: str, version: int) -> Manifest:
        validate_model_name(name)
        try:
            raw = self.blobs.read(manifest_key(name, version), MAX_MANIFEST_BYTES)
        except BlobNotFound:
            raise NotFound(f"model {name!r} version {version} is not in the store") from None
        except BlobTooLarge:
            raise ModelUnavailable(f"manifest of {name} version {version} is too large") from None
        except BlobUnreadable as error:
            raise ModelUnavailable(f"manifest of {name} version {version} cannot be read: {error}") from None
        if self.trusted_keys is not None:
            from modelship.core.signing import verify

            # Before the manifest is parsed, so before any of the model's bytes are fetched.
            verify(
                raw, self.read_signature(name, version), self.trusted_keys, where=f"{name} version {version}"
            )
        return Manifest.loads(raw, expected_name=name, expected_version=version)

    def read_signature(self, name: str, version: int) -> bytes | None:
        """The version's signature document as stored, or None if it has none."""
        validate_model_name(name)
        try:
            return self.blobs.read(signature_key(name, version), MAX_SIGNATURE_DOCUMENT_BYTES)
        except BlobNotFound:
            return None
        except BlobTooLarge:
            raise IntegrityError(
                f"{name} version {version}: its signature is larger than {MAX_SIGNATURE_DOCUMENT_BYTES} bytes"
            ) from None
        except BlobUnreadable as error:
            raise ModelUnavailable(f"signature of {name} version {version} cannot be read: {error}") from None

    def fetch_verified(self, manifest: Manifest) -> bytes:
        """The model's bytes, only if their size and sha256 match the manifest. Fails closed."""
        where = f"{manifest.name} version {manifest.version}"
        if manifest.size > self.max_model_bytes:
            raise ModelUnavailable(
                f"{where} is {manifest.size} bytes, over the {self.max_model_bytes}-byte model size limit"
            )
        cached = self._read_cache(manifest)
        if cached is not None:
            return cached
        try:
            data = self.blobs.read(model_key(manifest.name, manifest.version), manifest.size)
        except BlobNotFound:
            raise ModelUnavailable(f"{where}: the model file is missing from the store") from None
        except BlobUnreadable as error:
            raise ModelUnavailable(f"{where}: the model file cannot be read: {error}") from None
        except BlobTooLarge:
            raise IntegrityError(
                f"{where}: the model file is larger than the {manifest.size} bytes its manifest records; "
                "refusing it"
            ) from None
        verify_bytes(data, manifest)
        self._write_cache(manifest, data)
        return data

    def _cache_path(self, manifest: Manifest) -> Path | None:
        return self.cache_dir / f"{manifest.sha256}.onnx" if self.cache_dir is not None else None

    def _read_cache(self, manifest: Manifest) -> bytes | None:
        path = self._cache_path(manifest)
        if path is None:
            return None
        try:
            data = read_regular_file(path, manifest.size)
        except OSError:
            return None
        try:
            if data is not None:
                verify_bytes(data, manifest)
                return data
        except IntegrityError:
            pass
        logger.warning("discarding corrupted cache entry %s", path)
        path.unlink(missing_ok=True)
        return None

    def _write_cache(self, manifest: Manifest, data: bytes) -> None:
        path = self._cache_path(manifest)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            Path(temporary).replace(path)
        except OSError as error:
            # The cache is an optimisation; a full /tmp must not fail the request.
            logger.warning("cannot cache %s: %s", path, error)

    def latest_holding(
        self,
        name: str,
        sha256: str,
        labels: Sequence[str] | None = None,
        *,
        preprocessing: Preprocessing | None = None,
    ) -> Manifest | None:
        """The latest version of ``name`` if it already holds the bytes of this sha256 (as published, or
        as the original that ``push --convert`` converted), these labels and this preprocessing; else
        None."""
        versions = self.versions(name)
        if not versions:
            return None
        latest = self.read_manifest(name, versions[-1])
        originals = {latest.sha256} | ({latest.conversion.original_sha256} if latest.conversion else set())
        same_labels = latest.labels == (tuple(labels) if labels is not None else None)
        same = same_labels and latest.preprocessing == preprocessing
        return latest if sha256 in originals and same else None

    def push(
        self,
        model_path: Path,
        name: str,
        version: int | None = None,
        labels: Sequence[str] | None = None,
        *,
        convert: bool = False,
        preprocessing: Preprocessing | None = None,
        optimization: Optimization | None = None,
        signer: Signer | None = None,
    ) -> Manifest:
        """Validate with onnxruntime, then write the model and, last, the manifest that makes it visible.

        ``convert``: a model newer than onnxruntime loads is first converted (``core.conversion``, with
        the onnx package), and the converted bytes are published, the conversion recorded.
        ``preprocessing``: an image model's preprocessing block, checked against its input and recorded.
        ``optimization``: the lineage of a version ``modelship optimize`` made, recorded as it is.
        ``signer``: signs the manifest's bytes (``push --sign``); the signature is written before the
        manifest, so a signed push is never visible unsigned.
        """
        validate_model_name(name)
        if version is not None and not 1 <= version <= MAX_VERSION:
            raise InvalidModel(f"version must be a positive integer, got {version}")
        size = model_path.stat().st_size
        if size > self.max_model_bytes:
            raise InvalidModel(f"{model_path} is {size} bytes, over the {self.max_model_bytes}-byte limit")
        data = model_path.read_bytes()
        conversion = None
        if convert:
            converted = _convert(data)
            if converted is not None:
                data, conversion = converted.data, converted.conversion
        manifest = replace(
            describe_model(data, name, version or 1, labels),
            conversion=conversion,
            preprocessing=preprocessing,
            optimization=optimization,
        )
        if preprocessing is not None:
            from modelship.core.preprocessing import check_fits

            check_fits(preprocessing, manifest.inputs)
        if version is not None:
            if version in self.versions(name):
                raise Conflict(
                    f"{name} version {version} already exists in {self.uri}; versions are immutable"
                )
            self._publish(manifest, data, signer)
            return manifest
        # Next version number; if a concurrent push takes it first, move on to the one after.
        at_least = 1
        for _ in range(PUSH_ATTEMPTS):
            existing = self.versions(name)
            manifest = replace(manifest, version=max(existing[-1] + 1 if existing else 1, at_least))
            try:
                self._publish(manifest, data, signer)
                return manifest
            except Conflict:
                # Taken, or left half-written by a push that died (which no listing shows): the next
                # attempt goes past it.
                at_least = manifest.version + 1
                continue
        raise Conflict(f"{name}: gave up after {PUSH_ATTEMPTS} versions were taken by concurrent pushes")

    def _publish(self, manifest: Manifest, data: bytes, signer: Signer | None = None) -> None:
        """Every write is exclusive, so nothing ever overwrites a version another push has written."""
        name, version = manifest.name, manifest.version
        try:
            self.blobs.write(model_key(name, version), data, exclusive=True)
        except Conflict:
            # Another push of this version is under way or died before its manifest. Identical bytes
            # are harmless (a retry); different ones must not be published under this version.
            try:
                current = self.blobs.read(model_key(name, version), len(data))
            except (BlobNotFound, BlobTooLarge):
                current = None
            if current != data:
                raise Conflict(
                    f"{self.uri}/{model_key(name, version)} already holds other bytes: another push of "
                    f"{name} version {version} is under way or failed half-way; push another version"
                ) from None
        raw = manifest.dumps()
        if signer is not None:
            # Before the manifest, whose write makes the version exist: signed, it is never seen unsigned.
            try:
                self.blobs.write(signature_key(name, version), signer(raw), exclusive=True)
            except Conflict:
                raise Conflict(
                    f"{self.uri}/{signature_key(name, version)} already exists: another push of {name} "
                    f"version {version} is under way or failed half-way; push another version"
                ) from None
        self.blobs.write(manifest_key(name, version), raw, exclusive=True)


def verify_bytes(data: bytes, manifest: Manifest) -> None:
    where = f"{manifest.name} version {manifest.version}"
    if len(data) != manifest.size:
        raise IntegrityError(
            f"{where}: the model file is {len(data)} bytes but its manifest records {manifest.size} "
            "(truncated or replaced); refusing to load it"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise IntegrityError(
            f"{where}: sha256 {digest} does not match the manifest's {manifest.sha256}; refusing to load it"
        )


def _convert(data: bytes) -> Converted | None:
    from modelship.core.conversion import convert_for_runtime
    from modelship.core.model_checks import ModelRefused
    from modelship.core.onnx_versions import runtime_limits

    limits = runtime_limits()
    if limits is None:
        raise InvalidModel(
            "cannot convert: the bundled onnxruntime's IR version and opset could not be probed"
        )
    try:
        return convert_for_runtime(data, limits)
    except ModelRefused as error:
        raise InvalidModel(f"refused: {error}") from None


def _refuse_too_new(data: bytes) -> None:
    """``InvalidModel`` naming the model's IR version and opsets and the highest onnxruntime loads, if
    they are newer: onnxruntime's own message names neither the opset nor what to do."""
    from modelship.core.onnx_versions import read_versions, refusal, runtime_limits

    limits = runtime_limits()
    message = refusal(read_versions(data), limits) if limits is not None else None
    if message is not None:
        raise InvalidModel(message)


def describe_model(data: bytes, name: str, version: int, labels: Sequence[str] | None) -> Manifest:
    """Load the model with onnxruntime to prove it is servable, and read what the manifest records.

    A model newer than onnxruntime loads is refused first, with its versions and onnxruntime's."""
    from modelship.core.model_checks import ModelRefused
    from modelship.core.sessions import create_session, first_line, read_signature
    from modelship.core.signature import read_provenance

    try:
        _refuse_too_new(data)
        session = create_session(data, threads=1)
        inputs, outputs = read_signature(session, data)
    except ModelRefused as error:
        raise InvalidModel(f"refused: {error}") from None
    except InvalidModel:
        raise
    except Exception as error:
        raise InvalidModel(f"onnxruntime cannot load the model: {first_line(error)}") from None
    if labels is not None:
        widths = sorted({spec.shape[-1] for spec in outputs if spec.shape and spec.shape[-1] >= 0})
        if widths and len(labels) not in widths:
            raise InvalidModel(
                f"{len(labels)} labels, but the model's outputs have {', '.join(map(str, widths))} classes: "
                "labels name the classes along an output's last dimension"
            )
    try:
        producer, opset = read_provenance(data, session.get_modelmeta().producer_name)
    except Exception:  # provenance is informative; onnxruntime has already proven the model loads
        producer, opset = {"name": session.get_modelmeta().producer_name}, {}
    return Manifest(
        name=name,
        version=version,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        inputs=inputs,
        outputs=outputs,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        labels=tuple(labels) if labels is not None else None,
        producer=producer,
        opset=opset,
    )
