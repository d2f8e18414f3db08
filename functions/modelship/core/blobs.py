"""Byte storage behind a model store: a local directory or an S3 bucket prefix.

Only whole-object reads and writes are needed. Reads are bounded so a hostile or corrupted store
cannot exhaust memory; writes are atomic so a reader never sees half an object.
"""

from __future__ import annotations

import os
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from modelship.core.errors import Conflict, ModelUnavailable

# Worst case (1 + 4) s x 3 attempts plus backoff stays under the function's 20 s timeout, so a stalled
# S3 gives the caller a 503 from us rather than a bare 502 from API Gateway. The read timeout bounds
# each socket read, not a whole download, so large models are not affected.
S3_CONNECT_TIMEOUT_SECONDS: Final = 1.0
S3_READ_TIMEOUT_SECONDS: Final = 4.0
S3_MAX_ATTEMPTS: Final = 3


class BlobNotFound(Exception):
    pass


class BlobTooLarge(Exception):
    pass


class BlobStore(ABC):
    """Whole-object byte storage under one root (a directory or an S3 prefix), keyed by relative paths.

    Implementations are safe to call from several threads at once, hold no open handle between calls,
    and need no closing. boto3 is imported only when an S3 store is opened.
    """

    uri: str

    @abstractmethod
    def read(self, key: str, max_bytes: int) -> bytes:
        """The object's bytes; ``BlobNotFound`` if absent, ``BlobTooLarge`` if over ``max_bytes``."""

    @abstractmethod
    def write(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        """Store atomically. With ``exclusive``, raise ``Conflict`` if the key already exists."""

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix`` (relative to the store root), in no particular order."""


def read_regular_file(path: Path, max_bytes: int) -> bytes | None:
    """At most ``max_bytes`` of a regular file (None if it is larger). Never blocks on a FIFO or device
    planted where a model should be: the open is non-blocking and anything but a regular file is refused."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = handle.read(max_bytes + 1)
    return data if len(data) <= max_bytes else None


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"file://{root}"

    def _path(self, key: str) -> Path:
        # Keys are built from validated names and integers; this is a second fence, not the first.
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"key {key!r} escapes the store root")
        return path

    def read(self, key: str, max_bytes: int) -> bytes:
        try:
            data = read_regular_file(self._path(key), max_bytes)
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(key) from None
        if data is None:
            raise BlobTooLarge(key)
        return data

    def write(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if exclusive:
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    raise Conflict(f"{self.uri}/{key} already exists") from None
            else:
                Path(temporary).replace(path)
        finally:
            Path(temporary).unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix
        if not base.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(base):
            for filename in filenames:
                if not filename.startswith("."):
                    yield (Path(dirpath) / filename).relative_to(self.root).as_posix()


class S3BlobStore(BlobStore):
    def __init__(self, bucket: str, prefix: str, client: Any | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client if client is not None else _make_s3_client()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read(self, key: str, max_bytes: int) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            if int(response.get("ContentLength", 0)) > max_bytes:
                response["Body"].close()
                raise BlobTooLarge(key)
            body = response["Body"]
            data: bytes = body.read(max_bytes + 1)
            body.close()
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise BlobNotFound(key) from None
            raise ModelUnavailable(f"cannot read {self.uri}/{key}: {code or error}") from None
        except BotoCoreError as error:
            raise ModelUnavailable(f"cannot read {self.uri}/{key}: {error}") from None
        if len(data) > max_bytes:
            raise BlobTooLarge(key)
        return data

    def write(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        from botocore.exceptions import ClientError

        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if exclusive:
            # S3 conditional writes: two pushes racing for one version cannot both win.
            arguments["IfNoneMatch"] = "*"
        try:
            self._client.put_object(**arguments)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in {"PreconditionFailed", "ConditionalRequestConflict"}:
                raise Conflict(f"{self.uri}/{key} already exists") from None
            raise

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        full_prefix = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            for item in page.get("Contents", []):
                yield str(item["Key"])[strip:]


def _make_s3_client() -> Any:
    # Imported here so local stores never pay for boto3 at cold start.
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=S3_CONNECT_TIMEOUT_SECONDS,
        read_timeout=S3_READ_TIMEOUT_SECONDS,
        retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
    )
    return boto3.client("s3", config=config)


def open_blob_store(uri: str) -> BlobStore:
    """``s3://bucket[/prefix]``, ``file:///abs/path`` or a plain path."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"store URI {uri!r} names no bucket")
        return S3BlobStore(bucket, prefix)
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    elif "://" in uri:
        raise ValueError(f"unsupported store URI {uri!r}: use s3://bucket/prefix, file:///path or a path")
    return LocalBlobStore(Path(uri).expanduser().absolute())
