"""Settings read once from the environment, shared by every door."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from modelship.names import parse_version, validate_model_name
from modelship.repository import DEFAULT_MAX_MODEL_BYTES

# Lambda's synchronous invocation payload limit.
DEFAULT_MAX_REQUEST_BYTES: Final = 6 * 1024 * 1024
DEFAULT_SESSION_MEMORY_MB: Final = 1024
DEFAULT_VERSION_POLL_SECONDS: Final = 60.0
DEFAULT_FAILURE_RETRY_SECONDS: Final = 5.0


def default_cache_dir() -> Path:
    # $TMPDIR when set (each LocalStack execution environment has its own), else /tmp: Lambda's only
    # writable path. tempfile.gettempdir() would do the same but costs an import at cold start.
    return Path(os.environ.get("TMPDIR") or "/tmp") / "modelship-cache"  # noqa: S108


def default_store_path() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "modelship" / "store"


@dataclass(frozen=True, slots=True)
class Settings:
    store_uri: str
    preload: tuple[tuple[str, int | None], ...] = ()
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    session_memory_bytes: int = DEFAULT_SESSION_MEMORY_MB * 1024 * 1024
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    # How long "the latest version" of a model stays resolved before the store is asked again.
    version_poll_seconds: float = DEFAULT_VERSION_POLL_SECONDS
    # How long a model that failed to load is answered from memory before the store is tried again.
    failure_retry_seconds: float = DEFAULT_FAILURE_RETRY_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            store_uri=env.get("MODELSHIP_STORE") or str(default_store_path()),
            preload=parse_preload(env.get("MODELSHIP_PRELOAD", "")),
            cache_dir=Path(env["MODELSHIP_CACHE_DIR"])
            if env.get("MODELSHIP_CACHE_DIR")
            else default_cache_dir(),
            max_request_bytes=_positive_int(env, "MODELSHIP_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES),
            session_memory_bytes=_positive_int(env, "MODELSHIP_SESSION_MEMORY_MB", DEFAULT_SESSION_MEMORY_MB)
            * 1024
            * 1024,
            max_model_bytes=_positive_int(env, "MODELSHIP_MAX_MODEL_BYTES", DEFAULT_MAX_MODEL_BYTES),
            version_poll_seconds=_seconds(
                env, "MODELSHIP_VERSION_POLL_SECONDS", DEFAULT_VERSION_POLL_SECONDS
            ),
            failure_retry_seconds=_seconds(
                env, "MODELSHIP_FAILURE_RETRY_SECONDS", DEFAULT_FAILURE_RETRY_SECONDS
            ),
        )


def _positive_int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{key} must be a positive integer, got {raw!r}")
    return int(raw)


def _seconds(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} must be a non-negative number of seconds, got {raw!r}")
    return value


def parse_preload(text: str) -> tuple[tuple[str, int | None], ...]:
    """``"iris, resnet:3"`` → ``(("iris", None), ("resnet", 3))``."""
    entries: list[tuple[str, int | None]] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, _, version = entry.partition(":")
        entries.append(
            (validate_model_name(name.strip()), parse_version(version.strip()) if version else None)
        )
    return tuple(entries)
