"""Signed manifests end to end on the cloud path: push --sign with a KMS key (moto), then the real Lambda
entry (inference.app) over an S3 store with MODELSHIP_TRUSTED_KEYS, fed API Gateway events in-process."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import orjson
import pytest
from modelship.core.repository import ModelRepository, manifest_key, model_key, signature_key
from modelship.core.signing import TrustedKeysError, sign_with_kms
from modelship.doors.local_http import LocalLambdaContext
from moto import mock_aws
from moto.server import ThreadedMotoServer

from tests.support.events import load_event
from tests.support.models import identity_model, write_model
from tests.support.processes import free_port, run_modelship, running_server

BUCKET = "modelship-models"
PREFIX = "prod"
INFER = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
).decode()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield s3, boto3.client("kms", region_name="us-east-1")


def signing_key(kms: Any) -> str:
    arn: str = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    return arn


def push(tmp_path: Path, name: str, kms: Any = None, key: str | None = None) -> None:
    repository = ModelRepository.open(f"s3://{BUCKET}/{PREFIX}")
    signer = None
    if key is not None:

        def signer(manifest: bytes) -> bytes:
            return sign_with_kms(kms, key, manifest).dumps()

    repository.push(write_model(tmp_path, name, identity_model("FP32")), name, signer=signer)


def import_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, trusted_keys: str) -> ModuleType:
    monkeypatch.setenv("MODELSHIP_STORE", f"s3://{BUCKET}/{PREFIX}")
    monkeypatch.setenv("MODELSHIP_TRUSTED_KEYS", trusted_keys)
    monkeypatch.setenv("MODELSHIP_PRELOAD", "")
    monkeypatch.setenv("MODELSHIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", f"modelship-test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ModelshipTest")
    sys.modules.pop("inference.app", None)
    return importlib.import_module("inference.app")


@pytest.fixture
def unload_app() -> Iterator[None]:
    yield
    sys.modules.pop("inference.app", None)


def infer(app: ModuleType, model: str) -> tuple[int, dict[str, Any]]:
    event = load_event("infer_json.json")
    event["path"] = f"/v2/models/{model}/infer"
    event["body"] = INFER
    result = app.handler(event, LocalLambdaContext())
    return result["statusCode"], orjson.loads(result["body"])


def test_only_versions_signed_by_a_trusted_key_are_served(
    aws: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unload_app: None
) -> None:
    s3, kms = aws
    trusted, untrusted = signing_key(kms), signing_key(kms)
    push(tmp_path, "signed", kms, trusted)
    push(tmp_path, "unsigned")
    push(tmp_path, "foreign", kms, untrusted)
    push(tmp_path, "tampered", kms, trusted)
    # Someone with write access to the bucket but not to the key rewrites a manifest (and its model).
    key = f"{PREFIX}/{manifest_key('tampered', 1)}"
    manifest = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=key, Body=manifest.replace(b'"created"', b'"created" ', 1))
    assert s3.head_object(Bucket=BUCKET, Key=f"{PREFIX}/{signature_key('signed', 1)}")["ContentLength"] > 0

    app = import_app(monkeypatch, tmp_path, trusted)
    fetched: list[str] = []
    client = app.service.lifecycle.repository.blobs.client
    client.meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: fetched.append(params["Key"])
    )

    assert infer(app, "signed")[0] == 200
    status, body = infer(app, "unsigned")
    assert status == 503
    assert body["error"].startswith("unsigned version 1 is unsigned")
    status, body = infer(app, "foreign")
    assert (status, body["error"][:45]) == (503, "foreign version 1 is signed by an untrusted k")
    status, body = infer(app, "tampered")
    assert (status, body["error"]) == (
        503,
        "tampered version 1: the signature does not match its manifest; refusing it",
    )
    # The refused versions' model files were never read: the signature is checked before any model byte.
    refused_models = {f"{PREFIX}/{model_key(name, 1)}" for name in ("unsigned", "foreign", "tampered")}
    assert f"{PREFIX}/{model_key('signed', 1)}" in fetched
    assert refused_models.isdisjoint(fetched)
    # The server is up, and still serves what it may.
    assert infer(app, "signed")[0] == 200
    live = app.handler(
        {**load_event("infer_json.json"), "path": "/v2/health/live", "httpMethod": "GET", "body": None},
        LocalLambdaContext(),
    )
    assert live["statusCode"] == 200


def test_a_newer_unsigned_version_does_not_replace_the_signed_one_being_served(
    aws: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unload_app: None
) -> None:
    _, kms = aws
    trusted = signing_key(kms)
    push(tmp_path, "m", kms, trusted)
    app = import_app(monkeypatch, tmp_path, trusted)
    assert infer(app, "m")[1]["model_version"] == "1"
    push(tmp_path, "m")  # version 2, unsigned
    app.service.lifecycle.unload("m")  # forget the listing: version 2 is now the latest
    status, body = infer(app, "m")
    assert status == 503 and "m version 2 is unsigned" in body["error"]
    event = load_event("infer_json.json")
    event["path"] = "/v2/models/m/versions/1/infer"
    event["body"] = INFER
    assert app.handler(event, LocalLambdaContext())["statusCode"] == 200


def test_trusted_keys_that_cannot_be_resolved_fail_the_start(
    aws: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unload_app: None
) -> None:
    with pytest.raises(TrustedKeysError, match="MODELSHIP_TRUSTED_KEYS: kms:GetPublicKey on alias/gone"):
        import_app(monkeypatch, tmp_path, "alias/gone")
    with pytest.raises(TrustedKeysError, match="cannot read"):
        import_app(monkeypatch, tmp_path, str(tmp_path / "missing.pem"))


@pytest.fixture
def moto_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_cli_push_sign_then_serve_only_signed_versions(moto_server: str, tmp_path: Path) -> None:
    """As a user runs it: push --sign with a KMS key over HTTP (AWS_ENDPOINT_URL), then modelship serve
    with MODELSHIP_TRUSTED_KEYS naming the key's alias."""
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    session.client("s3", endpoint_url=moto_server).create_bucket(Bucket="cli-bucket")
    kms = session.client("kms", endpoint_url=moto_server)
    arn = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/modelship-signing", TargetKeyId=arn)
    store = "s3://cli-bucket/team-a"
    model = write_model(tmp_path, "m", identity_model("FP32"))

    def push(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_modelship(
            "push", str(model), "--name", "m", "--store", store, *extra, env=env, timeout=120
        )

    assert push().returncode == 0  # version 1, unsigned
    signed = push("--sign", "alias/modelship-signing")
    assert signed.returncode == 0, signed.stderr
    assert "holds this model unsigned: pushing a signed version" in signed.stderr
    assert json.loads(signed.stdout)["version"] == 2
    again = push("--sign", "alias/modelship-signing")
    assert "nothing pushed" in again.stderr  # version 2 is signed and holds the same bytes
    refused = push("--sign", "alias/missing", "--force")
    assert refused.returncode != 0
    assert "cannot sign the manifest: kms:GetPublicKey on alias/missing: NotFoundException" in refused.stderr

    serving = {**env, "MODELSHIP_TRUSTED_KEYS": "alias/modelship-signing"}
    with running_server(["--store", store, "--preload", "m:2"], tmp_path, env=serving) as server:
        for version, expected in ((2, 200), (1, 503)):
            request = urllib.request.Request(
                f"{server.url}/v2/models/m/versions/{version}/infer", data=INFER.encode(), method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status = response.status
            except urllib.error.HTTPError as error:
                status = error.code
                assert "m version 1 is unsigned" in json.loads(error.read())["error"]
            assert status == expected
