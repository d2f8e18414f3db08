"""A local store may be a view of symlinks (the edge door's): they are followed, '../' keys are not."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelship.core.blobs import LocalBlobStore


def test_a_symlinked_file_inside_the_store_is_read(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "model.onnx").write_bytes(b"model bytes")
    store = tmp_path / "store"
    (store / "models" / "iris" / "1").mkdir(parents=True)
    (store / "models" / "iris" / "1" / "model.onnx").symlink_to(artifacts / "model.onnx")
    blobs = LocalBlobStore(store)
    assert blobs.read("models/iris/1/model.onnx", 100) == b"model bytes"
    assert list(blobs.list_keys("models/")) == ["models/iris/1/model.onnx"]


def test_a_store_root_that_is_itself_a_symlink_is_read(tmp_path: Path) -> None:
    (tmp_path / "view" / "models").mkdir(parents=True)
    (tmp_path / "view" / "models" / "key").write_bytes(b"x")
    (tmp_path / "store").symlink_to("view")
    assert LocalBlobStore(tmp_path / "store").read("models/key", 10) == b"x"


@pytest.mark.parametrize("key", ["../secret", "models/../../secret", "/etc/passwd", "models/../.."])
def test_a_key_that_leaves_the_root_is_still_refused(tmp_path: Path, key: str) -> None:
    (tmp_path / "secret").write_bytes(b"no")
    store = tmp_path / "store"
    store.mkdir()
    blobs = LocalBlobStore(store)
    with pytest.raises(ValueError, match="escapes the store root"):
        blobs.read(key, 10)
    with pytest.raises(ValueError, match="escapes the store root"):
        blobs.write(key, b"overwritten")
    assert (tmp_path / "secret").read_bytes() == b"no"
