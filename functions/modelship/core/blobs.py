"""Byte storage behind a model store: a local directory or an S3 bucket prefix.

Only whole-object reads and writes are needed. Reads are bounded so a hostile or corrupted store
cannot exhaust memory; writes are atomic so a reader never sees half an object.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from modelship.core.errors import Conflict, ModelUnavailable

# Worst case (1 + 4) s x 3 attempts plus backoff stays under the function's 20 s timeout, so a stalled
# S3 gives the caller a 503 from us rather than a bare 502 from API Gateway. Attempts are total attempts
# (botocore's ``total_max_attempts``: its ``max_attempts`` counts retries, which made 3 mean 4). The read
# timeout bounds each socket read; a whole download is bounded by the deadline below.
S3_CONNECT_TIMEOUT_SECONDS: Final = 1.0
S3_READ_TIMEOUT_SECONDS: Final = 4.0
S3_MAX_ATTEMPTS: Final = 3
# A whole download must finish within a fixed allowance plus its size at a minimum throughput, and never
# take longer than the cap: a server that trickles a byte per read timeout cannot hold a load for hours.
S3_DOWNLOAD_ALLOWANCE_SECONDS: Final = 10.0
S3_DOWNLOAD_MIN_BYTES_PER_SECOND: Final = 1024 * 1024
S3_DOWNLOAD_MAX_SECONDS: Final = 600.0
# The most one socket read asks for; a trickle returns far less, and the deadline is checked after each.
_DOWNLOAD_CHUNK_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class S3Limits:
    """How long S3 may take: botocore's per-attempt timeouts and attempts, and the whole-download deadline.

    ``connect_timeout_seconds``, ``read_timeout_seconds`` and ``max_attempts`` (in all, the first one
    included) configure the client an ``S3BlobStore`` makes, not one handed in; the read timeout bounds
    each socket read. The download deadline bounds one ``read`` as a whole, from the request to the last
    byte (``download_seconds``); it is checked after every socket read, so it may be overrun by at most
    one read timeout.
    """

    connect_timeout_seconds: float = S3_CONNECT_TIMEOUT_SECONDS
    read_timeout_seconds: float = S3_READ_TIMEOUT_SECONDS
    max_attempts: int = S3_MAX_ATTEMPTS
    download_allowance_seconds: float = S3_DOWNLOAD_ALLOWANCE_SECONDS
    download_min_bytes_per_second: float = S3_DOWNLOAD_MIN_BYTES_PER_SECOND
    download_max_seconds: float = S3_DOWNLOAD_MAX_SECONDS

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout_seconds",
            "read_timeout_seconds",
            "download_allowance_seconds",
            "download_min_bytes_per_second",
            "download_max_seconds",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"S3Limits.{name} must be positive, got {getattr(self, name)!r}")
        if self.max_attempts < 1:
            raise ValueError(f"S3Limits.max_attempts must be at least 1, got {self.max_attempts!r}")

    def download_seconds(self, size: int) -> float:
        """The deadline of a whole download of ``size`` bytes: allowance + size at the minimum throughput,
        capped. (The read timeout still applies to each socket read within it.)"""
        return min(
            self.download_max_seconds,
            self.download_allowance_seconds + size / self.download_min_bytes_per_second,
        )


class BlobNotFound(Exception):
    pass


class BlobTooLarge(Exception):
    pass


class BlobUnreadable(Exception):
    """The object exists but cannot be read (not a regular file, no permission); the message is why."""


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
    # Checked on the descriptor, before fdopen: fdopen of a directory raises and would leak it.
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise OSError(errno.EINVAL, "not a regular file")
    with os.fdopen(descriptor, "rb") as handle:
        data = handle.read(max_bytes + 1)
    return data if len(data) <= max_bytes else None


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"file://{root}"

    def _path(self, key: str) -> Path:
        # Keys are built from validated names and integers; this is a second fence, not the first. It is
        # lexical, not resolved: the edge door's store is a view of symlinks into the model components'
        # artifact folders, and what a key reads is verified against its manifest in any case.
        root = os.path.normpath(self.root)
        path = os.path.normpath(self.root / key)
        if os.path.commonpath([root, path]) != root:
            raise ValueError(f"key {key!r} escapes the store root")
        return Path(path)

    def read(self, key: str, max_bytes: int) -> bytes:
        try:
            data = read_regular_file(self._path(key), max_bytes)
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(key) from None
        except OSError as error:
            # A directory, a FIFO or a device where a file should be, or no permission. The reason only:
            # the error's own text names the machine's path.
            raise BlobUnreadable(error.strerror or type(error).__name__) from None
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
    """An S3 bucket prefix. Each ``read`` is bounded as a whole by ``limits.download_seconds`` of the
    object's size: past the deadline it gives up with ``ModelUnavailable`` and closes the connection."""

    def __init__(
        self, bucket: str, prefix: str, client: Any | None = None, limits: S3Limits | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.limits = limits if limits is not None else S3Limits()
        self._client = client if client is not None else _make_s3_client(self.limits)

    @property
    def client(self) -> Any:
        """The boto3 S3 client (e.g. to observe its calls through ``client.meta.events``)."""
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read(self, key: str, max_bytes: int) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        started = time.monotonic()
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise BlobNotFound(key) from None
            raise ModelUnavailable(f"cannot read {key} from the model store: {code or 'S3 error'}") from None
        except BotoCoreError as error:
            # The error's own text names the endpoint and bucket: a client gets the kind of failure only.
            raise ModelUnavailable(
                f"cannot read {key} from the model store: {type(error).__name__}"
            ) from None
        body = response["Body"]
        try:
            length = response.get("ContentLength")
            size = int(length) if length is not None else None
            if size is not None and size > max_bytes:
                raise BlobTooLarge(key)
            budget = self.limits.download_seconds(max_bytes if size is None else size)
            return self._read_body(body, key, size, max_bytes, started, budget)
        finally:
            # After the last byte the connection is already back in the pool and this is a no-op; after a
            # timeout or an error it closes the socket, so a half-read response is never reused.
            body.close()

    def _read_body(
        self, body: Any, key: str, size: int | None, max_bytes: int, started: float, budget: float
    ) -> bytes:
        import http.client

        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        read_some = _partial_reader(body)
        chunks: list[bytes] = []
        received = 0
        expected = "?" if size is None else str(size)
        while True:
            if time.monotonic() - started >= budget:
                raise ModelUnavailable(
                    f"downloading {key} from the model store timed out: "
                    f"{received} of {expected} bytes arrived within {budget:.1f} s"
                )
            try:
                chunk = read_some(min(_DOWNLOAD_CHUNK_BYTES, max_bytes + 1 - received))
            except (BotoCoreError, HTTPError, http.client.HTTPException, OSError) as error:
                raise ModelUnavailable(
                    f"cannot read {key} from the model store: {type(error).__name__} "
                    f"after {received} of {expected} bytes"
                ) from None
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
            if received > max_bytes:
                raise BlobTooLarge(key)
        if size is not None and received != size:
            raise ModelUnavailable(
                f"cannot read {key} from the model store: the download ended after {received} of {size} bytes"
            )
        return b"".join(chunks)

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


def _partial_reader(body: Any) -> Callable[[int], bytes]:
    """A read of at most n bytes that returns once any have arrived (one socket read), so that a trickling
    server cannot hold a single call for long: the deadline is checked between calls.

    botocore's ``StreamingBody.read(n)`` waits for all n bytes. Beneath it, urllib3 >= 2.3 has ``read1``;
    older urllib3 wraps an ``http.client.HTTPResponse``, which has had ``read1`` since Python 3.5 (it
    bypasses urllib3's bookkeeping, so the connection is closed rather than pooled afterwards). moto's
    in-process responses are ``BytesIO``. Anything else falls back to ``read``."""
    raw = getattr(body, "_raw_stream", body)
    for stream in (raw, getattr(raw, "_fp", None)):
        read1 = getattr(stream, "read1", None)
        if callable(read1):
            return read1  # type: ignore[no-any-return]
    return body.read  # type: ignore[no-any-return]


def _make_s3_client(limits: S3Limits) -> Any:
    # Imported here so local stores never pay for boto3 at cold start, and so that `make serve`'s lean
    # install (no boto3) serves local stores and says what to install for an s3:// one.
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ModelUnavailable(
            "s3:// stores need boto3, which this install lacks: pip install -e '.[s3]' (or make venv)"
        ) from None

    config = Config(
        connect_timeout=limits.connect_timeout_seconds,
        read_timeout=limits.read_timeout_seconds,
        retries={"total_max_attempts": limits.max_attempts, "mode": "standard"},
    )
    return boto3.client("s3", config=config)


_LOOKS_LIKE_A_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


def open_blob_store(uri: str, s3_limits: S3Limits | None = None) -> BlobStore:
    """``s3://bucket[/prefix]``, ``file:///abs/path`` or a plain path. ``s3_limits`` applies to S3 only."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"store URI {uri!r} names no bucket")
        return S3BlobStore(bucket, prefix, limits=s3_limits)
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    elif "://" in uri or _LOOKS_LIKE_A_SCHEME.match(uri):
        # "s3:/bucket" is a typo, not a local folder named "s3:".
        raise ValueError(f"unsupported store URI {uri!r}: use s3://bucket/prefix, file:///path or a path")
    return LocalBlobStore(Path(uri).expanduser().absolute())
