"""The edge component's configuration: its keys, their defaults, and the parser of what the nucleus holds.

One source of truth for the recipe builder (``DEFAULT_CONFIGURATION``, ``access_control_policy``) and the
door (``parse_configuration``, ``EdgeSettings``), so that a default cannot differ between the two. The
nucleus hands configuration back as the recipe wrote it, numbers as strings (the developer guide's
advice), so numbers are parsed from strings here; a deployment that merges real numbers is accepted too.

Standard library and ``modelship.core`` only: the recipe builder imports this module off the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from modelship.core.settings import DEFAULT_MAX_REQUEST_BYTES

HOST_KEY: Final = "host"
PORT_KEY: Final = "port"
WORKER_THREADS_KEY: Final = "workerThreads"
MAX_REQUEST_BYTES_KEY: Final = "maxRequestBytes"
REQUEST_TOPIC_PREFIX_KEY: Final = "requestTopicPrefix"
REPLY_TOPIC_PREFIX_KEY: Final = "replyTopicPrefix"
ACCESS_CONTROL_KEY: Final = "accessControl"

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080
DEFAULT_WORKER_THREADS: Final = 16
DEFAULT_REQUEST_TOPIC_PREFIX: Final = "modelship/infer"
DEFAULT_REPLY_TOPIC_PREFIX: Final = "modelship/reply"
# Past this many threads a small device runs out of memory before it runs out of work.
MAX_WORKER_THREADS: Final = 1024
# Greengrass local topics may be long, but a prefix is only the start of one.
MAX_TOPIC_PREFIX_CHARS: Final = 200

# The recipe's DefaultConfiguration, without accessControl (``access_control_policy`` builds it).
DEFAULT_CONFIGURATION: Final[dict[str, str]] = {
    HOST_KEY: DEFAULT_HOST,
    PORT_KEY: str(DEFAULT_PORT),
    WORKER_THREADS_KEY: str(DEFAULT_WORKER_THREADS),
    MAX_REQUEST_BYTES_KEY: str(DEFAULT_MAX_REQUEST_BYTES),
    REQUEST_TOPIC_PREFIX_KEY: DEFAULT_REQUEST_TOPIC_PREFIX,
    REPLY_TOPIC_PREFIX_KEY: DEFAULT_REPLY_TOPIC_PREFIX,
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
    return EdgeSettings(
        host=_host(merged[HOST_KEY]),
        port=parse_whole_number(PORT_KEY, merged[PORT_KEY], 1, 65535),
        worker_threads=parse_whole_number(
            WORKER_THREADS_KEY, merged[WORKER_THREADS_KEY], 1, MAX_WORKER_THREADS
        ),
        max_request_bytes=parse_whole_number(MAX_REQUEST_BYTES_KEY, merged[MAX_REQUEST_BYTES_KEY], 1, 2**62),
        request_topic_prefix=parse_topic_prefix(REQUEST_TOPIC_PREFIX_KEY, merged[REQUEST_TOPIC_PREFIX_KEY]),
        reply_topic_prefix=parse_topic_prefix(REPLY_TOPIC_PREFIX_KEY, merged[REPLY_TOPIC_PREFIX_KEY]),
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


def _host(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise EdgeConfigurationError(f"{HOST_KEY} must be a host name or an address, got {_shown(raw)}")
    return raw.strip()


def _shown(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:80] + "..."


def access_control_policy(component_name: str, request_prefix: str, reply_prefix: str) -> dict[str, Any]:
    """The ``accessControl`` value that lets the component receive requests and publish their replies.

    The resources follow the topics the door uses: it subscribes to ``<request_prefix>/+`` (local
    pub/sub matches an MQTT wildcard in a resource literally, for SubscribeToTopic) and publishes under
    ``<reply_prefix>/``. The policy id must be unique across components, hence the component's name."""
    request = parse_topic_prefix(REQUEST_TOPIC_PREFIX_KEY, request_prefix)
    reply = parse_topic_prefix(REPLY_TOPIC_PREFIX_KEY, reply_prefix)
    return {
        "aws.greengrass.ipc.pubsub": {
            f"{component_name}:pubsub:1": {
                "policyDescription": "Receive inference requests and publish their replies",
                "operations": ["aws.greengrass#SubscribeToTopic", "aws.greengrass#PublishToTopic"],
                "resources": [f"{request}/+", f"{reply}/*"],
            }
        }
    }
