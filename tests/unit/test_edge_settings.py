"""The edge component's configuration: the recipe's defaults and the door's parser are one source."""

from __future__ import annotations

import pytest
from modelship.core.settings import DEFAULT_MAX_REQUEST_BYTES

from edge_greengrass.settings import (
    DEFAULT_CONFIGURATION,
    EdgeConfigurationError,
    EdgeSettings,
    access_control_policy,
    parse_configuration,
)
from tests.support.greengrass_ipc import (
    PUBLISH_TO_TOPIC,
    SUBSCRIBE_TO_TOPIC,
    InvalidPolicy,
    pubsub_authorized,
    resource_pattern,
)


def test_the_defaults_are_the_table_in_docs_edge_md() -> None:
    assert DEFAULT_CONFIGURATION == {
        "host": "127.0.0.1",
        "port": "8080",
        "workerThreads": "16",
        "maxRequestBytes": "6291456",
        "requestTopicPrefix": "modelship/infer",
        "replyTopicPrefix": "modelship/reply",
        "metricsTopic": "modelship/metrics",
        "metricsIntervalSeconds": "60",
        "cloudEndpoint": "",
        "cloudAuth": "none",
        "cloudApiKey": "",
        "cloudRegion": "",
        "cloudOnlyModels": "",
        "cloudConnectTimeoutMs": "2000",
        "cloudReadTimeoutMs": "30000",
        "cloudMaxResponseBytes": "6291456",
        "cloudBreakerFailures": "3",
        "cloudBreakerOpenMs": "30000",
        "trustedKeys": "",
    }
    assert all(isinstance(value, str) for value in DEFAULT_CONFIGURATION.values())
    assert int(DEFAULT_CONFIGURATION["maxRequestBytes"]) == DEFAULT_MAX_REQUEST_BYTES


def test_the_defaults_parse_to_the_dataclass_defaults() -> None:
    assert parse_configuration(DEFAULT_CONFIGURATION) == EdgeSettings()
    assert parse_configuration({}) == EdgeSettings()


def test_a_nucleus_configuration_parses_with_string_numbers_and_unknown_keys() -> None:
    settings = parse_configuration(
        {
            "workerThreads": "4",
            "maxRequestBytes": " 1024 ",
            "requestTopicPrefix": "site/7/infer",
            "replyTopicPrefix": "site/7/reply",
            "accessControl": {"aws.greengrass.ipc.pubsub": {}},
            "operatorNote": "ignored",
        }
    )
    assert settings.worker_threads == 4
    assert settings.max_request_bytes == 1024
    assert settings.request_topic_filter == "site/7/infer/+"
    assert settings.reply_topic_prefix == "site/7/reply"


def test_the_metrics_settings_parse_and_zero_turns_the_publication_off() -> None:
    settings = parse_configuration({"metricsTopic": " site/7/metrics ", "metricsIntervalSeconds": "5"})
    assert (settings.metrics_topic, settings.metrics_interval_seconds) == ("site/7/metrics", 5)
    assert parse_configuration({"metricsIntervalSeconds": 0}).metrics_interval_seconds == 0
    assert parse_configuration({"metricsIntervalSeconds": 3600.0}).metrics_interval_seconds == 3600
    # Deeper under the request prefix is no request topic: the door subscribes one level down only.
    deeper = parse_configuration({"metricsTopic": "modelship/infer/iris/metrics"})
    assert deeper.metrics_topic == "modelship/infer/iris/metrics"
    moved = {"requestTopicPrefix": "site/infer", "metricsTopic": "site/infer/metrics"}
    with pytest.raises(EdgeConfigurationError, match="must not be a request topic"):
        parse_configuration(moved)


def test_numbers_merged_as_json_numbers_are_accepted() -> None:
    assert parse_configuration({"workerThreads": 8, "port": 9000.0}).worker_threads == 8
    assert parse_configuration({"port": 9000.0}).port == 9000


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("workerThreads", "many", "workerThreads must be a whole number from 1 to 1024, got 'many'"),
        ("workerThreads", "0", "workerThreads must be a whole number from 1 to 1024"),
        ("workerThreads", "-3", "workerThreads must be a whole number"),
        ("workerThreads", True, "workerThreads must be a whole number"),
        ("workerThreads", 2.5, "workerThreads must be a whole number"),
        ("port", "70000", "port must be a whole number from 1 to 65535"),
        ("maxRequestBytes", "", "maxRequestBytes must be a whole number"),
        ("maxRequestBytes", "1e6", "maxRequestBytes must be a whole number"),
        ("requestTopicPrefix", "modelship/+", "requestTopicPrefix must not contain the wildcards"),
        ("replyTopicPrefix", "modelship/#", "replyTopicPrefix must not contain the wildcards"),
        ("replyTopicPrefix", "modelship/reply/", "replyTopicPrefix must not start or end with '/'"),
        ("requestTopicPrefix", "/modelship", "must not start or end with '/'"),
        ("requestTopicPrefix", "a//b", "contain '//'"),
        ("requestTopicPrefix", "", "requestTopicPrefix must be 1 to 200 characters"),
        ("requestTopicPrefix", 7, "requestTopicPrefix must be a string"),
        ("requestTopicPrefix", "a\nb", "control characters"),
        ("host", "", "host must be a host name or an address"),
        ("metricsTopic", "modelship/metrics/#", "metricsTopic must not contain the wildcards"),
        ("metricsTopic", "", "metricsTopic must be 1 to 200 characters"),
        ("metricsTopic", "modelship/infer/metrics", "metricsTopic must not be a request topic"),
        ("metricsIntervalSeconds", "4", "metricsIntervalSeconds must be 0 (off) or a whole number from 5"),
        ("metricsIntervalSeconds", "3601", "from 5 to 3600, got '3601'"),
        ("metricsIntervalSeconds", "-1", "metricsIntervalSeconds must be 0 (off)"),
        ("metricsIntervalSeconds", "soon", "metricsIntervalSeconds must be 0 (off)"),
        ("metricsIntervalSeconds", True, "metricsIntervalSeconds must be 0 (off)"),
    ],
)
def test_a_bad_value_is_refused_with_its_key_and_value(key: str, value: object, message: str) -> None:
    with pytest.raises(EdgeConfigurationError) as raised:
        parse_configuration({key: value})
    assert message in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_a_configuration_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(EdgeConfigurationError, match="must be an object"):
        parse_configuration(["workerThreads"])  # type: ignore[arg-type]


def test_the_access_control_policy_matches_the_topics_the_door_uses() -> None:
    policy = access_control_policy(
        "com.modelship.Inference", "modelship/infer", "modelship/reply", "modelship/metrics"
    )
    assert policy == {
        "aws.greengrass.ipc.pubsub": {
            "com.modelship.Inference:pubsub:1": {
                "policyDescription": "Receive inference requests and publish their replies",
                "operations": ["aws.greengrass#SubscribeToTopic", "aws.greengrass#PublishToTopic"],
                "resources": ["modelship/infer/+", "modelship/reply/*"],
            },
            "com.modelship.Inference:metrics:1": {
                "policyDescription": "Publish the server's figures (GET /metrics, as JSON)",
                "operations": ["aws.greengrass#PublishToTopic"],
                "resources": ["modelship/metrics"],
            },
        }
    }
    defaults = parse_configuration(DEFAULT_CONFIGURATION)
    resources = policy["aws.greengrass.ipc.pubsub"]["com.modelship.Inference:pubsub:1"]["resources"]
    assert resources[0] == defaults.request_topic_filter


def test_the_access_control_policy_refuses_a_wildcard_prefix() -> None:
    with pytest.raises(EdgeConfigurationError):
        access_control_policy("com.example.Infer", "modelship/#", "modelship/reply")
    with pytest.raises(EdgeConfigurationError):
        access_control_policy("com.example.Infer", "modelship/infer", "modelship/reply", "metrics/+")


def test_the_nucleus_authorizes_the_topics_the_door_uses_and_no_others() -> None:
    """Checked with the nucleus's matching (tests/support/greengrass_ipc.py): what the door subscribes to
    and publishes on passes; a neighbouring topic does not."""
    access_control = access_control_policy("com.modelship.Inference", "modelship/infer", "modelship/reply")
    allowed = [
        (SUBSCRIBE_TO_TOPIC, "modelship/infer/+"),
        (PUBLISH_TO_TOPIC, "modelship/reply/client-1"),
        (PUBLISH_TO_TOPIC, "modelship/metrics"),
    ]
    refused = [
        (SUBSCRIBE_TO_TOPIC, "modelship/metrics"),
        (SUBSCRIBE_TO_TOPIC, "modelship/infer/#"),
        (PUBLISH_TO_TOPIC, "modelship/metrics/other"),
        (PUBLISH_TO_TOPIC, "modelship/metricsx"),
        (PUBLISH_TO_TOPIC, "modelship/infer/iris"),
    ]
    for operation, topic in allowed:
        assert pubsub_authorized(access_control, operation, topic), (operation, topic)
    for operation, topic in refused:
        assert not pubsub_authorized(access_control, operation, topic), (operation, topic)


def test_a_topic_with_the_nucleus_wildcard_characters_is_authorized_literally() -> None:
    """'*' is a wildcard in a resource and a bare '?' makes the nucleus refuse the policy: both are
    escaped, so the resource matches the configured topic and nothing else."""
    access_control = access_control_policy("c", "site/infer", "site/reply", "site/$metrics?/*")
    (resource,) = access_control["aws.greengrass.ipc.pubsub"]["c:metrics:1"]["resources"]
    assert resource == "site/${$}metrics${?}/${*}"
    assert pubsub_authorized(access_control, PUBLISH_TO_TOPIC, "site/$metrics?/*")
    assert not pubsub_authorized(access_control, PUBLISH_TO_TOPIC, "site/$metrics?/anything")
    with pytest.raises(InvalidPolicy):
        resource_pattern("site/metrics?")


def test_the_settings_module_imports_only_the_standard_library_and_the_core() -> None:
    import ast
    import sys
    from pathlib import Path

    import edge_greengrass.settings as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    outside = {
        name
        for name in imported
        if name.split(".")[0] not in sys.stdlib_module_names and not name.startswith("modelship.core")
    }
    assert outside == set()
