"""Signed manifests (core.signing) with keys made here: ECDSA P-256 and RSA, as KMS makes them."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from modelship.core.errors import IntegrityError
from modelship.core.manifest import Manifest, TensorSpec
from modelship.core.settings import Settings, parse_trusted_keys
from modelship.core.signing import (
    ECDSA_SHA_256,
    MAX_SIGNATURE_DOCUMENT_BYTES,
    RSASSA_PKCS1_V1_5_SHA_256,
    RSASSA_PSS_SHA_256,
    STATEMENT_PREFIX,
    SignatureDocument,
    TrustedKeys,
    TrustedKeysError,
    public_key_fingerprint,
    signed_statement,
    trusted_key_entry_kind,
    verify,
)

from tests.support.processes import REPO_ROOT

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: PrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public_key_fingerprint(der)


def manifest_bytes(name: str = "iris", version: int = 3) -> bytes:
    return Manifest(
        name=name,
        version=version,
        sha256="ab" * 32,
        size=1234,
        inputs=(TensorSpec("input", "FP32", (-1, 4)),),
        outputs=(TensorSpec("label", "INT64", (-1,)),),
        created="2026-01-02T03:04:05+00:00",
        labels=("setosa", "versicolor", "virginica"),
    ).dumps()


def sign(
    key: PrivateKey,
    manifest: bytes,
    algorithm: str | None = None,
    *,
    pss_salt: Any = padding.PSS.DIGEST_LENGTH,
) -> SignatureDocument:
    """What KMS does for ``sign_with_kms``, with a private key of our own."""
    statement = signed_statement(manifest)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = algorithm or ECDSA_SHA_256
        signature = key.sign(statement, ec.ECDSA(hashes.SHA256()))
    else:
        algorithm = algorithm or RSASSA_PSS_SHA_256
        scheme: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=pss_salt)
            if algorithm == RSASSA_PSS_SHA_256
            else padding.PKCS1v15()
        )
        signature = key.sign(statement, scheme, hashes.SHA256())
    return SignatureDocument(
        algorithm=algorithm,
        key_id="arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        public_key_sha256=fingerprint(key),
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        signature=signature,
    )


def trusted(*keys: PrivateKey) -> TrustedKeys:
    return TrustedKeys.from_pem(b"".join(public_pem(key) for key in keys), "test keys")


# --- what is signed ------------------------------------------------------------------------------------


def test_the_statement_is_a_fixed_prefix_and_the_manifests_sha256() -> None:
    manifest = manifest_bytes()
    assert signed_statement(manifest) == (
        b"modelship-manifest-signature-v1\n" + hashlib.sha256(manifest).hexdigest().encode() + b"\n"
    )
    assert signed_statement(manifest).startswith(STATEMENT_PREFIX)
    # Fixed-size, far inside KMS's 4096-byte RAW message limit whatever the manifest's size.
    assert len(signed_statement(manifest * 1000)) == len(signed_statement(manifest)) == 97


@pytest.mark.parametrize("key_name", ["ec_key", "rsa_key"])
def test_a_signed_manifest_verifies(key_name: str, request: pytest.FixtureRequest) -> None:
    key: PrivateKey = request.getfixturevalue(key_name)
    manifest = manifest_bytes()
    document = sign(key, manifest)
    accepted = verify(manifest, document.dumps(), trusted(key), where="iris version 3")
    assert accepted.fingerprint == fingerprint(key)


@pytest.mark.parametrize(
    ("algorithm", "salt"),
    [
        (RSASSA_PSS_SHA_256, padding.PSS.DIGEST_LENGTH),  # AWS KMS's salt: the digest's length
        (RSASSA_PSS_SHA_256, padding.PSS.MAX_LENGTH),  # moto's
        (RSASSA_PKCS1_V1_5_SHA_256, 0),
    ],
)
def test_every_rsa_algorithm_kms_offers_for_sha256_verifies(
    rsa_key: rsa.RSAPrivateKey, algorithm: str, salt: Any
) -> None:
    manifest = manifest_bytes()
    document = sign(rsa_key, manifest, algorithm, pss_salt=salt)
    assert verify(manifest, document.dumps(), trusted(rsa_key)).fingerprint == fingerprint(rsa_key)


def test_the_document_round_trips_and_is_strict_json(ec_key: ec.EllipticCurvePrivateKey) -> None:
    document = sign(ec_key, manifest_bytes())
    raw = document.dumps()
    assert SignatureDocument.loads(raw) == document
    parsed = orjson.loads(raw)
    assert set(parsed) == {
        "schema_version",
        "algorithm",
        "key_id",
        "public_key_sha256",
        "manifest_sha256",
        "signature",
    }
    assert base64.b64decode(parsed["signature"]) == document.signature


# --- refusals ------------------------------------------------------------------------------------------


def refusal(manifest: bytes, document: bytes | None, keys: TrustedKeys) -> str:
    with pytest.raises(IntegrityError) as raised:
        verify(manifest, document, keys, where="iris version 3")
    assert raised.value.status == 503
    return raised.value.message


def test_an_unsigned_manifest_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    message = refusal(manifest_bytes(), None, trusted(ec_key))
    assert message.startswith("iris version 3 is unsigned")


def test_a_manifest_signed_by_another_key_is_refused(
    ec_key: ec.EllipticCurvePrivateKey, other_ec_key: ec.EllipticCurvePrivateKey
) -> None:
    manifest = manifest_bytes()
    message = refusal(manifest, sign(other_ec_key, manifest).dumps(), trusted(ec_key))
    prefix = fingerprint(other_ec_key)[:16]
    assert message == f"iris version 3 is signed by an untrusted key (public key sha256 {prefix}...)"


@pytest.mark.parametrize("key_name", ["ec_key", "rsa_key"])
def test_a_tampered_manifest_is_refused(key_name: str, request: pytest.FixtureRequest) -> None:
    key: PrivateKey = request.getfixturevalue(key_name)
    manifest = manifest_bytes()
    document = sign(key, manifest)
    tampered = manifest.replace(b'"ab', b'"cd', 1)
    assert tampered != manifest
    expected = "iris version 3: the signature does not match its manifest; refusing it"
    assert refusal(tampered, document.dumps(), trusted(key)) == expected
    # The document rewritten to name the tampered manifest's digest: the signature still does not hold.
    forged = SignatureDocument(
        document.algorithm,
        document.key_id,
        document.public_key_sha256,
        hashlib.sha256(tampered).hexdigest(),
        document.signature,
    )
    assert refusal(tampered, forged.dumps(), trusted(key)) == expected


def test_a_signature_moved_to_another_version_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """Version 3's signature beside version 4's manifest: the statement binds the manifest's bytes."""
    document = sign(ec_key, manifest_bytes(version=3))
    assert "does not match" in refusal(manifest_bytes(version=4), document.dumps(), trusted(ec_key))


def test_a_document_claiming_a_trusted_key_it_was_not_signed_with_is_refused(
    ec_key: ec.EllipticCurvePrivateKey, other_ec_key: ec.EllipticCurvePrivateKey
) -> None:
    manifest = manifest_bytes()
    document = sign(other_ec_key, manifest)
    claimed = SignatureDocument(
        document.algorithm, document.key_id, fingerprint(ec_key), document.manifest_sha256, document.signature
    )
    assert "does not match" in refusal(manifest, claimed.dumps(), trusted(ec_key))


def test_an_algorithm_that_does_not_fit_the_key_is_refused(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    manifest = manifest_bytes()
    ecdsa = sign(ec_key, manifest)
    as_rsa = SignatureDocument(
        RSASSA_PSS_SHA_256, ecdsa.key_id, ecdsa.public_key_sha256, ecdsa.manifest_sha256, ecdsa.signature
    )
    assert "does not match" in refusal(manifest, as_rsa.dumps(), trusted(ec_key))
    pss = sign(rsa_key, manifest)
    as_ecdsa = SignatureDocument(
        ECDSA_SHA_256, pss.key_id, pss.public_key_sha256, pss.manifest_sha256, pss.signature
    )
    assert "does not match" in refusal(manifest, as_ecdsa.dumps(), trusted(rsa_key))
    # PSS and PKCS#1 v1.5 are not interchangeable either.
    as_pkcs1 = SignatureDocument(
        RSASSA_PKCS1_V1_5_SHA_256, pss.key_id, pss.public_key_sha256, pss.manifest_sha256, pss.signature
    )
    assert "does not match" in refusal(manifest, as_pkcs1.dumps(), trusted(rsa_key))


def valid_document_json(key: PrivateKey) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(sign(key, manifest_bytes()).dumps())
    return parsed


GARBAGE: list[tuple[str, Any, str]] = [
    ("empty", b"", "not JSON"),
    ("not json", b"\x00\xff garbage", "not JSON"),
    ("a list", b"[]", "not a JSON object"),
    ("deeply nested", b"[" * 5_000 + b"]" * 5_000, "not JSON"),
    ("missing field", {"drop": "signature"}, "fields are wrong"),
    ("unknown field", {"set": ("comment", "hi")}, "fields are wrong"),
    ("schema as bool", {"set": ("schema_version", True)}, "schema_version"),
    ("schema 2", {"set": ("schema_version", 2)}, "schema_version"),
    ("algorithm", {"set": ("algorithm", "ECDSA_SHA_512")}, "algorithm must be one of"),
    ("algorithm not a string", {"set": ("algorithm", ["ECDSA_SHA_256"])}, "algorithm must be one of"),
    ("key id with a newline", {"set": ("key_id", "arn\nx")}, "key_id"),
    ("key id empty", {"set": ("key_id", "")}, "key_id"),
    ("key id too long", {"set": ("key_id", "k" * 2049)}, "key_id"),
    ("fingerprint upper-case", {"upper": "public_key_sha256"}, "public_key_sha256"),
    ("digest short", {"set": ("manifest_sha256", "ab")}, "manifest_sha256"),
    ("signature not base64", {"set": ("signature", "not base64!")}, "not valid base64"),
    ("signature empty", {"set": ("signature", "")}, "1 to 1024 bytes"),
    ("signature a number", {"set": ("signature", 12)}, "base64 string"),
    ("signature too long", {"set": ("signature", base64.b64encode(b"x" * 1500).decode())}, "1 to 1024 bytes"),
    (
        "signature far too long",
        {"set": ("signature", base64.b64encode(b"x" * 3000).decode())},
        "base64 string",
    ),
]


@pytest.mark.parametrize(("case", "change", "expected"), GARBAGE, ids=[case for case, _, _ in GARBAGE])
def test_garbage_signature_documents_are_refused_as_malformed(
    ec_key: ec.EllipticCurvePrivateKey, case: str, change: Any, expected: str
) -> None:
    if isinstance(change, bytes):
        raw = change
    else:
        document = valid_document_json(ec_key)
        if "drop" in change:
            del document[change["drop"]]
        if "set" in change:
            field, value = change["set"]
            document[field] = value
        if "upper" in change:
            document[change["upper"]] = document[change["upper"]].upper()
        raw = orjson.dumps(document)
    message = refusal(manifest_bytes(), raw, trusted(ec_key))
    assert message.startswith("iris version 3: its signature (manifest.sig.json) is malformed: "), message
    assert expected in message
    assert len(message) < 300


def test_an_oversized_signature_document_is_refused_before_it_is_parsed(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    document = valid_document_json(ec_key)
    raw = orjson.dumps(document)
    padded = raw[:-1] + b" " * (MAX_SIGNATURE_DOCUMENT_BYTES - len(raw) + 1) + b"}"
    assert len(padded) == MAX_SIGNATURE_DOCUMENT_BYTES + 1
    assert "larger than 16384 bytes" in refusal(manifest_bytes(), padded, trusted(ec_key))
    # One byte less is a document like any other.
    fits = raw[:-1] + b" " * (MAX_SIGNATURE_DOCUMENT_BYTES - len(raw)) + b"}"
    assert verify(manifest_bytes(), fits, trusted(ec_key)).fingerprint == fingerprint(ec_key)


# --- the trusted keys ----------------------------------------------------------------------------------


def test_trusted_keys_load_from_files_inline_pem_and_bundles(
    tmp_path: Path,
    ec_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
    other_ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    bundle = tmp_path / "signers.pem"
    bundle.write_bytes(b"# rotated keys\n" + public_pem(ec_key) + b"\n" + public_pem(rsa_key))
    inline = public_pem(other_ec_key).decode()
    keys = TrustedKeys.load(parse_trusted_keys(f" {bundle} ,{inline}"), kms_client_factory=_no_kms)
    assert {key.fingerprint for key in keys} == {
        fingerprint(ec_key),
        fingerprint(rsa_key),
        fingerprint(other_ec_key),
    }
    assert {key.description.split(" from ")[1] for key in keys} == {str(bundle), "inline PEM"}
    manifest = manifest_bytes()
    for key in (ec_key, rsa_key, other_ec_key):
        assert verify(manifest, sign(key, manifest).dumps(), keys).fingerprint == fingerprint(key)


def test_a_pem_whose_line_breaks_were_lost_still_loads(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """As an environment variable or a one-line configuration value may carry it."""
    one_line = b" ".join(public_pem(ec_key).split(b"\n"))
    (key,) = TrustedKeys.load([one_line.decode()], kms_client_factory=_no_kms)
    assert key.fingerprint == fingerprint(ec_key)


def _no_kms() -> Any:
    raise AssertionError("no KMS client may be made for PEM keys")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", "kms"),
        ("arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/modelship", "kms"),
        ("alias/modelship-signing", "kms"),
        ("1234abcd-12ab-34cd-56ef-1234567890ab", "kms"),
        ("mrk-1234abcd12ab34cd56ef1234567890ab", "kms"),
        ("-----BEGIN PUBLIC KEY-----\nMFkw...", "pem"),
        ("/etc/modelship/signer.pem", "file"),
        ("signer.pem", "file"),
        ("./alias/signer.pem", "file"),
    ],
)
def test_each_entry_is_a_kms_key_inline_pem_or_a_file(entry: str, expected: str) -> None:
    assert trusted_key_entry_kind(entry) == expected


def unusable(entries: list[str]) -> str:
    with pytest.raises(TrustedKeysError) as raised:
        TrustedKeys.load(entries, kms_client_factory=_no_kms)
    message = str(raised.value)
    assert message.startswith("MODELSHIP_TRUSTED_KEYS: ") or message == "no trusted key was given"
    return message


def test_unusable_trusted_keys_fail_at_load_with_the_reason(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    assert "cannot read" in unusable([str(tmp_path / "missing.pem")])
    assert "No such file" in unusable([str(tmp_path / "missing.pem")])
    (tmp_path / "folder.pem").mkdir()
    assert "cannot read" in unusable([str(tmp_path / "folder.pem")])
    private = tmp_path / "private.pem"
    private.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert "holds a private key; give the public key only" in unusable([str(private)])
    text = tmp_path / "notes.pem"
    text.write_text("hello\n")
    assert "holds no PEM public key" in unusable([str(text)])
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert "holds an unreadable public key" in unusable([str(broken)])
    huge = tmp_path / "huge.pem"
    huge.write_bytes(public_pem(ec_key) * 1000)
    assert "larger than 65536 bytes" in unusable([str(huge)])
    assert unusable([]) == "no trusted key was given"


def test_keys_kms_would_not_sign_with_are_refused(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert "only P-256 (ECC_NIST_P256)" in unusable([public_pem(p384).decode()])
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert "1024-bit RSA key" in unusable([public_pem(small).decode()])


def test_the_setting_is_comma_separated_and_bounded() -> None:
    assert Settings.from_env({}).trusted_keys == ()
    assert Settings.from_env({"MODELSHIP_TRUSTED_KEYS": " , "}).trusted_keys == ()
    settings = Settings.from_env({"MODELSHIP_TRUSTED_KEYS": "/a.pem, alias/signer ,,/b.pem"})
    assert settings.trusted_keys == ("/a.pem", "alias/signer", "/b.pem")
    with pytest.raises(ValueError, match="MODELSHIP_TRUSTED_KEYS: at most 64 entries, got 65"):
        Settings.from_env({"MODELSHIP_TRUSTED_KEYS": ",".join(["/k.pem"] * 65)})


# --- interoperability and cost -------------------------------------------------------------------------


def test_openssl_alone_checks_a_signature_as_the_docstring_says(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """The statement an operator rebuilds with printf and sha256sum verifies with openssl dgst."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_bytes(manifest_bytes())
    document = sign(ec_key, manifest_path.read_bytes())
    (tmp_path / "signature.der").write_bytes(document.signature)
    (tmp_path / "signer.pem").write_bytes(public_pem(ec_key))
    script = (
        "printf 'modelship-manifest-signature-v1\\n%s\\n' \"$(sha256sum manifest.json | cut -d' ' -f1)\" "
        f"| {openssl} dgst -sha256 -verify signer.pem -signature signature.der"
    )
    result = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "Verified OK", result.stderr
    manifest_path.write_bytes(manifest_bytes(version=4))
    result = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert "Verification failure" in result.stdout + result.stderr


def test_importing_the_module_costs_neither_cryptography_nor_boto3() -> None:
    probe = (
        "import sys\n"
        "import modelship.core.signing\n"
        "print(','.join(sorted(m for m in ('cryptography', 'boto3', 'botocore') if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT / "functions",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == ""
