"""The repository's side of signed manifests, on a local store: the signature is written before the
manifest, and a store with trusted keys reads only versions they signed, before any model byte."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from modelship.core.errors import Conflict, IntegrityError, ModelshipError
from modelship.core.repository import ModelRepository, manifest_key, model_key, signature_key
from modelship.core.service import InferenceService
from modelship.core.settings import Settings
from modelship.core.signing import (
    ECDSA_SHA_256,
    SignatureDocument,
    TrustedKeys,
    public_key_fingerprint,
    signed_statement,
)

from tests.support.models import identity_model, write_model

INFER = b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}'


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signer_for(key: ec.EllipticCurvePrivateKey, calls: list[bytes] | None = None) -> Callable[[bytes], bytes]:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def sign(manifest: bytes) -> bytes:
        if calls is not None:
            calls.append(manifest)
        return SignatureDocument(
            ECDSA_SHA_256,
            "local",
            public_key_fingerprint(der),
            hashlib.sha256(manifest).hexdigest(),
            key.sign(signed_statement(manifest), ec.ECDSA(hashes.SHA256())),
        ).dumps()

    return sign


def test_a_signed_push_writes_the_signature_of_the_stored_manifest_before_it(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    store = tmp_path / "store"
    repository = ModelRepository.open(str(store))
    seen: list[bytes] = []
    manifest = repository.push(
        write_model(tmp_path, "m", identity_model("FP32")), "m", signer=signer_for(key, seen)
    )
    assert seen == [(store / manifest_key("m", 1)).read_bytes()] == [manifest.dumps()]
    assert (store / signature_key("m", 1)).is_file()
    checking = ModelRepository.open(str(store), trusted_keys=TrustedKeys.from_pem(pem(key)))
    assert checking.read_manifest("m", 1) == manifest


def test_a_push_whose_signing_fails_publishes_nothing(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    repository = ModelRepository.open(str(tmp_path / "store"))

    def failing(manifest: bytes) -> bytes:
        raise ModelshipError("cannot sign the manifest: kms:Sign: AccessDeniedException")

    with pytest.raises(ModelshipError, match="AccessDeniedException"):
        repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m", signer=failing)
    assert repository.versions("m") == []
    # A retry with a key that works takes the same version: the model bytes left behind are identical.
    repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m", signer=signer_for(key))
    assert repository.versions("m") == [1]


def test_a_signature_left_by_a_push_that_died_is_never_overwritten(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    store = tmp_path / "store"
    repository = ModelRepository.open(str(store))
    stale = store / signature_key("m", 1)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left behind")
    model = write_model(tmp_path, "m", identity_model("FP32"))
    with pytest.raises(Conflict, match="failed half-way; push another version"):
        repository.push(model, "m", version=1, signer=signer_for(key))
    assert repository.push(model, "m", signer=signer_for(key)).version == 2
    assert stale.read_bytes() == b"left behind"


def test_a_store_with_trusted_keys_refuses_unsigned_and_tampered_versions_before_their_bytes(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    store = tmp_path / "store"
    repository = ModelRepository.open(str(store))
    model = write_model(tmp_path, "m", identity_model("FP32"))
    repository.push(model, "signed", signer=signer_for(key))
    repository.push(model, "unsigned")
    repository.push(model, "tampered", signer=signer_for(key))
    manifest_path = store / manifest_key("tampered", 1)
    manifest_path.write_bytes(manifest_path.read_bytes().replace(b'"created"', b'"created" '))
    for name in ("unsigned", "tampered"):
        (store / model_key(name, 1)).unlink()  # no model byte is needed to refuse them
    settings = Settings(store_uri=str(store), trusted_keys=(pem(key).decode(),), isolate_loads=False)
    service = InferenceService.from_settings(settings)
    assert service.handle("POST", "/v2/models/signed/infer", {}, INFER).status == 200
    unsigned = service.handle("POST", "/v2/models/unsigned/infer", {}, INFER)
    assert unsigned.status == 503 and b"unsigned version 1 is unsigned" in unsigned.body
    tampered = service.handle("POST", "/v2/models/tampered/infer", {}, INFER)
    assert tampered.status == 503 and b"the signature does not match its manifest" in tampered.body
    assert service.handle("POST", "/v2/models/signed/infer", {}, INFER).status == 200
    # Without trusted keys, the same store serves its unsigned versions as before.
    with pytest.raises(IntegrityError):
        ModelRepository.open(str(store), trusted_keys=TrustedKeys.from_pem(pem(key))).read_manifest(
            "unsigned", 1
        )
    assert ModelRepository.open(str(store)).read_manifest("unsigned", 1).name == "unsigned"
