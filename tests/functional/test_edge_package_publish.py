"""``modelship edge package`` and ``edge publish`` as a user runs them, against a real S3 API (moto's
server on 127.0.0.1)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from tests.support.processes import free_port, run_modelship

BUCKET = "edge-models"
STORE = f"s3://{BUCKET}/fleet"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def env(moto_endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="module")
def s3(moto_endpoint: str, env: dict[str, str]) -> object:
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def pushed(s3: object, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    exported = tmp_path_factory.mktemp("iris")
    run_modelship("export-default", str(exported), env=env, check=True)
    for _ in range(2):
        run_modelship(
            "push",
            str(exported / "iris.onnx"),
            "--name",
            "iris",
            "--labels",
            str(exported / "iris.labels.json"),
            "--store",
            STORE,
            "--force",  # the same bytes again: a second version all the same
            env=env,
            check=True,
        )
    return exported


def _digest(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _package(env: dict[str, str], out: Path, *models: str) -> tuple[int, str, str]:
    arguments = ["edge", "package", "--store", STORE, "--out", str(out)]
    for model in models:
        arguments += ["--model", model]
    completed = run_modelship(*arguments, env=env)
    return completed.returncode, completed.stdout, completed.stderr


def test_package_writes_recipes_and_the_zip_with_progress_and_a_summary(
    pushed: Path, env: dict[str, str], tmp_path: Path, s3: object
) -> None:
    status, stdout, stderr = _package(env, tmp_path / "pkg", "iris:1")
    assert status == 0, stderr
    assert "reading the manifest of iris version 1" in stderr
    recipes = sorted(path.name for path in (tmp_path / "pkg" / "recipes").iterdir())
    assert recipes[0] == "com.modelship.Inference-" + recipes[0].split("-", 1)[1]
    assert recipes[1] == "com.modelship.model.iris-1.0.0.yaml"
    inference = yaml.safe_load((tmp_path / "pkg" / "recipes" / recipes[0]).read_text())
    version = inference["ComponentVersion"]
    zip_path = tmp_path / "pkg" / "artifacts" / "com.modelship.Inference" / version / "modelship-edge.zip"
    assert inference["Manifests"][0]["Artifacts"][0]["Digest"] == _digest(zip_path.read_bytes())
    # The model component's digests are those of the store's own objects, byte for byte.
    model = yaml.safe_load((tmp_path / "pkg" / "recipes" / recipes[1]).read_text())
    for artifact in model["Manifests"][0]["Artifacts"]:
        key = artifact["Uri"].removeprefix(f"s3://{BUCKET}/")
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
        assert artifact["Digest"] == _digest(body)
    assert "COMPONENT" in stdout and "com.modelship.model.iris" in stdout and version in stdout
    assert list((tmp_path / "pkg" / "artifacts").iterdir()) == [
        tmp_path / "pkg" / "artifacts" / "com.modelship.Inference"
    ]


def test_packaging_twice_gives_byte_identical_files(
    pushed: Path, env: dict[str, str], tmp_path: Path
) -> None:
    for out in ("first", "second"):
        assert _package(env, tmp_path / out, "iris:1")[0] == 0

    def files(root: Path) -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }

    assert files(tmp_path / "first") == files(tmp_path / "second")
    # Packaging again into the same folder replaces it with the same bytes.
    assert _package(env, tmp_path / "first", "iris:1")[0] == 0
    assert files(tmp_path / "first") == files(tmp_path / "second")


def test_a_new_model_version_gives_a_new_inference_version(
    pushed: Path, env: dict[str, str], tmp_path: Path
) -> None:
    assert _package(env, tmp_path / "v1", "iris:1")[0] == 0
    assert _package(env, tmp_path / "latest", "iris")[0] == 0
    v1 = {p.name for p in (tmp_path / "v1" / "recipes").iterdir()}
    latest = {p.name for p in (tmp_path / "latest" / "recipes").iterdir()}
    assert "com.modelship.model.iris-2.0.0.yaml" in latest
    assert not v1 & latest


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(
            ["--store", "file:///tmp/store", "--model", "iris"], "must be an s3:// store", id="local-store"
        ),
        pytest.param(["--store", STORE, "--model", "nosuch"], "not in the store", id="unknown-model"),
        pytest.param(["--store", STORE, "--model", "iris:9"], "not in", id="unknown-version"),
        pytest.param(["--store", STORE, "--model", "iris", "--model", "iris:1"], "given twice", id="twice"),
        pytest.param(["--store", STORE, "--model", "../x"], "model name", id="bad-name"),
        pytest.param(
            ["--store", STORE, "--model", "iris", "--component-version", "1.2"],
            "MAJOR.MINOR.PATCH",
            id="version",
        ),
    ],
)
def test_package_refuses_bad_input_with_a_clear_error(
    pushed: Path, env: dict[str, str], tmp_path: Path, arguments: list[str], message: str
) -> None:
    completed = run_modelship("edge", "package", *arguments, "--out", str(tmp_path / "out"), env=env)
    assert completed.returncode != 0
    assert message in completed.stderr, completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "out").exists()


def test_package_refuses_a_folder_that_holds_other_files(
    pushed: Path, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    status, _, stderr = _package(env, tmp_path, "iris:1")
    assert status != 0 and "holds other files" in stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_publish_uploads_verifies_and_never_overwrites(
    pushed: Path, env: dict[str, str], tmp_path: Path, s3: object
) -> None:
    package = tmp_path / "pkg"
    assert _package(env, package, "iris:1")[0] == 0
    completed = run_modelship("edge", "publish", "--store", STORE, "--from", str(package), env=env)
    assert completed.returncode == 0, completed.stderr
    assert "1 uploaded" in completed.stdout and "2 model objects verified" in completed.stdout
    (zip_path,) = (package / "artifacts").rglob("modelship-edge.zip")
    key = "fleet/components/" + zip_path.relative_to(package / "artifacts").as_posix()
    stored = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
    assert stored == zip_path.read_bytes()

    again = run_modelship("edge", "publish", "--store", STORE, "--from", str(package), env=env)
    assert again.returncode == 0 and "1 already there with the same bytes" in again.stdout

    # Someone overwrote the published artifact: publishing refuses to overwrite it back, or to pretend.
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"other bytes")  # type: ignore[attr-defined]
    conflict = run_modelship("edge", "publish", "--store", STORE, "--from", str(package), env=env)
    assert conflict.returncode != 0 and "already exists with other bytes" in conflict.stderr
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"other bytes"  # type: ignore[attr-defined]


def test_publish_refuses_a_changed_package_or_another_store(
    pushed: Path, env: dict[str, str], tmp_path: Path
) -> None:
    package = tmp_path / "pkg"
    assert _package(env, package, "iris:1")[0] == 0
    other_store = run_modelship(
        "edge", "publish", "--store", f"s3://{BUCKET}/other", "--from", str(package), env=env
    )
    assert other_store.returncode != 0 and "was packaged for" in other_store.stderr
    (zip_path,) = (package / "artifacts").rglob("modelship-edge.zip")
    zip_path.write_bytes(zip_path.read_bytes() + b"\0")
    changed = run_modelship("edge", "publish", "--store", STORE, "--from", str(package), env=env)
    assert changed.returncode != 0 and "does not match the digest" in changed.stderr
    missing = run_modelship("edge", "publish", "--store", STORE, "--from", str(tmp_path / "nothing"), env=env)
    assert missing.returncode != 0 and "run `modelship edge package` first" in missing.stderr


def test_publish_refuses_a_model_object_changed_after_packaging(
    pushed: Path, env: dict[str, str], tmp_path: Path, s3: object
) -> None:
    package = tmp_path / "pkg"
    assert _package(env, package, "iris:2")[0] == 0
    key = "fleet/models/iris/2/manifest.json"
    original = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
    s3.put_object(Bucket=BUCKET, Key=key, Body=original + b" ")  # type: ignore[attr-defined]
    try:
        completed = run_modelship("edge", "publish", "--store", STORE, "--from", str(package), env=env)
        assert completed.returncode != 0
        assert "changed after packaging" in completed.stderr
    finally:
        s3.put_object(Bucket=BUCKET, Key=key, Body=original)  # type: ignore[attr-defined]


def test_package_cloud_options_set_the_recipe_defaults_and_sigv4_depends_on_token_exchange(
    pushed: Path, env: dict[str, str], tmp_path: Path
) -> None:
    endpoint = "https://abc123.execute-api.eu-west-1.amazonaws.com/prod"
    cloud = ["--cloud-endpoint", endpoint, "--cloud-auth", "sigv4", "--cloud-only", "big,huge"]
    completed = run_modelship(
        "edge",
        "package",
        "--store",
        STORE,
        "--out",
        str(tmp_path / "pkg"),
        "--model",
        "iris:1",
        *cloud,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr
    recipe_path = next((tmp_path / "pkg" / "recipes").glob("com.modelship.Inference-*"))
    recipe = yaml.safe_load(recipe_path.read_text())
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert (defaults["cloudEndpoint"], defaults["cloudAuth"], defaults["cloudOnlyModels"]) == (
        endpoint,
        "sigv4",
        "big,huge",
    )
    assert "aws.greengrass.TokenExchangeService" in recipe["ComponentDependencies"]
    # Plain http to another host is refused by the recipe's own validation, with the key's name.
    refused = run_modelship(
        "edge",
        "package",
        "--store",
        STORE,
        "--out",
        str(tmp_path / "bad"),
        "--model",
        "iris:1",
        "--cloud-endpoint",
        "http://example.com",
        env=env,
    )
    assert refused.returncode != 0 and "cloudEndpoint" in refused.stderr and "Traceback" not in refused.stderr
