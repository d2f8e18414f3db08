"""``modelship edge publish``: upload a package's artifacts to the URIs its recipes name, verified.

A Greengrass component version is immutable, and the nucleus checks every artifact against the digest
computed when the version was created: an object overwritten afterwards fails every later deployment
(ARTIFACT_CHECKSUM_MISMATCH, after ten retries a minute apart). So an object that exists is never
overwritten: identical bytes are left alone, different bytes are refused. Each upload carries its SHA-256
for S3 to check, and is read back and checked again. The model components' objects are the store's own:
they are checked, never uploaded.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edge_greengrass.packaging import (
    Artifact,
    Package,
    PackageError,
    read_package,
    split_store_uri,
    store_client,
)

Progress = Callable[[str], None]
_READ_CHUNK_BYTES: Final = 1024 * 1024


class PublishConflict(PackageError):
    status = 409


@dataclass(frozen=True, slots=True)
class PublishResult:
    uploaded: tuple[str, ...]
    unchanged: tuple[str, ...]
    verified_in_store: tuple[str, ...]


def publish(store_uri: str, package_dir: Path, progress: Progress | None = None) -> PublishResult:
    say = progress or (lambda message: None)
    package = read_package(package_dir)
    bucket, prefix = split_store_uri(store_uri)
    if (bucket, prefix) != (package.store_bucket, package.store_prefix):
        raise PackageError(
            f"{package_dir} was packaged for {package.store_uri}, not {store_uri}: its recipes name that "
            "store's objects; publish it there, or package again for this store"
        )
    client, _, _ = store_client(store_uri)
    uploaded, unchanged, verified = [], [], []
    for component in package.components:
        for artifact in component.artifacts:
            key = _key_of(artifact.uri, bucket)
            if artifact.local_path is None:
                say(f"checking {artifact.uri} against {component.name} {component.version}")
                _check_remote(client, bucket, key, artifact)
                verified.append(artifact.uri)
            elif _upload(client, bucket, key, artifact, say):
                uploaded.append(artifact.uri)
            else:
                unchanged.append(artifact.uri)
    return PublishResult(tuple(uploaded), tuple(unchanged), tuple(verified))


def _key_of(uri: str, bucket: str) -> str:
    head = f"s3://{bucket}/"
    if not uri.startswith(head):
        raise PackageError(f"{uri} is not in bucket {bucket}")
    return uri.removeprefix(head)


def _upload(client: Any, bucket: str, key: str, artifact: Artifact, say: Progress) -> bool:
    """True if uploaded, False if the same bytes were there already."""
    if artifact.local_path is None:
        raise PackageError(f"{artifact.uri} has no local file to upload")
    existing = _digest_of_object(client, bucket, key)
    if existing is not None:
        if existing == artifact.digest:
            say(f"{artifact.uri} is already published with the same bytes")
            return False
        raise PublishConflict(
            f"{artifact.uri} already exists with other bytes (digest {existing}, this package's is "
            f"{artifact.digest}); component versions are immutable: package again, which gives the "
            "component a new version"
        )
    data = artifact.local_path.read_bytes()
    say(f"uploading {artifact.local_path.name} ({len(data)} bytes) to {artifact.uri}")
    from botocore.exceptions import ClientError

    try:
        # S3 checks the checksum on arrival, and IfNoneMatch loses a race to a concurrent publish
        # rather than overwrite it.
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=artifact.digest,
            IfNoneMatch="*",
        )
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in {"PreconditionFailed", "ConditionalRequestConflict"}:
            return _upload(client, bucket, key, artifact, say)
        raise
    stored = _digest_of_object(client, bucket, key)
    if stored != artifact.digest:
        raise PackageError(f"{artifact.uri} reads back with digest {stored}, not {artifact.digest}")
    return True


def _check_remote(client: Any, bucket: str, key: str, artifact: Artifact) -> None:
    stored = _digest_of_object(client, bucket, key)
    if stored is None:
        raise PackageError(f"{artifact.uri} is missing from the store: the recipe names it")
    if stored != artifact.digest:
        raise PackageError(
            f"{artifact.uri} has digest {stored}, but its recipe says {artifact.digest}: the object changed "
            "after packaging, and devices would refuse it; package again"
        )


def _digest_of_object(client: Any, bucket: str, key: str) -> str | None:
    """The Greengrass digest of an object's bytes, streamed; None if there is no such object."""
    from botocore.exceptions import ClientError

    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code", "") in {"NoSuchKey", "404", "NotFound"}:
            return None
        raise
    digest = hashlib.sha256()
    body = response["Body"]
    try:
        for chunk in iter(lambda: body.read(_READ_CHUNK_BYTES), b""):
            digest.update(chunk)
    finally:
        body.close()
    return base64.b64encode(digest.digest()).decode("ascii")


def describe(result: PublishResult, package: Package) -> str:
    lines = [
        f"published {package.inference.name} {package.inference.version} to {package.store_uri}:",
        f"  {len(result.uploaded)} uploaded, {len(result.unchanged)} already there with the same bytes, "
        f"{len(result.verified_in_store)} model objects verified in the store",
    ]
    return "\n".join(lines)
