"""Signed manifests: a version is served only if a trusted key signed its manifest.

The manifest's sha256 detects a corrupted model file; it cannot detect someone who may write to the
store, since they can rewrite the manifest too. A signature by a key they do not hold can.

What is signed, the *statement*, is::

    b"modelship-manifest-signature-v1\\n" + sha256(manifest bytes as stored).hexdigest() + b"\\n"

* The manifest bytes are the exact bytes stored (``Manifest.dumps`` writes them, once, at push), never a
  re-serialisation: what is verified is what ``Manifest.loads`` then parses, so no canonical form can
  differ between the signer and the verifier. Those bytes carry the model's name, version, sha256 and
  size, which ``Manifest.loads`` checks against the path asked for, and the model bytes against the
  sha256: a signature binds all of them, and moving a signed manifest to another name or version fails.
* The statement is small and fixed-size: AWS KMS signs a RAW message of at most 4096 bytes (a manifest
  with many labels is larger), and signing the statement RAW avoids KMS's DIGEST message type (which
  moto does not implement). Its prefix keeps a modelship signature from meaning anything else.
* An operator can check one with OpenSSL alone: the statement is ``printf`` of the prefix and the
  ``sha256sum`` of ``manifest.json``; the signature is the document's base64 ``signature``, DER for ECDSA.

The signature document (``manifest.sig.json`` beside ``manifest.json``) names the algorithm, the KMS key
it came from, the SHA-256 of the signer's public key (which trusted key to check it with) and the
manifest digest; it is parsed strictly and bounded in size.

``cryptography`` (the ``signing`` extra) and ``boto3`` are imported only when signatures are made or
checked: a server that requires none pays for neither.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from modelship.core.errors import IntegrityError, ModelshipError
from modelship.core.settings import MAX_TRUSTED_KEY_ENTRIES, TRUSTED_KEYS_ENV

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    PublicKey = EllipticCurvePublicKey | RSAPublicKey

SIGNATURE_FILE: Final = "manifest.sig.json"
SIGNATURE_SCHEMA_VERSION: Final = 1
STATEMENT_PREFIX: Final = b"modelship-manifest-signature-v1\n"
# A document is a few hundred bytes (an RSA-4096 signature is 684 characters of base64).
MAX_SIGNATURE_DOCUMENT_BYTES: Final = 16 * 1024
MAX_SIGNATURE_BYTES: Final = 1024
MAX_KEY_ID_CHARS: Final = 2048
# A PEM file of trusted keys is a few of them; anything larger is not one.
MAX_PEM_BYTES: Final = 64 * 1024

ECDSA_SHA_256: Final = "ECDSA_SHA_256"
RSASSA_PSS_SHA_256: Final = "RSASSA_PSS_SHA_256"
RSASSA_PKCS1_V1_5_SHA_256: Final = "RSASSA_PKCS1_V1_5_SHA_256"
RSA_ALGORITHMS: Final = frozenset({RSASSA_PSS_SHA_256, RSASSA_PKCS1_V1_5_SHA_256})
ALGORITHMS: Final = frozenset({ECDSA_SHA_256, *RSA_ALGORITHMS})
# The KMS key specs a manifest may be signed with, and the algorithm ``sign_with_kms`` uses for each.
KMS_ALGORITHM_BY_KEY_SPEC: Final[Mapping[str, str]] = {
    "ECC_NIST_P256": ECDSA_SHA_256,
    "RSA_2048": RSASSA_PSS_SHA_256,
    "RSA_3072": RSASSA_PSS_SHA_256,
    "RSA_4096": RSASSA_PSS_SHA_256,
}
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 4096

_DOCUMENT_KEYS: Final = frozenset(
    {"schema_version", "algorithm", "key_id", "public_key_sha256", "manifest_sha256", "signature"}
)
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_PEM_MARKER: Final = re.compile(rb"-----(BEGIN|END) ([A-Z0-9 ]{1,64})-----")
_PRINTABLE_ASCII: Final = re.compile(r"[\x21-\x7e]+")
# KMS's own forms of a key reference: a key ARN or alias ARN, an alias name, a key id or multi-Region key id.
_KMS_KEY_REFERENCE: Final = re.compile(
    r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[A-Za-z0-9/_.-]+"
    r"|alias/[A-Za-z0-9/_-]+"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|mrk-[0-9a-f]{32}"
)
# Like the S3 client's (core.blobs): a KMS endpoint that does not answer fails the start, it never hangs it.
KMS_CONNECT_TIMEOUT_SECONDS: Final = 2.0
KMS_READ_TIMEOUT_SECONDS: Final = 5.0
KMS_MAX_ATTEMPTS: Final = 3


class SigningError(ModelshipError):
    """A manifest could not be signed (``push --sign``): the KMS key, its kind, or KMS itself."""


class MalformedSignature(ValueError):
    """A signature document that is not one; the message says what is wrong with it."""


class TrustedKeysError(ValueError):
    """A trusted key that cannot be used; raised once, when the keys are loaded at start."""


def signed_statement(manifest_bytes: bytes) -> bytes:
    """The bytes a signature signs, for a manifest's exact stored bytes (see the module's docstring)."""
    return STATEMENT_PREFIX + hashlib.sha256(manifest_bytes).hexdigest().encode("ascii") + b"\n"


def public_key_fingerprint(der_subject_public_key_info: bytes) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, in hex: ``openssl pkey -pubin -outform DER | sha256sum``."""
    return hashlib.sha256(der_subject_public_key_info).hexdigest()


@dataclass(frozen=True, slots=True)
class SignatureDocument:
    """``manifest.sig.json``: one signature of one manifest's statement."""

    algorithm: str
    key_id: str
    public_key_sha256: str
    manifest_sha256: str
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SIGNATURE_SCHEMA_VERSION,
            "algorithm": self.algorithm,
            "key_id": self.key_id,
            "public_key_sha256": self.public_key_sha256,
            "manifest_sha256": self.manifest_sha256,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def loads(cls, raw: bytes) -> SignatureDocument:
        """Parse a document read from a store; ``MalformedSignature`` saying what is wrong with it."""
        if len(raw) > MAX_SIGNATURE_DOCUMENT_BYTES:
            raise MalformedSignature(f"it is larger than {MAX_SIGNATURE_DOCUMENT_BYTES} bytes")
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise MalformedSignature("it is not JSON") from None
        if not isinstance(document, dict):
            raise MalformedSignature("it is not a JSON object")
        if set(document) != _DOCUMENT_KEYS:
            unknown = sorted(set(document) - _DOCUMENT_KEYS)[:5]
            missing = sorted(_DOCUMENT_KEYS - set(document))
            raise MalformedSignature(f"its fields are wrong (missing {missing}, unknown {unknown})")
        schema = document["schema_version"]
        if type(schema) is not int or schema != SIGNATURE_SCHEMA_VERSION:
            raise MalformedSignature(f"schema_version must be {SIGNATURE_SCHEMA_VERSION}")
        algorithm = document["algorithm"]
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise MalformedSignature(f"algorithm must be one of {', '.join(sorted(ALGORITHMS))}")
        key_id = document["key_id"]
        if (
            not isinstance(key_id, str)
            or len(key_id) > MAX_KEY_ID_CHARS
            or not _PRINTABLE_ASCII.fullmatch(key_id)
        ):
            raise MalformedSignature(f"key_id must be 1 to {MAX_KEY_ID_CHARS} printable ASCII characters")
        for field in ("public_key_sha256", "manifest_sha256"):
            value = document[field]
            if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
                raise MalformedSignature(f"{field} must be 64 lowercase hex digits")
        encoded = document["signature"]
        if not isinstance(encoded, str) or len(encoded) > 2 * MAX_SIGNATURE_BYTES:
            raise MalformedSignature("signature must be a base64 string")
        try:
            signature = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedSignature("signature is not valid base64") from None
        if not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
            raise MalformedSignature(f"signature must be 1 to {MAX_SIGNATURE_BYTES} bytes")
        return cls(algorithm, key_id, document["public_key_sha256"], document["manifest_sha256"], signature)


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key whose signatures are accepted, and where it came from (for messages at start)."""

    fingerprint: str
    public_key: PublicKey
    source: str

    @property
    def description(self) -> str:
        return f"{_key_kind(self.public_key)} {self.fingerprint[:16]} from {self.source}"


class TrustedKeys:
    """The keys a store's manifests must be signed by. Immutable once loaded; safe to share."""

    def __init__(self, keys: Iterable[TrustedKey]) -> None:
        self._by_fingerprint: dict[str, TrustedKey] = {}
        for key in keys:
            self._by_fingerprint.setdefault(key.fingerprint, key)
        if not self._by_fingerprint:
            raise TrustedKeysError("no trusted key was given")

    def __len__(self) -> int:
        return len(self._by_fingerprint)

    def __iter__(self) -> Iterator[TrustedKey]:
        return iter(self._by_fingerprint.values())

    def get(self, fingerprint: str) -> TrustedKey | None:
        return self._by_fingerprint.get(fingerprint)

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "PEM") -> TrustedKeys:
        return cls(load_pem_keys(pem, source))

    @classmethod
    def load(
        cls,
        entries: Sequence[str],
        kms_client_factory: Callable[[], Any] | None = None,
        *,
        setting: str = TRUSTED_KEYS_ENV,
    ) -> TrustedKeys:
        """Every key ``entries`` names (``Settings.trusted_keys``): inline PEM, a PEM file, or a KMS key
        resolved now through kms:GetPublicKey (``kms_client_factory``, else a boto3 client, made once).
        ``TrustedKeysError`` naming the entry for one that cannot be used: a server fails at start,
        never per request."""
        if len(entries) > MAX_TRUSTED_KEY_ENTRIES:
            raise TrustedKeysError(f"{setting}: at most {MAX_TRUSTED_KEY_ENTRIES} keys, got {len(entries)}")
        keys: list[TrustedKey] = []
        kms_client: Any = None
        for entry in entries:
            kind = trusted_key_entry_kind(entry)
            if kind == "pem":
                keys += load_pem_keys(entry.encode("ascii", "replace"), "inline PEM", setting=setting)
            elif kind == "kms":
                if kms_client is None:
                    try:
                        kms_client = (kms_client_factory or make_kms_client)()
                    except SigningError as error:
                        raise TrustedKeysError(f"{setting}: {error.message}") from None
                keys.append(_kms_trusted_key(kms_client, entry, setting))
            else:
                keys += load_pem_keys(
                    _read_pem_file(Path(entry).expanduser(), setting), entry, setting=setting
                )
        return cls(keys)


def trusted_key_entry_kind(entry: str) -> str:
    """``"pem"`` (inline PEM), ``"kms"`` (a KMS key ARN, alias, key id or multi-Region key id) or
    ``"file"`` (a path to a PEM file: anything else)."""
    if entry.lstrip().startswith("-----BEGIN "):
        return "pem"
    if _KMS_KEY_REFERENCE.fullmatch(entry):
        return "kms"
    return "file"


def load_pem_keys(pem: bytes, source: str, *, setting: str = TRUSTED_KEYS_ENV) -> list[TrustedKey]:
    """Every ``PUBLIC KEY`` block of ``pem`` (EC P-256, or RSA of 2048 to 4096 bits)."""
    _require_cryptography(setting)
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if len(pem) > MAX_PEM_BYTES:
        raise TrustedKeysError(f"{setting}: {source} is larger than {MAX_PEM_BYTES} bytes")
    labels_and_blocks = _pem_blocks(pem)
    if any(b"PRIVATE KEY" in label for label, _ in labels_and_blocks):
        raise TrustedKeysError(
            f"{setting}: {source} holds a private key; give the public key only "
            "(openssl pkey -pubout, or aws kms get-public-key)"
        )
    public_blocks = [block for label, block in labels_and_blocks if label == b"PUBLIC KEY"]
    if not public_blocks:
        raise TrustedKeysError(f"{setting}: {source} holds no PEM public key (-----BEGIN PUBLIC KEY-----)")
    keys = []
    for block in public_blocks:
        try:
            public_key = load_pem_public_key(block)
        except (ValueError, TypeError) as error:
            raise TrustedKeysError(f"{setting}: {source} holds an unreadable public key: {error}") from None
        keys.append(_trusted_key(public_key, source, setting))
    return keys


def _pem_blocks(pem: bytes) -> list[tuple[bytes, bytes]]:
    """(label, block re-wrapped in 64-character lines) of each PEM block, in one pass. A block whose line
    breaks were lost on the way (an environment variable, a configuration value on one line) still reads;
    text between blocks (a bundle's comments) is ignored."""
    blocks: list[tuple[bytes, bytes]] = []
    opened: re.Match[bytes] | None = None
    for marker in _PEM_MARKER.finditer(pem):
        if marker.group(1) == b"BEGIN":
            opened = marker
        elif opened is not None and marker.group(2) == opened.group(2):
            body = b"".join(pem[opened.end() : marker.start()].split())
            lines = [body[offset : offset + 64] for offset in range(0, len(body), 64)]
            blocks.append((opened.group(2), b"\n".join([opened.group(0), *lines, marker.group(0)]) + b"\n"))
            opened = None
    return blocks


def _read_pem_file(path: Path, setting: str) -> bytes:
    from modelship.core.blobs import read_regular_file

    try:
        data = read_regular_file(path, MAX_PEM_BYTES)
    except OSError as error:
        raise TrustedKeysError(f"{setting}: cannot read {path}: {error.strerror or error}") from None
    if data is None:
        raise TrustedKeysError(f"{setting}: {path} is larger than {MAX_PEM_BYTES} bytes")
    return data


def _trusted_key(public_key: object, source: str, setting: str) -> TrustedKey:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise TrustedKeysError(
                f"{setting}: {source} is an EC key on {public_key.curve.name}; only P-256 (ECC_NIST_P256) is "
                "accepted"
            )
    elif isinstance(public_key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= public_key.key_size <= MAX_RSA_BITS:
            raise TrustedKeysError(
                f"{setting}: {source} is a {public_key.key_size}-bit RSA key; {MIN_RSA_BITS} to "
                f"{MAX_RSA_BITS} bits are accepted"
            )
    else:
        raise TrustedKeysError(
            f"{setting}: {source} is a {type(public_key).__name__}; only EC P-256 and RSA keys are accepted"
        )
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return TrustedKey(public_key_fingerprint(der), public_key, source)


def _key_kind(public_key: PublicKey) -> str:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return f"RSA-{public_key.key_size}" if isinstance(public_key, rsa.RSAPublicKey) else "EC P-256"


def _require_cryptography(setting: str) -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise TrustedKeysError(
            f"{setting}: checking signatures needs the cryptography package, which this install lacks: "
            "pip install -e '.[signing]'"
        ) from None


# --- KMS -----------------------------------------------------------------------------------------------


def make_kms_client() -> Any:
    """A boto3 KMS client with bounded timeouts; boto3 honours ``AWS_ENDPOINT_URL`` (LocalStack, moto).
    ``SigningError`` without boto3, or without a region."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError
    except ImportError:
        raise SigningError(
            "KMS keys need boto3, which this install lacks: pip install -e '.[s3]' (or name PEM files)"
        ) from None
    config = Config(
        connect_timeout=KMS_CONNECT_TIMEOUT_SECONDS,
        read_timeout=KMS_READ_TIMEOUT_SECONDS,
        retries={"total_max_attempts": KMS_MAX_ATTEMPTS, "mode": "standard"},
    )
    try:
        return boto3.client("kms", config=config)
    except BotoCoreError as error:
        raise SigningError(f"cannot make a KMS client: {error}") from None


def _kms_call(what: str, call: Callable[[], Any]) -> Any:
    """``call``, with botocore's errors as one line naming what failed (``_KmsFailure``)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except ClientError as error:
        details = error.response.get("Error", {})
        raise _KmsFailure(
            f"{what}: {details.get('Code', 'KMS error')}: {details.get('Message', '')}"
        ) from None
    except BotoCoreError as error:
        raise _KmsFailure(f"{what}: {type(error).__name__}: {error}") from None


class _KmsFailure(Exception):
    pass


def _kms_public_key(kms_client: Any, key_id: str) -> tuple[str, str, Any, bytes]:
    """(key ARN, key spec, loaded public key, DER) of a KMS signing key; ``_KmsFailure`` otherwise."""
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    response = _kms_call(f"kms:GetPublicKey on {key_id}", lambda: kms_client.get_public_key(KeyId=key_id))
    usage = response.get("KeyUsage")
    if usage != "SIGN_VERIFY":
        raise _KmsFailure(f"KMS key {key_id} is for {usage}, not SIGN_VERIFY")
    spec = str(response.get("KeySpec") or response.get("CustomerMasterKeySpec") or "")
    if spec not in KMS_ALGORITHM_BY_KEY_SPEC:
        raise _KmsFailure(
            f"KMS key {key_id} is {spec or 'of an unknown spec'}; use one of "
            f"{', '.join(sorted(KMS_ALGORITHM_BY_KEY_SPEC))}"
        )
    der = bytes(response["PublicKey"])
    try:
        public_key = load_der_public_key(der)
    except (ValueError, TypeError) as error:
        raise _KmsFailure(f"KMS returned an unreadable public key for {key_id}: {error}") from None
    return str(response.get("KeyId") or key_id), spec, public_key, der


def _kms_trusted_key(kms_client: Any, key_id: str, setting: str) -> TrustedKey:
    _require_cryptography(setting)
    try:
        _, _, public_key, _ = _kms_public_key(kms_client, key_id)
    except _KmsFailure as failure:
        raise TrustedKeysError(f"{setting}: {failure}") from None
    return _trusted_key(public_key, f"KMS {key_id}", setting)


def sign_with_kms(kms_client: Any, key_id: str, manifest_bytes: bytes) -> SignatureDocument:
    """Sign a manifest's exact bytes with an asymmetric KMS key (ECC_NIST_P256: ECDSA_SHA_256; RSA:
    RSASSA_PSS_SHA_256), and check the signature against the key's public key before it is stored.

    ``kms_client`` is a boto3 KMS client; the caller needs kms:GetPublicKey and kms:Sign on the key."""
    try:
        _require_cryptography("push --sign")
    except TrustedKeysError as error:
        raise SigningError(str(error)) from None
    try:
        arn, spec, public_key, der = _kms_public_key(kms_client, key_id)
        algorithm = KMS_ALGORITHM_BY_KEY_SPEC[spec]
        response = _kms_call(
            f"kms:Sign with {key_id}",
            lambda: kms_client.sign(
                KeyId=arn,
                Message=signed_statement(manifest_bytes),
                MessageType="RAW",
                SigningAlgorithm=algorithm,
            ),
        )
    except _KmsFailure as failure:
        raise SigningError(f"cannot sign the manifest: {failure}") from None
    try:
        trusted = _trusted_key(public_key, f"KMS {arn}", "push --sign")
    except TrustedKeysError as error:
        raise SigningError(str(error)) from None
    document = SignatureDocument(
        algorithm=algorithm,
        key_id=str(response.get("KeyId") or arn),
        public_key_sha256=public_key_fingerprint(der),
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        signature=bytes(response["Signature"]),
    )
    if not _signature_holds(trusted.public_key, document, manifest_bytes):
        raise SigningError(
            f"KMS returned a signature that {arn}'s public key does not verify; not storing it"
        )
    return document


# --- verification --------------------------------------------------------------------------------------


def verify(
    manifest_bytes: bytes,
    signature_document: bytes | None,
    trusted_keys: TrustedKeys,
    *,
    where: str = "the model",
) -> TrustedKey:
    """The trusted key that signed ``manifest_bytes``, or ``IntegrityError`` (503 for the model) saying
    why not: unsigned (``signature_document`` is None: none is stored), a malformed document, signed by an
    untrusted key, or a signature that does not match. Nothing of the model is read before this passes.

    ``where`` names the version in messages (``"iris version 3"``)."""
    if signature_document is None:
        raise IntegrityError(
            f"{where} is unsigned: this server serves only versions whose manifest a trusted key signed"
        )
    try:
        document = SignatureDocument.loads(signature_document)
    except MalformedSignature as error:
        raise IntegrityError(f"{where}: its signature ({SIGNATURE_FILE}) is malformed: {error}") from None
    key = trusted_keys.get(document.public_key_sha256)
    if key is None:
        raise IntegrityError(
            f"{where} is signed by an untrusted key (public key sha256 {document.public_key_sha256[:16]}...)"
        )
    if document.manifest_sha256 != hashlib.sha256(manifest_bytes).hexdigest() or not _signature_holds(
        key.public_key, document, manifest_bytes
    ):
        raise IntegrityError(f"{where}: the signature does not match its manifest; refusing it")
    return key


def _signature_holds(public_key: PublicKey, document: SignatureDocument, manifest_bytes: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    statement = signed_statement(manifest_bytes)
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if document.algorithm != ECDSA_SHA_256:
                return False
            public_key.verify(document.signature, statement, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            if document.algorithm not in RSA_ALGORITHMS:
                return False
            # KMS signs PSS with a 32-byte salt (moto with the longest one): the salt's length is
            # read from the signature, which is as safe (RFC 8017's EMSA-PSS-VERIFY recovers it too).
            scheme: padding.AsymmetricPadding = (
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
                if document.algorithm == RSASSA_PSS_SHA_256
                else padding.PKCS1v15()
            )
            public_key.verify(document.signature, statement, scheme, hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True
