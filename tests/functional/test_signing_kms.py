"""Signing manifests with AWS KMS keys (moto's KMS), and trusting them by KMS key id or exported PEM."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from modelship.core.errors import IntegrityError
from modelship.core.manifest import Manifest, TensorSpec
from modelship.core.settings import Settings
from modelship.core.signing import (
    ECDSA_SHA_256,
    RSASSA_PSS_SHA_256,
    SignatureDocument,
    SigningError,
    TrustedKeys,
    TrustedKeysError,
    make_kms_client,
    public_key_fingerprint,
    sign_with_kms,
    signed_statement,
    verify,
)
from moto import mock_aws
from moto.server import ThreadedMotoServer

from tests.support.processes import free_port

REGION = "us-east-1"


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def kms(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("kms", region_name=REGION)


def create_key(kms: Any, spec: str, usage: str = "SIGN_VERIFY") -> str:
    arn: str = kms.create_key(KeySpec=spec, KeyUsage=usage, Description=f"modelship {spec}")["KeyMetadata"][
        "Arn"
    ]
    return arn


def manifest_bytes(version: int = 1) -> bytes:
    return Manifest(
        name="iris",
        version=version,
        sha256="0f" * 32,
        size=4242,
        inputs=(TensorSpec("input", "FP32", (-1, 4)),),
        outputs=(TensorSpec("label", "INT64", (-1,)),),
        created="2026-01-02T03:04:05+00:00",
        # Many labels: a manifest over KMS's 4096-byte RAW limit is signed all the same.
        labels=tuple(f"class-{index}" for index in range(1000)),
    ).dumps()


def exported_pem(kms: Any, key_id: str, path: Path) -> Path:
    """What an operator does once: ``aws kms get-public-key``, DER to PEM, shipped beside the server."""
    der = kms.get_public_key(KeyId=key_id)["PublicKey"]
    public_key = serialization.load_der_public_key(der)
    path.write_bytes(
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


@pytest.mark.parametrize(
    ("spec", "algorithm"), [("ECC_NIST_P256", ECDSA_SHA_256), ("RSA_2048", RSASSA_PSS_SHA_256)]
)
def test_kms_signs_and_the_key_is_trusted_by_id_alias_and_exported_pem(
    kms: Any, tmp_path: Path, spec: str, algorithm: str
) -> None:
    arn = create_key(kms, spec)
    kms.create_alias(AliasName="alias/modelship-signing", TargetKeyId=arn)
    manifest = manifest_bytes()
    assert len(manifest) > 4096

    document = sign_with_kms(kms, "alias/modelship-signing", manifest)

    assert document.algorithm == algorithm
    assert document.key_id == arn
    assert document.public_key_sha256 == public_key_fingerprint(kms.get_public_key(KeyId=arn)["PublicKey"])
    assert document.manifest_sha256 == hashlib.sha256(manifest).hexdigest()
    raw = document.dumps()
    assert SignatureDocument.loads(raw) == document
    # KMS itself agrees: the document's signature is of the statement, by this key.
    verdict = kms.verify(
        KeyId=arn,
        Message=signed_statement(manifest),
        MessageType="RAW",
        Signature=document.signature,
        SigningAlgorithm=algorithm,
    )
    assert verdict["SignatureValid"] is True

    key_id = arn.rsplit("/", 1)[1]
    pem = exported_pem(kms, arn, tmp_path / "signer.pem")
    for entries in ([arn], [key_id], ["alias/modelship-signing"], [str(pem)]):
        keys = TrustedKeys.load(entries, kms_client_factory=lambda: kms)
        assert verify(manifest, raw, keys, where="iris version 1").fingerprint == document.public_key_sha256
        with pytest.raises(IntegrityError, match="the signature does not match its manifest"):
            verify(manifest_bytes(version=2), raw, keys, where="iris version 2")


def test_a_second_kms_key_is_not_trusted_for_the_first(kms: Any) -> None:
    trusted_arn = create_key(kms, "ECC_NIST_P256")
    other_arn = create_key(kms, "ECC_NIST_P256")
    manifest = manifest_bytes()
    document = sign_with_kms(kms, other_arn, manifest)
    keys = TrustedKeys.load([trusted_arn], kms_client_factory=lambda: kms)
    with pytest.raises(IntegrityError, match="is signed by an untrusted key"):
        verify(manifest, document.dumps(), keys)
    both = TrustedKeys.load([trusted_arn, other_arn], kms_client_factory=lambda: kms)
    assert len(both) == 2
    assert verify(manifest, document.dumps(), both).source == f"KMS {other_arn}"


@pytest.mark.parametrize(
    ("spec", "usage", "expected"),
    [
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "not SIGN_VERIFY"),
        ("RSA_2048", "ENCRYPT_DECRYPT", "not SIGN_VERIFY"),
        ("ECC_NIST_P384", "SIGN_VERIFY", "use one of ECC_NIST_P256, RSA_2048, RSA_3072, RSA_4096"),
    ],
)
def test_keys_that_cannot_sign_manifests_are_refused_at_push_and_at_start(
    kms: Any, spec: str, usage: str, expected: str
) -> None:
    arn = create_key(kms, spec, usage)
    with pytest.raises(SigningError, match=expected):
        sign_with_kms(kms, arn, manifest_bytes())
    with pytest.raises(TrustedKeysError, match=expected):
        TrustedKeys.load([arn], kms_client_factory=lambda: kms)


def test_a_missing_kms_key_says_so(kms: Any) -> None:
    missing = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    with pytest.raises(SigningError, match=r"kms:GetPublicKey on .*NotFoundException"):
        sign_with_kms(kms, missing, manifest_bytes())
    with pytest.raises(
        TrustedKeysError, match=r"MODELSHIP_TRUSTED_KEYS: kms:GetPublicKey on .*NotFoundException"
    ):
        TrustedKeys.load(["alias/does-not-exist"], kms_client_factory=lambda: kms)


@pytest.fixture
def kms_server(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    try:
        yield endpoint
    finally:
        server.stop()


def test_the_default_client_resolves_keys_over_http_through_aws_endpoint_url(
    kms_server: str, tmp_path: Path
) -> None:
    """As a server starts: MODELSHIP_TRUSTED_KEYS names KMS keys, resolved once by a boto3 client of our
    own over HTTP (AWS_ENDPOINT_URL, as LocalStack is reached); a signed manifest verifies offline."""
    kms = boto3.client("kms", region_name=REGION)
    ecc = create_key(kms, "ECC_NIST_P256")
    rsa_key = create_key(kms, "RSA_3072")
    pem = exported_pem(kms, rsa_key, tmp_path / "rsa.pem")
    settings = Settings.from_env({"MODELSHIP_TRUSTED_KEYS": f"{ecc}, {pem}"})
    keys = TrustedKeys.load(settings.trusted_keys)
    assert {key.source for key in keys} == {f"KMS {ecc}", str(pem)}
    for arn in (ecc, rsa_key):
        manifest = manifest_bytes()
        document = sign_with_kms(make_kms_client(), arn, manifest)
        assert verify(manifest, document.dumps(), keys).fingerprint == document.public_key_sha256


def test_an_unreachable_kms_fails_the_start_within_its_timeouts(
    aws_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A port nothing listens on: connection refused, retried a bounded number of times.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(
        TrustedKeysError, match="MODELSHIP_TRUSTED_KEYS: kms:GetPublicKey on alias/x: EndpointConnectionError"
    ):
        TrustedKeys.load(["alias/x"])


def test_the_stored_document_is_small_and_names_its_key(kms: Any) -> None:
    arn = create_key(kms, "RSA_4096")
    document = sign_with_kms(kms, arn, manifest_bytes())
    raw = document.dumps()
    assert len(raw) < 2048
    parsed = orjson.loads(raw)
    assert parsed["key_id"] == arn
    assert len(base64.b64decode(parsed["signature"])) == 512


def test_no_region_is_a_clear_error_not_a_traceback(
    aws_credentials: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    with pytest.raises(SigningError, match="cannot make a KMS client: You must specify a region"):
        make_kms_client()
    with pytest.raises(TrustedKeysError, match="MODELSHIP_TRUSTED_KEYS: cannot make a KMS client"):
        TrustedKeys.load(["alias/modelship-signing"])
