"""Signed manifests on a device: the component's trustedKeys (a PEM public key, offline) and models
pushed with ``modelship push --sign`` (a KMS key in moto), deployed to the simulated nucleus.

One device, as one story: a signed model is served and an unsigned one refused (503, the door up, the
signed one still served); a manifest tampered on the device is refused after a restart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from tests.edge.conftest import REGION, s3_client, start_moto
from tests.edge.nucleus import RUNNING, Nucleus
from tests.edge.test_component import (
    INFERENCE,
    INSTALL_TIMEOUT,
    Device,
    modelship,
    package_and_publish,
    request,
    wait_for_http,
)
from tests.support.models import identity_model, write_model
from tests.support.oip import json_request
from tests.support.processes import free_port

pytestmark = [pytest.mark.network, pytest.mark.timeout(1800)]

BUCKET = "edge-fleet-store"
STORE = f"s3://{BUCKET}/fleet"
SAMPLES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
IRIS_BODY = json_request({"input": (SAMPLES, "FP32")})
IDENTITY_BODY = json_request({"x": (SAMPLES[:, :3], "FP32")})


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    """iris pushed with --sign, identity without; the component deployed with the key's PEM as its
    trustedKeys. The nucleus never talks to KMS: the device holds only the public key."""
    workdir = tmp_path_factory.mktemp("edge-signed")
    server, endpoint = start_moto()
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "operator-testing",
        "AWS_SECRET_ACCESS_KEY": "operator-testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    env.pop("AWS_PROFILE", None)
    env.pop("MODELSHIP_STORE", None)
    env.pop("MODELSHIP_TRUSTED_KEYS", None)
    s3 = s3_client(endpoint)
    s3.create_bucket(Bucket=BUCKET)
    # moto keeps its state per process, not per server: another module's store (test_component pushes
    # iris twice into the same bucket) would make the iris pushed here version 3 instead of 1.
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    kms = boto3.client(
        "kms",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="operator-testing",
        aws_secret_access_key="operator-testing",
    )
    key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    public_key = serialization.load_der_public_key(kms.get_public_key(KeyId=key)["PublicKey"])
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    nucleus = Nucleus(
        workdir / "greengrass" / "v2",
        endpoint,
        region=REGION,
        access_key="device-testing",
        secret_key="device-testing",
    )
    device = Device(nucleus, server, endpoint, env, free_port(), workdir)
    try:
        modelship(device, "export-default", str(workdir / "default"))
        modelship(
            device,
            "push",
            str(workdir / "default" / "iris.onnx"),
            "--name",
            "iris",
            "--labels",
            str(workdir / "default" / "iris.labels.json"),
            "--store",
            STORE,
            "--sign",
            key,
        )
        identity = write_model(workdir, "identity", identity_model("FP32"))
        modelship(device, "push", str(identity), "--name", "identity", "--store", STORE)
        device.inference_version = package_and_publish(device, workdir / "package", ["iris", "identity"])
        result = nucleus.deploy(
            {INFERENCE: device.inference_version},
            configuration={INFERENCE: {"merge": {"port": str(device.port), "trustedKeys": pem}}},
            timeout=INSTALL_TIMEOUT,
        )
        assert result.status == "SUCCEEDED", (result, nucleus.logs(INFERENCE)[-6000:])
        wait_for_http(device.url, "/v2/health/live", 120, nucleus)
        yield device
    finally:
        nucleus.stop_all()
        server.stop()


def iris_artifacts(nucleus: Nucleus) -> Path:
    return nucleus.root / "packages" / "artifacts" / "com.modelship.model.iris" / "1.0.0"


def test_a_signed_model_is_served_and_an_unsigned_one_refused(device: Device) -> None:
    nucleus = device.nucleus
    assert sorted(path.name for path in iris_artifacts(nucleus).iterdir()) == [
        "manifest.json",
        "manifest.sig.json",
        "model.onnx",
    ], "the signature is a model component artifact, verified against its digest by the nucleus"
    answer = request(device.url, "POST", "/v2/models/iris/infer", IRIS_BODY)
    assert answer.status == 200, answer.body
    refused = request(device.url, "POST", "/v2/models/identity/infer", IDENTITY_BODY)
    assert refused.status == 503
    assert refused.json()["error"].startswith("identity version 1 is unsigned")
    assert request(device.url, "POST", "/v2/models/iris/infer", IRIS_BODY).status == 200
    assert request(device.url, "GET", "/v2/health/live").status == 200
    assert nucleus.state(INFERENCE) == RUNNING


def test_a_manifest_tampered_on_the_device_is_refused(device: Device) -> None:
    nucleus = device.nucleus
    manifest = iris_artifacts(nucleus) / "manifest.json"
    original = manifest.read_bytes()
    manifest.chmod(0o644)
    # Still a valid manifest of iris version 1; another classifier's labels, say.
    manifest.write_bytes(original.replace(b'"setosa"', b'"tampered"'))
    try:
        assert nucleus.restart_component(INFERENCE) == RUNNING
        wait_for_http(device.url, "/v2/health/live", 60, nucleus)
        answer = request(device.url, "POST", "/v2/models/iris/infer", IRIS_BODY)
        assert answer.status == 503, answer.body
        assert (
            answer.json()["error"] == "iris version 1: the signature does not match its manifest; refusing it"
        )
        time.sleep(1)
        assert request(device.url, "GET", "/v2/health/live").status == 200
        assert nucleus.state(INFERENCE) == RUNNING, "the door stays up"
    finally:
        manifest.write_bytes(original)
