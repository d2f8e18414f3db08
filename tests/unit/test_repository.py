from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from modelship.core import sessions
from modelship.core.errors import (
    BadRequest,
    Conflict,
    IntegrityError,
    InvalidModel,
    ModelUnavailable,
    NotFound,
)
from modelship.core.repository import ModelRepository, manifest_key, model_key
from modelship.core.service import InferenceService
from modelship.core.settings import Settings

from tests.support.clock import FakeClock
from tests.support.models import add_sub_model, identity_model, write_model


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    return ModelRepository.open(str(tmp_path / "store"), cache_dir=tmp_path / "cache")


def test_push_writes_layout_and_manifest(repository: ModelRepository, tmp_path: Path) -> None:
    data = add_sub_model()
    manifest = repository.push(write_model(tmp_path, "m", data), "add_sub", labels=["w", "x", "y", "z"])
    root = tmp_path / "store"
    assert (root / "models/add_sub/1/model.onnx").read_bytes() == data
    document = orjson.loads((root / "models/add_sub/1/manifest.json").read_bytes())
    assert document["sha256"] == hashlib.sha256(data).hexdigest()
    assert document["size"] == len(data)
    assert document["version"] == 1
    assert document["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "b", "datatype": "FP32", "shape": [-1, 4]},
    ]
    assert document["outputs"][0] == {"name": "sum", "datatype": "FP32", "shape": [-1, 4]}
    assert document["labels"] == ["w", "x", "y", "z"]
    assert document["opset"] == {"ai.onnx": 17}
    assert document["producer"] == {"name": "", "version": ""}
    assert document["created"].endswith("+00:00")
    assert manifest.to_json() == {**document}


def test_versions_increment_and_are_immutable(repository: ModelRepository, tmp_path: Path) -> None:
    path = write_model(tmp_path, "m", identity_model("FP32"))
    assert repository.push(path, "m").version == 1
    assert repository.push(path, "m").version == 2
    assert repository.push(path, "m", version=7).version == 7
    assert repository.versions("m") == [1, 2, 7]
    assert repository.latest_version("m") == 7
    with pytest.raises(Conflict, match="immutable"):
        repository.push(path, "m", version=2)
    assert repository.list_models() == {"m": [1, 2, 7]}


def test_version_without_manifest_is_invisible(repository: ModelRepository, tmp_path: Path) -> None:
    repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m")
    half_written = tmp_path / "store/models/m/2/model.onnx"
    half_written.parent.mkdir(parents=True)
    half_written.write_bytes(b"partial")
    assert repository.versions("m") == [1]
    with pytest.raises(NotFound):
        repository.read_manifest("m", 2)


def test_push_rejects_what_onnxruntime_cannot_load(repository: ModelRepository, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"this is not a model")
    with pytest.raises(InvalidModel, match="not a valid ONNX model"):
        repository.push(bogus, "bogus")
    assert repository.list_models() == {}


def test_push_rejects_bad_names_before_io(repository: ModelRepository, tmp_path: Path) -> None:
    with pytest.raises(BadRequest):
        repository.push(tmp_path / "does-not-exist.onnx", "../escape")
    assert not (tmp_path / "store").exists()


def _tamper(root: Path, name: str, version: int, data: bytes) -> None:
    (root / model_key(name, version)).write_bytes(data)


def test_sha256_mismatch_is_refused_before_a_session_exists(
    repository: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = identity_model("FP32")
    repository.push(write_model(tmp_path, "m", original), "m")
    # Same length, different bytes: only the digest can tell.
    tampered = bytearray(original)
    tampered[-1] ^= 0xFF
    _tamper(tmp_path / "store", "m", 1, bytes(tampered))

    created: list[bytes] = []
    real_create = sessions.create_session

    def recording_create(data: bytes, threads: int | None = None) -> object:
        created.append(data)
        return real_create(data)

    monkeypatch.setattr(sessions, "create_session", recording_create)
    service = InferenceService(repository, Settings(store_uri=repository.uri))
    response = service.handle("GET", "/v2/models/m", {}, b"")
    assert response.status == 503
    message = orjson.loads(response.body)["error"]
    assert "sha256" in message and "does not match" in message
    assert created == []
    with pytest.raises(IntegrityError):
        repository.fetch_verified(repository.read_manifest("m", 1))


def test_truncated_model_is_refused(repository: ModelRepository, tmp_path: Path) -> None:
    original = identity_model("FP32")
    repository.push(write_model(tmp_path, "m", original), "m")
    _tamper(tmp_path / "store", "m", 1, original[:-10])
    with pytest.raises(IntegrityError, match="truncated"):
        repository.fetch_verified(repository.read_manifest("m", 1))


def test_oversized_model_is_refused(repository: ModelRepository, tmp_path: Path) -> None:
    original = identity_model("FP32")
    repository.push(write_model(tmp_path, "m", original), "m")
    _tamper(tmp_path / "store", "m", 1, original + b"\0" * 100)
    with pytest.raises(IntegrityError, match="larger"):
        repository.fetch_verified(repository.read_manifest("m", 1))


def test_model_size_limit(tmp_path: Path) -> None:
    small = ModelRepository.open(str(tmp_path / "store"), max_model_bytes=64)
    with pytest.raises(InvalidModel, match="limit"):
        small.push(write_model(tmp_path, "m", identity_model("FP32")), "m")


def test_manifest_for_another_model_is_refused(repository: ModelRepository, tmp_path: Path) -> None:
    repository.push(write_model(tmp_path, "a", identity_model("FP32")), "a")
    repository.push(write_model(tmp_path, "b", identity_model("FP64")), "b")
    root = tmp_path / "store"
    (root / manifest_key("a", 1)).write_bytes((root / manifest_key("b", 1)).read_bytes())
    with pytest.raises(ModelUnavailable, match="mismatched"):
        repository.read_manifest("a", 1)


def test_malformed_manifest_fails_closed(repository: ModelRepository, tmp_path: Path) -> None:
    repository.push(write_model(tmp_path, "a", identity_model("FP32")), "a")
    (tmp_path / "store" / manifest_key("a", 1)).write_bytes(b'{"name": "a"')
    with pytest.raises(ModelUnavailable, match="malformed"):
        repository.read_manifest("a", 1)


def test_corrupted_cache_entry_is_discarded(tmp_path: Path) -> None:
    # A remote-style repository (with a cache) over local blobs.
    from modelship.core.blobs import LocalBlobStore

    repository = ModelRepository(LocalBlobStore(tmp_path / "store"), cache_dir=tmp_path / "cache")
    data = identity_model("FP32")
    manifest = repository.push(write_model(tmp_path, "m", data), "m")
    assert repository.fetch_verified(manifest) == data
    cached = tmp_path / "cache" / f"{manifest.sha256}.onnx"
    assert cached.read_bytes() == data
    cached.write_bytes(b"garbage")
    assert repository.fetch_verified(manifest) == data
    assert cached.read_bytes() == data


def test_failed_load_is_not_retried_within_the_retry_window(
    repository: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = identity_model("FP32")
    repository.push(write_model(tmp_path, "m", original), "m")
    _tamper(tmp_path / "store", "m", 1, b"\0" * len(original))
    reads: list[str] = []
    real_read = repository.blobs.read

    def counting_read(key: str, max_bytes: int) -> bytes:
        reads.append(key)
        return real_read(key, max_bytes)

    monkeypatch.setattr(repository.blobs, "read", counting_read)
    clock = FakeClock()
    settings = Settings(store_uri=repository.uri, failure_retry_seconds=60)
    service = InferenceService(repository, settings, clock=clock)
    for _ in range(5):
        assert service.handle("GET", "/v2/models/m/versions/1", {}, b"").status == 503
    assert len([key for key in reads if key.endswith("model.onnx")]) == 1

    # Repaired in the store: still 503 inside the window, served once the window has passed.
    _tamper(tmp_path / "store", "m", 1, original)
    clock.advance(59)
    assert service.handle("GET", "/v2/models/m/versions/1", {}, b"").status == 503
    failure = service.lifecycle.failure("m", 1)
    assert failure is not None and "sha256" in failure.message and failure.at == 0
    clock.advance(1)
    assert service.handle("GET", "/v2/models/m/versions/1", {}, b"").status == 200
    assert service.lifecycle.failure("m", 1) is None
