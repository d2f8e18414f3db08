"""The Greengrass recipes and the inference component's zip: their rules, and that they are reproducible."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import re
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelship.core.errors import BadRequest

from edge_greengrass.packaging import build_components, build_zip
from edge_greengrass.recipe_schema import recipe_problems
from edge_greengrass.recipes import (
    INFERENCE_COMPONENT_NAME,
    ModelSource,
    derived_component_version,
    greengrass_digest,
    model_component_name,
    model_component_version,
    render_recipe,
)
from tests.support.greengrass_ipc import PUBLISH_TO_TOPIC, pubsub_authorized
from tests.support.processes import REPO_ROOT

STORE = "s3://models-bucket/team"


def source(
    name: str = "iris", version: int = 3, model: bytes = b"model", manifest: bytes = b"{}"
) -> ModelSource:
    return ModelSource.from_store(
        "models-bucket", "team", name, version, hashlib.sha256(model).hexdigest(), manifest
    )


@pytest.fixture(scope="module")
def built() -> tuple[list[dict[str, Any]], dict[str, Any], bytes]:
    return build_components(STORE, [source("iris", 3), source("resnet", 12)])


def test_the_digest_is_the_nucleus_format() -> None:
    # The nucleus's ArtifactDownloader: raw SHA-256, standard base64 with padding.
    assert greengrass_digest(b"hello") == "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="


def test_model_components_name_the_store_objects_with_the_manifest_digests() -> None:
    model, manifest = b"onnx bytes", b'{"name": "iris"}'
    recipe = build_components(STORE, [source(model=model, manifest=manifest)])[0][0]
    assert recipe["ComponentName"] == "com.modelship.model.iris"
    assert recipe["ComponentVersion"] == "3.0.0"
    assert "Lifecycle" not in recipe and all("Lifecycle" not in m for m in recipe["Manifests"])
    artifacts = recipe["Manifests"][0]["Artifacts"]
    assert [a["Uri"] for a in artifacts] == [
        "s3://models-bucket/team/models/iris/3/model.onnx",
        "s3://models-bucket/team/models/iris/3/manifest.json",
    ]
    assert artifacts[0]["Digest"] == base64.b64encode(hashlib.sha256(model).digest()).decode()
    assert artifacts[1]["Digest"] == base64.b64encode(hashlib.sha256(manifest).digest()).decode()
    assert {a["Algorithm"] for a in artifacts} == {"SHA-256"}
    assert {a["Permission"]["Read"] for a in artifacts} == {"ALL"}


def test_the_inference_recipe(built: tuple[list[dict[str, Any]], dict[str, Any], bytes]) -> None:
    _, recipe, zip_bytes = built
    assert recipe["RecipeFormatVersion"] == "2020-01-25"
    assert recipe["ComponentName"] == INFERENCE_COMPONENT_NAME
    assert recipe["ComponentPublisher"]
    version = recipe["ComponentVersion"]
    assert re.fullmatch(r"0\.1\.[1-9][0-9]{0,5}", version)
    assert recipe["ComponentDependencies"] == {
        "com.modelship.model.iris": {"VersionRequirement": "=3.0.0", "DependencyType": "HARD"},
        "com.modelship.model.resnet": {"VersionRequirement": "=12.0.0", "DependencyType": "HARD"},
    }
    platforms = [manifest["Platform"] for manifest in recipe["Manifests"]]
    assert platforms == [
        {"os": "linux", "architecture": "amd64", "runtime": "*"},
        {"os": "linux", "architecture": "aarch64", "runtime": "*"},
    ]
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    assert lifecycle["Install"]["Timeout"] >= 900
    assert "{work:path}" in lifecycle["Install"]["Script"]
    run = lifecycle["Run"]["Script"]
    assert run.startswith("exec ")
    assert "--model 'iris={com.modelship.model.iris:artifacts:path}'" in run
    assert "--model 'resnet={com.modelship.model.resnet:artifacts:path}'" in run
    assert "{configuration:/host}" in run and "{configuration:/port}" in run
    # What can change in place stays out of the lifecycle: an interpolated change restarts the component.
    assert "workerThreads" not in run and "maxRequestBytes" not in run
    (artifact,) = recipe["Manifests"][0]["Artifacts"]
    assert artifact == {
        "Uri": f"s3://models-bucket/team/components/{INFERENCE_COMPONENT_NAME}/{version}/modelship-edge.zip",
        "Digest": greengrass_digest(zip_bytes),
        "Algorithm": "SHA-256",
        "Unarchive": "ZIP",
        "Permission": {"Read": "OWNER", "Execute": "NONE"},
    }
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert defaults["host"] == "127.0.0.1" and defaults["port"] == "8080"
    for key in ("workerThreads", "maxRequestBytes", "requestTopicPrefix", "replyTopicPrefix"):
        assert isinstance(defaults[key], str), key
    policies = defaults["accessControl"]["aws.greengrass.ipc.pubsub"]
    assert list(policies) == [f"{INFERENCE_COMPONENT_NAME}:pubsub:1", f"{INFERENCE_COMPONENT_NAME}:metrics:1"]
    bridge, metrics = policies.values()
    assert set(bridge["operations"]) == {"aws.greengrass#SubscribeToTopic", "aws.greengrass#PublishToTopic"}
    assert all(
        resource.startswith(("modelship/infer", "modelship/reply")) for resource in bridge["resources"]
    )
    # The figures' topic: publish only, that topic only.
    assert metrics["operations"] == ["aws.greengrass#PublishToTopic"]
    assert metrics["resources"] == [defaults["metricsTopic"]] == ["modelship/metrics"]
    assert defaults["metricsIntervalSeconds"] == "60"
    assert all(policy["policyDescription"] for policy in policies.values())
    # Neither is interpolated into the lifecycle: both apply in place.
    assert "metrics" not in run


def test_the_recipe_authorizes_a_packaged_metrics_topic_and_refuses_a_bad_configuration() -> None:
    recipe = build_components(
        STORE, [source()], configuration={"metricsTopic": "site/7/metrics", "metricsIntervalSeconds": "0"}
    )[1]
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    access = defaults["accessControl"]
    assert pubsub_authorized(access, PUBLISH_TO_TOPIC, "site/7/metrics")
    assert not pubsub_authorized(access, PUBLISH_TO_TOPIC, "modelship/metrics")
    assert recipe_problems(recipe) == []
    for bad in (
        {"metricsIntervalSeconds": "1"},
        {"metricsTopic": "modelship/infer/x"},
        {"workerThreads": "0"},
    ):
        with pytest.raises(BadRequest, match="the component's configuration: " + next(iter(bad))):
            build_components(STORE, [source()], configuration=bad)


def test_every_generated_recipe_passes_the_schema_check(
    built: tuple[list[dict[str, Any]], dict[str, Any], bytes],
) -> None:
    model_recipes, inference, _ = built
    for recipe in (*model_recipes, inference):
        assert recipe_problems(recipe) == []
        # And survives the trip through YAML unchanged, written out in full (no anchors or aliases).
        rendered = render_recipe(recipe)
        assert yaml.safe_load(rendered) == recipe
        assert b"&id" not in rendered and b"*id" not in rendered


def _broken(recipe: dict[str, Any], change: Any) -> list[str]:
    broken = copy.deepcopy(recipe)
    change(broken)
    return recipe_problems(broken)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda r: r.pop("ComponentPublisher"), "ComponentPublisher", id="no-publisher"),
        pytest.param(lambda r: r.update(RecipeFormatVersion="2021-01-01"), "2020-01-25", id="format"),
        pytest.param(lambda r: r.update(ComponentVersion="1.0"), "MAJOR.MINOR.PATCH", id="short-version"),
        pytest.param(lambda r: r.update(ComponentVersion="1.0.1000000"), "999999", id="version-part"),
        pytest.param(lambda r: r.update(ComponentName="com modelship"), "A-Z", id="name-characters"),
        pytest.param(
            lambda r: r["Manifests"][0]["Artifacts"][0].update(Digest="abc"), "32-byte", id="digest-format"
        ),
        pytest.param(
            lambda r: r["Manifests"][0]["Artifacts"][0].update(
                Digest=base64.b64encode(b"x" * 32).decode()[:-1]
            ),
            "32-byte",
            id="digest-unpadded",
        ),
        pytest.param(
            lambda r: r["Manifests"][0]["Artifacts"][0].pop("Algorithm"), "Algorithm", id="no-algorithm"
        ),
        pytest.param(
            lambda r: r["Manifests"][0]["Artifacts"][0].update(Algorithm="MD5"), "SHA-256", id="algorithm"
        ),
        pytest.param(
            lambda r: r["Manifests"][0]["Artifacts"][0].update(Unarchive="TAR"), "ZIP", id="unarchive"
        ),
        pytest.param(
            lambda r: r["Manifests"][0]["Artifacts"][0].update(Uri="https://example.com/a.zip"),
            "s3|greengrass|docker",
            id="uri-scheme",
        ),
        pytest.param(
            lambda r: r["Manifests"][0]["Lifecycle"].update(Startup="true"),
            "Run and Startup",
            id="run-startup",
        ),
        pytest.param(
            lambda r: r["Manifests"][0]["Lifecycle"]["Run"].update(Script="run {work:pth}"),
            "not a recipe variable",
            id="variable-typo",
        ),
        pytest.param(
            lambda r: r["Manifests"][0]["Lifecycle"]["Run"].update(Script="run {com.other:artifacts:path}"),
            "not a dependency",
            id="cross-component-not-a-dependency",
        ),
        pytest.param(
            lambda r: r["Manifests"][0]["Lifecycle"]["Install"].update(Skipif="sometimes x"),
            "Skipif",
            id="skipif-form",
        ),
        pytest.param(
            lambda r: r["Manifests"][0]["Lifecycle"].update(install="echo"), "install", id="lite-casing"
        ),
        pytest.param(
            lambda r: r["ComponentDependencies"]["com.modelship.model.iris"].update(DependencyType="STRONG"),
            "HARD",
            id="dependency-type",
        ),
    ],
)
def test_the_schema_check_refuses_what_the_reference_forbids(
    built: tuple[list[dict[str, Any]], dict[str, Any], bytes], change: Any, expected: str
) -> None:
    problems = _broken(built[1], change)
    assert problems, "the broken recipe passed"
    assert any(expected in problem for problem in problems), problems


def test_the_same_inputs_give_byte_identical_recipes_and_zips() -> None:
    first = build_components(STORE, [source("iris", 3)])
    second = build_components(STORE, [source("iris", 3)])
    assert render_recipe(first[1]) == render_recipe(second[1])
    assert first[2] == second[2]


@pytest.mark.parametrize(
    "other",
    [
        pytest.param([source("iris", 4)], id="another-model-version"),
        pytest.param([source("iris", 3), source("resnet", 1)], id="another-model-set"),
        pytest.param([source("iris", 3, model=b"other bytes")], id="other-model-bytes"),
    ],
)
def test_another_model_set_gives_another_component_version(other: list[ModelSource]) -> None:
    base = build_components(STORE, [source("iris", 3)])[1]["ComponentVersion"]
    assert build_components(STORE, other)[1]["ComponentVersion"] != base


def test_a_given_component_version_is_used_and_checked() -> None:
    assert build_components(STORE, [source()], component_version="2.5.7")[1]["ComponentVersion"] == "2.5.7"
    with pytest.raises(BadRequest, match=r"MAJOR\.MINOR\.PATCH"):
        build_components(STORE, [source()], component_version="2.5")


def test_derived_versions_are_valid_semver() -> None:
    for seed in range(200):
        _major, _minor, patch = derived_component_version(bytes([seed])).split(".")
        assert 1 <= int(patch) <= 999999


def test_model_names_and_versions_must_fit_greengrass() -> None:
    assert model_component_name("a" * 108) == "com.modelship.model." + "a" * 108
    with pytest.raises(BadRequest, match="too long"):
        model_component_name("a" * 109)
    assert model_component_version(999999) == "999999.0.0"
    with pytest.raises(BadRequest, match="999999"):
        model_component_version(1_000_000)
    with pytest.raises(BadRequest, match="public AWS component"):
        build_components(STORE, [source()], component_name="aws.greengrass.Nucleus")


def test_the_zip_is_deterministic_and_holds_what_the_device_runs() -> None:
    zip_bytes, requirements = build_zip()
    assert build_zip()[0] == zip_bytes
    archive = zipfile.ZipFile(io.BytesIO(zip_bytes))
    names = archive.namelist()
    assert names == sorted(names)
    assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert {info.external_attr >> 16 & 0o777 for info in archive.infolist()} == {0o644}
    for expected in (
        "requirements.txt",
        "inference/app.py",
        "modelship/core/service.py",
        "modelship/doors/local_http.py",
        "modelship/doors/apigw.py",
        "edge_greengrass/__main__.py",
        "edge_greengrass/install.py",
    ):
        assert expected in names, expected
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in names if name.startswith("modelship/tools/")]
    assert archive.read("requirements.txt") == requirements


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("modelship["):
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not pinned"
            pins[name.lower()] = version
    return pins


def test_the_device_requirements_are_the_edge_extra_pins() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    # The edge extra names other extras (modelship[runtime,metrics,signing]); the device gets their pins.
    included = ("edge", "runtime", "metrics", "signing")
    expected = {name: version for extra in included for name, version in _pins(extras[extra]).items()}
    device = _pins((REPO_ROOT / "edge_greengrass" / "requirements.txt").read_text().splitlines())
    assert device == expected


def test_the_gdk_config_builds_with_modelship_edge_package() -> None:
    import json

    config = json.loads((REPO_ROOT / "edge_greengrass" / "gdk-config.json").read_text())
    ((name, component),) = config["component"].items()
    assert name == INFERENCE_COMPONENT_NAME
    assert component["build"]["build_system"] == "custom"
    command = component["build"]["custom_build_command"]
    assert command[:3] == ["modelship", "edge", "package"]
    assert command[command.index("--out") + 1] == "greengrass-build"
    assert Path(REPO_ROOT / "edge_greengrass" / "gdk-config.json").is_file()
