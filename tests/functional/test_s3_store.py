"""The S3 model store against moto: in-process (mock_aws) for the store's semantics, and a real
HTTP S3 (ThreadedMotoServer) for the command line and the server, as users run them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import orjson
import pytest
from modelship.core.blobs import S3BlobStore
from modelship.core.errors import Conflict, IntegrityError
from modelship.core.repository import ModelRepository
from modelship.core.service import InferenceService
from modelship.core.settings import Settings
from moto import mock_aws
from moto.server import ThreadedMotoServer

from tests.support.clock import FakeClock
from tests.support.models import identity_model, write_model
from tests.support.processes import free_port, run_modelship, running_server

BUCKET = "modelship-models"
INFER = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
)


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[object]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def repository(s3: object, tmp_path: Path) -> ModelRepository:
    return ModelRepository.open(f"s3://{BUCKET}/prod", cache_dir=tmp_path / "cache")


def test_push_list_and_layout(s3: object, repository: ModelRepository, tmp_path: Path) -> None:
    path = write_model(tmp_path, "m", identity_model("FP32"))
    assert repository.push(path, "m").version == 1
    assert repository.push(path, "m").version == 2
    keys = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"])  # type: ignore[attr-defined]
    assert keys == [
        "prod/models/m/1/manifest.json",
        "prod/models/m/1/model.onnx",
        "prod/models/m/2/manifest.json",
        "prod/models/m/2/model.onnx",
    ]
    assert repository.list_models() == {"m": [1, 2]}
    with pytest.raises(Conflict):
        repository.push(path, "m", version=2)


def test_metadata_within_the_version_poll_window_makes_no_s3_call(s3: object, tmp_path: Path) -> None:
    """`modelship infer` reads metadata before every request: it must not list the bucket each time."""
    client = boto3.client("s3", region_name="us-east-1")
    calls: list[str] = []
    client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    repository = ModelRepository(S3BlobStore(BUCKET, "prod", client), cache_dir=tmp_path / "cache")
    repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m")
    clock = FakeClock()
    settings = Settings(store_uri=repository.uri, version_poll_seconds=60)
    service = InferenceService(repository, settings, clock=clock)
    calls.clear()

    first = service.handle("GET", "/v2/models/m", {}, b"")
    assert first.status == 200 and orjson.loads(first.body)["versions"] == ["1"]
    assert calls.count("ListObjectsV2") == 1, calls
    calls.clear()
    clock.advance(59)
    for method, path, body in [
        ("GET", "/v2/models/m", b""),
        ("GET", "/v2/models/m/versions/1", b""),
        ("GET", "/v2/models/m/ready", b""),
        ("POST", "/v2/models/m/infer", INFER),
    ]:
        assert service.handle(method, path, {}, body).status == 200, path
    assert calls == [], "no S3 call within the version-poll window"

    clock.advance(1)
    assert service.handle("GET", "/v2/models/m", {}, b"").status == 200
    assert calls == ["ListObjectsV2"], "listed again once the window has passed"


def test_conditional_write_refuses_a_racing_manifest(s3: object, repository: ModelRepository) -> None:
    blobs = repository.blobs
    assert isinstance(blobs, S3BlobStore)
    blobs.write("models/m/1/manifest.json", b"{}", exclusive=True)
    with pytest.raises(Conflict):
        blobs.write("models/m/1/manifest.json", b"{}", exclusive=True)


def test_serves_from_s3_and_caches_by_sha256(s3: object, repository: ModelRepository, tmp_path: Path) -> None:
    manifest = repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m")
    service = InferenceService(repository, Settings(store_uri=repository.uri))
    response = service.handle("POST", "/v2/models/m/infer", {}, INFER)
    assert response.status == 200
    assert orjson.loads(response.body)["outputs"][0]["data"] == [1.0, 2.0, 3.0]
    assert (tmp_path / "cache" / f"{manifest.sha256}.onnx").exists()


def test_corrupted_object_fails_closed_and_warm_keeps_serving(
    s3: object, repository: ModelRepository, tmp_path: Path
) -> None:
    repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m")
    warm = InferenceService(repository, Settings(store_uri=repository.uri))
    assert warm.handle("POST", "/v2/models/m/infer", {}, INFER).status == 200

    data = identity_model("FP32")
    s3.put_object(Bucket=BUCKET, Key="prod/models/m/1/model.onnx", Body=data[:-1] + b"\x00")  # type: ignore[attr-defined]
    for cached in (tmp_path / "cache").iterdir():
        cached.unlink()

    cold = InferenceService(repository, Settings(store_uri=repository.uri))
    response = cold.handle("POST", "/v2/models/m/infer", {}, INFER)
    assert response.status == 503
    assert "sha256" in orjson.loads(response.body)["error"]
    with pytest.raises(IntegrityError):
        repository.fetch_verified(repository.read_manifest("m", 1))

    s3.delete_object(Bucket=BUCKET, Key="prod/models/m/1/model.onnx")  # type: ignore[attr-defined]
    assert warm.handle("POST", "/v2/models/m/infer", {}, INFER).status == 200
    another_cold = InferenceService(repository, Settings(store_uri=repository.uri))
    missing = another_cold.handle("POST", "/v2/models/m/infer", {}, INFER)
    assert missing.status == 503
    assert "missing" in orjson.loads(missing.body)["error"]


def test_store_outage_is_503(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 9 of loopback: connection refused, retried, then a clear 503.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    repository = ModelRepository.open("s3://nowhere/prefix")
    service = InferenceService(repository, Settings(store_uri=repository.uri))
    response = service.handle("POST", "/v2/models/m/infer", {}, INFER)
    assert response.status == 503
    assert "cannot list versions" in orjson.loads(response.body)["error"]


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def moto_env(endpoint: str) -> dict[str, str]:
    """The environment a user's shell would have: an endpoint and credentials, nothing in-process."""
    return {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_cli_push_list_and_serve_over_real_s3(moto_server: str, tmp_path: Path) -> None:
    env = moto_env(moto_server)
    boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="cli-bucket")
    model = write_model(tmp_path, "identity", identity_model("FP64"))
    labels = tmp_path / "labels.txt"
    labels.write_text("first\nsecond\nthird\n")
    store = "s3://cli-bucket/team-a"
    pushed = run_modelship(
        "push",
        str(model),
        "--name",
        "identity",
        "--store",
        store,
        "--labels",
        str(labels),
        env=env,
        timeout=120,
        check=True,
    )
    manifest = json.loads(pushed.stdout)
    assert manifest["name"] == "identity" and manifest["version"] == 1
    assert manifest["labels"] == ["first", "second", "third"]
    listed = run_modelship("list", "--store", store, "--json", env=env, timeout=60, check=True)
    assert json.loads(listed.stdout) == {"identity": [1]}

    with running_server(["--store", store, "--preload", "identity"], tmp_path, env=env) as server:
        inferred = run_modelship(
            "infer",
            "--url",
            server.url,
            "--model",
            "identity",
            "--input",
            "x=[[1.5,2.5,3.5]]",
            "--binary",
            env=env,
            timeout=60,
            check=True,
        )
    output = json.loads(inferred.stdout)["outputs"][0]
    np.testing.assert_array_equal(output["data"], [1.5, 2.5, 3.5])
    assert output["datatype"] == "FP64"


def test_push_rejects_bad_name_without_touching_s3(moto_server: str, tmp_path: Path) -> None:
    env = moto_env(moto_server)
    completed = run_modelship(
        "push",
        str(tmp_path / "x.onnx"),
        "--name",
        "../../etc",
        "--store",
        "s3://cli-bucket",
        env=env,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "invalid model name" in completed.stderr


def test_cli_reports_s3_failures_without_a_traceback(tmp_path: Path) -> None:
    # Nothing listens on port 9 of loopback: the store cannot be reached.
    env = moto_env("http://127.0.0.1:9")
    completed = run_modelship("list", "--store", "s3://unreachable", env=env, timeout=120)
    assert completed.returncode == 1
    assert completed.stderr.startswith("error: S3: Could not connect")
    assert "Traceback" not in completed.stderr
