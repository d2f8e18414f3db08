"""Fixtures for the CDK tests: the app synthesized with tiny stand-in layer zips.

The real layers are large and their build is covered by test_layer.py; here only the zips' existence
matters, so every synth passes two small fake zips through the ``onnx_layer_zip``/``deps_layer_zip``
context keys. The feature flags of ``cdk.json`` are merged in, so tests synthesize what ``cdk synth`` does.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Template

from infra.app import build_app

REPO_ROOT = Path(__file__).resolve().parents[2]

SynthFactory = Callable[..., App]


def cdk_json_context() -> dict[str, object]:
    context = json.loads((REPO_ROOT / "cdk.json").read_text(encoding="utf-8"))["context"]
    assert isinstance(context, dict)
    return context


@pytest.fixture(scope="session")
def fake_layer_zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("layers")
    paths = {}
    for name in ("onnx", "deps"):
        path = directory / f"{name}-layer.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"python/fake_{name}_layer.py", "# stand-in layer for synthesis tests\n")
        paths[f"{name}_layer_zip"] = str(path)
    return paths


@pytest.fixture(scope="session")
def make_app(fake_layer_zips: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> SynthFactory:
    """Build the app for the given context overrides (on top of cdk.json and the fake layers)."""

    def factory(**overrides: object) -> App:
        # A developer's own build/edge must not change what these tests synthesise: the edge stack's
        # tests pass a package of their own.
        context: dict[str, object] = {
            **cdk_json_context(),
            **fake_layer_zips,
            "edge_package": "off",
            **overrides,
        }
        return build_app(context, outdir=str(tmp_path_factory.mktemp("cdk.out")))

    return factory


def stack(app: App, name: str) -> Stack:
    child = app.node.find_child(name)
    assert isinstance(child, Stack)
    return child


def template(app: App, name: str) -> Template:
    return Template.from_stack(stack(app, name))


def resources(template_: Template, resource_type: str) -> dict[str, Any]:
    """Resources of one type by logical id: plain JSON, hence ``Any``."""
    found = template_.find_resources(resource_type)
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="session")
def default_app(make_app: SynthFactory) -> App:
    return make_app()


@pytest.fixture(scope="session")
def api_template(default_app: App) -> Template:
    return template(default_app, "modelship-prod-api")


@pytest.fixture(scope="session")
def store_template(default_app: App) -> Template:
    return template(default_app, "modelship-prod-store")


# Every option away from its default at once: API key auth, x86_64, SnapStart, reserved concurrency,
# preloading, an alarm topic and a throwaway stage.
ALTERNATE_CONTEXT: dict[str, object] = {
    "stage": "dev",
    "architecture": "x86_64",
    "memory": "3008",
    "timeout": "25",
    "preload": "iris,resnet:3",
    "auth": "api_key",
    "throttle_rate": "20",
    "throttle_burst": "40",
    "reserved_concurrency": "10",
    "snapstart": "true",
    "removal": "destroy",
    "log_retention_days": "7",
    "latency_alarm_ms": "1500",
    "alarm_topic_arn": "arn:aws:sns:eu-west-1:123456789012:oncall",
    "api_cloudwatch_role": "false",
}


@pytest.fixture(scope="session")
def alternate_app(make_app: SynthFactory) -> App:
    return make_app(**ALTERNATE_CONTEXT)


@pytest.fixture(scope="session")
def alternate_api_template(alternate_app: App) -> Template:
    return template(alternate_app, "modelship-dev-api")


# The operating options of docs/deploy.md all on: a canary release with its pre-traffic hook, provisioned
# concurrency scaled between 2 and 10 (within the reserved 20) and the dashboard.
OPERATIONS_CONTEXT: dict[str, object] = {
    "stage": "ops",
    "canary": "true",
    "reserved_concurrency": "20",
    "provisioned_concurrency": "2",
    "provisioned_concurrency_max": "10",
    "provisioned_concurrency_target": "0.6",
    "dashboard": "true",
}


@pytest.fixture(scope="session")
def operations_app(make_app: SynthFactory) -> App:
    return make_app(**OPERATIONS_CONTEXT)


@pytest.fixture(scope="session")
def operations_api_template(operations_app: App) -> Template:
    return template(operations_app, "modelship-ops-api")
