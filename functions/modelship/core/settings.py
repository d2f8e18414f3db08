"""Settings: the only reader of ``MODELSHIP_*`` variables, shared by every door.

A door builds ``Settings`` once (``Settings.from_env()``, or explicitly as the CLI does from its flags)
and passes it in; nothing else in the code base reads these variables. (The layer build's
``MODELSHIP_PYTHON313`` configures a build tool, not a door: docs/contracts.md.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from modelship.core.errors import BadRequest
from modelship.core.names import parse_model_references

# Lambda's synchronous invocation payload limit, for requests and responses alike: every door keeps
# it, so a request gets the same answer everywhere.
DEFAULT_MAX_REQUEST_BYTES: Final = 6 * 1024 * 1024
DEFAULT_MAX_RESPONSE_BYTES: Final = 6 * 1024 * 1024
DEFAULT_MAX_MODEL_BYTES: Final = 512 * 1024 * 1024
DEFAULT_SESSION_MEMORY_MB: Final = 1024
DEFAULT_VERSION_POLL_SECONDS: Final = 60.0
DEFAULT_FAILURE_RETRY_SECONDS: Final = 5.0
# Below the Lambda function's default 20 s timeout, so a runaway model is a 504 from us, not a timeout.
DEFAULT_INFERENCE_TIMEOUT_SECONDS: Final = 10.0
DEFAULT_LOAD_TIMEOUT_SECONDS: Final = 30.0

# How a yes or a no may be spelt, in the environment and in the CDK context alike.
TRUE_WORDS: Final = frozenset({"true", "yes", "1", "on"})
FALSE_WORDS: Final = frozenset({"false", "no", "0", "off"})

STORE_ENV: Final = "MODELSHIP_STORE"
PRELOAD_ENV: Final = "MODELSHIP_PRELOAD"
API_KEY_ENV: Final = "MODELSHIP_API_KEY"
TRUSTED_KEYS_ENV: Final = "MODELSHIP_TRUSTED_KEYS"
# Room for a few keys rotated in turn; a PEM key is under 1 KiB, a KMS key ARN under 100 characters.
MAX_TRUSTED_KEY_ENTRIES: Final = 64


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    # $TMPDIR when set (each LocalStack execution environment has its own), else /tmp: Lambda's only
    # writable path. tempfile.gettempdir() would do the same but costs an import at cold start.
    env = os.environ if environ is None else environ
    # The cache's entries are named by sha256, re-verified on every read and written atomically.
    return Path(env.get("TMPDIR") or "/tmp") / "modelship-cache"  # noqa: S108  # nosec B108


def default_store_path() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "modelship" / "store"


def store_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``$MODELSHIP_STORE``, or None when it is unset or blank."""
    env = os.environ if environ is None else environ
    return env.get(STORE_ENV, "").strip() or None


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The API Gateway key that ``modelship infer`` sends by default (``$MODELSHIP_API_KEY``)."""
    env = os.environ if environ is None else environ
    return env.get(API_KEY_ENV, "").strip() or None


@dataclass(frozen=True, slots=True)
class Settings:
    store_uri: str
    preload: tuple[tuple[str, int | None], ...] = ()
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    # Checked before a response is encoded, and again on the encoded body.
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    session_memory_bytes: int = DEFAULT_SESSION_MEMORY_MB * 1024 * 1024
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    # How long the versions of a model stay known before the store is listed again.
    version_poll_seconds: float = DEFAULT_VERSION_POLL_SECONDS
    # How long a model that failed to load is answered from memory before the store is tried again.
    failure_retry_seconds: float = DEFAULT_FAILURE_RETRY_SECONDS
    # onnxruntime's intra-op threads; None sizes them from the CPUs this process may really use.
    intra_op_threads: int | None = None
    # How long one onnxruntime run (an inference, or a model's warm-up) may take before it is stopped.
    inference_timeout_seconds: float = DEFAULT_INFERENCE_TIMEOUT_SECONDS
    # Load every model first in a child process bounded in time and memory (``isolation``). Off only
    # for a store whose every writer is trusted: it costs a few hundred milliseconds per load.
    isolate_loads: bool = True
    load_timeout_seconds: float = DEFAULT_LOAD_TIMEOUT_SECONDS
    # The keys a version's manifest must be signed by (``core.signing``): PEM files, inline PEM, or KMS
    # keys resolved once when the service starts. Empty: signatures are not required.
    trusted_keys: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            store_uri=store_from_env(env) or str(default_store_path()),
            preload=parse_preload(env.get(PRELOAD_ENV, "")),
            cache_dir=Path(env["MODELSHIP_CACHE_DIR"])
            if env.get("MODELSHIP_CACHE_DIR")
            else default_cache_dir(env),
            max_request_bytes=_positive_int(env, "MODELSHIP_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES),
            max_response_bytes=_positive_int(env, "MODELSHIP_MAX_RESPONSE_BYTES", DEFAULT_MAX_RESPONSE_BYTES),
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
            intra_op_threads=_optional_positive_int(env, "MODELSHIP_INTRA_OP_THREADS"),
            inference_timeout_seconds=_seconds(
                env, "MODELSHIP_INFERENCE_TIMEOUT_SECONDS", DEFAULT_INFERENCE_TIMEOUT_SECONDS, positive=True
            ),
            isolate_loads=_flag(env, "MODELSHIP_ISOLATE_LOADS", default=True),
            load_timeout_seconds=_seconds(
                env, "MODELSHIP_LOAD_TIMEOUT_SECONDS", DEFAULT_LOAD_TIMEOUT_SECONDS, positive=True
            ),
            trusted_keys=parse_trusted_keys(env.get(TRUSTED_KEYS_ENV, "")),
        )


def _flag(env: Mapping[str, str], key: str, *, default: bool) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ValueError(f"{key} must be true or false, got {raw!r}")


def _optional_positive_int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key, "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{key} must be a positive integer, got {raw!r}")
    return int(raw)


def _positive_int(env: Mapping[str, str], key: str, default: int) -> int:
    value = _optional_positive_int(env, key)
    return default if value is None else value


def _seconds(env: Mapping[str, str], key: str, default: float, *, positive: bool = False) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{key} must be a {kind} number of seconds, got {raw!r}")
    return value


def parse_preload(text: str) -> tuple[tuple[str, int | None], ...]:
    """``"iris, resnet:3"`` → ``(("iris", None), ("resnet", 3))``, in the grammar of ``names``."""
    try:
        return parse_model_references(text)
    except BadRequest as error:
        raise ValueError(f"{PRELOAD_ENV}: {error.message}") from None


def parse_trusted_keys(text: str) -> tuple[str, ...]:
    """``"/etc/modelship/signer.pem, alias/modelship-signing"`` → one entry per key source, in order.

    Entries are comma-separated (PEM has no commas): a KMS key ARN, alias (``alias/...``), key id or
    multi-Region key id; inline PEM (``-----BEGIN PUBLIC KEY-----...``); else a path to a PEM file.
    ``core.signing.TrustedKeys.load`` reads them, once, when the service starts."""
    entries = tuple(entry.strip() for entry in text.split(",") if entry.strip())
    if len(entries) > MAX_TRUSTED_KEY_ENTRIES:
        raise ValueError(f"{TRUSTED_KEYS_ENV}: at most {MAX_TRUSTED_KEY_ENTRIES} entries, got {len(entries)}")
    return entries
