"""The edge component's configuration: its keys, their defaults, and the parser of what the nucleus holds.

One source of truth for the recipe builder (``DEFAULT_CONFIGURATION``, ``access_control_policy``) and the
door (``parse_configuration``, ``EdgeSettings``), so that a default cannot differ between the two. The
nucleus hands configuration back as the recipe wrote it, numbers as strings (the developer guide's
advice), so numbers are parsed from strings here; a deployment that merges real numbers is accepted too.

Standard library and ``modelship.core`` only: the recipe builder imports this module off the device.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from modelship.core.names import is_valid_model_name
from modelship.core.settings import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    TRUSTED_KEYS_ENV,
    parse_trusted_keys,
)
from modelship.core.signing import MAX_PEM_BYTES, trusted_key_entry_kind

HOST_KEY: Final = "host"
PORT_KEY: Final = "port"
WORKER_THREADS_KEY: Final = "workerThreads"
MAX_REQUEST_BYTES_KEY: Final = "maxRequestBytes"
REQUEST_TOPIC_PREFIX_KEY: Final = "requestTopicPrefix"
REPLY_TOPIC_PREFIX_KEY: Final = "replyTopicPrefix"
ACCESS_CONTROL_KEY: Final = "accessControl"
# The server's figures (what GET /metrics reports, as JSON) published on a local topic every so often.
METRICS_TOPIC_KEY: Final = "metricsTopic"
METRICS_INTERVAL_SECONDS_KEY: Final = "metricsIntervalSeconds"
# PEM public keys a model's manifest must be signed by (core.signing), checked on the device, offline.
# The Run step's Setenv hands it to the door as MODELSHIP_TRUSTED_KEYS: a change restarts the component
# (the nucleus restarts one whose interpolated lifecycle changes), which checks every model again.
TRUSTED_KEYS_KEY: Final = "trustedKeys"
# The hybrid fallback to the cloud endpoint (docs/edge.md, "Falling back to the cloud").
CLOUD_ENDPOINT_KEY: Final = "cloudEndpoint"
CLOUD_AUTH_KEY: Final = "cloudAuth"
CLOUD_API_KEY_KEY: Final = "cloudApiKey"
CLOUD_REGION_KEY: Final = "cloudRegion"
CLOUD_ONLY_MODELS_KEY: Final = "cloudOnlyModels"
CLOUD_CONNECT_TIMEOUT_MS_KEY: Final = "cloudConnectTimeoutMs"
CLOUD_READ_TIMEOUT_MS_KEY: Final = "cloudReadTimeoutMs"
CLOUD_MAX_RESPONSE_BYTES_KEY: Final = "cloudMaxResponseBytes"
CLOUD_BREAKER_FAILURES_KEY: Final = "cloudBreakerFailures"
CLOUD_BREAKER_OPEN_MS_KEY: Final = "cloudBreakerOpenMs"

AUTH_NONE: Final = "none"
AUTH_SIGV4: Final = "sigv4"
AUTH_API_KEY: Final = "apiKey"
CLOUD_AUTH_MODES: Final = (AUTH_NONE, AUTH_SIGV4, AUTH_API_KEY)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080
DEFAULT_WORKER_THREADS: Final = 16
DEFAULT_REQUEST_TOPIC_PREFIX: Final = "modelship/infer"
DEFAULT_REPLY_TOPIC_PREFIX: Final = "modelship/reply"
# Beside the request and reply prefixes, so that the door never receives its own figures as a request.
DEFAULT_METRICS_TOPIC: Final = "modelship/metrics"
DEFAULT_METRICS_INTERVAL_SECONDS: Final = 60
# 0 turns the publication off; otherwise at least 5 s (a snapshot each second would only load the bus).
MIN_METRICS_INTERVAL_SECONDS: Final = 5
MAX_METRICS_INTERVAL_SECONDS: Final = 3600
# Past this many threads a small device runs out of memory before it runs out of work.
MAX_WORKER_THREADS: Final = 1024
# Greengrass local topics may be long, but a prefix is only the start of one.
MAX_TOPIC_PREFIX_CHARS: Final = 200

DEFAULT_CLOUD_CONNECT_TIMEOUT_MS: Final = 2000
# Above API Gateway's 29 s integration timeout, so that the gateway's own 504 (which says more) comes first.
DEFAULT_CLOUD_READ_TIMEOUT_MS: Final = 30000
DEFAULT_CLOUD_BREAKER_FAILURES: Final = 3
DEFAULT_CLOUD_BREAKER_OPEN_MS: Final = 30000
MAX_CLOUD_CONNECT_TIMEOUT_MS: Final = 60_000
MAX_CLOUD_READ_TIMEOUT_MS: Final = 300_000
MAX_CLOUD_BREAKER_OPEN_MS: Final = 3_600_000
MAX_CLOUD_ENDPOINT_CHARS: Final = 2048
MAX_CLOUD_ONLY_MODELS_CHARS: Final = 65536
# API Gateway's keys are 20 to 128 characters; room is left for another gateway's.
MAX_API_KEY_CHARS: Final = 1024
_REGION: Final = re.compile(r"[a-z]{2}(-[a-z0-9]+){1,4}")
_API_KEY: Final = re.compile(r"[\x21-\x7e]+")

# The recipe's DefaultConfiguration, without accessControl (``access_control_policy`` builds it).
DEFAULT_CONFIGURATION: Final[dict[str, str]] = {
    HOST_KEY: DEFAULT_HOST,
    PORT_KEY: str(DEFAULT_PORT),
    WORKER_THREADS_KEY: str(DEFAULT_WORKER_THREADS),
    MAX_REQUEST_BYTES_KEY: str(DEFAULT_MAX_REQUEST_BYTES),
    REQUEST_TOPIC_PREFIX_KEY: DEFAULT_REQUEST_TOPIC_PREFIX,
    REPLY_TOPIC_PREFIX_KEY: DEFAULT_REPLY_TOPIC_PREFIX,
    METRICS_TOPIC_KEY: DEFAULT_METRICS_TOPIC,
    METRICS_INTERVAL_SECONDS_KEY: str(DEFAULT_METRICS_INTERVAL_SECONDS),
    CLOUD_ENDPOINT_KEY: "",
    CLOUD_AUTH_KEY: AUTH_NONE,
    CLOUD_API_KEY_KEY: "",
    CLOUD_REGION_KEY: "",
    CLOUD_ONLY_MODELS_KEY: "",
    CLOUD_CONNECT_TIMEOUT_MS_KEY: str(DEFAULT_CLOUD_CONNECT_TIMEOUT_MS),
    CLOUD_READ_TIMEOUT_MS_KEY: str(DEFAULT_CLOUD_READ_TIMEOUT_MS),
    CLOUD_MAX_RESPONSE_BYTES_KEY: str(DEFAULT_MAX_RESPONSE_BYTES),
    CLOUD_BREAKER_FAILURES_KEY: str(DEFAULT_CLOUD_BREAKER_FAILURES),
    CLOUD_BREAKER_OPEN_MS_KEY: str(DEFAULT_CLOUD_BREAKER_OPEN_MS),
    # Empty: signatures are not required.
    TRUSTED_KEYS_KEY: "",
}
CLOUD_KEYS: Final = tuple(key for key in DEFAULT_CONFIGURATION if key.startswith("cloud"))
# The cloud keys reach the door as environment variables that the Run step's Setenv interpolates from
# the configuration: a change restarts the door (the nucleus restarts a component whose interpolated
# lifecycle changes), no value ever passes through a shell, and the API key stays out of the command line.
CLOUD_ENVIRONMENT: Final[dict[str, str]] = {
    key: "MODELSHIP_EDGE_" + re.sub(r"([A-Z])", r"_\1", key).upper() for key in CLOUD_KEYS
}


class EdgeConfigurationError(ValueError):
    """A configuration value the door cannot use; the message names the key and the value."""


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    worker_threads: int = DEFAULT_WORKER_THREADS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    request_topic_prefix: str = DEFAULT_REQUEST_TOPIC_PREFIX
    reply_topic_prefix: str = DEFAULT_REPLY_TOPIC_PREFIX
    metrics_topic: str = DEFAULT_METRICS_TOPIC
    # 0: the figures are not published.
    metrics_interval_seconds: int = DEFAULT_METRICS_INTERVAL_SECONDS

    @property
    def request_topic_filter(self) -> str:
        """What the door subscribes to: one level under the prefix, the model's name."""
        return f"{self.request_topic_prefix}/+"


def parse_configuration(value: Mapping[str, Any]) -> EdgeSettings:
    """The component's configuration (``GetConfiguration``'s value) as settings. Keys it does not know
    (``accessControl``, an operator's own) are ignored; a missing key takes its default."""
    if not isinstance(value, Mapping):
        raise EdgeConfigurationError(f"the configuration must be an object, got {type(value).__name__}")
    merged = {**DEFAULT_CONFIGURATION, **{k: v for k, v in value.items() if k in DEFAULT_CONFIGURATION}}
    # The cloud keys are parsed by ``parse_cloud_configuration``: they reach the door through its
    # environment, and a bad one turns the fallback off without touching the rest.
    request_topic_prefix = parse_topic_prefix(REQUEST_TOPIC_PREFIX_KEY, merged[REQUEST_TOPIC_PREFIX_KEY])
    return EdgeSettings(
        host=_host(merged[HOST_KEY]),
        port=parse_whole_number(PORT_KEY, merged[PORT_KEY], 1, 65535),
        worker_threads=parse_whole_number(
            WORKER_THREADS_KEY, merged[WORKER_THREADS_KEY], 1, MAX_WORKER_THREADS
        ),
        max_request_bytes=parse_whole_number(MAX_REQUEST_BYTES_KEY, merged[MAX_REQUEST_BYTES_KEY], 1, 2**62),
        request_topic_prefix=request_topic_prefix,
        reply_topic_prefix=parse_topic_prefix(REPLY_TOPIC_PREFIX_KEY, merged[REPLY_TOPIC_PREFIX_KEY]),
        metrics_topic=parse_metrics_topic(merged[METRICS_TOPIC_KEY], request_topic_prefix),
        metrics_interval_seconds=parse_metrics_interval(merged[METRICS_INTERVAL_SECONDS_KEY]),
    )


def parse_whole_number(key: str, raw: Any, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high``: a string of digits, or a JSON number with no fraction
    (a deployment's merge may carry ``16`` or ``16.0`` where the recipe wrote ``"16"``)."""
    number: int | None = None
    if isinstance(raw, str):
        text = raw.strip()
        if text.isascii() and text.isdigit() and len(text) <= 20:
            number = int(text)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        number = raw
    elif isinstance(raw, float) and raw.is_integer():
        number = int(raw)
    if number is None or not low <= number <= high:
        raise EdgeConfigurationError(f"{key} must be a whole number from {low} to {high}, got {_shown(raw)}")
    return number


def parse_topic_prefix(key: str, raw: Any) -> str:
    """A local pub/sub topic prefix: levels separated by '/', none empty, no MQTT wildcard."""
    if not isinstance(raw, str):
        raise EdgeConfigurationError(f"{key} must be a string, got {_shown(raw)}")
    prefix = raw.strip()
    if not prefix or len(prefix) > MAX_TOPIC_PREFIX_CHARS:
        raise EdgeConfigurationError(
            f"{key} must be 1 to {MAX_TOPIC_PREFIX_CHARS} characters, got {_shown(raw)}"
        )
    if "+" in prefix or "#" in prefix:
        raise EdgeConfigurationError(f"{key} must not contain the wildcards '+' or '#', got {_shown(raw)}")
    if "" in prefix.split("/"):
        raise EdgeConfigurationError(
            f"{key} must not start or end with '/' or contain '//', got {_shown(raw)}"
        )
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in prefix):
        raise EdgeConfigurationError(f"{key} must not contain control characters, got {_shown(raw)}")
    return prefix


def parse_metrics_topic(raw: Any, request_topic_prefix: str) -> str:
    """The topic the figures are published on: a topic (no wildcard, no empty level) that the door's own
    request subscription (``<requestTopicPrefix>/+``) does not match, or the door would take its figures
    for requests."""
    topic = parse_topic_prefix(METRICS_TOPIC_KEY, raw)
    under_requests = topic.startswith(request_topic_prefix + "/")
    if under_requests and "/" not in topic.removeprefix(request_topic_prefix + "/"):
        raise EdgeConfigurationError(
            f"{METRICS_TOPIC_KEY} must not be a request topic ({request_topic_prefix}/<model>), "
            f"got {_shown(raw)}"
        )
    return topic


def parse_metrics_interval(raw: Any) -> int:
    """Seconds between two publications of the figures: 0 (off), or from 5 to 3600."""
    key = METRICS_INTERVAL_SECONDS_KEY
    try:
        seconds = parse_whole_number(key, raw, 0, MAX_METRICS_INTERVAL_SECONDS)
    except EdgeConfigurationError:
        seconds = -1
    if seconds != 0 and not MIN_METRICS_INTERVAL_SECONDS <= seconds <= MAX_METRICS_INTERVAL_SECONDS:
        raise EdgeConfigurationError(
            f"{key} must be 0 (off) or a whole number from {MIN_METRICS_INTERVAL_SECONDS} to "
            f"{MAX_METRICS_INTERVAL_SECONDS}, got {_shown(raw)}"
        )
    return seconds


def parse_offline_trusted_keys(key: str, raw: Any) -> str:
    """Trusted keys a device can use offline: PEM public keys, inline or in files on the device, never a
    KMS key (that needs the network and credentials). "" when signatures are not required."""
    if not isinstance(raw, str) or len(raw) > MAX_PEM_BYTES:
        raise EdgeConfigurationError(f"{key} must be PEM public keys, at most {MAX_PEM_BYTES} characters")
    if "{configuration:" in raw:
        # The Run step's Setenv left uninterpolated: the device's configuration lacks the key.
        raise EdgeConfigurationError(f"{key} is missing from the component's configuration")
    try:
        entries = parse_trusted_keys(raw)
    except ValueError as error:
        raise EdgeConfigurationError(f"{key}: {error}") from None
    for entry in entries:
        if trusted_key_entry_kind(entry) == "kms":
            raise EdgeConfigurationError(
                f"{key} names the KMS key {_shown(entry)}: a device checks signatures offline; give the "
                "key's public key in PEM instead (aws kms get-public-key)"
            )
    return raw.strip()


def offline_trusted_keys_from_env(environ: Mapping[str, str]) -> str:
    """The door's check of ``MODELSHIP_TRUSTED_KEYS`` (the Run step sets it from trustedKeys) before the
    handler loads; ``EdgeConfigurationError`` for a value it could not use offline."""
    return parse_offline_trusted_keys(TRUSTED_KEYS_KEY, environ.get(TRUSTED_KEYS_ENV, ""))


def _host(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise EdgeConfigurationError(f"{HOST_KEY} must be a host name or an address, got {_shown(raw)}")
    return raw.strip()


def _shown(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:80] + "..."


def access_control_policy(
    component_name: str, request_prefix: str, reply_prefix: str, metrics_topic: str = DEFAULT_METRICS_TOPIC
) -> dict[str, Any]:
    """The ``accessControl`` value that lets the component receive requests, publish their replies, and
    publish its figures.

    The resources follow the topics the door uses: it subscribes to ``<request_prefix>/+`` (local
    pub/sub matches an MQTT wildcard in a resource literally, for SubscribeToTopic), publishes under
    ``<reply_prefix>/`` and on ``metrics_topic``. The figures get a policy of their own, publish only. A
    policy id must be unique across components, hence the component's name in each."""
    request = parse_topic_prefix(REQUEST_TOPIC_PREFIX_KEY, request_prefix)
    reply = parse_topic_prefix(REPLY_TOPIC_PREFIX_KEY, reply_prefix)
    metrics = parse_metrics_topic(metrics_topic, request)
    return {
        "aws.greengrass.ipc.pubsub": {
            f"{component_name}:pubsub:1": {
                "policyDescription": "Receive inference requests and publish their replies",
                "operations": ["aws.greengrass#SubscribeToTopic", "aws.greengrass#PublishToTopic"],
                "resources": [f"{policy_literal(request)}/+", f"{policy_literal(reply)}/*"],
            },
            f"{component_name}:metrics:1": {
                "policyDescription": "Publish the server's figures (GET /metrics, as JSON)",
                "operations": ["aws.greengrass#PublishToTopic"],
                "resources": [policy_literal(metrics)],
            },
        }
    }


def policy_literal(topic: str) -> str:
    """``topic`` as an authorization resource that matches it and nothing else: the nucleus (2.6 and
    later) reads ``*`` in a resource as a wildcard, refuses a bare ``?``, and takes ``${c}`` for the
    literal character c (AuthorizationModule.validateResource, WildcardTrie)."""
    return "".join(f"${{{character}}}" if character in "*?$" else character for character in topic)


@dataclass(frozen=True, slots=True)
class CloudSettings:
    """Where a request the device cannot serve goes, and how. ``endpoint`` is the API's base URL without a
    trailing '/' (``https://<id>.execute-api.<region>.amazonaws.com/<stage>``); the API key never appears
    in a repr, so logging these settings cannot leak it."""

    endpoint: str
    auth: str = AUTH_NONE
    api_key: str = field(default="", repr=False)
    region: str = ""
    cloud_only_models: frozenset[str] = frozenset()
    connect_timeout_seconds: float = DEFAULT_CLOUD_CONNECT_TIMEOUT_MS / 1000
    read_timeout_seconds: float = DEFAULT_CLOUD_READ_TIMEOUT_MS / 1000
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    breaker_failures: int = DEFAULT_CLOUD_BREAKER_FAILURES
    breaker_open_seconds: float = DEFAULT_CLOUD_BREAKER_OPEN_MS / 1000


def parse_cloud_configuration(value: Mapping[str, Any]) -> CloudSettings | None:
    """The cloud fallback's settings from the component's configuration (or the door's environment, which
    carries the same keys as text), or None when ``cloudEndpoint`` is empty: the fallback is off.
    ``EdgeConfigurationError`` names the key; it never shows the API key's value."""
    if not isinstance(value, Mapping):
        raise EdgeConfigurationError(f"the configuration must be an object, got {type(value).__name__}")
    merged = {**DEFAULT_CONFIGURATION, **{k: v for k, v in value.items() if k in CLOUD_KEYS}}
    endpoint = parse_cloud_endpoint(merged[CLOUD_ENDPOINT_KEY])
    if endpoint is None:
        return None
    auth = _cloud_auth(merged[CLOUD_AUTH_KEY])
    api_key = _api_key(merged[CLOUD_API_KEY_KEY], required=auth == AUTH_API_KEY)
    return CloudSettings(
        endpoint=endpoint,
        auth=auth,
        api_key=api_key if auth == AUTH_API_KEY else "",
        region=_region(merged[CLOUD_REGION_KEY]),
        cloud_only_models=parse_model_list(CLOUD_ONLY_MODELS_KEY, merged[CLOUD_ONLY_MODELS_KEY]),
        connect_timeout_seconds=parse_whole_number(
            CLOUD_CONNECT_TIMEOUT_MS_KEY,
            merged[CLOUD_CONNECT_TIMEOUT_MS_KEY],
            1,
            MAX_CLOUD_CONNECT_TIMEOUT_MS,
        )
        / 1000,
        read_timeout_seconds=parse_whole_number(
            CLOUD_READ_TIMEOUT_MS_KEY, merged[CLOUD_READ_TIMEOUT_MS_KEY], 1, MAX_CLOUD_READ_TIMEOUT_MS
        )
        / 1000,
        max_response_bytes=parse_whole_number(
            CLOUD_MAX_RESPONSE_BYTES_KEY, merged[CLOUD_MAX_RESPONSE_BYTES_KEY], 1, 2**31 - 1
        ),
        breaker_failures=parse_whole_number(
            CLOUD_BREAKER_FAILURES_KEY, merged[CLOUD_BREAKER_FAILURES_KEY], 1, 1000
        ),
        breaker_open_seconds=parse_whole_number(
            CLOUD_BREAKER_OPEN_MS_KEY, merged[CLOUD_BREAKER_OPEN_MS_KEY], 1, MAX_CLOUD_BREAKER_OPEN_MS
        )
        / 1000,
    )


def parse_cloud_endpoint(raw: Any) -> str | None:
    """``https://host[:port][/base/path]``, or ``http://`` to a loopback address only (a credential or a
    key must never cross a network in clear text); None for an empty value (no fallback)."""
    key = CLOUD_ENDPOINT_KEY
    if not isinstance(raw, str):
        raise EdgeConfigurationError(f"{key} must be a URL string, got {_shown(raw)}")
    text = raw.strip()
    if not text:
        return None
    if len(text) > MAX_CLOUD_ENDPOINT_CHARS or any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in text):
        raise EdgeConfigurationError(
            f"{key} must be at most {MAX_CLOUD_ENDPOINT_CHARS} printable ASCII characters, got {_shown(raw)}"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise EdgeConfigurationError(f"{key} is not a URL, got {_shown(raw)}") from None
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise EdgeConfigurationError(f"{key} must be an https:// URL with a host, got {_shown(raw)}")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise EdgeConfigurationError(
            f"{key} must carry no user, password, query or fragment, got {_shown(raw)}"
        )
    if parts.scheme == "http" and not _is_loopback_host(host):
        raise EdgeConfigurationError(
            f"{key} must use https:// (plain http:// only to a loopback address), got {_shown(raw)}"
        )
    if port == 0:
        raise EdgeConfigurationError(f"{key} has port 0, got {_shown(raw)}")
    return text.rstrip("/")


def parse_model_list(key: str, raw: Any) -> frozenset[str]:
    """Model names: a JSON array of strings (a deployment's merge, or its interpolated text) or a
    comma-separated string; each name follows the core's grammar."""
    if isinstance(raw, str):
        text = raw.strip()
        if len(text) > MAX_CLOUD_ONLY_MODELS_CHARS:
            raise EdgeConfigurationError(f"{key} is longer than {MAX_CLOUD_ONLY_MODELS_CHARS} characters")
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except (ValueError, RecursionError):
                raise EdgeConfigurationError(
                    f"{key} is not a JSON array of names, got {_shown(raw)}"
                ) from None
        else:
            raw = [name.strip() for name in text.split(",") if name.strip()]
    if not isinstance(raw, list) or not all(isinstance(name, str) for name in raw):
        raise EdgeConfigurationError(f"{key} must be a list of model names, got {_shown(raw)}")
    for name in raw:
        if not is_valid_model_name(name):
            raise EdgeConfigurationError(f"{key} names {_shown(name)}, which is not a valid model name")
    return frozenset(raw)


def _cloud_auth(raw: Any) -> str:
    if isinstance(raw, str):
        wanted = raw.strip().lower()
        for mode in CLOUD_AUTH_MODES:
            if mode.lower() == wanted:
                return mode
    raise EdgeConfigurationError(
        f"{CLOUD_AUTH_KEY} must be one of {', '.join(CLOUD_AUTH_MODES)}, got {_shown(raw)}"
    )


def _api_key(raw: Any, *, required: bool) -> str:
    # The value is never shown: an error message goes to the component's log.
    if not isinstance(raw, str):
        raise EdgeConfigurationError(f"{CLOUD_API_KEY_KEY} must be a string")
    key = raw.strip()
    if not key:
        if required:
            raise EdgeConfigurationError(
                f"{CLOUD_API_KEY_KEY} must be set when {CLOUD_AUTH_KEY} is {AUTH_API_KEY}"
            )
        return ""
    if len(key) > MAX_API_KEY_CHARS or not _API_KEY.fullmatch(key):
        raise EdgeConfigurationError(
            f"{CLOUD_API_KEY_KEY} must be 1 to {MAX_API_KEY_CHARS} printable ASCII characters without spaces"
        )
    return key


def _region(raw: Any) -> str:
    if not isinstance(raw, str):
        raise EdgeConfigurationError(f"{CLOUD_REGION_KEY} must be a string, got {_shown(raw)}")
    region = raw.strip()
    if region and not _REGION.fullmatch(region):
        raise EdgeConfigurationError(
            f"{CLOUD_REGION_KEY} must be an AWS region such as eu-west-1, got {_shown(raw)}"
        )
    return region


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
