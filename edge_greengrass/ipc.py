"""Greengrass IPC for the edge door: the component's configuration, and a local pub/sub bridge.

Only this module talks to the nucleus, and ``awsiot`` is imported only once the door knows it runs under
one (``nucleus_available``), so the door serves HTTP anywhere without the SDK being importable.

The bridge takes a request published on ``<requestTopicPrefix>/<model>``, JSON (or binary holding JSON
text) shaped ``{"correlation_id", "reply_topic", "model_version" (optional), "request": {...}}``, turns it
into the same API Gateway event as an HTTP ``POST /v2/models/<model>[/versions/<v>]/infer`` (so it gets
the same answer as every other door), and publishes ``{"correlation_id", "status", "response"}`` or
``{"correlation_id", "status", "error"}`` on ``reply_topic``, which must lie under ``replyTopicPrefix``.

Requests run on a pool of ``workerThreads`` threads: the SDK's callback thread only decodes and hands
over, and a request past the pool's capacity is answered 503 at once rather than queued.

``MetricsPublisher`` publishes the HTTP door's figures (what ``GET /metrics`` reports, as JSON) on
``metricsTopic`` every ``metricsIntervalSeconds``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol

from modelship.core.errors import ModelshipError
from modelship.core.names import parse_version, validate_model_name
from modelship.doors.local_http import LambdaHandler, LocalLambdaContext, build_proxy_event

from edge_greengrass.settings import EdgeConfigurationError, EdgeSettings, parse_configuration

logger = logging.getLogger("edge_greengrass.ipc")

NUCLEUS_SOCKET_ENV: Final = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
SVCUID_ENV: Final = "SVCUID"
IPC_OFF_MESSAGE: Final = "Greengrass IPC is off (no nucleus socket): serving HTTP only"
ERRORED: Final = "ERRORED"
# Refusals (503 busy, shutting down) waiting to be published; past it they are dropped, and logged.
MAX_PENDING_REFUSALS: Final = 256
MAX_CORRELATION_ID_CHARS: Final = 256
MAX_REPLY_TOPIC_CHARS: Final = 512
_JSON_HEADERS: Final = [("Content-Type", "application/json")]


class IpcClient(Protocol):
    """The part of awsiot's ``GreengrassCoreIPCClientV2`` the door uses (keyword-only, as there)."""

    def publish_to_topic(self, *, topic: str | None = None, publish_message: Any = None) -> Any: ...

    def subscribe_to_topic(
        self,
        *,
        topic: str | None = None,
        receive_mode: str | None = None,
        stream_handler: Any = None,
        on_stream_event: Callable[[Any], None] | None = None,
        on_stream_error: Callable[[Exception], bool] | None = None,
        on_stream_closed: Callable[[], None] | None = None,
    ) -> tuple[Any, Any]: ...

    def get_configuration(
        self, *, component_name: str | None = None, key_path: list[str] | None = None
    ) -> Any: ...

    def subscribe_to_configuration_update(
        self,
        *,
        component_name: str | None = None,
        key_path: list[str] | None = None,
        stream_handler: Any = None,
        on_stream_event: Callable[[Any], None] | None = None,
        on_stream_error: Callable[[Exception], bool] | None = None,
        on_stream_closed: Callable[[], None] | None = None,
    ) -> tuple[Any, Any]: ...

    def update_state(self, *, state: str | None = None) -> Any: ...

    def close(self, *, executor_wait: bool = True) -> Any: ...


IpcClientFactory = Callable[[], IpcClient]


def nucleus_available(environ: Mapping[str, str]) -> bool:
    """True when the nucleus started this process and gave it an IPC socket and token."""
    return bool(environ.get(NUCLEUS_SOCKET_ENV)) and bool(environ.get(SVCUID_ENV))


def connect() -> IpcClient:
    """The real client, connected to the nucleus socket named in the environment."""
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    client: IpcClient = GreengrassCoreIPCClientV2()
    return client


def read_configuration(client: IpcClient) -> EdgeSettings:
    """The component's whole configuration (an empty key path), parsed; ``EdgeConfigurationError`` if a
    value is unusable."""
    response = client.get_configuration(key_path=[])
    return parse_configuration(response.value or {})


def report_errored(client: IpcClient) -> None:
    """Tell the nucleus this component cannot serve, so that a deployment sees it fail."""
    try:
        client.update_state(state=ERRORED)
    except Exception as error:
        logger.warning("could not report ERRORED to the nucleus: %s", describe_error(error))


def close_client(client: IpcClient) -> None:
    # Never waits for the SDK's threads: the nucleus allows 5 s for the whole shutdown.
    try:
        client.close(executor_wait=False)
    except Exception as error:
        logger.debug("closing the IPC client: %s", describe_error(error))


class _Refused(Exception):
    """A request answered with an error before it reaches the handler."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class _Envelope:
    """A request message's routing: where its reply goes, and what the reply carries back."""

    topic: str
    reply_topic: str
    correlation_id: str | None
    document: dict[str, Any]


class IpcBridge:
    """The pub/sub bridge and the configuration watcher, over one IPC client.

    ``on_settings`` is called with every configuration the nucleus sends that parses (the door applies
    the HTTP side of it); the bridge applies its own side (pool size, topics) itself.
    """

    def __init__(
        self,
        client: IpcClient,
        handler: LambdaHandler,
        settings: EdgeSettings,
        on_settings: Callable[[EdgeSettings], None] | None = None,
    ) -> None:
        self.client = client
        self.handler = handler
        self._settings = settings
        self._on_settings = on_settings
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # The SDK runs stream callbacks on a pool: two configuration updates may arrive at once, and
        # each must read, compare and resubscribe as a whole, or a stale subscription would survive.
        self._configuring = threading.Lock()
        self._running = 0
        self._stopping = False
        self._pool = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="ipc-request")
        self._old_pools: list[ThreadPoolExecutor] = []
        self._refusals = ThreadPoolExecutor(1, thread_name_prefix="ipc-refusal")
        self._pending_refusals = 0
        self._requests: Any = None
        self._configuration: Any = None
        self._subscribed_filter: str | None = None

    @property
    def settings(self) -> EdgeSettings:
        return self._settings

    def start(self) -> None:
        """Watch the configuration and subscribe to requests. IPC errors propagate: without these
        subscriptions the bridge cannot work at all."""
        _, self._configuration = self.client.subscribe_to_configuration_update(
            key_path=[],
            on_stream_event=self._on_configuration_update,
            on_stream_error=self._on_stream_error,
        )
        self._subscribe(self._settings.request_topic_filter)

    def stop_taking(self) -> None:
        """Unsubscribe; a request that still arrives is answered 503."""
        with self._lock:
            self._stopping = True
        for operation in (self._requests, self._configuration):
            _close_operation(operation)

    def wait_idle(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the requests running to publish their replies; True if they did."""
        deadline = time.monotonic() + seconds
        with self._idle:
            while self._running or self._pending_refusals:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.05))
        return True

    def finish(self, wait_seconds: float) -> None:
        """After ``stop_taking``: the last replies get ``wait_seconds``, then the pools are let go."""
        if not self.wait_idle(wait_seconds):
            logger.warning("%d IPC requests were still running at shutdown; abandoning them", self._running)
        for pool in (self._pool, *self._old_pools, self._refusals):
            pool.shutdown(wait=False, cancel_futures=True)

    def apply(self, settings: EdgeSettings) -> None:
        """Apply a new configuration in place: the pool's size, the request topic, then the door's part."""
        previous = self._settings
        with self._lock:
            self._settings = settings
            if settings.worker_threads != previous.worker_threads and not self._stopping:
                # A pool cannot be resized; the old one finishes what it runs and its threads end.
                self._old_pools.append(self._pool)
                self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="ipc-request")
        stopping = self._stopping
        if (
            settings.request_topic_filter != self._subscribed_filter
            and self._requests is not None
            and not stopping
        ):
            self._resubscribe(settings.request_topic_filter)
        if self._on_settings is not None:
            self._on_settings(settings)

    def _subscribe(self, topic_filter: str) -> None:
        _, self._requests = self.client.subscribe_to_topic(
            topic=topic_filter,
            on_stream_event=self._on_request,
            on_stream_error=self._on_stream_error,
        )
        self._subscribed_filter = topic_filter
        logger.info("taking inference requests on %s", topic_filter)

    def _resubscribe(self, topic_filter: str) -> None:
        previous = self._requests
        try:
            # The new subscription first, so no request falls between the two.
            self._subscribe(topic_filter)
        except Exception as error:
            logger.error(
                "cannot subscribe to %s, still on the previous topic: %s", topic_filter, describe_error(error)
            )
            return
        _close_operation(previous)

    def _on_configuration_update(self, event: Any) -> None:
        with self._configuring:
            self._reconfigure()

    def _reconfigure(self) -> None:
        # The event names the changed key only: the values are read again.
        try:
            settings = read_configuration(self.client)
        except EdgeConfigurationError as error:
            logger.error("ignoring a configuration update: %s", error)
            return
        except Exception as error:
            logger.error("cannot read the updated configuration: %s", describe_error(error))
            return
        # host and port are not applied in place: the nucleus restarts the door when they change, as the
        # Run command interpolates them.
        settings = dataclasses.replace(settings, host=self._settings.host, port=self._settings.port)
        if settings != self._settings:
            logger.info("configuration updated in place: %s", settings)
            self.apply(settings)

    @staticmethod
    def _on_stream_error(error: Exception) -> bool:
        logger.error("Greengrass IPC stream error: %s", describe_error(error))
        # Keep the stream open: one bad message must not end the subscription.
        return False

    def _on_request(self, message: Any) -> None:
        """On the SDK's callback thread: decode the envelope and hand the request to the pool."""
        try:
            envelope = self._envelope(message)
        except _Refused as refusal:
            logger.warning("dropped a request message: %s", refusal.message)
            return
        except Exception:
            logger.exception("dropped a request message that could not be read")
            return
        with self._lock:
            limit = self._settings.worker_threads
            if self._stopping:
                answer = _Refused(503, "the server is shutting down; retry shortly")
            elif self._running >= limit:
                answer = _Refused(503, f"the server runs {limit} requests at once already; retry shortly")
            else:
                self._running += 1
                try:
                    self._pool.submit(self._serve, envelope)
                except RuntimeError:
                    # The pool was shut down between the check and the submit (a stop).
                    self._running -= 1
                    answer = _Refused(503, "the server is shutting down; retry shortly")
                else:
                    return
        self._refuse(envelope, answer)

    def _envelope(self, message: Any) -> _Envelope:
        document, topic = _decode(message)
        prefix = self._settings.reply_topic_prefix
        reply_topic = document.get("reply_topic")
        if not isinstance(reply_topic, str) or not _is_reply_topic(reply_topic, prefix):
            raise _Refused(400, f"reply_topic must be a topic under {prefix}/ without '+' or '#', on {topic}")
        correlation_id = document.get("correlation_id")
        if not isinstance(correlation_id, str) or len(correlation_id) > MAX_CORRELATION_ID_CHARS:
            correlation_id = None
        return _Envelope(topic, reply_topic, correlation_id, document)

    def _refuse(self, envelope: _Envelope, refusal: _Refused) -> None:
        with self._lock:
            if self._pending_refusals >= MAX_PENDING_REFUSALS:
                logger.warning(
                    "too many refusals waiting to be published: dropping one for %s", envelope.topic
                )
                return
            self._pending_refusals += 1
        try:
            self._refusals.submit(self._publish_refusal, envelope, refusal)
        except RuntimeError:
            with self._lock:
                self._pending_refusals -= 1

    def _publish_refusal(self, envelope: _Envelope, refusal: _Refused) -> None:
        try:
            self._publish(envelope, {"status": refusal.status, "error": refusal.message})
        finally:
            with self._idle:
                self._pending_refusals -= 1
                self._idle.notify_all()

    def _serve(self, envelope: _Envelope) -> None:
        """On a pool thread: the request through the handler, and its reply."""
        try:
            try:
                reply = self._answer(envelope)
            except _Refused as refusal:
                reply = {"status": refusal.status, "error": refusal.message}
            except Exception:
                logger.exception("unexpected error serving a request from %s", envelope.topic)
                reply = {"status": 500, "error": "internal server error"}
            self._publish(envelope, reply)
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _answer(self, envelope: _Envelope) -> dict[str, Any]:
        if envelope.correlation_id is None:
            raise _Refused(
                400, f"correlation_id must be a string of at most {MAX_CORRELATION_ID_CHARS} characters"
            )
        model = _model_name(envelope.topic, self._settings.request_topic_prefix)
        path = f"/v2/models/{model}"
        version = envelope.document.get("model_version")
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, str | int):
                raise _Refused(400, "model_version must be a version number, as a string or an integer")
            try:
                path += f"/versions/{parse_version(str(version))}"
            except ModelshipError as error:
                raise _Refused(error.status, error.message) from None
        request = envelope.document.get("request")
        if not isinstance(request, dict):
            raise _Refused(
                400, "request must be an Open Inference Protocol inference request (a JSON object)"
            )
        body = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        context = LocalLambdaContext()
        event = build_proxy_event("POST", f"{path}/infer", _JSON_HEADERS, body, context.aws_request_id)
        result = self.handler(event, context)
        return _reply_from_result(result)

    def _publish(self, envelope: _Envelope, reply: dict[str, Any]) -> None:
        from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage

        message = {"correlation_id": envelope.correlation_id, **reply}
        try:
            self.client.publish_to_topic(
                topic=envelope.reply_topic,
                publish_message=PublishMessage(json_message=JsonMessage(message=message)),
            )
        except Exception as error:
            reason = describe_error(error)
            logger.warning("could not publish the reply on %s: %s", envelope.reply_topic, reason)


class MetricsPublisher:
    """Publishes the server's figures on ``metricsTopic`` every ``metricsIntervalSeconds`` (0: never), on a
    daemon thread of its own, from ``start`` until ``stop``.

    A message is ``{"thing": <AWS_IOT_THING_NAME or None>, **snapshot()}`` as a JSON message. A failed
    publication (the nucleus refusing the topic, a closed connection) is logged once per run of
    failures, and the next one is tried at the next interval. ``apply`` takes a new topic or interval in
    place: the next publication is due one new interval after the last one (at once if that is past).
    ``second`` is how long one configured second lasts (tests shorten it).
    """

    def __init__(
        self,
        client: IpcClient,
        snapshot: Callable[[], Mapping[str, Any]],
        settings: EdgeSettings,
        *,
        thing_name: str | None = None,
        second: float = 1.0,
    ) -> None:
        self.client = client
        self._snapshot = snapshot
        self._settings = settings
        self._thing_name = thing_name or None
        self._second = second
        self._changed = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._failures = 0
        self.published = 0

    @property
    def settings(self) -> EdgeSettings:
        return self._settings

    @property
    def stopped(self) -> bool:
        return self._stopped

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="edge-metrics", daemon=True)
        self._thread = thread
        thread.start()
        interval = self._settings.metrics_interval_seconds
        if interval:
            logger.info(
                "publishing the server's figures on %s every %d s", self._settings.metrics_topic, interval
            )
        else:
            logger.info("the server's figures are not published (metricsIntervalSeconds is 0)")

    def apply(self, settings: EdgeSettings) -> None:
        with self._changed:
            previous = self._settings
            self._settings = settings
            self._changed.notify_all()
        if (settings.metrics_topic, settings.metrics_interval_seconds) != (
            previous.metrics_topic,
            previous.metrics_interval_seconds,
        ):
            logger.info(
                "the server's figures now go to %s every %d s (0: never)",
                settings.metrics_topic,
                settings.metrics_interval_seconds,
            )

    def stop(self, wait_seconds: float) -> bool:
        """No publication starts once this returns; one already under way gets ``wait_seconds`` to end.
        True if the thread has ended."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(wait_seconds)
        return not thread.is_alive()

    def publish_once(self, topic: str | None = None) -> bool:
        """Take a snapshot and publish it (on ``topic``, else the configured one); True if it went out."""
        topic = topic or self._settings.metrics_topic
        try:
            from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage

            message = {"thing": self._thing_name, **self._snapshot()}
            self.client.publish_to_topic(
                topic=topic, publish_message=PublishMessage(json_message=JsonMessage(message=message))
            )
        except Exception as error:
            self._failures += 1
            if self._failures == 1:
                logger.warning(
                    "could not publish the server's figures on %s: %s; retrying every interval, quietly",
                    topic,
                    describe_error(error),
                )
            return False
        if self._failures:
            logger.info(
                "published the server's figures on %s again, after %d failures", topic, self._failures
            )
            self._failures = 0
        self.published += 1
        return True

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            with self._changed:
                while True:
                    if self._stopped:
                        return
                    interval = self._settings.metrics_interval_seconds
                    if not interval:
                        self._changed.wait()
                        continue
                    remaining = last + interval * self._second - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
                topic = self._settings.metrics_topic
            last = time.monotonic()
            self.publish_once(topic)


def _decode(message: Any) -> tuple[dict[str, Any], str]:
    """A ``SubscriptionResponseMessage`` as (the JSON object it holds, the topic it came on)."""
    if message.json_message is not None:
        payload: Any = message.json_message.message
        context = message.json_message.context
    elif message.binary_message is not None:
        raw = message.binary_message.message
        context = message.binary_message.context
        try:
            payload = json.loads(raw) if raw is not None else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            topic = getattr(context, "topic", None)
            raise _Refused(400, f"a binary message on {topic} is not JSON text") from None
    else:
        raise _Refused(400, "a message with neither JSON nor binary content")
    topic = getattr(context, "topic", None)
    if not isinstance(topic, str):
        raise _Refused(400, "a message without a topic")
    if not isinstance(payload, dict):
        raise _Refused(400, f"a message on {topic} is not a JSON object")
    return payload, topic


def _is_reply_topic(topic: str, prefix: str) -> bool:
    rest = topic.removeprefix(prefix + "/")
    return (
        topic.startswith(prefix + "/")
        and bool(rest)
        and "" not in rest.split("/")
        and "+" not in topic
        and "#" not in topic
        and len(topic) <= MAX_REPLY_TOPIC_CHARS
        and all(ord(character) >= 0x20 and ord(character) != 0x7F for character in topic)
    )


def _model_name(topic: str, prefix: str) -> str:
    if not topic.startswith(prefix + "/"):
        # Only when the prefix changed while this request was on its way.
        raise _Refused(404, f"{topic} is not under the request topic prefix {prefix}/")
    try:
        return validate_model_name(topic.removeprefix(prefix + "/"))
    except ModelshipError as error:
        raise _Refused(error.status, error.message) from None


def _reply_from_result(result: Mapping[str, Any]) -> dict[str, Any]:
    status = int(result["statusCode"])
    if result.get("isBase64Encoded"):
        return {
            "status": 400,
            "error": "the request asks for binary outputs, which an IPC reply cannot carry; "
            "ask for JSON outputs",
        }
    try:
        document = json.loads(result.get("body") or "null")
    except ValueError:
        logger.error("the handler answered %d with a body that is not JSON", status)
        return {"status": 500, "error": "internal server error"}
    if status < 400:
        return {"status": status, "response": document}
    error = document.get("error") if isinstance(document, dict) else None
    return {"status": status, "error": error if isinstance(error, str) else f"request failed ({status})"}


def _close_operation(operation: Any) -> None:
    if operation is None:
        return
    with contextlib.suppress(Exception):
        operation.close()


def describe_error(error: BaseException) -> str:
    """An error in one log line: its type and the first 300 characters of its first line."""
    text = str(error).splitlines()[0][:300] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
