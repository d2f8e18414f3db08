"""The edge door's periodic publication of the server's figures over Greengrass IPC (``MetricsPublisher``),
against the stand-in client (tests/support/greengrass_ipc.py) and a real ``ServerMetrics``.

The publisher's ``second`` is shortened to a millisecond, so that an interval of 5 "seconds" passes in
5 ms: no test sleeps for long, and none asserts how long anything took."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from awsiot.greengrasscoreipc import model
from modelship.doors.prometheus_metrics import ServerMetrics

from edge_greengrass.ipc import MetricsPublisher
from edge_greengrass.settings import DEFAULT_CONFIGURATION, EdgeSettings, access_control_policy
from tests.support.greengrass_ipc import FakeGreengrassIPC

MILLISECOND = 0.001
TOPIC = "modelship/metrics"


class LoadedModel:
    name = "iris"
    version = 1
    load_seconds = 0.25


def server_metrics() -> ServerMetrics:
    metrics = ServerMetrics(lambda: [LoadedModel()], lambda: 2)
    for status in (200, 200, 400):
        metrics.request_started()
        metrics.request_done("/v2/models/iris/infer", status, 0.003)
    return metrics


class FailingIPC(FakeGreengrassIPC):
    """Refuses its first ``failures`` publications, as a nucleus does a topic it does not authorize."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def publish_to_topic(
        self, *, topic: str | None = None, publish_message: model.PublishMessage | None = None
    ) -> model.PublishToTopicResponse:
        if self.failures:
            self.failures -= 1
            self._record("publish_to_topic", topic=topic, publish_message=publish_message)
            raise model.UnauthorizedError(message=f"not authorized to publish on {topic}")
        return super().publish_to_topic(topic=topic, publish_message=publish_message)


class HangingIPC(FakeGreengrassIPC):
    """A publication that does not return until ``release`` is set (a nucleus that stopped answering)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def publish_to_topic(
        self, *, topic: str | None = None, publish_message: model.PublishMessage | None = None
    ) -> model.PublishToTopicResponse:
        self.entered.set()
        self.release.wait(30)
        return super().publish_to_topic(topic=topic, publish_message=publish_message)


@pytest.fixture
def stopped_at_end() -> Iterator[list[MetricsPublisher]]:
    publishers: list[MetricsPublisher] = []
    yield publishers
    for publisher in publishers:
        assert publisher.stop(5)


def publisher_for(
    client: FakeGreengrassIPC,
    publishers: list[MetricsPublisher],
    *,
    interval: int = 5,
    topic: str = TOPIC,
    metrics: ServerMetrics | None = None,
    thing_name: str | None = "device-7",
) -> MetricsPublisher:
    settings = EdgeSettings(metrics_topic=topic, metrics_interval_seconds=interval)
    snapshot = (metrics or server_metrics()).snapshot
    publisher = MetricsPublisher(client, snapshot, settings, thing_name=thing_name, second=MILLISECOND)
    publishers.append(publisher)
    return publisher


def publish_calls(client: FakeGreengrassIPC) -> list[dict[str, Any]]:
    return [arguments for method, arguments in client.calls if method == "publish_to_topic"]


def test_the_snapshot_goes_out_as_one_json_message_naming_the_device(
    stopped_at_end: list[MetricsPublisher],
) -> None:
    client = FakeGreengrassIPC()
    metrics = server_metrics()
    publisher = publisher_for(client, stopped_at_end, metrics=metrics)
    assert publisher.publish_once()
    (call,) = publish_calls(client)
    assert call["topic"] == TOPIC
    message = call["publish_message"]
    assert message.binary_message is None and isinstance(message.json_message, model.JsonMessage)
    (published,) = client.wait_for_reply(TOPIC)
    # As the SDK sends it: the message must survive JSON.
    assert json.loads(json.dumps(published)) == published
    assert published["thing"] == "device-7"
    assert set(published) == {"thing", *metrics.snapshot()}
    assert published["models"] == [{"name": "iris", "version": 1, "load_seconds": 0.25}]
    assert published["connections_open"] == 2 and published["in_flight"] == 0
    rows = {(row["model"], row["endpoint"], row["status"]): row for row in published["requests"]}
    assert rows[("iris", "infer", 200)]["count"] == 2 and rows[("iris", "infer", 400)]["count"] == 1
    assert rows[("iris", "infer", 200)]["buckets"]["+Inf"] == 2


def test_without_a_thing_name_the_device_is_null(stopped_at_end: list[MetricsPublisher]) -> None:
    client = FakeGreengrassIPC()
    assert publisher_for(client, stopped_at_end, thing_name=None).publish_once()
    assert client.wait_for_reply(TOPIC)[0]["thing"] is None


def test_it_publishes_every_interval_until_stopped_and_never_after(
    stopped_at_end: list[MetricsPublisher],
) -> None:
    client = FakeGreengrassIPC()
    metrics = server_metrics()
    publisher = publisher_for(client, stopped_at_end, metrics=metrics)
    publisher.start()
    first, _ = client.wait_for_reply(TOPIC, count=2)
    metrics.request_started()
    metrics.request_done("/v2/health/live", 200, 0.0001)
    # Each message is a fresh snapshot: a later one counts the request made since.
    deadline = time.monotonic() + 30
    while not any(row["endpoint"] == "health" for row in client.published[-1][1]["requests"]):
        assert time.monotonic() < deadline, "no later snapshot counted the new request"
        time.sleep(0.005)
    assert not any(row["endpoint"] == "health" for row in first["requests"])
    assert publisher.stop(5)
    assert publisher.stopped
    count = len(publish_calls(client))
    # Twenty intervals later: nothing more went out.
    time.sleep(100 * MILLISECOND)
    assert len(publish_calls(client)) == count
    assert publisher.published == count


def test_interval_zero_publishes_nothing_until_a_configuration_turns_it_on(
    stopped_at_end: list[MetricsPublisher],
) -> None:
    client = FakeGreengrassIPC()
    publisher = publisher_for(client, stopped_at_end, interval=0)
    publisher.start()
    time.sleep(50 * MILLISECOND)
    assert publish_calls(client) == []
    publisher.apply(EdgeSettings(metrics_topic="site/7/metrics", metrics_interval_seconds=5))
    assert client.wait_for_reply("site/7/metrics", count=2)
    assert {call["topic"] for call in publish_calls(client)} == {"site/7/metrics"}


def test_a_new_topic_and_interval_apply_in_place(stopped_at_end: list[MetricsPublisher]) -> None:
    client = FakeGreengrassIPC()
    publisher = publisher_for(client, stopped_at_end, interval=5)
    publisher.start()
    client.wait_for_reply(TOPIC)
    publisher.apply(EdgeSettings(metrics_topic="edge/metrics", metrics_interval_seconds=5))
    client.wait_for_reply("edge/metrics", count=2)
    publisher.apply(EdgeSettings(metrics_topic="edge/metrics", metrics_interval_seconds=0))
    count = len(publish_calls(client))
    assert publisher.settings.metrics_interval_seconds == 0
    time.sleep(100 * MILLISECOND)
    # Twenty old intervals later: at most the one publication already past its wait went out.
    assert len(publish_calls(client)) <= count + 1


def test_publish_errors_are_logged_once_per_run_and_publishing_goes_on(
    stopped_at_end: list[MetricsPublisher], caplog: pytest.LogCaptureFixture
) -> None:
    client = FailingIPC(failures=4)
    publisher = publisher_for(client, stopped_at_end)
    caplog.set_level(logging.INFO, logger="edge_greengrass.ipc")
    publisher.start()
    client.wait_for_reply(TOPIC, count=2)
    assert publisher.stop(5)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    assert "could not publish the server's figures on modelship/metrics" in warnings[0].getMessage()
    assert "UnauthorizedError" in warnings[0].getMessage()
    assert any("again, after 4 failures" in record.getMessage() for record in caplog.records)


def test_a_snapshot_that_fails_is_logged_and_the_thread_goes_on(
    stopped_at_end: list[MetricsPublisher], caplog: pytest.LogCaptureFixture
) -> None:
    client = FakeGreengrassIPC()
    metrics = server_metrics()
    calls = 0

    def snapshot() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the loaded models could not be read")
        return metrics.snapshot()

    settings = EdgeSettings(metrics_interval_seconds=5)
    publisher = MetricsPublisher(client, snapshot, settings, second=MILLISECOND)
    stopped_at_end.append(publisher)
    publisher.start()
    client.wait_for_reply(TOPIC)
    assert "RuntimeError: the loaded models could not be read" in caplog.text


def test_stop_is_bounded_when_a_publication_hangs_and_nothing_follows_it(
    stopped_at_end: list[MetricsPublisher],
) -> None:
    client = HangingIPC()
    publisher = publisher_for(client, stopped_at_end)
    publisher.start()
    assert client.entered.wait(30)
    assert publisher.stop(0.05) is False
    client.release.set()
    client.wait_for_reply(TOPIC)
    assert publisher.stop(5)
    time.sleep(50 * MILLISECOND)
    assert len(client.published) == 1


def test_the_recipe_policy_lets_the_nucleus_take_the_publication() -> None:
    """With the nucleus's authorization and the recipe's accessControl, the configured topic is taken and
    another is refused (logged, not raised)."""
    configuration: dict[str, Any] = dict(DEFAULT_CONFIGURATION)
    configuration["accessControl"] = access_control_policy(
        "com.modelship.Inference", "modelship/infer", "modelship/reply", "modelship/metrics"
    )
    client = FakeGreengrassIPC(configuration=configuration, enforce_access_control=True)
    publisher = MetricsPublisher(client, server_metrics().snapshot, EdgeSettings())
    assert publisher.publish_once()
    assert publisher.publish_once("modelship/other") is False
    assert [topic for topic, _ in client.published] == ["modelship/metrics"]
