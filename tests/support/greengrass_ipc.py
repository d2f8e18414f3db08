"""A stand-in for awsiot's ``GreengrassCoreIPCClientV2``: no nucleus, the SDK's real message classes.

awscrt has an eventstream RPC client but no server, so the door's IPC is tested against this fake. Its
methods take exactly the installed client's keyword-only parameters (tests/unit/test_edge_ipc.py compares
the signatures), it records every call, and it delivers messages and configuration events built from
``awsiot.greengrasscoreipc.model``, as the nucleus would. Callbacks run on the thread that delivers.

With ``enforce_access_control`` it authorizes PublishToTopic and SubscribeToTopic as the Java nucleus
does, against the ``accessControl`` of the component's own configuration (``pubsub_authorized``), and
answers ``UnauthorizedError`` otherwise.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from awsiot.greengrasscoreipc import model

COMPONENT_NAME = "com.modelship.Inference"
PUBSUB_SERVICE = "aws.greengrass.ipc.pubsub"
PUBLISH_TO_TOPIC = "aws.greengrass#PublishToTopic"
SUBSCRIBE_TO_TOPIC = "aws.greengrass#SubscribeToTopic"
_RESOURCE_ESCAPE = re.compile(r"\$\{(.)\}")


class InvalidPolicy(AssertionError):
    """A resource the nucleus would refuse when it loads the component's policies."""


def resource_pattern(resource: str) -> re.Pattern[str]:
    """How the Java nucleus (2.6 and later) reads a local pub/sub resource (NUC authorization/
    AuthorizationModule.validateResource, WildcardTrie.matchesStandard, the lookup pubsub uses): ``*``
    alone matches everything, ``*`` elsewhere any run of characters, '/' included; ``${*}``, ``${?}`` and
    ``${$}`` are those characters; a bare ``?`` and any other ``${...}`` are refused; MQTT wildcards
    (``+``, ``#``) are plain characters."""
    if not resource:
        raise InvalidPolicy("Resource cannot be empty")
    parts: list[str] = []
    index = 0
    while index < len(resource):
        character = resource[index]
        if resource.startswith("${", index):
            escape = _RESOURCE_ESCAPE.match(resource, index)
            if escape is None or escape.group(1) not in "*$?":
                raise InvalidPolicy(f"{resource!r} contains an invalid escape sequence")
            parts.append(re.escape(escape.group(1)))
            index = escape.end()
            continue
        if character == "?":
            raise InvalidPolicy(f"{resource!r} contains '?': use ${{?}}")
        parts.append(".*" if character == "*" else re.escape(character))
        index += 1
    return re.compile("".join(parts), re.DOTALL)


def pubsub_authorized(access_control: Any, operation: str, topic: str) -> bool:
    """Whether a component whose configuration holds ``access_control`` may do ``operation`` on ``topic``
    (a topic filter, for a subscription): some policy under ``aws.greengrass.ipc.pubsub`` names the
    operation (or ``*``) and a resource that matches."""
    policies = access_control.get(PUBSUB_SERVICE) if isinstance(access_control, dict) else None
    for policy in (policies or {}).values():
        operations = policy.get("operations") or []
        if operation not in operations and "*" not in operations:
            continue
        for resource in policy.get("resources") or []:
            if resource_pattern(resource).fullmatch(topic):
                return True
    return False


def completed_future(result: Any = None) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(result)
    return future


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT-style matching, as local pub/sub does: '+' is one level, '#' the rest."""
    filter_levels = topic_filter.split("/")
    levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(levels) or (level != "+" and level != levels[index]):
            return False
    return len(levels) == len(filter_levels)


@dataclass
class FakeOperation:
    """A stream operation (subscription); ``close`` ends it, as ``operation.close()`` does."""

    topic: str | None
    on_stream_event: Callable[[Any], None] | None
    closed: bool = False

    def close(self) -> Future[Any]:
        self.closed = True
        return completed_future()


@dataclass
class FakeGreengrassIPC:
    configuration: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    topic_subscriptions: list[FakeOperation] = field(default_factory=list)
    configuration_subscriptions: list[FakeOperation] = field(default_factory=list)
    closed: bool = False
    enforce_access_control: bool = False

    def __post_init__(self) -> None:
        self._changed = threading.Condition()

    # The client's methods (keyword-only, as in GreengrassCoreIPCClientV2).

    def publish_to_topic(
        self, *, topic: str | None = None, publish_message: model.PublishMessage | None = None
    ) -> model.PublishToTopicResponse:
        self._record("publish_to_topic", topic=topic, publish_message=publish_message)
        if topic is None or "+" in topic or "#" in topic:
            raise model.InvalidArgumentsError(message=f"cannot publish to {topic!r}")
        self._authorize(PUBLISH_TO_TOPIC, topic)
        assert publish_message is not None
        if publish_message.json_message is not None:
            message = publish_message.json_message.message
        else:
            message = publish_message.binary_message.message
        with self._changed:
            self.published.append((topic, message))
            self._changed.notify_all()
        return model.PublishToTopicResponse()

    def subscribe_to_topic(
        self,
        *,
        topic: str | None = None,
        receive_mode: str | None = None,
        stream_handler: Any = None,
        on_stream_event: Callable[[model.SubscriptionResponseMessage], None] | None = None,
        on_stream_error: Callable[[Exception], bool] | None = None,
        on_stream_closed: Callable[[], None] | None = None,
    ) -> tuple[model.SubscribeToTopicResponse, FakeOperation]:
        self._record("subscribe_to_topic", topic=topic, receive_mode=receive_mode)
        if stream_handler is not None and on_stream_event is not None:
            raise ValueError("pass stream_handler or the callbacks, not both")
        assert topic is not None
        self._authorize(SUBSCRIBE_TO_TOPIC, topic)
        operation = FakeOperation(topic, on_stream_event)
        self.topic_subscriptions.append(operation)
        return model.SubscribeToTopicResponse(topic_name=topic), operation

    def get_configuration(
        self, *, component_name: str | None = None, key_path: list[str] | None = None
    ) -> model.GetConfigurationResponse:
        self._record("get_configuration", component_name=component_name, key_path=key_path)
        value: Any = copy.deepcopy(self.configuration)
        for key in key_path or []:
            if not isinstance(value, dict) or key not in value:
                raise model.ResourceNotFoundError(message=f"no configuration at {key_path}")
            value = value[key]
        return model.GetConfigurationResponse(component_name=component_name or COMPONENT_NAME, value=value)

    def subscribe_to_configuration_update(
        self,
        *,
        component_name: str | None = None,
        key_path: list[str] | None = None,
        stream_handler: Any = None,
        on_stream_event: Callable[[model.ConfigurationUpdateEvents], None] | None = None,
        on_stream_error: Callable[[Exception], bool] | None = None,
        on_stream_closed: Callable[[], None] | None = None,
    ) -> tuple[model.SubscribeToConfigurationUpdateResponse, FakeOperation]:
        self._record("subscribe_to_configuration_update", component_name=component_name, key_path=key_path)
        operation = FakeOperation(None, on_stream_event)
        self.configuration_subscriptions.append(operation)
        return model.SubscribeToConfigurationUpdateResponse(), operation

    def update_state(self, *, state: str | None = None) -> model.UpdateStateResponse:
        self._record("update_state", state=state)
        assert state is not None
        self.states.append(state)
        return model.UpdateStateResponse()

    def close(self, *, executor_wait: bool = True) -> Future[Any]:
        self._record("close", executor_wait=executor_wait)
        self.closed = True
        return completed_future()

    # What the nucleus would do.

    def deliver(self, topic: str, message: dict[str, Any] | bytes) -> int:
        """Publish ``message`` on ``topic`` to every open subscription that matches; how many got it."""
        context = model.MessageContext(topic=topic)
        if isinstance(message, bytes):
            event = model.SubscriptionResponseMessage(
                binary_message=model.BinaryMessage(message=message, context=context)
            )
        else:
            event = model.SubscriptionResponseMessage(
                json_message=model.JsonMessage(message=message, context=context)
            )
        delivered = 0
        for operation in list(self.topic_subscriptions):
            if operation.closed or operation.topic is None or operation.on_stream_event is None:
                continue
            if topic_matches(operation.topic, topic):
                operation.on_stream_event(event)
                delivered += 1
        return delivered

    def change_configuration(self, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the configuration and tell every subscriber, one event per key."""
        self.configuration.update(changes)
        for key in changes:
            event = model.ConfigurationUpdateEvents(
                configuration_update_event=model.ConfigurationUpdateEvent(
                    component_name=COMPONENT_NAME, key_path=[key]
                )
            )
            for operation in list(self.configuration_subscriptions):
                if not operation.closed and operation.on_stream_event is not None:
                    operation.on_stream_event(event)

    def wait_for_reply(self, topic: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The first ``count`` messages published on ``topic``, waiting for them up to ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                replies = [message for published_topic, message in self.published if published_topic == topic]
                if len(replies) >= count:
                    return replies[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no reply on {topic} within {timeout} s; published: {self.published}"
                    )
                self._changed.wait(remaining)

    def open_topic_filters(self) -> list[str | None]:
        return [operation.topic for operation in self.topic_subscriptions if not operation.closed]

    def _authorize(self, operation: str, topic: str) -> None:
        if not self.enforce_access_control:
            return
        if not pubsub_authorized(self.configuration.get("accessControl"), operation, topic):
            raise model.UnauthorizedError(
                message=f"Principal {COMPONENT_NAME} is not authorized to perform {PUBSUB_SERVICE}:"
                f"{operation} on resource {topic}"
            )

    def _record(self, method: str, **arguments: Any) -> None:
        with self._changed:
            self.calls.append((method, arguments))
