"""Self-tests of the simulated nucleus: each rule it claims to follow (team notes, greengrass.md sections
1-3), with small hand-written recipes whose lifecycles are tiny sh commands and whose artifacts live in a
moto S3 server on 127.0.0.1."""

from __future__ import annotations

import io
import os
import stat
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.edge.conftest import s3_client, start_moto
from tests.edge.nucleus import (
    BROKEN,
    DEVICE_PATH,
    ERRORED,
    FINISHED,
    NEW,
    RUNNING,
    STOPPING,
    TES_PATH,
    TOKEN_EXCHANGE_SERVICE,
    ChecksumMismatch,
    ConfigurationUpdate,
    ConflictError,
    DeploymentError,
    Nucleus,
    RecipeError,
    UnsupportedByHarness,
    Version,
    greengrass_digest,
    parse_requirement,
    platform_matches,
    running_nucleus,
)

ROOT_WRITE = 0 if os.geteuid() == 0 else 0o200


def recipe(
    name: str,
    version: str = "1.0.0",
    *,
    lifecycle: dict[str, Any] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
    dependencies: dict[str, dict[str, str]] | None = None,
    defaults: dict[str, Any] | None = None,
    manifests: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentPublisher": "modelship tests",
        "Manifests": manifests
        or [
            {
                "Platform": {"os": "linux", "runtime": "*"},
                "Lifecycle": lifecycle or {},
                "Artifacts": artifacts or [],
            }
        ],
    }
    if dependencies:
        document["ComponentDependencies"] = dependencies
    if defaults is not None:
        document["ComponentConfiguration"] = {"DefaultConfiguration": defaults}
    return document


def upload(s3: Any, bucket: str, key: str, body: bytes) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def output_lines(nucleus: Nucleus, name: str) -> list[str]:
    return [line for line in nucleus.logs(name).splitlines() if not line.startswith("[nucleus]")]


def wait_for_output(nucleus: Nucleus, name: str, expected: list[str], timeout: float = 10) -> None:
    """A Run process is RUNNING as soon as it is spawned: its output follows a little later."""
    deadline = time.monotonic() + timeout
    while output_lines(nucleus, name) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert output_lines(nucleus, name) == expected


# --- recipes, the cloud, resolution -------------------------------------------------------------------


def test_digest_is_base64_of_raw_sha256() -> None:
    assert greengrass_digest(b"hello") == "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="


def test_cloud_registry_conflicts_and_validation(nucleus: Nucleus) -> None:
    first = recipe("com.example.Same", lifecycle={"Run": "echo one"})
    assert str(nucleus.register(first)) == "com.example.Same@1.0.0"
    assert str(nucleus.register(dict(first))) == "com.example.Same@1.0.0", "identical: accepted"
    with pytest.raises(ConflictError):
        nucleus.register(recipe("com.example.Same", lifecycle={"Run": "echo two"}))
    with pytest.raises(RecipeError, match="999999"):
        nucleus.register(recipe("com.example.Big", "1000000.0.0"))
    with pytest.raises(RecipeError, match="ComponentName"):
        nucleus.register(recipe("bad name!"))
    broken = recipe("com.example.NoFormat")
    del broken["RecipeFormatVersion"]
    with pytest.raises(RecipeError, match="RecipeFormatVersion"):
        nucleus.register(broken)
    yaml_text = (
        "RecipeFormatVersion: '2020-01-25'\n"
        "ComponentName: com.example.Yaml\n"
        "ComponentVersion: 1.0.0\n"
        "Manifests: []\n"
    )
    assert str(nucleus.register(yaml_text)) == "com.example.Yaml@1.0.0"


def test_version_requirements() -> None:
    def ok(requirement: str, version: str) -> bool:
        return parse_requirement(requirement)(Version.parse(version))

    assert ok("=1.2.3", "1.2.3") and not ok("=1.2.3", "1.2.4")
    assert ok("1.2.3", "1.2.3") and not ok("1.2.3", "1.3.0")
    assert ok(">=1.2.0", "3.0.0") and not ok(">=1.2.0", "1.1.9")
    assert ok("^1.2.3", "1.9.0") and not ok("^1.2.3", "2.0.0") and not ok("^1.2.3", "1.2.2")
    assert ok("^0.2.3", "0.2.9") and not ok("^0.2.3", "0.3.0")
    assert ok("~1.2.3", "1.2.9") and not ok("~1.2.3", "1.3.0")
    assert ok(">=1.0.0 <2.0.0", "1.5.0") and not ok(">=1.0.0 <2.0.0", "2.0.0")
    assert ok("<1.0.0 || >=3.0.0", "3.1.0") and not ok("<1.0.0 || >=3.0.0", "2.0.0")
    assert ok("*", "7.0.0")
    for unsupported in ("1.x", "1", "1.0.0 - 2.0.0"):
        with pytest.raises(UnsupportedByHarness):
            parse_requirement(unsupported)


def test_resolution_picks_the_newest_satisfying_version(nucleus: Nucleus) -> None:
    for version in ("1.0.0", "1.4.0", "2.0.0"):
        nucleus.register(recipe("com.example.Lib", version))
    nucleus.register(
        recipe(
            "com.example.App",
            dependencies={"com.example.Lib": {"VersionRequirement": "^1.0.0", "DependencyType": "HARD"}},
        )
    )
    result = nucleus.deploy({"com.example.App": "1.0.0"})
    assert result.components == {"com.example.App": "1.0.0", "com.example.Lib": "1.4.0"}
    assert result.status == "SUCCEEDED"
    with pytest.raises(DeploymentError, match="NO_AVAILABLE_VERSION"):
        nucleus.deploy({"com.example.App": "1.0.0", "com.example.Lib": "2.0.0"})


# --- manifests and platforms -------------------------------------------------------------------------


def test_platform_rules() -> None:
    device = {"os": "linux", "architecture": "amd64"}
    assert platform_matches(None, device) and platform_matches({}, device)
    assert platform_matches({"os": "linux", "architecture": "*"}, device)
    assert platform_matches({"os": "all", "architecture": "any"}, device)
    assert platform_matches({"architecture": "/amd64|aarch64/"}, device)
    assert not platform_matches({"architecture": "/amd/"}, device), "a regex must match the whole value"
    assert not platform_matches({"os": "windows"}, device)
    assert platform_matches({"os": "linux", "runtime": "*"}, device)
    assert not platform_matches({"os": "linux", "runtime": "aws_nucleus_lite"}, device), (
        "the Java nucleus sets no runtime: only * matches a missing key"
    )


def test_first_matching_manifest_is_chosen(nucleus: Nucleus) -> None:
    nucleus.register(
        recipe(
            "com.example.Platforms",
            manifests=[
                {"Platform": {"os": "windows"}, "Lifecycle": {"Run": "echo windows"}},
                {
                    "Platform": {"os": "linux", "runtime": "aws_nucleus_lite"},
                    "Lifecycle": {"Run": "echo lite"},
                },
                {
                    "Platform": {"os": "linux", "architecture": "/amd64|aarch64/", "runtime": "*"},
                    "Lifecycle": {"Run": "echo first-match"},
                },
                {"Platform": {"os": "linux"}, "Lifecycle": {"Run": "echo second-match"}},
            ],
        )
    )
    nucleus.deploy({"com.example.Platforms": "1.0.0"})
    nucleus.wait_until_finished("com.example.Platforms")
    assert output_lines(nucleus, "com.example.Platforms") == ["first-match"]

    nucleus.register(recipe("com.example.Nowhere", manifests=[{"Platform": {"os": "darwin"}}]))
    with pytest.raises(DeploymentError, match="NO_MATCHING_PLATFORM"):
        nucleus.deploy({"com.example.Nowhere": "1.0.0"})


# --- artifacts ---------------------------------------------------------------------------------------


def test_download_layout_permissions_and_skip_when_present(nucleus: Nucleus, s3: Any, bucket: str) -> None:
    uri = upload(s3, bucket, "deep/prefix/hello.txt", b"hello")
    tool = upload(s3, bucket, "tools/tool.sh", b"#!/bin/sh\necho tool\n")
    component = nucleus.register(
        recipe(
            "com.example.Files",
            artifacts=[
                {"Uri": uri, "Permission": {"Read": "ALL"}, "Digest": "wrong", "Algorithm": "SHA-256"},
                {"Uri": tool, "Permission": {"Read": "OWNER", "Execute": "OWNER"}},
            ],
            lifecycle={"Run": "cat {artifacts:path}/hello.txt && echo && {artifacts:path}/tool.sh"},
        )
    )
    # The cloud computes the digests itself and overwrites what the recipe said.
    assert nucleus.cloud.digest_overrides[0][1:] == (uri, "wrong", greengrass_digest(b"hello"))

    nucleus.deploy({component.name: component.version})
    nucleus.wait_until_finished(component.name)
    folder = nucleus.root / "packages" / "artifacts" / "com.example.Files" / "1.0.0"
    assert (folder / "hello.txt").read_bytes() == b"hello", "named after the last segment of the key"
    assert stat.S_IMODE((folder / "hello.txt").stat().st_mode) == 0o444 | ROOT_WRITE
    assert stat.S_IMODE((folder / "tool.sh").stat().st_mode) == 0o500 | ROOT_WRITE
    assert output_lines(nucleus, component.name) == ["hello", "tool"]
    assert nucleus.s3_calls[0] == "GetBucketLocation"
    assert nucleus.s3_calls.count("GetObject") == 2

    nucleus.s3_calls.clear()
    nucleus.deploy({component.name: component.version})
    assert "GetObject" not in nucleus.s3_calls, "present with a matching digest: no download"


def test_digest_mismatch_is_refused_and_the_file_deleted(nucleus: Nucleus, s3: Any, bucket: str) -> None:
    uri = upload(s3, bucket, "models/model.onnx", b"original bytes")
    component = nucleus.register(recipe("com.example.Changed", artifacts=[{"Uri": uri}]))
    upload(s3, bucket, "models/model.onnx", b"replaced bytes")  # overwritten after the version was created

    with pytest.raises(ChecksumMismatch, match="ARTIFACT_CHECKSUM_MISMATCH"):
        nucleus.deploy({component.name: component.version})
    target = nucleus.root / "packages/artifacts/com.example.Changed/1.0.0/model.onnx"
    assert not target.exists()
    assert nucleus.s3_calls.count("GetObject") == nucleus.download_attempts, "retried, then failed"
    assert nucleus.state(component.name) is None, "a failed deployment changes nothing on the device"


def test_missing_algorithm_is_refused(nucleus: Nucleus, s3: Any, bucket: str) -> None:
    uri = upload(s3, bucket, "a/file.bin", b"data")
    component = nucleus.register(
        recipe("com.example.NoAlgorithm", artifacts=[{"Uri": uri, "Digest": greengrass_digest(b"data")}]),
        compute_digests=False,
    )
    with pytest.raises(ChecksumMismatch, match="RECIPE_MISSING_ARTIFACT_HASH_ALGORITHM"):
        nucleus.deploy({component.name: component.version})


def test_zip_is_unarchived_into_a_folder_named_after_it(nucleus: Nucleus, s3: Any, bucket: str) -> None:
    uri = upload(s3, bucket, "bundles/models.zip", zip_bytes({"a/b.txt": b"inside", "top.txt": b"top"}))
    component = nucleus.register(
        recipe(
            "com.example.Zip",
            artifacts=[{"Uri": uri, "Unarchive": "ZIP", "Permission": {"Read": "ALL"}}],
            lifecycle={
                "Run": "echo {artifacts:decompressedPath}; cat {artifacts:decompressedPath}/models/a/b.txt"
            },
        )
    )
    nucleus.deploy({component.name: component.version})
    nucleus.wait_until_finished(component.name)
    unarchived = nucleus.root / "packages/artifacts-unarchived/com.example.Zip/1.0.0"
    assert (unarchived / "models" / "top.txt").read_bytes() == b"top"
    assert stat.S_IMODE((unarchived / "models" / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((unarchived / "models" / "a" / "b.txt").stat().st_mode) == 0o444 | ROOT_WRITE
    assert output_lines(nucleus, component.name) == [str(unarchived), "inside"]


def test_zip_slip_is_refused(nucleus: Nucleus, s3: Any, bucket: str) -> None:
    uri = upload(s3, bucket, "bundles/evil.zip", zip_bytes({"ok.txt": b"ok", "../../escaped.txt": b"x"}))
    component = nucleus.register(recipe("com.example.Slip", artifacts=[{"Uri": uri, "Unarchive": "ZIP"}]))
    with pytest.raises(DeploymentError, match="outside of the target dir"):
        nucleus.deploy({component.name: component.version})
    unarchived = nucleus.root / "packages/artifacts-unarchived/com.example.Slip/1.0.0"
    assert not (unarchived / "evil").exists(), "what was extracted is deleted"
    assert not (unarchived / "escaped.txt").exists() and not (unarchived.parent / "escaped.txt").exists()


# --- variables, configuration, environment -------------------------------------------------------------


def test_recipe_variables(nucleus: Nucleus, s3: Any, bucket: str) -> None:
    model_uri = upload(s3, bucket, "m/model.onnx", b"model")
    nucleus.register(recipe("com.example.Indirect"))
    nucleus.register(
        recipe(
            "com.example.Model",
            "2.0.0",
            artifacts=[{"Uri": model_uri, "Permission": {"Read": "ALL"}}],
            defaults={"greeting": "hi"},
            dependencies={"com.example.Indirect": {"VersionRequirement": "=1.0.0"}},
        )
    )
    lines = [
        "artifacts={artifacts:path}",
        "decompressed={artifacts:decompressedPath}",
        "work={work:path}",
        "root={kernel:rootPath}",
        "thing={iot:thingName}",
        "port={configuration:/port}",
        "nested={configuration:/nested}",
        "flag={configuration:/flag}",
        "missing={configuration:/missing}",
        "model={com.example.Model:artifacts:path}",
        "greeting={com.example.Model:configuration:/greeting}",
        "indirect={com.example.Indirect:artifacts:path}",
        "unknown={nothing:here}",
    ]
    script = "".join(f"echo '{line}'\n" for line in lines)
    nucleus.register(
        recipe(
            "com.example.Variables",
            lifecycle={"Run": script},
            defaults={"port": "8080", "nested": {"k": [1, 2]}, "flag": True},
            dependencies={"com.example.Model": {"VersionRequirement": "^2.0.0", "DependencyType": "HARD"}},
        )
    )
    nucleus.deploy(
        {"com.example.Variables": "1.0.0"},
        configuration={"com.example.Variables": {"merge": '{"port": "9999"}'}},
    )
    nucleus.wait_until_finished("com.example.Variables")
    root = nucleus.root
    assert output_lines(nucleus, "com.example.Variables") == [
        f"artifacts={root}/packages/artifacts/com.example.Variables/1.0.0",
        f"decompressed={root}/packages/artifacts-unarchived/com.example.Variables/1.0.0",
        f"work={root}/work/com.example.Variables",
        f"root={root}",
        f"thing={nucleus.thing_name}",
        "port=9999",
        'nested={"k":[1,2]}',
        "flag=true",
        "missing={configuration:/missing}",
        f"model={root}/packages/artifacts/com.example.Model/2.0.0",
        "greeting=hi",
        "indirect={com.example.Indirect:artifacts:path}",
        "unknown={nothing:here}",
    ]
    assert (root / "work" / "com.example.Variables").is_dir(), "{work:path} exists, with no version in it"
    log = nucleus.nucleus_log()
    assert "missing value node at '/missing'" in log
    assert "com.example.Indirect is not a direct dependency" in log


def test_configuration_defaults_merge_and_reset(nucleus: Nucleus) -> None:
    name = "com.example.Config"
    nucleus.register(recipe(name, "1.0.0", defaults={"a": "1", "b": "1", "deep": {"x": "1"}}))
    nucleus.register(
        recipe(name, "2.0.0", defaults={"a": "new", "b": "new", "c": "3", "deep": {"x": "2", "y": "2"}})
    )

    nucleus.deploy({name: "1.0.0"}, configuration={name: ConfigurationUpdate(merge={"b": "2"})})
    assert nucleus.configuration(name) == {"a": "1", "b": "2", "deep": {"x": "1"}}

    nucleus.deploy({name: "2.0.0"})
    assert nucleus.configuration(name) == {"a": "1", "b": "2", "c": "3", "deep": {"x": "1", "y": "2"}}, (
        "a new version's defaults never override what the device already holds"
    )
    nucleus.deploy({name: "2.0.0"}, configuration={name: {"reset": ["/a", "/deep"]}})
    assert nucleus.configuration(name) == {"a": "new", "b": "2", "c": "3", "deep": {"x": "2", "y": "2"}}
    nucleus.deploy({name: "2.0.0"}, configuration={name: {"reset": [""], "merge": {"c": "merged"}}})
    assert nucleus.configuration(name) == {
        "a": "new",
        "b": "new",
        "c": "merged",
        "deep": {"x": "2", "y": "2"},
    }


def test_setenv_layers_and_device_variables(nucleus: Nucleus) -> None:
    nucleus.nucleus_setenv.update({"LAYER": "nucleus", "N_ONLY": "n"})
    name = "com.example.Env"
    nucleus.register(
        recipe(
            name,
            lifecycle={
                "Setenv": {"LAYER": "lifecycle", "L_ONLY": "{iot:thingName}"},
                "Install": 'echo "install $LAYER $N_ONLY $L_ONLY"',
                "Run": {
                    "Script": 'echo "run $LAYER $N_ONLY $L_ONLY $S_ONLY"; echo "cwd $(pwd)"',
                    "Setenv": {"LAYER": "step", "S_ONLY": "s"},
                },
            },
        )
    )
    nucleus.deploy({name: "1.0.0"})
    nucleus.wait_until_finished(name)
    assert output_lines(nucleus, name) == [
        f"install lifecycle n {nucleus.thing_name}",
        f"run step n {nucleus.thing_name} s",
        f"cwd {nucleus.root}/work/{name}",
    ]


def test_no_credentials_and_no_ipc_socket_in_the_component_environment(
    nucleus: Nucleus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even when the process hosting the nucleus holds credentials, no component sees them.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "host-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "host-token")
    name = "com.example.DumpEnv"
    nucleus.register(recipe(name, lifecycle={"Run": "env > {work:path}/env.txt"}))
    nucleus.deploy({name: "1.0.0"})
    nucleus.wait_until_finished(name)
    dumped = (nucleus.root / "work" / name / "env.txt").read_text()
    environment = dict(line.split("=", 1) for line in dumped.splitlines() if "=" in line)
    for forbidden in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",  # only once TES runs
        "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
        "AWS_ENDPOINT_URL",
    ):
        assert forbidden not in environment, forbidden
    # The component's own token, as ShellRunner gives it: an identity, not a credential.
    assert environment["SVCUID"] == environment["AWS_CONTAINER_AUTHORIZATION_TOKEN"] == nucleus.token(name)
    assert "testing" not in dumped and "host-secret" not in dumped
    assert environment["AWS_REGION"] == environment["AWS_DEFAULT_REGION"] == "us-east-1"
    assert environment["AWS_IOT_THING_NAME"] == nucleus.thing_name
    assert Path(environment["GG_ROOT_CA_PATH"]).exists()
    assert environment["PATH"] == DEVICE_PATH
    assert environment["HOME"] == str(nucleus.home)


# --- the token exchange service ----------------------------------------------------------------------

TES_PROBE = """
import json, os, urllib.error, urllib.request

def ask(url, token=None, method="GET"):
    request = urllib.request.Request(url, method=method)
    if token is not None:
        request.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, None

uri = os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
token = os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
status, credentials = ask(uri, token)
print(uri)
print(status, sorted(credentials), credentials["AccessKeyId"])
print(ask(uri)[0], ask(uri, "not-a-token")[0], ask(uri + "other", token)[0], ask(uri, token, "POST")[0])
"""


def tes_dependent(nucleus: Nucleus, name: str) -> None:
    nucleus.work_path(name).mkdir(parents=True, exist_ok=True)
    (nucleus.work_path(name) / "probe.py").write_text(TES_PROBE)
    nucleus.register(
        recipe(
            name,
            lifecycle={"Run": "python3 {work:path}/probe.py"},
            dependencies={TOKEN_EXCHANGE_SERVICE: {"VersionRequirement": "^2.0.0", "DependencyType": "HARD"}},
        )
    )


def test_a_dependent_of_tes_gets_its_uri_and_credentials_with_its_own_token(nucleus: Nucleus) -> None:
    name = "com.example.UsesTes"
    tes_dependent(nucleus, name)
    result = nucleus.deploy({name: "1.0.0"})
    assert result.components == {name: "1.0.0", TOKEN_EXCHANGE_SERVICE: "2.0.3"}, "a public component"
    nucleus.wait_until_finished(name)
    assert nucleus.state(TOKEN_EXCHANGE_SERVICE) == RUNNING
    uri, credentials, refusals = output_lines(nucleus, name)
    port = nucleus.configuration(TOKEN_EXCHANGE_SERVICE)["activePort"]
    assert uri == f"http://localhost:{port}{TES_PATH}"
    keys = "['AccessKeyId', 'Expiration', 'SecretAccessKey', 'Token']"
    assert credentials == f"200 {keys} {nucleus.tes_credentials['AccessKeyId']}"
    assert refusals == "403 403 400 405", "no token, a wrong token, another path, another method"
    assert nucleus.tes_requests == [name], "only the request with the component's token was answered"
    assert nucleus.tes_credentials["SecretAccessKey"] not in nucleus.logs(name) + nucleus.nucleus_log()


def test_tes_without_a_role_alias_breaks_and_its_dependent_never_starts(
    tmp_path: Path, moto_endpoint: str
) -> None:
    with running_nucleus(tmp_path / "gg", moto_endpoint, iot_role_alias="") as nucleus:
        name = "com.example.NeedsTes"
        tes_dependent(nucleus, name)
        nucleus.deploy({name: "1.0.0"}, wait=False)
        assert nucleus.wait_for(TOKEN_EXCHANGE_SERVICE, (BROKEN, RUNNING), 30) == BROKEN
        assert nucleus.state(name) == "INSTALLED", "a HARD dependency that is not running holds it back"
        assert output_lines(nucleus, name) == []
        assert "iotRoleAlias" in nucleus.nucleus_log()


# --- lifecycle -----------------------------------------------------------------------------------------


def test_skipif(nucleus: Nucleus) -> None:
    name = "com.example.Skip"
    nucleus.register(
        recipe(
            name,
            lifecycle={
                "Install": {"Skipif": "onpath sh", "Script": "echo install-ran"},
                "Run": {"Skipif": "! exists {work:path}/never-there", "Script": "echo run-ran"},
            },
        )
    )
    nucleus.deploy({name: "1.0.0"})
    # A skipped Run leaves the component RUNNING with no process, as the Java nucleus does.
    assert nucleus.state(name) == RUNNING
    assert output_lines(nucleus, name) == []

    other = "com.example.NoSkip"
    nucleus.register(
        recipe(
            other,
            lifecycle={
                "Install": {"Skipif": "onpath no-such-command-anywhere", "Script": "echo install-ran"},
                "Run": {"Skipif": "!onpath sh", "Script": "echo run-ran"},
            },
        )
    )
    nucleus.deploy({name: "1.0.0", other: "1.0.0"})
    nucleus.wait_until_finished(other)
    assert output_lines(nucleus, other) == ["install-ran", "run-ran"]

    invalid = "com.example.BadSkip"
    nucleus.register(recipe(invalid, lifecycle={"Install": {"Skipif": "sometimes x", "Script": "true"}}))
    result = nucleus.deploy({name: "1.0.0", other: "1.0.0", invalid: "1.0.0"})
    assert result.status == "FAILED" and nucleus.state(invalid) == BROKEN


def test_install_timeout_errors_then_breaks(nucleus: Nucleus) -> None:
    name = "com.example.SlowInstall"
    nucleus.register(
        recipe(name, lifecycle={"Install": {"Script": "sleep 30", "Timeout": 1}, "Run": "echo ran"})
    )
    started = time.monotonic()
    result = nucleus.deploy({name: "1.0.0"}, timeout=30)
    assert result.status == "FAILED"
    assert nucleus.history(name) == [NEW, ERRORED, NEW, ERRORED, NEW, BROKEN]
    assert time.monotonic() - started < 10
    assert [end.how for end in nucleus.process_ends(name)] == ["SIGTERM"] * 3
    assert "ran" not in output_lines(nucleus, name)


def test_run_exit_codes(nucleus: Nucleus) -> None:
    nucleus.register(recipe("com.example.Ok", lifecycle={"Run": "exit 0"}))
    nucleus.register(recipe("com.example.Fails", lifecycle={"Run": "echo attempt; exit 3"}))
    nucleus.register(recipe("com.example.Nothing"))
    nucleus.deploy({"com.example.Ok": "1.0.0", "com.example.Fails": "1.0.0", "com.example.Nothing": "1.0.0"})

    nucleus.wait_until_finished("com.example.Ok")
    assert nucleus.process_ends("com.example.Ok")[0].exit_code == 0
    assert nucleus.history("com.example.Nothing")[-1] == FINISHED
    assert RUNNING not in nucleus.history("com.example.Nothing"), "no Run: straight to FINISHED"

    assert nucleus.wait_for("com.example.Fails", [BROKEN], 30) == BROKEN
    history = nucleus.history("com.example.Fails")
    assert history.count(ERRORED) == 2 and history.count(RUNNING) == 3, history
    assert [end.exit_code for end in nucleus.process_ends("com.example.Fails")] == [3, 3, 3]
    assert output_lines(nucleus, "com.example.Fails") == ["attempt"] * 3


def test_hard_dependency_is_ready_before_the_dependent_starts(nucleus: Nucleus) -> None:
    nucleus.register(recipe("com.example.Base", lifecycle={"Install": "sleep 1; touch installed"}))
    nucleus.register(
        recipe(
            "com.example.Dependent",
            lifecycle={"Run": "test -f {com.example.Base:work:path}/installed && echo base-was-ready"},
            dependencies={"com.example.Base": {"VersionRequirement": "=1.0.0", "DependencyType": "HARD"}},
        )
    )
    nucleus.deploy({"com.example.Dependent": "1.0.0"})
    nucleus.wait_until_finished("com.example.Dependent")
    assert output_lines(nucleus, "com.example.Dependent") == ["base-was-ready"]


def test_stop_sigterm_then_sigkill_after_5_seconds(nucleus: Nucleus) -> None:
    nucleus.register(
        recipe("com.example.Polite", lifecycle={"Run": "trap 'exit 0' TERM; while :; do sleep 0.1; done"})
    )
    nucleus.register(
        recipe("com.example.Stubborn", lifecycle={"Run": "trap '' TERM; while :; do sleep 0.1; done"})
    )
    nucleus.deploy({"com.example.Polite": "1.0.0", "com.example.Stubborn": "1.0.0"})
    time.sleep(0.3)  # let the shells install their traps
    started = time.monotonic()
    nucleus.stop_all()
    elapsed = time.monotonic() - started

    polite = nucleus.process_ends("com.example.Polite")[-1]
    assert (polite.how, polite.exit_code) == ("SIGTERM", 0)
    stubborn = nucleus.process_ends("com.example.Stubborn")[-1]
    assert stubborn.how == "SIGKILL" and stubborn.exit_code == -9
    assert stubborn.seconds_after_signal is not None and 4.9 <= stubborn.seconds_after_signal < 7
    assert elapsed < 8
    assert nucleus.history("com.example.Stubborn")[-2:] == [STOPPING, FINISHED]


def test_lifecycle_changes_restart_and_configuration_changes_do_not(nucleus: Nucleus) -> None:
    name = "com.example.Restarts"
    run = "echo run {configuration:/port}; while :; do sleep 0.1; done"
    nucleus.register(
        recipe(name, "1.0.0", lifecycle={"Install": "echo install", "Run": run}, defaults={"port": "1"})
    )
    nucleus.register(
        recipe(name, "1.1.0", lifecycle={"Install": "echo install", "Run": run}, defaults={"port": "1"})
    )
    nucleus.deploy({name: "1.0.0"})
    wait_for_output(nucleus, name, ["install", "run 1"])
    nucleus.deploy({name: "1.0.0"}, configuration={name: {"merge": {"unrelated": "x"}}})
    time.sleep(0.3)
    assert output_lines(nucleus, name) == ["install", "run 1"], "configuration only: no restart"

    nucleus.deploy({name: "1.0.0"}, configuration={name: {"merge": {"port": "2"}}})
    wait_for_output(nucleus, name, ["install", "run 1", "run 2"])  # interpolated Run changed: restart

    nucleus.deploy({name: "1.1.0"})
    wait_for_output(
        nucleus, name, ["install", "run 1", "run 2", "install", "run 2"]
    )  # new version: reinstall
    assert nucleus.state(name) == RUNNING
    assert [end.how for end in nucleus.process_ends(name) if end.step == "Run"] == ["SIGTERM", "SIGTERM"]


def test_removed_component_is_stopped(nucleus: Nucleus) -> None:
    forever = {"Run": "while :; do sleep 0.1; done"}
    nucleus.register(recipe("com.example.Keep", lifecycle=forever))
    nucleus.register(recipe("com.example.Drop", lifecycle=forever))
    nucleus.deploy({"com.example.Keep": "1.0.0", "com.example.Drop": "1.0.0"})
    dropped = nucleus.services["com.example.Drop"]
    nucleus.deploy({"com.example.Keep": "1.0.0"})
    assert nucleus.state("com.example.Drop") is None
    assert dropped.state == FINISHED and dropped.process_ends[-1].how == "SIGTERM"
    assert nucleus.state("com.example.Keep") == RUNNING


def test_offline_restart_from_the_local_store(tmp_path: Path) -> None:
    server, endpoint = start_moto()  # its own S3, so stopping it disturbs no other test
    stopped = False
    try:
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket="offline")
        uri = upload(s3, "offline", "a/payload.bin", b"payload")
        with running_nucleus(tmp_path / "gg", endpoint) as nucleus:
            name = "com.example.Offline"
            nucleus.register(
                recipe(
                    name,
                    artifacts=[{"Uri": uri}],
                    lifecycle={
                        "Install": "echo install",
                        "Run": "cat {artifacts:path}/payload.bin; echo; while :; do sleep 0.1; done",
                    },
                )
            )
            nucleus.deploy({name: "1.0.0"})
            server.stop()
            stopped = True
            nucleus.s3_calls.clear()

            states = nucleus.restart_nucleus()
            assert states == {name: RUNNING}
            nucleus.deploy({name: "1.0.0"}, configuration={name: {"merge": {"x": "1"}}})
            assert nucleus.s3_calls == [], "offline: the local store is enough"
            wait_for_output(nucleus, name, ["install", "payload", "install", "payload"])

            (nucleus.root / "packages/artifacts" / name / "1.0.0" / "payload.bin").write_bytes(b"corrupt")
            with pytest.raises(DeploymentError, match="S3_DOWNLOAD_FAILED"):
                nucleus.deploy({name: "1.0.0"})
    finally:
        if not stopped:
            server.stop()
